"""One client connection: HTTP/1.1 read by llhttp (httptools), answered by a WSGI app, in one greenlet.

How it reads and why:
- llhttp parses in C, strictly: a header line without a colon or with a space before it, a folded
  line, a bare LF, two Content-Lengths, Content-Length beside Transfer-Encoding, a bad chunk size
  are refused, so no proxy in front can be made to read a request differently (request smuggling).
  On top of llhttp this refuses a transfer coding other than a lone `chunked`, an HTTP version
  other than 1.0 and 1.1 (HTTP/0.9 included), CONNECT, a request line over MAX_URL (414), more
  than MAX_HEADERS header and trailer fields, a head or a trailer section over MAX_HEAD, and what
  RFC 9112 §3.2 says must be a 400: an HTTP/1.1 request without Host, two Host fields, a Host that
  is not an RFC 3986 host and port. llhttp refuses raw bytes outside ASCII in a request-target,
  which nginx and most servers accept: such a target is read as though they were percent-encoded
  (the route table then answers 404).
- An Upgrade apiphant does not perform (h2c, websocket: it performs none) is ignored, as RFC 9110
  §7.8 allows, and the request answered over HTTP/1.1: curl --http2 and Java's HttpClient ask for
  h2c over plain HTTP. httptools makes llhttp stop at the end of an upgrading request's
  head, so its body is read by a fresh parser, fed a made-up head with the same framing first.
- Trailer fields (after a chunked body) are read and dropped (RFC 9110 §6.5.1 lets a server).
- llhttp calls back while it parses one read, which may hold several pipelined requests: they are
  collected, then answered in order, and the answers to one read go out in one send; with
  TCP_NODELAY a keep-alive client never meets the 40 ms delayed-ACK stall of two writes.
- A body is read whole, at most `max_body` bytes, before the app runs, so an action's time is its
  own and `CONTENT_LENGTH` is always the length of `wsgi.input`. A larger body is refused before it
  is read: at the end of the headers for a Content-Length, as soon as the chunks pass the limit for
  a chunked body. The app is then called with an empty body and BODY_REFUSED set, and answers 413
  like any other error, so a middleware (CORS) still adds its headers. `Expect: 100-continue` is
  answered with `100 Continue` only when the body will be taken (curl waits for it before sending
  a large body).
- A refused request is answered, then closed gracefully: stop sending, read and drop for up to
  LINGER s. Closing a socket with unread input sends a reset, which can destroy the answer before
  the client reads it.
- Each request's answer is an Exchange (apiphant.exchange), made per request.
- The connection reads what it shares with the others (settings, the app, counters) from one State
  the server makes, so it can run beside a stub server as well as under apiphant.server.
- Deadlines are one float per connection, checked by the server's reaper: `request_timeout` from a
  request's first byte to its last body byte (slowloris) or from accept to a first byte,
  `idle_timeout` between requests.
"""

import io
import ipaddress
import logging
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

import gevent
import httptools
from gevent import monkey

from apiphant import requestid
from apiphant.errors import BODY_REFUSED, MAX_BODY
from apiphant.exchange import Exchange, FileWrapper

log = logging.getLogger('apiphant')

READ_SIZE = 65536  # one recv; nothing stays allocated between reads
MAX_URL = 8192
MAX_HEADERS = 100
MAX_HEAD = 65536  # request line and headers, counted per read (see Connection._feed)
LINGER = 2.0
FAIRNESS_BUDGET = 16
NEVER = float('inf')

_CONTINUE = b'HTTP/1.1 100 Continue\r\n\r\n'
_PROTOCOLS = {'1.1': 'HTTP/1.1', '1.0': 'HTTP/1.0'}  # the versions served, as SERVER_PROTOCOL
_poll, _POLLIN = monkey.get_original('select', ['poll', 'POLLIN'])  # a check that never waits
# RFC 9110 §7.2: Host is uri-host [":" port], uri-host as RFC 3986 §3.2.2 has it: an IPv6 (or
# IPvFuture) literal in brackets, or a reg-name (an IPv4 address is one); it may be empty.
_HOST = re.compile(r"(?:\[(?:(?P<ipv6>[0-9A-Fa-f:.]+)|v[0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+)\]"
                   r"|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?")


