"""The listening socket: accepting, deadlines, running out of descriptors, the SIGTERM drain.

One greenlet per connection (apiphant.connection), so a product's blocking libraries, patched by
gevent, wait without holding anyone else up. Besides that:
- one reaper greenlet checks every connection's deadline once a tick, so a request costs two float
  stores instead of a timer;
- accept failing for lack of file descriptors pauses accepting for ACCEPT_RETRY s (the kernel queues
  new connections meanwhile) and is logged at most once per FD_REPORT_PERIOD s, never fatal;
- SIGTERM drains (see Server.drain), and the health path (apiphant.health) answers 503 from then
  on; the signal handlers are in place before the start-up line is
  logged, so a signal sent as soon as the server says it serves is a drain, not a death that resets
  every queued connection.
"""

import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import gevent
from gevent.event import Event

from apiphant import health, logs
from apiphant.connection import Connection, State, base_environ
from apiphant.errors import MAX_BODY
from apiphant.requestid import Generator

log = logging.getLogger('apiphant')

BACKLOG = 65535  # the kernel caps it at net.core.somaxconn
ACCEPT_BATCH = 1000  # connections accepted before the accepting greenlet lets the others run
ACCEPT_RETRY = 0.1
FD_REPORT_PERIOD = 10.0
DRAIN_IDLE = 2.0  # see Server.drain; the deploy's nginx drops idle upstream connections after 1 s
_FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass
class Options:
    max_body: int = MAX_BODY
    idle_timeout: float = 75.0  # longer than nginx's upstream keepalive_timeout (default 60 s): nginx closes first
    request_timeout: float = 30.0
    drain_timeout: float = 10.0
    access_log: bool = True
    workers: int = 1
    log_format: str = 'text'
    health_path: str = health.DEFAULT_PATH
    health_check: Callable | None = None  # the product's readiness check (apiphant.health)
    metrics: Callable | None = None  # Server -> its metrics (apiphant.metrics.Metrics), with --metrics


class Server:
    def __init__(self, listener, app, options):
        self.listener = listener
        self.options = options
        self.tcp = listener.family != socket.AF_UNIX
        self.connections = set()
        self.all_closed = Event()
        self.forced = False
        self.fd_exhausted = 0
        self.fd_reported_at = -FD_REPORT_PERIOD
        self._acceptor = None
        self._reaper = None
        self.state = State(
            app, base_environ(listener, options.workers > 1),
            # Paths the server answers itself, before the app: never a route of the product.
            endpoints={options.health_path: health.Health(self, options.health_check)},
            max_body=options.max_body, request_timeout=options.request_timeout,
            idle_timeout=options.idle_timeout, access_log=sys.stderr if options.access_log else None,
            access_line=logs.ACCESS_LINES[options.log_format],
            request_ids=Generator(),  # (made in each worker: see Generator)
            forget=self.forget)
        self.metrics = options.metrics(self) if options.metrics else None
        if self.metrics is not None:
            self.state.metrics = self.metrics
            self.state.endpoints[self.metrics.path] = self.metrics

    @property
    def draining(self):
        return self.state.draining

    @property
    def in_flight(self):
        return self.state.in_flight

    def start(self):
        self._acceptor = gevent.spawn(self._accept_forever)
        self._reaper = gevent.spawn(self._reap)
        if self.metrics is not None:
            self.metrics.start()

    def _accept_forever(self):
        accepted = 0
        while True:
            try:
                sock, address = self.listener.accept()
            except OSError as error:
                if error.errno not in _FD_EXHAUSTED:
                    if error.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                        continue
                    raise
                self._report_fd_exhausted(error)
                gevent.sleep(ACCEPT_RETRY)
                continue
            self._start(sock, address)
            accepted += 1
            if accepted >= ACCEPT_BATCH:
                accepted = 0
                gevent.sleep(0)

    def _start(self, sock, address):
        """Count the connection at once (a drain must see it before its greenlet has run), then serve."""
        if self.tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(sock, address, self.state)
        self.connections.add(connection)
        gevent.spawn(connection.run)

    def forget(self, connection):
        self.connections.discard(connection)
        if not self.connections:
            self.all_closed.set()

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
            for connection in list(self.connections):
                if connection.deadline < now:
                    connection.abort()

    def _accept_queued(self):
        """Accept, without waiting, every connection the kernel has completed (see `drain`)."""
        self.listener.settimeout(0)
        while True:
            try:
                sock, address = self.listener.accept()
            except OSError:
                return  # empty (EAGAIN), or out of descriptors: nothing more can be taken
            self._start(sock, address)

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
          then closes first); a new connection (no request served yet) may be a moment from its
          first request and is never closed early.
        """
        self.state.draining = True
        self._acceptor.kill()  # (its accept must not meet the closed listener)
        self._accept_queued()
        self.listener.close()
        deadline = time.monotonic() + timeout
        while self.connections and not self.forced and time.monotonic() < deadline:
            idle_before = time.monotonic() - DRAIN_IDLE
            for connection in list(self.connections):
                if connection.requests_served and connection.idle_since is not None \
                        and connection.idle_since <= idle_before and not connection.input_pending():
                    connection.abort()
            self.all_closed.clear()
            if self.connections:
                self.all_closed.wait(0.05)
        left = len(self.connections)
        if left:
            log.warning('drain: %d connection(s) cut off', left)
        self._reaper.kill(block=False)
        if self.metrics is not None:
            self.metrics.stop()
        return left == 0

    def force_stop(self):
        self.forced = True
        self.all_closed.set()


def __getattr__(name):
    """`from apiphant.server import raw_environ` (as 0.3 documented) still works, imported only
    when asked for: the server itself imports nothing of the framework."""
    if name in ('raw_environ', 'raw_response'):
        from apiphant import routes
        return getattr(routes, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def listen(host, port):
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def on_stop_signals(callback, *args):
    """Call `callback(*args, signum)` on SIGTERM and SIGINT; returns the handlers, to cancel."""
    return [gevent.signal_handler(signum, callback, *args, signum) for signum in (signal.SIGTERM, signal.SIGINT)]


def serve(app, listener, options, started_message='', parent_pid=None):
    """Serve in this process until SIGTERM/SIGINT (or the parent's death); return the exit code.

    `started_message` is logged once the signals are handled and the server accepts."""
    server = Server(listener, app, options)
    stop = Event()

    def on_signal(_signum):
        if stop.is_set():
            server.force_stop()
        stop.set()

    handlers = on_stop_signals(on_signal)
    if parent_pid is not None:
        gevent.spawn(_watch_parent, parent_pid, stop)
    server.start()
    if started_message:
        logs.start.info('%s', started_message)
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
