"""gevent's pywsgi, tuned for many keep-alive clients: sockets, deadlines, drain, workers.

What is changed from pywsgi and why:
- a response goes out in one write with TCP_NODELAY: two writes meet Nagle and delayed ACK and stall
  keep-alive clients 40 ms per request;
- a kept-alive connection is given up after `idle_timeout` with no request, and after
  `request_timeout` from a request's first byte to its last body byte (slowloris) or from accept to
  a first byte; one reaper greenlet checks every deadline, so a request costs two float stores
  instead of a timer;
- the body is read before the action runs, bounded by `max_body`, so an action's time is its own;
  a body refused as too large is read and dropped for up to LINGER seconds after the 413, since
  closing on unread input sends a reset that can destroy the 413 before the client reads it;
- every FAIRNESS_BUDGET responses the serving greenlet yields once: a client whose next request is
  always already waiting would otherwise keep the event loop while every other connection starves;
- SIGTERM drains: accept what the kernel has queued and close the listening socket, answer
  in-flight requests and the next request of each kept-alive connection with `Connection: close`,
  close connections idle for DRAIN_IDLE s, exit when none is left or `drain_timeout` has passed;
- accept failing for lack of file descriptors pauses accepting for ACCEPT_RETRY s (the kernel queues
  new connections meanwhile) and is logged at most once per FD_REPORT_PERIOD s, never fatal;
- headers are parsed by apiphant.headers: strictly (no request smuggling shapes) and about three
  times faster than pywsgi's email-package parser.
"""

import errno
import io
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate

import gevent
from gevent import pywsgi
from gevent.event import Event

from apiphant.app import MAX_BODY, encode
from apiphant.headers import Headers
from apiphant.validation import ApiError

log = logging.getLogger('apiphant')

BACKLOG = 65535  # the kernel caps it at net.core.somaxconn
FAIRNESS_BUDGET = 16
READ_BUFFER = 2048  # per connection, allocated up front; a typical request line and headers fit
LINGER = 2.0
ACCEPT_RETRY = 0.1
FD_REPORT_PERIOD = 10.0
DRAIN_IDLE = 2.0  # see Server.drain; the deploy's nginx drops idle upstream connections after 1 s
NEVER = float('inf')
_FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def raw_environ(action):
    """The action gets the WSGI environ instead of a parsed request, for any HTTP method."""
    action.raw_environ = True
    return action


def raw_response(action):
    """The action gets `start_response` too and returns the WSGI body iterable itself."""
    action.raw_response = True
    return action


@dataclass
class Options:
    max_body: int = MAX_BODY
    idle_timeout: float = 75.0  # longer than nginx's upstream keepalive_timeout (default 60 s): nginx closes first
    request_timeout: float = 30.0
    drain_timeout: float = 10.0
    access_log: bool = True
    workers: int = 1


def _closing_response(status_code):
    """A complete JSON error response for requests refused before they reach the app."""
    error = ApiError(status_code)
    body = encode(error.body)
    return (b'HTTP/1.1 %s\r\nContent-Type: application/json\r\nConnection: close\r\n'
            b'Content-Length: %d\r\n\r\n%s' % (error.status.encode(), len(body), body))


_BAD_REQUEST = _closing_response(400)
_URI_TOO_LONG = _closing_response(414)


class _Clock:
    """Date header and log timestamp, formatted once a second instead of once a request."""

    second = 0
    http_date = b''
    log_time = ''

    @classmethod
    def tick(cls):
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.http_date = formatdate(now, usegmt=True).encode()
            cls.log_time = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))
        return cls


class _Body(io.BytesIO):
    """The request body, read in full before the action: nothing is left for pywsgi to discard."""

    def _discard(self):
        pass


