"""apiphant against bare gevent pywsgi and Falcon, side by side in one run, driven by wrk.

    python benchmarks/run.py                     3 interleaved rounds x 10 s at 64 and 256 connections
    python benchmarks/run.py --quick             1 round x 2 s (what the test suite runs)
    python benchmarks/run.py --write             also write benchmarks/RESULTS.md
    python benchmarks/run.py --connections 10000 concurrency mode: hold that many keep-alive
                                                 connections to one apiphant worker and to bare gevent

Each server is pinned to CPU 0 and wrk to CPU 1 (where there are two CPUs), so they do not fight for
one. Only ratios measured in the same run mean anything: the machines are shared and noisy.
"""

import argparse
import datetime
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PATH = '/api/v0/echo/read'


@dataclass
class Contender:
    name: str
    command: list
    process: subprocess.Popen = None
    port: int = 0
    results: dict = field(default_factory=dict)  # connections -> [Result, ...]


@dataclass
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int


def contenders():
    python = sys.executable
    return [
        Contender('apiphant', [python, '-m', 'apiphant', str(ROOT / 'example' / 'myproduct'),
                               '127.0.0.1:{port}', '--no-access-log']),
        Contender('bare gevent', [python, str(HERE / 'bare.py'), '{port}']),
        Contender('bare gevent, TCP_NODELAY', [python, str(HERE / 'bare.py'), '{port}', '--nodelay']),
        Contender('falcon', [python, str(HERE / 'falcon_echo.py'), '{port}']),
    ]


def pinned(command, cpu):
    """Pin to one CPU where there are two or more, so server and wrk each have their own."""
    if os.cpu_count() >= 2 and shutil.which('taskset'):
        return ['taskset', '-c', str(cpu), *command]
    return command


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def lift_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(contender):
    contender.port = free_port()
    command = [part.format(port=contender.port) for part in contender.command]
    contender.process = subprocess.Popen(pinned(command, 0), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=lift_fd_limit)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(('127.0.0.1', contender.port), timeout=1).close()
            return
        except OSError:
            if contender.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f'{contender.name} did not start: {" ".join(command)}')
            time.sleep(0.05)


def stop(contender):
    if contender.process and contender.process.poll() is None:
        contender.process.terminate()
        try:
            contender.process.wait(15)
        except subprocess.TimeoutExpired:
            contender.process.kill()
            contender.process.wait()


def peak_rss_kib(pid):
    """VmHWM: the resident size's high-water mark, so one read at the end finds the peak."""
    with open(f'/proc/{pid}/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmHWM:'))


def wrk(port, connections, seconds, timeout='2s'):
    command = pinned(['wrk', '-t1', f'-c{connections}', f'-d{seconds}s', f'--timeout={timeout}',
                      '--latency', '-s', str(HERE / 'post.lua'), f'http://127.0.0.1:{port}{PATH}'], 1)
    output = subprocess.run(command, capture_output=True, text=True, preexec_fn=lift_fd_limit,
                            timeout=seconds + 60).stdout
    return parse_wrk(output), output


def parse_wrk(output):
    def millis(label):
        match = re.search(rf'^\s*{label}\s+([\d.]+)(us|ms|s)\s*$', output, re.M)
        if not match:
            return float('nan')
        return float(match.group(1)) * {'us': 0.001, 'ms': 1, 's': 1000}[match.group(2)]

    rate = re.search(r'Requests/sec:\s+([\d.]+)', output)
    errors = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', output)
    non_2xx = re.search(r'Non-2xx or 3xx responses: (\d+)', output)
    return Result(float(rate.group(1)) if rate else 0.0, millis('50%'), millis('99%'),
                  sum(map(int, errors.groups())) if errors else 0, int(non_2xx.group(1)) if non_2xx else 0)


def run_rounds(all_contenders, connection_counts, rounds, seconds):
    for round_number in range(1, rounds + 1):
        for connections in connection_counts:
            for contender in all_contenders:  # interleaved: A B C A B C, so drift hits all alike
                result, _ = wrk(contender.port, connections, seconds)
                contender.results.setdefault(connections, []).append(result)
                print(f'round {round_number}  {connections:>4} conns  {contender.name:<26} '
                      f'{result.requests_per_second:>9,.0f} req/s  p99 {result.p99_ms:.1f} ms',
                      file=sys.stderr)


