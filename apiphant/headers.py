"""Request headers, read straight from the socket, strictly.

pywsgi parses headers with http.client's parser, which goes through the email package: profiled
under wrk, that was 40% of the server's time per request. This reads the lines itself and keeps
what pywsgi asks of a headers object (`get`, `getheader`, `typeheader`, `del`, `status`), and
the environ's HTTP_* pairs ready made.

Strict, because a proxy in front may read a request differently from a lenient server, and that
is how requests are smuggled past it: a header line without a colon, with a space before it, or
folded; two different Content-Lengths; Content-Length beside Transfer-Encoding; a transfer coding
but chunked. Any of those sets `status`, which pywsgi answers with 400.
"""

import re

MAX_LINE = 65536  # as http.client: a longer header line is refused
MAX_HEADERS = 100
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_END = (b'\r\n', b'\n')


class Headers:
    __slots__ = ('status', 'environ', '_fields')

    def __init__(self, rfile):
        self.status = ''
        self.environ = []  # ('HTTP_NAME', value) pairs, as WSGI names them
        self._fields = {}  # lowercase name -> [values]
        for _ in range(MAX_HEADERS + 1):
            line = rfile.readline(MAX_LINE + 1)
            if line in _END:
                self.status = framing_error(self._fields)
                return
            if len(line) > MAX_LINE or not line.endswith(b'\n'):
                self.status = 'header line too long' if line else 'connection closed in the headers'
                return
            name, colon, value = line.partition(b':')
            if not colon or not _TOKEN.fullmatch(name):
                self.status = 'malformed header line'
                return
            self._add(name.decode('latin-1'), value.strip().decode('latin-1'))
        self.status = f'more than {MAX_HEADERS} headers'

    def _add(self, name, value):
        lower = name.lower()
        self._fields.setdefault(lower, []).append(value)
        if '_' not in name and lower not in ('content-type', 'content-length'):
            # A name with "_" could pose as one with "-" in the environ: dropped, as pywsgi does.
            self.environ.append(('HTTP_' + name.upper().replace('-', '_'), value))

    def get(self, name, default=None):
        values = self._fields.get(name.lower())
        return values[0] if values else default

    getheader = get

    @property
    def typeheader(self):
        return self.get('content-type')

    def __delitem__(self, name):
        del self._fields[name.lower()]


def framing_error(fields):
    """Why a request with these headers cannot be framed unambiguously, or '' when it can."""
    lengths = fields.get('content-length', ())
    codings = fields.get('transfer-encoding', ())
    if len(set(lengths)) > 1:
        return 'conflicting Content-Length headers'
    if codings and lengths:
        return 'both Content-Length and Transfer-Encoding'
    if codings and [coding.lower() for coding in codings] != ['chunked']:
        return f'unsupported Transfer-Encoding {", ".join(codings)!r}'
    return ''
