"""The servers under test: how each is started, pinned, measured (RSS, CPU) and stopped."""

import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER_CPU = 0
LOAD_CPU = 1
START_TIMEOUT = 30
STOP_TIMEOUT = 15
_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


@dataclass
class Contender:
    name: str
    command: list  # '{port}' in an argument is replaced by the port it listens on
    pinned: bool = True
    process: subprocess.Popen = None
    port: int = 0
    peak_rss_kib: int = 0
    results: dict = field(default_factory=dict)  # connections -> [wrk.Result, ...]


def everyone():
    python = sys.executable
    apiphant = [python, '-m', 'apiphant', str(ROOT / 'example' / 'myproduct'), '127.0.0.1:{port}']
    return [
        Contender('apiphant', [*apiphant, '--no-access-log']),
        Contender('apiphant, access log', apiphant),
        Contender('bare gevent', [python, str(HERE / 'bare.py'), '{port}']),
        Contender('bare gevent, TCP_NODELAY', [python, str(HERE / 'bare.py'), '{port}', '--nodelay']),
        Contender('falcon', [python, str(HERE / 'falcon_echo.py'), '{port}']),
        Contender('httptools core', [python, str(HERE / 'httptools_echo.py'), '{port}']),
        Contender('uvicorn+httptools', [python, str(HERE / 'uvicorn_echo.py'), '{port}']),
        Contender('granian, apiphant App', ['env', f'APIPHANT_PRODUCT={ROOT / "example" / "myproduct"}', python,
                                            '-m', 'granian', '--interface', 'wsgi', '--host', '127.0.0.1',
                                            '--port', '{port}', '--workers', '1', '--no-ws', '--log-level',
                                            'warning', 'apiphant.wsgi:application']),
    ]


def workers():
    """apiphant with one worker and with two, unpinned: the kernel spreads the workers over CPUs."""
    apiphant = [sys.executable, '-m', 'apiphant', str(ROOT / 'example' / 'myproduct'), '127.0.0.1:{port}',
                '--no-access-log', '--workers']
    return [Contender('apiphant, 1 worker', [*apiphant, '1'], pinned=False),
            Contender('apiphant, 2 workers', [*apiphant, '2'], pinned=False)]


def metrics():
    """apiphant with `--metrics` and without (one worker, pinned): what counting every request costs."""
    apiphant = [sys.executable, '-m', 'apiphant', str(ROOT / 'example' / 'myproduct'), '127.0.0.1:{port}',
                '--no-access-log']
    return [Contender('apiphant', apiphant), Contender('apiphant, metrics', [*apiphant, '--metrics'])]


def pinned(command, cpu):
    """Pin to one CPU where there are two or more, so server and wrk each have their own."""
    if os.cpu_count() >= 2 and shutil.which('taskset'):
        return ['taskset', '-c', str(cpu), *command]
    return command


def lift_fd_limit():
    """Tens of thousands of connections need as many descriptors as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def prepare_child():
    """In every child: the hard fd limit, and death with this process, so a benchmark killed by a
    timeout or SIGKILL leaves no server or wrk behind."""
    lift_fd_limit()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def start(contender, timeout=START_TIMEOUT):
    """Start on a free loopback port and return once it accepts connections."""
    contender.port = free_port()
    command = [part.format(port=contender.port) for part in contender.command]
    if contender.pinned:
        command = pinned(command, SERVER_CPU)
    contender.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=prepare_child)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(('127.0.0.1', contender.port), timeout=1).close()
            return
        except OSError:
            if contender.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f'{contender.name} did not start: {" ".join(command)}') from None
            time.sleep(0.05)


def stop(contender):
    """SIGTERM (apiphant drains), then SIGKILL if it is still there after STOP_TIMEOUT."""
    process = contender.process
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _family(pid):
    """The server's process and its children (apiphant's workers, which do the serving)."""
    with open(f'/proc/{pid}/task/{pid}/children') as children:
        return [pid, *map(int, children.read().split())]


def _status_kib(pid, key):
    total = 0
    for member in _family(pid):
        with open(f'/proc/{member}/status') as status:
            total += next(int(line.split()[1]) for line in status if line.startswith(key))
    return total


def peak_rss_kib(pid):
    """VmHWM: the resident size's high-water mark, so one read at the end finds the peak."""
    return _status_kib(pid, 'VmHWM:')


def rss_kib(pid):
    return _status_kib(pid, 'VmRSS:')


def cpu_seconds(pid):
    """User + system CPU time of the server so far. CPU per request hardly moves when a neighbour
    takes the CPU away, where req/s does: it is the steadier number on a shared machine."""
    total = 0
    for member in _family(pid):
        with open(f'/proc/{member}/stat') as stat:
            fields = stat.read().rsplit(')', 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS
