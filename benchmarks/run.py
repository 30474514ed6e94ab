"""apiphant against bare gevent pywsgi, Falcon, an httptools echo core, uvicorn+httptools and granian
(serving apiphant's App), in one run, driven by wrk.

    python benchmarks/run.py                     3 interleaved rounds x 10 s at 64 and 256 connections
    python benchmarks/run.py --quick             1 round x 2 s (what the test suite runs)
    python benchmarks/run.py --write             also write the tables to benchmarks/RESULTS.md
    python benchmarks/run.py --connections 10000 19990
                                                 concurrency mode: hold that many keep-alive
                                                 connections to one apiphant worker, to bare gevent
                                                 and to the httptools core, under wrk's load and
                                                 then idle (one request each)
    python benchmarks/run.py --workers           apiphant --workers 2 against 1, at 256 connections
    python benchmarks/run.py --metrics           apiphant --metrics against without, at 64 and 256
                                                 connections (its target: at most 5% fewer req/s)

Each server is pinned to CPU 0 and wrk to CPU 1 (where there are two CPUs), so they do not fight for
one. Only ratios measured in the same run mean anything: the machines are shared and noisy.
"""

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time

import contenders
import report
import wrk

CONNECTION_COUNTS = (64, 256)
WORKERS_CONNECTIONS = (256,)
PINNED = f'servers on CPU {contenders.SERVER_CPU}, wrk on CPU {contenders.LOAD_CPU}'
SS_PERIOD = 0.5
CONCURRENCY_CONTENDERS = ('apiphant', 'bare gevent, TCP_NODELAY', 'httptools core')
CONCURRENCY_SECONDS = 30  # time for every connection to get in (see `hold`) and then be held
CONCURRENCY_TIMEOUT = '30s'  # connecting 10,000 clients takes a while: none of that is a timeout
IDLE_BATCH = 500
IDLE_REQUEST = (b'POST /api/v0/echo/read HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n'
                b'Content-Length: 18\r\n\r\n{"hello": "world"}')


def throughput(servers, rounds, seconds, connection_counts, pin_load=True, path=wrk.PATH, body=None):
    """Rounds interleaved A B C A B C, so the machine's drift hits every contender alike; each
    request posts `body` (JSON text, else the echo's) to `path`."""
    for round_number in range(1, rounds + 1):
        for connections in connection_counts:
            for server in servers:
                pid = server.process.pid
                cpu_before = contenders.cpu_seconds(pid)
                result = wrk.run(server.port, connections, seconds, pin_load, path, body)
                if result.requests:
                    result.cpu_us_per_request = (contenders.cpu_seconds(pid) - cpu_before) * 1e6 / result.requests
                server.results.setdefault(connections, []).append(result)
                print(f'round {round_number}  {connections:>4} conns  {server.name:<26} '
                      f'{result.requests_per_second:>9,.0f} req/s  p99 {result.p99_ms:.1f} ms  '
                      f'{result.cpu_us_per_request:.0f} µs CPU/request', file=sys.stderr)
    for server in servers:
        server.peak_rss_kib = contenders.peak_rss_kib(server.process.pid)


def compare(servers, args, connection_counts, pin_load=True):
    """Start every server, run the interleaved rounds, stop them all (also on an error or Ctrl-C)."""
    try:
        for server in servers:
            contenders.start(server)
        throughput(servers, args.rounds, args.seconds, connection_counts, pin_load)
    finally:
        for server in servers:
            contenders.stop(server)


def established(port):
    """Connections established to `port`, counted on the server's side of loopback."""
    output = subprocess.run(['ss', '-Htn', 'state', 'established', f'( sport = :{port} )'],
                            capture_output=True, text=True, timeout=30).stdout
    return len(output.splitlines())


def hold(server, connections, seconds, idle_kib):
    """One concurrency measurement on a freshly started server: its peak RSS is this load's alone.

    Past the listen queue (somaxconn) a connection waits for SYN retries, so all are in only after
    some seconds: the table says when the peak count was first seen."""
    contenders.start(server)
    try:
        rss_before = contenders.rss_kib(server.process.pid)
        started = time.monotonic()
        load = wrk.start(server.port, connections, seconds, CONCURRENCY_TIMEOUT)
        peak, peak_seconds = 0, float('nan')
        try:
            while load.poll() is None and time.monotonic() < started + seconds + 60:
                count = established(server.port)
                if count > peak:
                    peak, peak_seconds = count, time.monotonic() - started
                time.sleep(SS_PERIOD)
        finally:
            result = wrk.finish(load, seconds)
        server.peak_rss_kib = contenders.peak_rss_kib(server.process.pid)
    finally:
        contenders.stop(server)
    print(f'{connections:>6} conns  {server.name:<26} {peak} established after {peak_seconds:.1f} s, '
          f'{result.socket_errors} errors', file=sys.stderr)
    return report.concurrency_row(server, connections, peak, peak_seconds, result, rss_before, idle_kib)


def idle(server, connections):
    """RSS per kept-alive connection that made one request and now waits: what holding a client
    costs, without the requests in flight that the number under load includes."""
    contenders.start(server)
    sockets = []
    try:
        before = contenders.rss_kib(server.process.pid)
        while len(sockets) < connections:
            batch = [socket.create_connection(('127.0.0.1', server.port), timeout=30)
                     for _ in range(min(IDLE_BATCH, connections - len(sockets)))]
            sockets += batch
            for sock in batch:
                sock.sendall(IDLE_REQUEST)
            for sock in batch:
                sock.recv(65536)
        return (contenders.rss_kib(server.process.pid) - before) / connections
    finally:
        for sock in sockets:
            sock.close()
        contenders.stop(server)


def concurrency(servers, connection_counts, seconds):
    rows = [hold(server, connections, seconds, idle(server, connections))
            for connections in connection_counts for server in servers]
    return '\n'.join([report.concurrency_header(), *rows])


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='1 round of 2 s: proves the benchmark works')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--seconds', type=int,
                        help='length of one wrk run (default 10, or 30 in concurrency mode)')
    parser.add_argument('--write', action='store_true', help='write the tables to benchmarks/RESULTS.md')
    parser.add_argument('--connections', type=int, nargs='+', metavar='N',
                        help='concurrency mode: hold N keep-alive connections (the fd limit allows ~19990)')
    parser.add_argument('--workers', action='store_true',
                        help='workers mode: apiphant --workers 2 against one worker, nothing pinned')
    parser.add_argument('--metrics', action='store_true',
                        help='metrics mode: apiphant --metrics against apiphant without')
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2
    elif args.seconds is None:
        args.seconds = CONCURRENCY_SECONDS if args.connections else 10
    return args


def main():
    args = parse_arguments()
    if not shutil.which('wrk'):
        raise SystemExit('wrk is not installed (Debian: apt-get install wrk)')
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops every server
    contenders.lift_fd_limit()
    machine = report.Machine()
    if args.connections:
        servers = [server for server in contenders.everyone() if server.name in CONCURRENCY_CONTENDERS]
        title = 'Concurrency'
        text = (f'{PINNED}; {args.seconds} s of load each\n\n'
                f'{concurrency(servers, args.connections, args.seconds)}')
    elif args.workers:
        servers = contenders.workers()
        compare(servers, args, WORKERS_CONNECTIONS, pin_load=False)
        title = 'Workers'
        text = (f'nothing pinned; {args.rounds} interleaved round(s) x {args.seconds} s\n\n'
                + report.throughput(servers, WORKERS_CONNECTIONS, 'apiphant, 2 workers', 'apiphant, 1 worker'))
    elif args.metrics:
        servers = contenders.metrics()
        compare(servers, args, CONNECTION_COUNTS)
        title = 'Metrics'
        text = (f'{PINNED}; {args.rounds} interleaved round(s) x {args.seconds} s\n\n'
                + report.throughput(servers, CONNECTION_COUNTS, 'apiphant, metrics', 'apiphant'))
    else:
        servers = contenders.everyone()
        compare(servers, args, CONNECTION_COUNTS)
        title = 'Throughput'
        text = (f'{PINNED}; {args.rounds} interleaved round(s) x {args.seconds} s\n\n'
                + report.throughput(servers, CONNECTION_COUNTS, 'apiphant', *report.BASELINES))
    text = f'{report.machine()}; {machine.verdict()}; {text}'
    report.publish(title, text, args.write)


if __name__ == '__main__':
    main()
