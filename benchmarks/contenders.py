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
    ]


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


def start(contender):
    """Start on a free loopback port and return once it accepts connections."""
    contender.port = free_port()
    command = [part.format(port=contender.port) for part in contender.command]
    contender.process = subprocess.Popen(pinned(command, SERVER_CPU), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=prepare_child)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(('127.0.0.1', contender.port), timeout=1).close()
            return
        except OSError:
            if contender.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f'{contender.name} did not start: {" ".join(command)}')
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


def _status_kib(pid, key):
    with open(f'/proc/{pid}/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))


def peak_rss_kib(pid):
    """VmHWM: the resident size's high-water mark, so one read at the end finds the peak."""
    return _status_kib(pid, 'VmHWM:')


def rss_kib(pid):
    return _status_kib(pid, 'VmRSS:')


def cpu_seconds(pid):
    """User + system CPU time of the server so far. CPU per request hardly moves when a neighbour
    takes the CPU away, where req/s does: it is the steadier number on a shared machine."""
    with open(f'/proc/{pid}/stat') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
