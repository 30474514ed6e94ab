"""Request IDs: one per request, taken from the client's X-Request-ID when well-formed, else made here.

The ID lives in a context variable. gevent (>= 20.12, on greenlet >= 0.4.17) gives every greenlet
its own context, and apiphant's server answers each connection in its own greenlet, so the ID set
for a request is the one every log record written while it runs carries: the server's, the 500's
traceback and the product's own loggers' (RequestIdFilter, on the handler), with no argument
threaded through the product's calls.
"""

import itertools
import logging
import os
import re
from contextvars import ContextVar

HEADER = 'HTTP_X_REQUEST_ID'  # its environ key; the app sees the ID in use there
NONE = '-'  # outside any request

current = ContextVar('apiphant_request_id', default=NONE)
is_well_formed = re.compile(r'[A-Za-z0-9._-]{1,128}\Z').match


def request_id() -> str:
    """The ID of the request being answered (for an action, a log line, a call to another service);
    '-' outside a request."""
    return current.get()


class Generator:
    """IDs unique across processes and restarts: a random prefix per process, then a counter.

    Cheaper than a uuid4 per request; made in each worker after the fork, so workers never share
    a prefix."""

    def __init__(self):
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)

    def __call__(self):
        return f'{self.prefix}-{next(self.counter):x}'


class RequestIdFilter(logging.Filter):
    """Puts `request_id` on every record a handler writes (records of child loggers included:
    a handler's filters see what propagates to it, a logger's only what is logged on it)."""

    def filter(self, record):
        record.request_id = current.get()
        return True