class Handler(pywsgi.WSGIHandler):
    """One client connection: pywsgi's request loop with deadlines and a single-write response."""

    deadline = NEVER
    idle = False
    linger = False
    requests_served = 0

    def __init__(self, sock, address, server):
        # gevent's default read buffer (8 KiB) was a third of an idle connection's memory; longer
        # headers are simply read in more pieces, and bodies bypass the buffer.
        super().__init__(sock, address, server, rfile=sock.makefile('rb', READ_BUFFER))

    def handle(self):
        server = self.server
        server.connections.add(self)
        try:
            super().handle()
        finally:
            server.connections.discard(self)
            if not server.connections:
                server.all_closed.set()

    def read_requestline(self):
        # A new connection gets the request timeout for its first byte, a kept-alive one the idle
        # timeout: connecting and sending nothing must not hold a descriptor for the idle timeout.
        options = self.server.options
        self.idle = True
        self.deadline = time.monotonic() + (options.idle_timeout if self.requests_served
                                            else options.request_timeout)
        try:
            if not self.rfile.peek(1):
                return ''
        except (OSError, ValueError):
            return ''
        finally:
            self.idle = False
        self.deadline = time.monotonic() + options.request_timeout
        return super().read_requestline()

    def handle_one_request(self):
        result = super().handle_one_request()
        if isinstance(result, tuple) and result[0] == '414':
            return self._refuse('414', _URI_TOO_LONG)
        return result

    def _refuse(self, status, response):
        """Answer a request that never reached the app, then close without a reset (see _drop_input)."""
        self.close_connection = True
        try:
            self.socket.sendall(response)
        except OSError:
            return None
        self.status = status
        self.response_length = len(response)
        self.time_finish = time.time()
        self.log_request()
        self._drop_input()
        return None

    def read_request(self, raw_requestline):
        super().read_request(raw_requestline)
        if self.request_version == 'HTTP/0.9':
            raise ValueError('HTTP/0.9 request')
        return True

    def MessageClass(self, rfile, *_):
        return Headers(rfile)

    def _headers(self):
        return self.headers.environ

    def handle_one_response(self):
        server = self.server
        if not self._read_body(server.options.max_body):
            return
        self.deadline = NEVER
        super().handle_one_response()
        self.requests_served += 1
        if self.linger:
            self._drop_input()
            return
        server.served += 1
        if server.served >= FAIRNESS_BUDGET:
            server.served = 0
            gevent.sleep(0)

    def _read_body(self, limit):
        """Read the body under the request deadline; past `limit`, read no more and close after."""
        length = self.content_length
        environ = self.environ
        if length is not None and length > limit:
            body = b''
            self.close_connection = self.linger = True
        else:
            try:
                body = self.wsgi_input.read(limit + 1 if length is None else length)
            except (OSError, ValueError) as error:
                log.info('bad request body from %s: %s', self.client_address, error)
                self._refuse('400', _BAD_REQUEST)
                return False
            if len(body) > limit:
                self.close_connection = self.linger = True
            if length is None:
                environ['CONTENT_LENGTH'] = str(len(body))
        self.wsgi_input = environ['wsgi.input'] = _Body(body)
        return True

    def _drop_input(self):
        """Lingering close: closing a socket with unread input sends a reset, which can destroy the
        answer before the client reads it; so stop sending, and read and drop for up to LINGER s."""
        self.deadline = time.monotonic() + LINGER
        try:
            self.socket.shutdown(socket.SHUT_WR)
            while self.socket.recv(65536):
                pass
        except OSError:
            pass

    def start_response(self, status, headers, exc_info=None):
        if self.server.draining and not self.close_connection:
            headers = [*headers, ('Connection', 'close')]
        return super().start_response(status, headers, exc_info)

    def finalize_headers(self):
        if self.provided_date is None:
            self.response_headers.append((b'Date', _Clock.tick().http_date))
            self.provided_date = True
        super().finalize_headers()

    def _write_with_headers(self, data):
        # Performance: head and body in one send (see the module docstring).
        self.headers_sent = True
        self.finalize_headers()
        head = bytearray(b'HTTP/1.1 ')
        head += self.status
        head += b'\r\n'
        for name, value in self.response_headers:
            head += b'%s: %s\r\n' % (name, value)
        head += b'\r\n'
        if self.response_use_chunked:
            self._sendall(head)
            self._write(data)
        else:
            head += data
            self._sendall(head)

    def _sendall(self, data):
        # Performance: gevent's sendall asks the kernel for SO_SNDBUF on every call, one syscall per
        # response for nothing; a single send() takes a whole response almost always.
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as error:
            self.status = f'socket error: {error}'
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def _handle_client_error(self, ex):
        log.info('bad request from %s: %s', self.client_address, ex)
        return self._refuse('400', _BAD_REQUEST)

    def log_request(self):
        stream = self.server.access_log
        if stream is None:
            return
        status = self.status
        code = status.split(' ', 1)[0] if isinstance(status, str) else status[:3].decode()
        path = getattr(self, 'path', None) or '-'
        if not path.isprintable():
            path = ascii(path)
        duration = ((self.time_finish or time.time()) - self.time_start) * 1000
        stream.write(f'{_Clock.tick().log_time} {self.client_address[0]} {getattr(self, "command", None) or "-"} '
                     f'{path} {code} {self.response_length} {duration:.2f}ms\n')

    def input_pending(self):
        """Whether the client has sent bytes not yet read (a request racing the drain)."""
        try:
            return self.socket._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b''
        except BlockingIOError:
            return False
        except OSError:
            return False

    def abort(self):
        """Close the connection under its greenlet: a blocked read wakes up to end of file."""
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass


