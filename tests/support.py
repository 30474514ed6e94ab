"""What the framework tests share besides fixtures: paths, raw HTTP, polling, product folders, ports.

Test modules import these from here (`from support import exchange`), never from conftest: with a
second conftest in tests/deploy, `import conftest` would be ambiguous.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from apiphant.test import client

TESTS = Path(__file__).parent
ROOT = TESTS.parent
EXAMPLE = ROOT / 'example' / 'myproduct'
KITCHEN = TESTS / 'kitchen' / 'kitchen'


def make_product(root, name, files):
    """Write a product package under `root` from {relative path: source}; return its folder."""
    folder = Path(root) / name
    for package in ('', 'api'):
        (folder / package).mkdir(parents=True, exist_ok=True)
        (folder / package / '__init__.py').touch()
    for relative, source in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return folder


def run_cli(*args, timeout=30, env=None):
    """Run `apiphant ARGS` to its end (for the calls that must exit by themselves); `env`: variables
    added to this process's environment."""
    return subprocess.run([sys.executable, '-m', 'apiphant', *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def http_request(method='POST', path='/', body=b'', headers=(), framing='content-length',
                 version='HTTP/1.1', host='test'):
    """The bytes of one HTTP request, built from its parts.

    `body`: bytes or str (sent as UTF-8). `headers`: (name, value) pairs, sent in order after `Host:
    host` (None: no Host); a str alone is sent as a whole line, for the malformed ones. `framing`:
    'content-length' adds the body's Content-Length; 'chunked' adds `Transfer-Encoding: chunked` and
    sends `body` (bytes, or a list of chunks) chunk by chunk; None sends `body` as it is, framed
    only by the headers given.
    `version` None leaves the protocol out of the request line (HTTP/0.9).
    """
    chunks = [_bytes(chunk) for chunk in (body if isinstance(body, list) else [body])]
    body = b''.join(chunks)
    lines = [b' '.join(_bytes(part) for part in (method, path, version) if part is not None)]
    fields = ([('Host', host)] if host is not None else []) + list(headers)
    if framing == 'content-length':
        fields.append(('Content-Length', len(body)))
    elif framing == 'chunked':
        fields.append(('Transfer-Encoding', 'chunked'))
        body = b''.join(b'%x\r\n%s\r\n' % (len(chunk), chunk) for chunk in chunks if chunk) + b'0\r\n\r\n'
    elif framing is not None:
        raise ValueError(f'framing {framing!r}: content-length, chunked or None')
    lines += [_bytes(field) if isinstance(field, str) else b'%s: %s' % tuple(map(_bytes, field))
              for field in fields]
    return b'\r\n'.join(lines) + b'\r\n\r\n' + body


def held_request(gate, tag):
    """A kitchen request whose action logs `in flight: TAG`, then runs until the file `gate` exists
    (60 s at most) and answers {"released": true}: the test, not a timer, decides when it ends."""
    return http_request('POST', '/api/v0/process/update', json.dumps({'seconds': 60, 'tag': tag, 'until': str(gate)}))


def _bytes(part):
    return part if isinstance(part, bytes) else str(part).encode()


@dataclass
class Answer:
    """One HTTP answer, parsed: `headers` by lower-case name (the last of a repeated one); `size`
    counts its bytes on the wire."""

    status: int
    reason: str
    headers: dict
    body: bytes
    size: int

    def json(self):
        return json.loads(self.body)


class Connection:
    """One client connection over a raw socket: send any bytes, read back parsed answers.

    Raw on purpose: it sends what a test built, malformed or not, and reads the answer by HTTP's own
    framing (Content-Length, chunked, or up to the close), knowing nothing of the server under test.
    """

    def __init__(self, port, host='127.0.0.1', timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.received = b''
        self.consumed = 0  # bytes of answers read so far

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, *requests):
        """Send the requests at once (pipelined when several)."""
        self.sock.sendall(b''.join(requests))

    def answer(self, head=False):
        """Read the next whole answer; `head`: it answers a HEAD, so it has no body whatever it says."""
        start = self.consumed
        status_line, *lines = self._until(b'\r\n\r\n', 'the head of an answer').decode('latin-1').split('\r\n')
        _, status, reason = (status_line.split(' ', 2) + [''])[:3]
        headers = {}
        for line in lines:
            name, _, value = line.partition(':')
            headers[name.strip().lower()] = value.strip()
        status = int(status)
        if head or status in (204, 304) or status < 200:
            body = b''
        elif headers.get('transfer-encoding', '').lower() == 'chunked':
            body = self._chunked()
        elif 'content-length' in headers:
            body = self._take(int(headers['content-length']), 'the body')
        else:
            while self._receive():
                pass
            body = self._take(len(self.received), 'the body')
        return Answer(status, reason, headers, body, self.consumed - start)

    def closes(self):
        """Whether the server closes the connection (within the timeout) without sending more."""
        try:
            data = self.received or self.sock.recv(65536)
        except TimeoutError:
            return False
        assert data == b'', f'expected a close, got {data[:300]!r}'
        return True

    def _receive(self):
        data = self.sock.recv(65536)
        self.received += data
        return data

    def _more(self, what):
        if not self._receive():
            raise ConnectionError(f'the server closed the connection before {what}: {self.received[:300]!r}')

    def _take(self, size, what):
        while len(self.received) < size:
            self._more(what)
        data, self.received = self.received[:size], self.received[size:]
        self.consumed += size
        return data

    def _until(self, end, what):
        """The bytes up to `end`, which is read and dropped."""
        while end not in self.received:
            self._more(what)
        return self._take(self.received.index(end) + len(end), what)[:-len(end)]

    def _chunked(self):
        chunks = []
        while True:
            size = int(self._until(b'\r\n', 'a chunk size').split(b';')[0], 16)
            if not size:
                while self._until(b'\r\n', 'the end of the trailers'):
                    pass
                return b''.join(chunks)
            chunks.append(self._take(size, 'a chunk'))
            self._take(2, 'the end of a chunk')


def exchange(port, request, head=False, host='127.0.0.1', timeout=10):
    """Send one request (bytes) on a new connection and return its parsed answer."""
    with Connection(port, host, timeout) as connection:
        connection.send(request)
        return connection.answer(head)


def children(pid):
    """The pids whose parent is `pid`, from /proc."""
    found = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _sockets(pids):
    """The inodes of the sockets these processes hold, from /proc."""
    sockets = set()
    for pid in pids:
        try:
            descriptors = list(Path(f'/proc/{pid}/fd').iterdir())
        except OSError:
            continue  # (it has just exited)
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target.startswith('socket:['):
                sockets.add(target[len('socket:['):-1])
    return sockets


def _tcp_sockets(tables=('/proc/net/tcp', '/proc/net/tcp6')):
    """(local port, remote port, state, inode) of every TCP socket, from /proc."""
    for table in tables:
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            yield (int(fields[1].rsplit(':', 1)[1], 16), int(fields[2].rsplit(':', 1)[1], 16), fields[3],
                   fields[9])


def listening_ports(pids):
    """The TCP ports on which these processes hold a listening socket, from /proc.

    A port a test chose free may be taken by another process before its server binds it: a port
    listed here is the server's own, not merely one that accepts."""
    sockets = _sockets(pids)
    return {local for local, _, state, inode in _tcp_sockets() if state == '0A' and inode in sockets}  # (0A: LISTEN)


def connected_ports(pid, remote_port):
    """The local ports of the process's established IPv4 TCP connections to `remote_port`."""
    sockets = _sockets([pid])
    return {local for local, remote, state, inode in _tcp_sockets(['/proc/net/tcp'])
            if state == '01' and remote == remote_port and inode in sockets}  # (01: ESTABLISHED)


def wait_for(check, timeout=30.0, interval=0.02, until=bool):
    """Call check() until until(its result) holds (by default: until the result is true) and return
    that result; fail after `timeout` seconds, showing the last result. For states no port shows, and
    for what a deploy sets off but does not wait for, such as nginx's workers taking up a reloaded
    configuration. Both test trees use it (tests/deploy imports it from here too).

    The timeout only bounds a test that fails: generous, as a loaded CI machine is several times slower."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {check}; it last gave {result!r:.500}')
        time.sleep(interval)


def log_has(server, text):
    return any(text in line for line in list(server.log))


IN_PROCESS_OR_LIVE = ['in process', 'live']


def in_process_or_live(request, product, server_fixture):
    """For a fixture parametrized with IN_PROCESS_OR_LIVE: a `with` block in which `config` points at
    the product's app in this process, or at the real server that the fixture `server_fixture` runs."""
    if request.param == 'in process':
        return client(product, raise_server_exceptions=False)
    return request.getfixturevalue(server_fixture).use()
