"""Which process answered, and a slow action that says when it starts."""

import logging
import os
import time


def read(request):
    return {'pid': os.getpid()}


def update(request):
    """Log that the request is in flight, then take `seconds` (cooperatively: time is patched)."""
    logging.getLogger('kitchen').warning('in flight: %s', request.get('tag', ''))
    time.sleep(request.seconds)
    return {'slept': request.seconds}
