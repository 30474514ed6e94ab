"""`--cors ORIGIN`: let web pages served from other origins call the API from a browser.

A browser sends a cross-origin POST with `Content-Type: application/json` only after an `OPTIONS`
preflight has said the origin may, and lets the page read any answer (errors too) only when it
carries `Access-Control-Allow-Origin`. This WSGI middleware answers preflights and adds those
headers; apiphant wraps its app in it only when `--cors` is given, so without it nothing changes.
"""

from urllib.parse import urlsplit

MAX_AGE = '600'  # seconds a browser may reuse a preflight's answer (Chromium caps it at 7200)


def origin(text):
    """'*' or scheme://host[:port], as browsers send it in the Origin header; ValueError if not."""
    if text == '*':
        return text
    parts = urlsplit(text)
    if parts.scheme not in ('http', 'https') or not parts.netloc or parts.path or parts.query \
            or parts.fragment or text.endswith('/'):
        raise ValueError(f'{text!r} is not an origin like https://app.example.com or http://127.0.0.1:3000 or *')
    return text


class Cors:
    def __init__(self, app, origins):
        self.app = app
        self.any = '*' in origins
        self.origins = frozenset(origins)

    def __call__(self, environ, start_response):
        origin = environ.get('HTTP_ORIGIN')
        if not (self.any or origin in self.origins):
            return self.app(environ, self._adding(start_response, self._vary()))
        added = [('Access-Control-Allow-Origin', '*' if self.any else origin), *self._vary()]
        method = environ.get('HTTP_ACCESS_CONTROL_REQUEST_METHOD')
        if environ['REQUEST_METHOD'] == 'OPTIONS' and method:
            added += [('Access-Control-Allow-Methods', method), ('Access-Control-Max-Age', MAX_AGE)]
            if 'HTTP_ACCESS_CONTROL_REQUEST_HEADERS' in environ:
                added.append(('Access-Control-Allow-Headers', environ['HTTP_ACCESS_CONTROL_REQUEST_HEADERS']))
            start_response('204 No Content', added)
            return []
        return self.app(environ, self._adding(start_response, added))

    def _vary(self):
        """With a list of origins the answer depends on the Origin header: caches must know."""
        return [] if self.any else [('Vary', 'Origin')]

    @staticmethod
    def _adding(start_response, added):
        if not added:
            return start_response

        def start_response_with_cors(status, headers, exc_info=None):
            return start_response(status, [*headers, *added], exc_info)
        return start_response_with_cors
