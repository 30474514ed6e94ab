"""Which process answered, and a slow action that says when it starts."""

import logging
import os
import time


def read(request):
    return {'pid': os.getpid()}


def update(request):
    """Log that the request is in flight, then take `seconds` (cooperatively: time is patched)."""
    logging.getLogger('kitchen').warning('in flight: %s', request.get('tag', ''))
    gate = request.get('until')
    if gate is None:
        time.sleep(request.seconds)
        return {'slept': request.seconds}
    # Held until the test creates the file `until` (`seconds` at most): a test that must act while
    # the action runs decides when it ends, instead of racing a timer on a loaded machine.
    deadline = time.monotonic() + request.seconds
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {'released': os.path.exists(gate)}