class Server(pywsgi.WSGIServer):
    handler_class = Handler
    # gevent accepts at most 100 connections per loop turn: in a storm of 10,000 the listen queue
    # stayed full for 12 s; accepting them all at once emptied it in 2 s at the same request rate.
    max_accept = 10000

    def __init__(self, listener, application, options):
        super().__init__(listener, application, log=None, error_log=log)
        self.options = options
        self.access_log = sys.stderr if options.access_log else None
        self.connections = set()
        self.all_closed = Event()
        self.draining = False
        self.forced = False
        self.served = 0
        self.fd_exhausted = 0
        self.fd_reported_at = -FD_REPORT_PERIOD
        self._reaper = None

    def start(self):
        super().start()
        self._reaper = gevent.spawn(self._reap)

    def handle(self, sock, address):
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)

    def do_read(self):
        try:
            return super().do_read()
        except OSError as error:
            if error.errno not in _FD_EXHAUSTED:
                raise
            self._report_fd_exhausted(error)
            self.stop_accepting()
            self._timer = self.loop.timer(ACCEPT_RETRY)
            self._timer.start(self._start_accepting_if_started)
            return None

    def _report_fd_exhausted(self, error):
        """Warn at most once per FD_REPORT_PERIOD: under overload accept fails many times a second."""
        self.fd_exhausted += 1
        now = time.monotonic()
        if now - self.fd_reported_at >= FD_REPORT_PERIOD:
            log.warning('accept: %s (%d time(s) since the last report); existing connections are '
                        'served, new ones wait in the listen queue', error.strerror, self.fd_exhausted)
            self.fd_reported_at, self.fd_exhausted = now, 0

    def _reap(self):
        options = self.options
        tick = min(1.0, options.idle_timeout / 4, options.request_timeout / 4)
        while True:
            gevent.sleep(tick)
            now = time.monotonic()
            for handler in list(self.connections):
                if handler.deadline < now:
                    handler.abort()

    def drain(self, timeout):
        """Stop accepting and let in-flight requests finish; True when none were cut off.

        Two races lose a request that a client has already sent, and a client (nginx among them)
        never sends a POST twice:
        - closing the listening socket resets every connection still in its accept queue, whose
          request is usually written already: so the queue is accepted first, and its requests
          served, in the same loop turn as the close;
        - closing an idle kept-alive connection races the client writing its next request into
          it: so an idle connection is only closed once it has been idle DRAIN_IDLE s, longer
          than nginx keeps an idle upstream connection in the deploy's configuration (nginx
          then closes first); a new connection (`requests_served` 0) may be a moment from its
          first request and is never closed early.
        """
        self.draining = True
        self._do_read()
        self.close()
        deadline = time.monotonic() + timeout
        gevent.sleep(0)  # the connections just accepted register themselves
        while self.connections and not self.forced and time.monotonic() < deadline:
            idle_since = time.monotonic() - DRAIN_IDLE + self.options.idle_timeout
            for handler in list(self.connections):
                if handler.idle and handler.requests_served and handler.deadline <= idle_since \
                        and not handler.input_pending():
                    handler.abort()
            self.all_closed.clear()
            if self.connections:
                self.all_closed.wait(0.05)
        left = len(self.connections)
        if left:
            log.warning('drain: %d connection(s) cut off', left)
        if self._reaper is not None:
            self._reaper.kill(block=False)
        return left == 0

    def force_stop(self):
        self.forced = True
        self.all_closed.set()