def table(all_contenders, connection_counts):
    lines = ['| contender | conns | req/s (median) | p50 ms | p99 ms | socket errors | non-2xx | peak RSS MiB |',
             '|---|---|---|---|---|---|---|---|']
    medians = {}
    for connections in connection_counts:
        for contender in all_contenders:
            results = contender.results[connections]
            rate = statistics.median(result.requests_per_second for result in results)
            medians[contender.name, connections] = rate
            lines.append(
                f'| {contender.name} | {connections} | {rate:,.0f} '
                f'| {statistics.median(r.p50_ms for r in results):.2f} '
                f'| {statistics.median(r.p99_ms for r in results):.2f} '
                f'| {sum(r.socket_errors for r in results)} | {sum(r.non_2xx for r in results)} '
                f'| {contender.peak_rss / 1024:.1f} |')
    lines += ['', '| ratio (median req/s, same run) | ' + ' | '.join(f'{c} conns' for c in connection_counts) + ' |',
              '|---|' + '---|' * len(connection_counts)]
    for other in ('bare gevent', 'bare gevent, TCP_NODELAY', 'falcon'):
        ratios = [medians['apiphant', c] / medians[other, c] if medians[other, c] else float('nan')
                  for c in connection_counts]
        lines.append(f'| apiphant / {other} | ' + ' | '.join(f'{ratio:.2f}' for ratio in ratios) + ' |')
    return '\n'.join(lines)


def established(port):
    output = subprocess.run(['ss', '-Htn', 'state', 'established', f'( sport = :{port} )'],
                            capture_output=True, text=True).stdout
    return len(output.splitlines())


def concurrency(all_contenders, connections, seconds):
    """Hold `connections` keep-alive connections to each server; count them from the server side."""
    lines = ['| contender | connections asked | established (ss, peak) | socket errors | req/s | p99 ms '
             '| peak RSS MiB | RSS per connection KiB |', '|---|---|---|---|---|---|---|---|']
    for contender in all_contenders:
        baseline = peak_rss_kib(contender.process.pid)
        command = pinned(['wrk', '-t1', f'-c{connections}', f'-d{seconds}s', '--timeout=30s', '--latency',
                          '-s', str(HERE / 'post.lua'), f'http://127.0.0.1:{contender.port}{PATH}'], 1)
        load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=lift_fd_limit)
        peak = 0
        while load.poll() is None:
            peak = max(peak, established(contender.port))
            time.sleep(0.5)
        result = parse_wrk(load.stdout.read())
        rss = peak_rss_kib(contender.process.pid)
        per_connection = (rss - baseline) / peak if peak else float('nan')
        lines.append(f'| {contender.name} | {connections} | {peak} | {result.socket_errors} '
                     f'| {result.requests_per_second:,.0f} | {result.p99_ms:.1f} | {rss / 1024:.1f} '
                     f'| {per_connection:.1f} |')
    return '\n'.join(lines)


def describe_machine():
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor())
    versions = subprocess.run([sys.executable, '-c', 'import apiphant, gevent, ujson, falcon; '
                               'print(f"apiphant {apiphant.__version__}, gevent {gevent.__version__}, '
                               'ujson {ujson.__version__}, falcon {falcon.__version__}")'],
                              capture_output=True, text=True).stdout.strip()
    wrk_version = subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split('\n')[0]
    return (f'{datetime.date.today()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, '
            f'{versions}, {wrk_version.strip()}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='1 round of 2 s: proves the benchmark works')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--seconds', type=int, default=10)
    parser.add_argument('--write', action='store_true', help='write benchmarks/RESULTS.md')
    parser.add_argument('--connections', type=int, help='concurrency mode with this many connections')
    args = parser.parse_args()
    if not shutil.which('wrk'):
        raise SystemExit('wrk is not installed (Debian: apt-get install wrk)')
    rounds, seconds = (1, 2) if args.quick else (args.rounds, args.seconds)
    lift_fd_limit()
    everyone = contenders()
    if args.connections:
        everyone = [everyone[0], everyone[2]]
    try:
        for contender in everyone:
            start(contender)
        if args.connections:
            report = concurrency(everyone, args.connections, max(seconds, 20))
        else:
            counts = [64, 256]
            run_rounds(everyone, counts, rounds, seconds)
            for contender in everyone:
                contender.peak_rss = peak_rss_kib(contender.process.pid)
            report = table(everyone, counts)
    finally:
        for contender in everyone:
            stop(contender)
    header = f'{describe_machine()}\n{rounds} round(s) x {seconds} s, server on CPU 0, wrk on CPU 1'
    print(f'{header}\n\n{report}')
    if args.write:
        (HERE / 'RESULTS.md').write_text(f'# Benchmark results\n\n`python benchmarks/run.py '
                                         f'{" ".join(sys.argv[1:])}`\n\n{header}\n\n{report}\n')


if __name__ == '__main__':
    main()
