"""apiphant: a small JSON CRUD web API framework on gevent's WSGI server."""

__version__ = '0.2.0'