def listen(host, port):
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def serve(app, listener, options, parent_pid=None):
    """Serve in this process until SIGTERM/SIGINT (or the parent's death); return the exit code."""
    server = Server(listener, app, options)
    stop = Event()

    def on_signal():
        if stop.is_set():
            server.force_stop()
        stop.set()

    handlers = [gevent.signal_handler(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)]
    if parent_pid is not None:
        gevent.spawn(_watch_parent, parent_pid, stop)
    server.start()
    stop.wait()
    log.info('pid %d: draining %d connection(s), %.0f s at most', os.getpid(), len(server.connections),
             options.drain_timeout)
    clean = server.drain(options.drain_timeout)
    for handler in handlers:
        handler.cancel()
    log.info('pid %d: stopped', os.getpid())
    return 0 if clean else 1


def _watch_parent(parent_pid, stop):
    """A worker must not outlive its master: Supervisor only knows the master."""
    while os.getppid() == parent_pid:
        gevent.sleep(1)
    stop.set()


def run_workers(app, listener, options):
    """Fork `options.workers` processes on one listening socket and replace any that dies.

    The master binds before forking so all workers share one accept queue: a worker's death loses
    no queued connection. On SIGTERM/SIGINT the master forwards the signal and waits for them all.
    """
    master_pid = os.getpid()
    workers = {}
    stopping = False
    handlers = []

    def start_worker():
        pid = os.fork()
        if pid == 0:
            for handler in handlers:
                handler.cancel()
            code = 1
            try:
                code = serve(app, listener, options, parent_pid=master_pid)
            finally:
                os._exit(code)
        workers[pid] = time.monotonic()
        return pid

    def on_signal(signum):
        nonlocal stopping
        stopping = True
        listener.close()
        for pid in list(workers):
            _kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        handlers.append(gevent.signal_handler(signum, on_signal, signum))
    for _ in range(options.workers):
        start_worker()
    log.info('master pid %d: %d workers %s', master_pid, len(workers), sorted(workers))
    failures = 0
    while workers:
        pid, status = os.waitpid(-1, 0)
        started = workers.pop(pid, None)
        if started is None:
            continue  # gevent's waitpid(-1) may report an already reaped child once more
        if stopping:
            failures += bool(os.waitstatus_to_exitcode(status))
            continue
        log.error('worker pid %d died (%s); starting another', pid, _describe_status(status))
        if time.monotonic() - started < 1:
            gevent.sleep(1)  # a worker that dies at once would otherwise be restarted in a tight loop
        if not stopping:
            start_worker()
    return 1 if failures else 0


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_status(status):
    if os.WIFSIGNALED(status):
        return f'signal {signal.Signals(os.WTERMSIG(status)).name}'
    return f'exit code {os.waitstatus_to_exitcode(status)}'