@dataclass(eq=False)
class State:
    """What every connection of a server reads and counts: the server makes one (a test, a stub)."""

    app: Callable  # the WSGI app for every path not in `endpoints`
    environ: dict  # what every request's environ starts from (base_environ)
    endpoints: dict = field(default_factory=dict)  # path -> the server's own WSGI app (health, metrics)
    max_body: int = MAX_BODY
    request_timeout: float = 30.0
    idle_timeout: float = 75.0
    access_log: object = None  # a stream for the access lines, or None
    access_line: Callable | None = None  # apiphant.logs.ACCESS_LINES' form of a line
    metrics: object = None  # apiphant.metrics.Metrics, with --metrics
    request_ids: Callable = field(default_factory=requestid.Generator)
    forget: Callable = lambda connection: None  # told when a connection ends
    draining: bool = False
    in_flight: int = 0
    served: int = 0  # answers since the last fairness yield (see Connection._answer)
    # The app's direct entry, which takes a Request instead of an environ (apiphant's App has one;
    # a middleware around it has none, and is called through WSGI); found when the State is made.
    serve_request: Callable | None = field(init=False, default=None)

    def __post_init__(self):
        self.serve_request = getattr(self.app, 'serve_request', None)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the status is on the connection."""


class Request:
    """One request as parsed: its head, its body read whole, its PEP 3333 environ made only when asked.

    An app with a `serve_request(request, start_response)` method (apiphant's App) is handed this
    object instead of an environ: it reads `method`, `path`, `body` and `body_refused`, and asks
    for `environ` only when an action wants it (raw_environ). Any other WSGI app, and the server's
    own endpoints, get `environ`: building a dict of a dozen keys and a key per header, for every
    request, was the largest cost of the server besides the socket.
    """

    __slots__ = ('url', 'headers', 'body', 'size', 'started', 'base', 'method', 'path', 'query', 'protocol',
                 'client_id', 'body_refused', 'keep_alive', 'head_done', 'in_trailer', 'id', '_environ')

    def __init__(self, started, base):
        self.url = b''
        self.headers = []
        self.body = []  # the chunks as read, then (once complete) the body's bytes
        self.size = 0
        self.started = started
        self.base = base  # what its environ starts from (the connection's)
        self.method = ''
        self.path = ''  # PATH_INFO: percent-decoded, latin-1
        self.query = ''
        self.protocol = 'HTTP/1.1'
        self.client_id = None  # the X-Request-ID the client sent (as the environ would hold it)
        self.body_refused = False  # over the limit, and not read: the app answers 413
        self.keep_alive = False
        self.head_done = False
        self.in_trailer = False  # a chunk header came, and no data after it yet: maybe the last chunk's
        self.id = requestid.NONE
        self._environ = None

    @property
    def environ(self):
        """The PEP 3333 environ a WSGI server would pass, made on first use: the request ID in use
        in HTTP_X_REQUEST_ID, the body in `wsgi.input`, BODY_REFUSED set when it was refused."""
        environ = self._environ
        if environ is None:
            environ = self._environ = self.base.copy()
            for name, value in self.headers:
                key = _WSGI_NAMES.get(name) or _wsgi_name(name)
                if key[0] == 'H':
                    text = value.decode('latin-1')
                    environ[key] = environ[key] + ',' + text if key in environ else text
                elif key == 'CONTENT_TYPE':
                    environ[key] = value.decode('latin-1')
            environ[requestid.HEADER] = self.id
            environ['REQUEST_METHOD'] = self.method
            environ['PATH_INFO'] = self.path
            environ['QUERY_STRING'] = self.query
            environ['SERVER_PROTOCOL'] = self.protocol
            environ['CONTENT_LENGTH'] = str(len(self.body))
            environ['wsgi.input'] = io.BytesIO(self.body)
            if self.body_refused:
                environ[BODY_REFUSED] = True
        return environ


class Connection:
    """The parser's callbacks (on_*) fill `ready`; `run` answers what each read completed."""

    def __init__(self, sock, address, state):
        self.sock = sock
        self.address = address
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        # What every request's environ on this connection starts from: the client's address once.
        self.environ = {**state.environ, 'REMOTE_ADDR': address[0], 'REMOTE_PORT': str(address[1])}
        self.deadline = time.monotonic() + state.request_timeout  # a first byte, soon
        self.idle_since = None  # when it began waiting for a next request, on a kept-alive connection
        self.requests_served = 0
        self.request = None  # the request being parsed
        self.ready = []  # requests parsed whole, waiting for their answer
        self.output = []  # answers to this read, sent together
        self.refusal = None  # status code of a request refused while parsing, answered by the server
        self.linger = False  # input is left unread (a refused body, pipelined requests): close gracefully
        self.continue_wanted = False
        self.began = False  # a request (or a chunk, maybe the last) began in the read being parsed
        self.head_bytes = 0  # of the head, or of the trailer section, being read
        self.valid_host = None  # the last Host checked: a keep-alive client sends the same each time
        self.resume_head = None  # for a request with an Upgrade: its framing, as a head (see _parse)
        self.resuming = False  # a fresh parser reads that head: it belongs to the request being read
        self.aborted = False

    # -- llhttp's callbacks ------------------------------------------------------------------------

    def on_message_begin(self):
        if self.resuming:
            return
        now = time.monotonic()
        self.request = Request(now, self.environ)
        self.began = True
        self.head_bytes = 0
        self.idle_since = None
        self.deadline = now + self.state.request_timeout

    def on_url(self, url):
        if self.resuming:
            return
        request = self.request
        request.url += url
        if len(request.url) > MAX_URL:
            self._refuse(414, 'request line too long')

    def on_header(self, name, value):
        headers = self.request.headers
        headers.append((name, value))
        if len(headers) > MAX_HEADERS:
            self._refuse(400, f'more than {MAX_HEADERS} headers')

    def on_headers_complete(self):
        if self.resuming:
            self.resuming = False
            return
        parser, request = self.parser, self.request
        request.head_done = True
        version = parser.get_http_version()
        if version not in _PROTOCOLS:
            self._refuse(400, f'HTTP version {version}')
        length = host = None
        codings = []
        expect = b''
        for name, value in request.headers:
            key = _WSGI_NAMES.get(name) or _wsgi_name(name)
            if key not in _READ_HERE:
                continue  # (the environ, when one is asked for, reads the others)
            if key == 'HTTP_HOST':
                if host is not None:
                    self._refuse(400, 'two Host fields')
                host = value.decode('latin-1')
            elif key == 'CONTENT_LENGTH':
                length = int(value)  # llhttp has checked it is digits, and the only one
            elif key == 'TRANSFER_ENCODING':
                codings.append(value)
            elif key == 'HTTP_EXPECT':
                expect = value.lower()
            else:  # two X-Request-IDs join as the environ joins them: not a well-formed ID
                text = value.decode('latin-1')
                request.client_id = text if request.client_id is None else request.client_id + ',' + text
        if codings and (len(codings) > 1 or codings[0].lower() != b'chunked'):
            self._refuse(400, f'unsupported Transfer-Encoding {b", ".join(codings).decode("latin-1")!r}')
        if host is None:
            if version == '1.1':
                self._refuse(400, 'no Host')
        elif host != self.valid_host:
            if not _is_host(host):
                self._refuse(400, f'invalid Host {host[:100]!r}')
            self.valid_host = host
        method = request.method = parser.get_method().decode('latin-1')
        path, _, query = request.url.partition(b'?')
        if path[:1] != b'/' and b'://' in path:  # absolute-form, as sent to proxies
            path = b'/' + path.split(b'://', 1)[1].partition(b'/')[2]
        request.path = (unquote_to_bytes(path) if b'%' in path else path).decode('latin-1')
        request.query = query.decode('latin-1')
        request.protocol = _PROTOCOLS[version]
        if length is not None and length > self.state.max_body:
            self._refuse_body(f'Content-Length {length}')
        self.continue_wanted = expect == b'100-continue' and version == '1.1' and bool(length or codings)
        if parser.should_upgrade():
            if method == 'CONNECT':
                self._refuse(400, 'CONNECT request')
            self.resume_head = b'POST / HTTP/1.1\r\n%s%s\r\n\r\n' % (
                b'Transfer-Encoding: chunked' if codings else b'Content-Length: %d' % (length or 0),
                b'' if parser.should_keep_alive() else b'\r\nConnection: close')

    def on_chunk_header(self):
        # llhttp does not say which chunk is the last: each chunk header starts counting as a head
        # does (see _feed), and the chunk's data stops it; after the last one, the trailer section.
        self.request.in_trailer = True
        self.began = True
        self.head_bytes = 0

    def on_body(self, chunk):
        request = self.request
        request.in_trailer = False
        request.body.append(chunk)
        request.size += len(chunk)
        self.continue_wanted = False
        if request.size > self.state.max_body:
            self._refuse_body('chunked body over the limit')

    def on_message_complete(self):
        if self.resume_head is not None:  # only the end of the head of a request with an Upgrade
            return
        self._complete(b''.join(self.request.body), self.parser.should_keep_alive())

    def _complete(self, body, keep_alive):
        request = self.request
        request.body = body
        request.keep_alive = keep_alive
        self.ready.append(request)
        self.request = None
        self.continue_wanted = False

    def _refuse_body(self, reason):
        """Stop reading: the app answers this request with 413 (see the module docstring)."""
        log.info('body refused from %s: %s', self.address[0], reason)
        self.request.body_refused = True
        self._complete(b'', False)
        self.linger = True
        raise _Refused(reason)

    def _refuse(self, status, reason):
        log.info('bad request from %s: %s', self.address[0], reason)
        self.refusal = status
        raise _Refused(reason)

    # -- the connection's loop ---------------------------------------------------------------------

    def run(self):
        try:
            while True:
                try:
                    data = self.sock.recv(READ_SIZE)
                except OSError:
                    return
                if not data:
                    if self.request is not None and not self.aborted:
                        # The client stopped sending in the middle of a request: say so, then close.
                        self.refusal = 400
                        self._answer()
                    return
                self._feed(data)
                if (self.ready or self.refusal or self.continue_wanted) and not self._answer():
                    return
        finally:
            self.state.forget(self)
            self.sock.close()

    def _feed(self, data):
        fresh = self.request is None
        self.began = False
        try:
            try:
                self._parse(data)
            except httptools.HttpParserInvalidURLError:
                retry = fresh and not self.ready and _percent_encoded_target(data)
                if not retry:
                    raise
                self.parser = httptools.HttpRequestParser(self)
                self._parse(retry)
        except httptools.HttpParserError as error:
            if self.refusal is None and not self.linger:
                log.info('bad request from %s: %s', self.address[0], error)
                self.refusal = 400
            return
        request = self.request
        if request is not None and (not request.head_done or request.in_trailer) and not self.began:
            # A read that began the request (or the chunk) is not counted: a head or a trailer
            # section may be up to one read larger. llhttp holds each field whole until it ends.
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                where = 'trailer section' if request.head_done else 'head'
                log.info('bad request from %s: %s over %d bytes', self.address[0], where, MAX_HEAD)
                self.refusal = 400

    def _parse(self, data):
        """Feed llhttp one read. At the end of the head of a request with an Upgrade, httptools stops
        llhttp, which ends the request there; to read its body as HTTP/1.1, a fresh parser is fed
        the request's framing as a made-up head (its callbacks skip it), then the rest of the read."""
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                head, self.resume_head = self.resume_head, None
                self.parser = httptools.HttpRequestParser(self)
                self.resuming = True
                self.parser.feed_data(head)
                data = memoryview(data)[upgrade.args[0]:]

    def _answer(self):
        """Answer every request this read completed, then any refusal; False when closing."""
        state = self.state
        ready, self.ready = self.ready, []
        self.deadline = NEVER  # an action takes its own time
        keep_alive = True
        last = len(ready) - 1
        for index, request in enumerate(ready):
            keep_alive = Exchange(request, self).run(index == last)
            self.requests_served += 1
            if not keep_alive:
                # Pipelined input after this answer stays unread: close gracefully, or the reset
                # that closing on unread input sends could destroy the answer.
                self.linger = self.linger or index < last or self.request is not None
                break
        if keep_alive:
            if self.refusal:
                Exchange(self.request or Request(time.monotonic(), self.environ), self).refuse(self.refusal)
                keep_alive = False
            elif self.continue_wanted:
                self.output.append(_CONTINUE)
                self.continue_wanted = False
        if self.output and not self.send():
            return False
        if self.refusal or self.linger:
            self._drop_input()
            return False
        if not keep_alive:
            return False
        now = time.monotonic()
        if self.request is not None:
            self.deadline = self.request.started + state.request_timeout
        else:
            self.idle_since = now
            self.deadline = now + state.idle_timeout
        state.served += len(ready)
        if state.served >= FAIRNESS_BUDGET:
            # A client whose next request is always waiting would otherwise keep the event loop.
            state.served = 0
            gevent.sleep(0)
        return True

    def send(self):
        """Send `output` (the answers so far, and a streamed body's pieces); False: the client is gone."""
        data = b''.join(self.output)
        self.output = []
        try:
            # Performance: gevent's sendall asks the kernel for SO_SNDBUF on every call; a single
            # send() almost always takes a whole batch of answers.
            sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
        except OSError:
            return False
        return True

    def _drop_input(self):
        """Lingering close: stop sending, then read and drop for up to LINGER s (see the docstring)."""
        self.deadline = time.monotonic() + LINGER
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while self.sock.recv(READ_SIZE):
                pass
        except OSError:
            pass

    # -- for the server ----------------------------------------------------------------------------

    def input_pending(self):
        """Whether the client has sent bytes not yet read (a request racing the drain), or closed."""
        try:
            poller = _poll()
            poller.register(self.sock.fileno(), _POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    def abort(self):
        """Close the connection under its greenlet: a blocked read wakes up to end of file."""
        self.aborted = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# The fields the server itself reads while parsing (framing, Host, 100-continue, the request ID).
_READ_HERE = frozenset({'HTTP_HOST', 'CONTENT_LENGTH', 'TRANSFER_ENCODING', 'HTTP_EXPECT', requestid.HEADER})
_WSGI_NAMES = {}  # header name as sent -> its environ key; bounded, as clients choose the names
_WSGI_NAMES_MAX = 4096
_WSGI_NAME_CACHED = 64  # longest name kept
_UNDERSCORE = '-'  # (not an environ key: a name with "_" is dropped)


def _wsgi_name(name):
    """HTTP_X_NAME for X-Name; CONTENT_LENGTH, CONTENT_TYPE and TRANSFER_ENCODING apart; a name with
    "_" could pose as one with "-" in the environ, so it is dropped, as pywsgi and gunicorn do."""
    key = name.upper().replace(b'-', b'_').decode('latin-1')
    if b'_' in name:
        key = _UNDERSCORE
    elif key not in ('CONTENT_LENGTH', 'CONTENT_TYPE', 'TRANSFER_ENCODING'):
        key = 'HTTP_' + key
    if len(_WSGI_NAMES) < _WSGI_NAMES_MAX and len(name) <= _WSGI_NAME_CACHED:
        _WSGI_NAMES[name] = key
    return key


def _is_host(host):
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    literal = match.group('ipv6')
    if literal:
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
    return True


def _percent_encoded_target(data):
    """The read with its request-target's raw non-ASCII and control bytes percent-encoded, or None."""
    end = data.find(b'\r\n')
    if end < 0:
        return None
    parts = data[:end].split(b' ')
    if len(parts) != 3:
        return None
    method, target, version = parts
    quoted = b''.join(b'%%%02X' % byte if byte < 0x21 or byte > 0x7e else bytes((byte,)) for byte in target)
    return b' '.join((method, quoted, version)) + data[end:]


def base_environ(listener, multiprocess, file_wrapper=FileWrapper):
    """What every request's environ shares; each request gets a copy."""
    host, port = listener.getsockname()[:2]
    return {'SCRIPT_NAME': '', 'SERVER_NAME': host, 'SERVER_PORT': str(port),
            'wsgi.version': (1, 0), 'wsgi.url_scheme': 'http', 'wsgi.errors': sys.stderr,
            'wsgi.multithread': True, 'wsgi.multiprocess': multiprocess, 'wsgi.run_once': False,
            'wsgi.input_terminated': True, 'wsgi.file_wrapper': file_wrapper}
