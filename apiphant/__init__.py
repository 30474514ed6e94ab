"""apiphant: a small JSON CRUD web API framework on gevent's WSGI server."""

__version__ = '0.3.0'

from apiphant.requestid import request_id  # noqa: E402,F401  (documented: `apiphant.request_id()`)
