"""Driving wrk (pinned to its own CPU) with post.lua, and reading its summary."""

import os
import re
import subprocess
from dataclasses import dataclass

from contenders import HERE, LOAD_CPU, pinned, prepare_child

PATH = '/api/v0/echo/read'


@dataclass
class Result:
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    cpu_us_per_request: float = float('nan')  # filled in by the caller, which watches the server


def command(port, connections, seconds, timeout, pin, path=PATH):
    line = ['wrk', '-t1', f'-c{connections}', f'-d{seconds}s', f'--timeout={timeout}', '--latency',
            '-s', str(HERE / 'post.lua'), f'http://127.0.0.1:{port}{path}']
    return pinned(line, LOAD_CPU) if pin else line


def start(port, connections, seconds, timeout='2s', pin=True, path=PATH, body=None):
    """wrk in the background (the caller polls the server meanwhile); read it with `finish`.
    `path` and `body` (JSON text): what each request posts, else the echo."""
    environment = {**os.environ, 'BENCHMARK_BODY': body} if body is not None else None
    return subprocess.Popen(command(port, connections, seconds, timeout, pin, path), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, preexec_fn=prepare_child, env=environment)


def finish(load, seconds):
    """Wait for wrk (bounded: its duration plus a minute), kill it if it overstays, parse its summary."""
    try:
        output, _ = load.communicate(timeout=seconds + 60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    return parse(output)


def run(port, connections, seconds, pin=True, path=PATH, body=None):
    return finish(start(port, connections, seconds, pin=pin, path=path, body=body), seconds)


def parse(output):
    def millis(label):
        match = re.search(rf'^\s*{label}\s+([\d.]+)(us|ms|s)\s*$', output, re.M)
        if not match:
            return float('nan')
        return float(match.group(1)) * {'us': 0.001, 'ms': 1, 's': 1000}[match.group(2)]

    def number(pattern):
        match = re.search(pattern, output)
        return float(match.group(1)) if match else 0

    errors = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', output)
    return Result(requests=int(number(r'(\d+) requests in')),
                  requests_per_second=number(r'Requests/sec:\s+([\d.]+)'),
                  p50_ms=millis('50%'), p99_ms=millis('99%'),
                  socket_errors=sum(map(int, errors.groups())) if errors else 0,
                  non_2xx=int(number(r'Non-2xx or 3xx responses: (\d+)')))
