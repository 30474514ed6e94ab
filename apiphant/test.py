"""Functional tests of a product over real HTTP: `test(target, action, request, status, response)`.

Standard library HTTP only, so product tests need nothing beyond apiphant. `serve()` starts a real
`apiphant` server on a free loopback port for the length of a `with` block (or a pytest fixture)
and points `config` at it.
"""

import http.client
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import ujson

from apiphant.app import encode

START_TIMEOUT = 30.0
_SERVING = re.compile(r'on (http://\S+?)/api/')


@dataclass
class Config:
    host: str = '127.0.0.1'
    port: int = 8001
    version: str = 'v0'
    timeout: float = 30.0

    def url(self, target, action):
        """APIPHANT_URL (e.g. http://10.0.0.5/api/v0), when set, wins over host, port and version."""
        base = os.environ.get('APIPHANT_URL') or self.base_url()
        return f'{base.rstrip("/")}/{target.strip("/")}/{action}'

    def base_url(self):
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'http://{host}:{self.port}/api/{self.version}'


config = Config()


def call(target, action, request=None, method='POST', headers=None):
    """Send one request; return (status, body), the body decoded from JSON where it is JSON."""
    url = config.url(target, action)
    parts = urlsplit(url)
    if isinstance(request, (dict, list)):
        data = encode(request)
    elif isinstance(request, str):
        data = request.encode()
    else:
        data = request or b''
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=config.timeout)
    try:
        connection.request(method, parts.path, body=data, headers=headers or {})
        reply = connection.getresponse()
        status, raw = reply.status, reply.read()
    finally:
        connection.close()
    try:
        body = ujson.loads(raw)
    except ValueError:
        body = raw.decode('utf-8', 'replace')
    return status, body


def test(target, action, request=None, status=200, response=None, method='POST'):
    """Call the API, print the exchange, assert `status` (and `response` unless None); return body."""
    got_status, got = call(target, action, request, method)
    shown = request if isinstance(request, (bytes, str)) else encode(request or {}).decode()
    print(f'{method} {config.url(target, action)} {shown} --> {got_status} {got!r}')
    if got_status != status or (response is not None and got != response):
        raise AssertionError(f'{method} {target}/{action}: expected {status} {response!r}, '
                             f'got {got_status} {got!r}')
    return got


test.__test__ = False  # pytest: a helper, not a test to collect


@dataclass
class RunningServer:
    process: subprocess.Popen
    url: str
    log: list

    @property
    def host(self):
        return urlsplit(self.url).hostname

    @property
    def port(self):
        return urlsplit(self.url).port

    @contextmanager
    def use(self):
        """Point `config` at this server for a `with` block (when several servers run at once)."""
        saved = (config.host, config.port)
        config.host, config.port = self.host, self.port
        try:
            yield self
        finally:
            config.host, config.port = saved


@contextmanager
def serve(product, *args, host='127.0.0.1', env=None):
    """Run `apiphant product host:0 *args`, wait for its start-up line, point `config` at it.

    The server's stderr is collected in `.log` (a list of lines) by a reader thread, so a busy
    access log never blocks it. On exit the server gets SIGTERM and must stop.
    """
    listen = f'[{host}]:0' if ':' in host else f'{host}:0'
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
