"""The WSGI callable: path -> route, body -> request, action's result -> JSON, every error -> JSON.

It is a plain WSGI app, so it runs under the in-process test client or under any other WSGI
server; apiphant's own server calls it directly (`App.serve_request`), without a PEP 3333 environ
unless an action asks for one. Limits it enforces (body size) do not depend on the server.
"""

import json
import logging
import re
import sys

import ujson

from apiphant import routes
from apiphant.errors import BODY_REFUSED, MAX_BODY, ApiError, NotJson, encode  # (also imported from here)

log = logging.getLogger('apiphant')

RAISE_EXCEPTIONS = 'apiphant.raise_exceptions'  # set by the in-process test client: no 500, the exception
NOT_AN_OBJECT = 'Request content should be JSON Object'

# ujson reads some bodies more kindly than JSON allows: 'NaN', 'Infinity' and numbers too big for a
# float (1e999, 400 digits) become NaN or +-inf; a lone UTF-16 surrogate (escaped as \ud800, or raw as
# the bytes ED A0..BF) makes a string that cannot be encoded again; a lone '-' reads as 0, '01' as 1,
# '1.' as 1.0. This cheap first look (one C-level regex scan) finds every body that might be one of
# those, and only those go to Python's stricter json module as referee.
_MAYBE_UNSOUND = re.compile(
    rb'NaN|Infinity|[eE]\+?\d{3}|\d{300}'           # not finite
    rb'|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]'          # surrogates
    rb'|[:\[,]\s*(?:-?0\d|-(?!\d))|\d\.(?!\d)'     # lone minus, leading zero, trailing dot
)
_SURROGATE = re.compile('[\ud800-\udfff]')
_NOT_FINITE = (float('inf'), float('-inf'))


class Request(dict):
    """A JSON object whose keys read and write as attributes: `request.id`, `request.user.name`.

    Nested objects (also those inside lists) become Requests when first reached as attributes.
    """

    __slots__ = ()

    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        if type(value) is dict:
            value = self[name] = Request(value)
        elif type(value) is list and any(type(item) is dict for item in value):
            value = self[name] = [Request(item) if type(item) is dict else item for item in value]
        return value

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def copy(self):
        return Request(self)


def parse_request(body):
    """Decode a request body into a Request; anything but a JSON object is the client's error."""
    if not body:
        return Request()
    try:
        value = _strict_loads(body) if _MAYBE_UNSOUND.search(body) else ujson.loads(body)
    except (ValueError, OverflowError, RecursionError):
        raise ApiError(400, NOT_AN_OBJECT) from None
    if type(value) is not dict:
        raise ApiError(400, NOT_AN_OBJECT)
    return Request(value)


def _strict_loads(body):
    """Python's json as referee: RFC 8259 numbers, no NaN, no lone surrogates, UTF-8 only."""
    value = json.loads(body.decode('utf-8'), parse_constant=_refuse, strict=False)
    if not _is_sound(value):
        raise ValueError('not finite, or a lone surrogate')
    return value


def _refuse(constant):
    raise ValueError(f'{constant} is not JSON')


def _is_sound(value):
    """No infinity (1e999 reads as one), no lone surrogate (from an escape) in a key or string."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if item != item or item in _NOT_FINITE:
                return False
        elif kind is str:
            if _SURROGATE.search(item):
                return False
        elif kind is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return True


class App:
    """Serves a route table as a WSGI application."""

    def __init__(self, routes, max_body=MAX_BODY):
        self.routes = routes
        self.max_body = max_body

    def __call__(self, environ, start_response):
        """PEP 3333, for any WSGI server and the in-process test client."""
        return self.answer(environ['REQUEST_METHOD'], environ['PATH_INFO'], BODY_REFUSED in environ, environ,
                           start_response)

    def serve_request(self, request, start_response):
        """apiphant's server calls this instead of the WSGI callable, with its parsed request
        (apiphant.connection.Request: `method`, `path`, `body` bytes, `body_refused`, and an
        `environ` made only when asked for), so a request to an action that is not raw builds no
        environ. The answer is the same as through WSGI."""
        return self.answer(request.method, request.path, request.body_refused, request, start_response)

    def answer(self, method, path, refused, source, start_response):
        """The answer to `method` on `path`; `source` is the environ (WSGI), or apiphant's server's
        request, which reads as one through its `environ` and holds its body whole."""
        route = self.routes.get(path)
        try:
            if refused:
                raise ApiError(413)
            if route is None:
                raise ApiError(404)
            if route.raw_environ:
                request = source if isinstance(source, dict) else source.environ
            elif method != 'POST':
                raise ApiError(405)
            else:
                request = parse_request(self.read_body(source))
            if route.raw_response:
                return route.action(request, start_response)
            result = route.action(request)
            if result is None:
                result = {}
            elif not isinstance(result, dict):
                raise TypeError(f'{route.path} returned {type(result).__name__}; '
                                f'an action returns a dict or None')
            try:
                body = encode(result)
            except NotJson as error:
                # Its traceback would show only the encoder; what helps is where the value is and what.
                log.error('500 on %s: the result holds a value without a JSON form: %s', path, error)
                raise ApiError(500) from None
        except ApiError as error:
            return self.error(method, start_response, error)
        except Exception:
            if isinstance(source, dict) and source.get(RAISE_EXCEPTIONS):
                raise
            log.exception('500 on %s', path)
            return self.error(method, start_response, ApiError(500))
        start_response('200 OK', [('Content-Type', 'application/json'),
                                  ('Content-Length', str(len(body)))])
        return _content(method, body)

    def read_body(self, source):
        """The body, at most max_body bytes: a larger one is refused before it is read."""
        if not isinstance(source, dict):  # apiphant's server's request: read whole, up to the server's limit
            if len(source.body) > self.max_body:
                raise ApiError(413)
            return source.body
        length = source.get('CONTENT_LENGTH')
        stream = source['wsgi.input']
        if length:
            try:
                length = int(length)
            except ValueError:
                raise ApiError(400, 'Content-Length should be a number') from None
            if length > self.max_body:
                raise ApiError(413)
            return stream.read(length)
        body = stream.read(self.max_body + 1)
        if len(body) > self.max_body:
            raise ApiError(413)
        return body

    @staticmethod
    def error(method, start_response, error):
        body = encode(error.body, default=str)  # an `explain` of any type still reaches the client
        headers = [('Content-Type', 'application/json'), ('Content-Length', str(len(body))), *error.headers]
        if error.status_code == 405:
            headers.append(('Allow', 'POST'))
        elif error.status_code == 413:
            headers.append(('Connection', 'close'))
        start_response(error.status, headers, sys.exc_info())
        return _content(method, body)


def _content(method, body):
    """A HEAD gets the headers a POST would, its Content-Length included, but no content (RFC 9110)."""
    return [] if method == 'HEAD' else [body]


def load(product, max_body=MAX_BODY):
    """The App of a product folder or importable name, routes discovered as `apiphant PRODUCT` does."""
    return App(routes.discover(routes.locate(str(product))), max_body=max_body)
