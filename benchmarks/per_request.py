"""Where a request's microseconds go: CPU time, instructions, system calls and Python functions per
request, for apiphant's own server against the httptools echo floor (and granian serving the App).

    python benchmarks/per_request.py [--seconds 5] [--connections 64] [--only NAME ...]

Per request, not per second: CPU time and instructions per request hardly move when a neighbour takes
the CPU away, where req/s does, so these numbers mean something on a shared machine. Each server is
pinned to CPU 0, wrk to CPU 1; each measurement is its own wrk run over the same kept-alive
connections:
- CPU µs/request: the server's utime + stime (/proc/PID/stat) over the requests wrk counted;
- instructions/request (user space): the server run again under valgrind's callgrind, its counters
  zeroed after a warm-up and dumped after a wrk run (callgrind_control), over the requests served;
- system calls/request: `strace -c -f` attached to the server (it slows the server, not the count);
- Python functions: `py-spy record --format raw`, the share of samples whose innermost frame is each
  function (its self time), for the Python servers.
"""

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import contenders
import wrk

WARM_SECONDS = 2
TOP_FUNCTIONS = 15
TOP_CALLS = 8
CALLGRIND_CONNECTIONS = 8
CALLGRIND_START_TIMEOUT = 180  # (valgrind runs the imports ~50x slower)
PY_SPY = shutil.which('py-spy', path=os.path.dirname(sys.executable)) or 'py-spy'  # (pip install py-spy)


def attached(command):
    """A profiler attached to the server, in the background; stopped by `detach`."""
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=contenders.prepare_child)


def detach(process):
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=60)[1]


def cpu(server, connections, seconds):
    pid = server.process.pid
    before = contenders.cpu_seconds(pid)
    result = wrk.run(server.port, connections, seconds)
    return result.requests, (contenders.cpu_seconds(pid) - before) * 1e6 / max(result.requests, 1)


def instructions(server, connections, seconds):
    """User-space instructions per request, counted by callgrind (perf's hardware counters are not
    there in most virtual machines). Few connections: under valgrind the server is ~50x slower."""
    with tempfile.TemporaryDirectory() as folder:
        counted = contenders.Contender(server.name, ['valgrind', '--tool=callgrind',
                                                     f'--callgrind-out-file={folder}/out', *server.command])
        contenders.start(counted, timeout=CALLGRIND_START_TIMEOUT)
        try:
            wrk.run(counted.port, CALLGRIND_CONNECTIONS, WARM_SECONDS)
            valgrind = counted.process.pid  # (taskset and valgrind exec: the same process)
            subprocess.run(['callgrind_control', '--zero', str(valgrind)], check=True, capture_output=True)
            result = wrk.run(counted.port, CALLGRIND_CONNECTIONS, seconds)
            subprocess.run(['callgrind_control', '--dump', str(valgrind)], check=True, capture_output=True)
        finally:
            contenders.stop(counted)
        dumps = [name for name in os.listdir(folder) if name.startswith('out.')]
        with open(os.path.join(folder, min(dumps))) as dump:
            total = next(int(line.split()[1]) for line in dump if line.startswith('summary:'))
    return total / max(result.requests, 1)


def system_calls(server, connections, seconds):
    with tempfile.NamedTemporaryFile('r', suffix='.strace') as output:
        strace = attached(['strace', '-c', '-f', '-o', output.name, '-p', str(server.process.pid)])
        result = wrk.run(server.port, connections, seconds)
        detach(strace)
        calls = {}
        for line in output.read().splitlines():
            match = re.match(r'\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$', line)
            if match and match.group(2) != 'total':
                calls[match.group(2)] = int(match.group(1))
    requests = max(result.requests, 1)
    return {name: count / requests for name, count in sorted(calls.items(), key=lambda item: -item[1])}


def python_functions(server, connections, seconds):
    with tempfile.NamedTemporaryFile('r', suffix='.txt') as output:
        spy = attached([PY_SPY, 'record', '--format', 'raw', '--rate', '500', '--duration', str(seconds + 1),
                        '--function', '--output', output.name, '--pid', str(server.process.pid)])
        wrk.run(server.port, connections, seconds)
        spy.communicate(timeout=seconds + 60)
        samples = collections.Counter()
        for line in output.read().splitlines():
            stack, _, count = line.rpartition(' ')
            if stack:
                samples[stack.split(';')[-1]] += int(count)
    total = sum(samples.values()) or 1
    return [(frame, count * 100 / total) for frame, count in samples.most_common(TOP_FUNCTIONS)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seconds', type=int, default=5)
    parser.add_argument('--connections', type=int, default=64)
    parser.add_argument('--only', nargs='*', default=['apiphant', 'httptools core', 'granian, apiphant App'])
    parser.add_argument('--instructions', action='store_true', help='also count instructions under callgrind (slow)')
    args = parser.parse_args()
    servers = [server for server in contenders.everyone() if server.name in args.only]
    print(f'load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {args.connections} connections, '
          f'{args.seconds} s per measurement')
    for server in servers:
        python = server.name != 'granian, apiphant App'  # (granian's worker is Rust threads and a child)
        contenders.start(server)
        try:
            wrk.run(server.port, args.connections, WARM_SECONDS)
            requests, cpu_us = cpu(server, args.connections, args.seconds)
            calls = system_calls(server, args.connections, args.seconds) if python else {}
            functions = python_functions(server, args.connections, args.seconds) if python else []
        finally:
            contenders.stop(server)
        counted = f', {instructions(server, args.connections, args.seconds):,.0f} user-space instructions/request' \
            if python and args.instructions else ''
        print(f'\n## {server.name}: {cpu_us:.1f} CPU µs/request ({requests:,} requests){counted}')
        if calls:
            print('system calls/request: ' + ', '.join(f'{name} {per:.3f}' for name, per in
                                                       list(calls.items())[:TOP_CALLS]))
        for frame, share in functions:
            print(f'  {share:5.1f}%  {frame}')

if __name__ == '__main__':
    main()
