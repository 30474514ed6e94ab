"""Functional tests of a product: `test(target, action, request, status, response)`.

The same `test()` and `call()` run against either of two things, chosen by `config`:
- `client(product)` calls the product's WSGI app in this process: no socket, no server, so a test
  takes well under a millisecond, and an action's exception is raised in the test itself, as
  Starlette's TestClient does (`raise_server_exceptions=False` answers it with the 500 instead);
- `serve(product)` starts a real `apiphant` server on a free loopback port, for what only a server
  shows (timeouts, limits, the wire format); APIPHANT_URL points the tests at a deployed one.
Standard library only, so product tests need nothing beyond apiphant.
"""

import http.client
import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import urlsplit
from wsgiref.util import setup_testing_defaults

import ujson

from apiphant import lifespan, routes
from apiphant.app import MAX_BODY, RAISE_EXCEPTIONS, App, encode

START_TIMEOUT = 30.0
_SERVING = re.compile(r'on (http://\S+?)/api/')


@dataclass
class Config:
    host: str = '127.0.0.1'
    port: int = 8001
    version: str = 'v0'
    timeout: float = 30.0
    app: object = None  # a WSGI app to call in this process instead of HTTP (see `client`)
    raise_server_exceptions: bool = True  # in process: an action's exception reaches the test

    def url(self, target, action):
        """APIPHANT_URL (e.g. http://10.0.0.5/api/v0), when set, wins over host, port and version."""
        base = os.environ.get('APIPHANT_URL') or self.base_url()
        return f'{base.rstrip("/")}/{target.strip("/")}/{action}'

    def base_url(self):
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'http://{host}:{self.port}/api/{self.version}'


config = Config()


class Reply(tuple):
    """`(status, body)`, as `status, body = call(...)` unpacks it, with the answer's `headers`
    (an http.client.HTTPMessage: `reply.headers['content-type']`, any case)."""

    headers: Message

    def __new__(cls, status: int, body: Any, headers: Message) -> 'Reply':
        reply = super().__new__(cls, (status, body))
        reply.headers = headers
        return reply

    @property
    def status(self) -> int:
        return self[0]  # type: ignore[no-any-return]

    @property
    def body(self) -> Any:
        return self[1]


def call(target: str, action: str, request: Any = None, method: str = 'POST',
         headers: Mapping[str, str] | None = None) -> Reply:
    """Send one request with `headers` ({name: value}) added; return a Reply: (status, body), the
    body decoded from JSON where it is JSON, and `.headers`."""
    url = config.url(target, action)
    if isinstance(request, (dict, list)):
        data = encode(request)
    elif isinstance(request, str):
        data = request.encode()
    else:
        data = request or b''
    if _in_process():
        status, answer_headers, raw = _call_in_process(config.app, method, urlsplit(url).path, data, headers or {})
    else:
        status, answer_headers, raw = _call_over_http(url, method, data, headers or {})
    try:
        body = ujson.loads(raw)
    except ValueError:
        body = raw.decode('utf-8', 'replace')
    return Reply(status, body, answer_headers)


def test(target: str, action: str, request: Any = None, status: int = 200, response: Any = None,
         method: str = 'POST', headers: Mapping[str, str] | None = None,
         response_headers: Mapping[str, str] | None = None) -> Any:
    """Call the API, print the exchange, assert `status` (and `response` unless None, and each of
    `response_headers`, {name: value}); return the body. `headers` are added to the request."""
    reply = call(target, action, request, method, headers)
    got_status, got = reply
    shown = request if isinstance(request, (bytes, str)) else encode(request or {}).decode()
    url = config.url(target, action)
    where = f'{urlsplit(url).path} (in process)' if _in_process() else url
    print(f'{method} {where} {shown} --> {got_status} {got!r}')
    if got_status != status or (response is not None and got != response):
        raise AssertionError(f'{method} {target}/{action}: expected {status} {response!r}, '
                             f'got {got_status} {got!r}')
    for name, value in (response_headers or {}).items():
        if reply.headers.get(name) != value:
            raise AssertionError(f'{method} {target}/{action}: expected the header {name}: {value!r}, '
                                 f'got {reply.headers.get(name)!r}')
    return got


