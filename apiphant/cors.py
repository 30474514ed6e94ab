"""`--cors ORIGIN`: let web pages served from other origins call the API from a browser.

A browser sends a cross-origin POST with `Content-Type: application/json` only after an `OPTIONS`
preflight has said the origin may, and lets the page read any answer (errors too) only when it
carries `Access-Control-Allow-Origin`. This WSGI middleware answers preflights and adds those
headers; apiphant wraps its app in it only when `--cors` is given, so without it nothing changes.

Browsers send the Origin as scheme://host[:port], the host in lower case (an international one in
punycode) and a default port left out; an allowed origin is checked and written the same way at
start-up, so one that could never match is refused instead of silently ignored.
"""

import re
from urllib.parse import urlsplit

MAX_AGE = '600'  # seconds a browser may reuse a preflight's answer (Chromium caps it at 7200)
EXPOSED = ('X-Request-ID',)  # safelisted headers (Content-Type...) need no exposing; this one does
_DEFAULT_PORTS = {'http': 80, 'https': 443}
_LABEL = r'(?!-)[a-z0-9_-]{1,63}(?<!-)'  # (browsers take _ in a name, as DNS does)
_HOST = re.compile(rf'(?:{_LABEL}\.)*{_LABEL}\Z|\[[0-9a-f:.]+\]\Z')
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # a field name (RFC 9110 section 5.1)
_EXAMPLES = 'https://app.example.com, http://127.0.0.1:3000, https://*.example.com or *'


def origin(text):
    """'*', scheme://host[:port] or scheme://*.domain[:port], as browsers would send it; ValueError
    for what is not an origin or could never match one."""
    if text == '*':
        return text
    parts = urlsplit(text)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc or parts.path or parts.query \
            or parts.fragment or '@' in parts.netloc or text.endswith(('/', '?', '#')):
        raise ValueError(f'{text!r} is not an origin like {_EXAMPLES}')
    host = parts.netloc.rpartition(':')[0] if parts.netloc.rpartition(':')[2].isdigit() else parts.netloc
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f'{text!r}: the port should be a number from 1 to 65535') from None
    wildcard = host.startswith('*.')
    name = host[2:] if wildcard else host
    if not name.isascii():
        raise ValueError(f'{text!r}: a browser sends an international name in punycode: write '
                         f'{text.replace(name, _punycode(name))!r}')
    name = name.lower()
    if not _HOST.match(name) or (wildcard and name.startswith('[')):
        raise ValueError(f'{text!r} can never match: * stands only for the subdomains of a domain, '
                         f'as in https://*.example.com' if '*' in name else
                         f'{text!r}: {name!r} is not a host name or address')
    if wildcard and '.' not in name and name != 'localhost':
        raise ValueError(f'{text!r} would let every site under .{name} in: name the domain, '
                         f'as in https://*.example.com')
    shown_port = '' if port in (None, _DEFAULT_PORTS[parts.scheme]) else f':{port}'
    return f'{parts.scheme}://{"*." if wildcard else ""}{name}{shown_port}'


def header_name(text):
    if not _TOKEN.match(text):
        raise ValueError(f'{text!r} is not a header name')
    return text


class Cors:
    def __init__(self, app, origins, credentials=False, expose=()):
        self.app = app
        self.any = '*' in origins
        self.origins = frozenset(origin for origin in origins if '*' not in origin)
        self.subdomains = [_subdomains(origin) for origin in origins if origin.startswith(('http://*.', 'https://*.'))]
        self.credentials = [('Access-Control-Allow-Credentials', 'true')] if credentials else []
        exposed = list(EXPOSED)
        for name in expose or ():
            if name.lower() not in {known.lower() for known in exposed}:
                exposed.append(name)
        self.exposed = [('Access-Control-Expose-Headers', ', '.join(exposed))]

    def allows(self, origin):
        return self.any or origin in self.origins or any(match(origin) for match in self.subdomains)

    def __call__(self, environ, start_response):
        origin = environ.get('HTTP_ORIGIN')
        if origin is None or not self.allows(origin):
            return self.app(environ, self._adding(start_response, self._vary()))
        added = [('Access-Control-Allow-Origin', '*' if self.any else origin), *self._vary(), *self.credentials]
        method = environ.get('HTTP_ACCESS_CONTROL_REQUEST_METHOD')
        if environ['REQUEST_METHOD'] == 'OPTIONS' and method:
            added += [('Access-Control-Allow-Methods', method), ('Access-Control-Max-Age', MAX_AGE)]
            if 'HTTP_ACCESS_CONTROL_REQUEST_HEADERS' in environ:
                added.append(('Access-Control-Allow-Headers', environ['HTTP_ACCESS_CONTROL_REQUEST_HEADERS']))
            start_response('204 No Content', added)
            return []
        return self.app(environ, self._adding(start_response, added + self.exposed))

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


def _subdomains(pattern):
    """'https://*.example.com' -> a test true for https://a.example.com and https://a.b.example.com,
    false for https://example.com, https://badexample.com and https://a.example.com.evil.net."""
    scheme, _, rest = pattern.partition('://*.')
    domain, colon, port = rest.partition(':')
    return re.compile(rf'{scheme}://(?:{_LABEL}\.)+{re.escape(domain)}{re.escape(colon + port)}\Z').match


def _punycode(name):
    try:
        return name.encode('idna').decode()
    except UnicodeError:
        return 'xn--...'
