"""What the framework tests share besides fixtures: paths, raw HTTP, polling, product folders.

Test modules import these from here (`from support import post`), never from conftest: with a
second conftest in tests/deploy, `import conftest` would be ambiguous.
"""

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


def run_cli(*args, timeout=30):
    """Run `apiphant ARGS` to its end (for the calls that must exit by themselves)."""
    return subprocess.run([sys.executable, '-m', 'apiphant', *args], capture_output=True, text=True,
                          timeout=timeout)


def raw_exchange(port, data, host='127.0.0.1', timeout=10):
    """Send raw bytes, return everything the server sends until it closes (or the timeout)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
    return b''.join(chunks)


def post(path, body=b'', headers=()):
    """A well-formed HTTP/1.1 POST that asks the server to close after answering."""
    head = [f'POST {path} HTTP/1.1', 'Host: test', 'Connection: close',
            f'Content-Length: {len(body)}', *headers]
    return ('\r\n'.join(head) + '\r\n\r\n').encode() + body


def wait_for(condition, timeout=10.0, interval=0.02):
    """Poll `condition` until it is true; fail after `timeout` seconds. For states no port shows."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {condition}')
        time.sleep(interval)


def log_has(server, text):
    return any(text in line for line in list(server.log))