test.__test__ = False  # type: ignore[attr-defined]  # pytest: a helper, not a test to collect


def _in_process():
    return config.app is not None and not os.environ.get('APIPHANT_URL')


def _call_over_http(url, method, data, headers):
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=config.timeout)
    try:
        connection.request(method, parts.path, body=data, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.headers, reply.read()
    finally:
        connection.close()


def _call_in_process(app, method, path, data, headers):
    """One WSGI call with the environ a server would build for this request."""
    environ = {'REQUEST_METHOD': method, 'PATH_INFO': path, 'CONTENT_LENGTH': str(len(data)),
               'wsgi.input': io.BytesIO(data), 'SERVER_PROTOCOL': 'HTTP/1.1',
               RAISE_EXCEPTIONS: config.raise_server_exceptions}
    for name, value in headers.items():
        key = name.upper().replace('-', '_')
        environ[key if key in ('CONTENT_TYPE', 'CONTENT_LENGTH') else f'HTTP_{key}'] = value
    setup_testing_defaults(environ)
    started = []

    def start_response(status, response_headers, exc_info=None):
        started[:] = [status, response_headers]
        return body.append

    body = []
    chunks = app(environ, start_response)
    try:
        body.extend(chunks)
    finally:
        if hasattr(chunks, 'close'):
            chunks.close()
    answer_headers = http.client.HTTPMessage()
    for name, value in started[1]:
        answer_headers[name] = value  # (adds: a repeated header stays repeated)
    return int(started[0].split()[0]), answer_headers, b''.join(body)


@contextmanager
def client(product: str | os.PathLike[str], max_body: int = MAX_BODY,
           raise_server_exceptions: bool = True) -> Iterator[App]:
    """Point `config` at the product's WSGI app, called in this process, for a `with` block.

    The product is loaded as `apiphant PRODUCT` loads it (same routes, same import errors), but
    without gevent's monkey-patching: actions run as plain Python, under the test's own thread.
    Its api/lifespan.py runs around the block: start-up on entry, shutdown on the way out. An
    exception an action raises (other than ApiError) is raised by `call()` and `test()`, its
    traceback in the test's failure; `raise_server_exceptions=False` answers it with the 500 a
    server would, to test that answer.
    """
    folder = routes.locate(str(product))
    app = App(routes.discover(folder), max_body=max_body)
    saved = config.app, config.raise_server_exceptions
    with lifespan.load(folder):
        config.app, config.raise_server_exceptions = app, raise_server_exceptions
        try:
            yield app
        finally:
            config.app, config.raise_server_exceptions = saved


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    url: str
    log: list[str]

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ''

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0

    @contextmanager
    def use(self) -> Iterator['RunningServer']:
        """Point `config` at this server for a `with` block (when several servers run at once)."""
        saved = (config.host, config.port, config.app)
        config.host, config.port, config.app = self.host, self.port, None
        try:
            yield self
        finally:
            config.host, config.port, config.app = saved


@contextmanager
def serve(product: str | os.PathLike[str], *args: str, host: str = '127.0.0.1', port: int = 0,
          env: Mapping[str, str] | None = None) -> Iterator[RunningServer]:
    """Run `apiphant product host:port *args`, wait for its start-up line, point `config` at it.

    Port 0 (the default) lets the kernel choose a free port; `--reload` needs a fixed one, as
    every restart would choose anew.

    The server's stderr is collected in `.log` (a list of lines) by a reader thread, so a busy
    access log never blocks it. On exit the server gets SIGTERM and must stop.
    """
    listen = f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
    process = subprocess.Popen([sys.executable, '-m', 'apiphant', str(product), listen, *args],
                               stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    started = threading.Event()
    found = []

    def read():
        for line in process.stderr:
            lines.append(line)
            if not found:
                match = _SERVING.search(line)
                if match:
                    found.append(match.group(1))
                    started.set()
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not started.wait(START_TIMEOUT) or not found:
            raise RuntimeError(f'apiphant did not start: {"".join(lines)}')
        with RunningServer(process, found[0], lines).use() as running:
            yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(5)
