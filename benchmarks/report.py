"""Markdown tables of a run, the machine it ran on, and benchmarks/RESULTS.md."""

import datetime
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from contenders import HERE

RESULTS = HERE / 'RESULTS.md'
BASELINES = ('bare gevent', 'bare gevent, TCP_NODELAY', 'falcon', 'httptools core', 'uvicorn+httptools',
             'granian, apiphant App')
_PREAMBLE = ('# Benchmark results\n\nWritten by `benchmarks/run.py --write`. The machines are shared and '
             'their speed drifts between runs: only numbers from one run (one section) compare.\n')


def throughput(contenders, connection_counts, reference, *baselines):
    """The table of medians, and the ratios reference / baseline from this same run."""
    lines = ['| contender | conns | req/s (median) | p50 ms | p99 ms | p99 / fair | socket errors | non-2xx '
             '| peak RSS MiB | server CPU µs/request |', '|---|---|---|---|---|---|---|---|---|---|']
    medians = {}
    for connections in connection_counts:
        for contender in contenders:
            results = contender.results[connections]
            rate = medians[contender.name, connections] = statistics.median(
                result.requests_per_second for result in results)
            p99 = statistics.median(r.p99_ms for r in results)
            lines.append(
                f'| {contender.name} | {connections} | {rate:,.0f} '
                f'| {statistics.median(r.p50_ms for r in results):.2f} '
                f'| {p99:.2f} | {fairness(p99, connections, rate):.1f} '
                f'| {sum(r.socket_errors for r in results)} | {sum(r.non_2xx for r in results)} '
                f'| {contender.peak_rss_kib / 1024:.1f} '
                f'| {statistics.median(r.cpu_us_per_request for r in results):.0f} |')
    lines += ['', '| ratio (median req/s, same run) | '
              + ' | '.join(f'{connections} conns' for connections in connection_counts) + ' |',
              '|---|' + '---|' * len(connection_counts)]
    for baseline in baselines:
        ratios = [medians[reference, c] / medians[baseline, c] if medians[baseline, c] else float('nan')
                  for c in connection_counts]
        lines.append(f'| {reference} / {baseline} | ' + ' | '.join(f'{ratio:.2f}' for ratio in ratios) + ' |')
    return '\n'.join(lines)


def fairness(p99_ms, connections, requests_per_second):
    """p99 over the fair latency: in a closed loop of N connections at X req/s, a server that serves
    everyone in turn answers each request in N / X. It does not drift with the machine's speed."""
    if not requests_per_second:
        return float('nan')
    return p99_ms / (connections / requests_per_second * 1000)


def concurrency_header():
    return ('| contender | connections asked | established (ss, peak) | peak reached after s | socket errors '
            '| req/s | p99 ms | p99 / fair | peak RSS MiB | RSS per connection KiB | idle RSS per connection KiB |\n'
            '|---|---|---|---|---|---|---|---|---|---|---|')


def concurrency_row(contender, connections, established, established_seconds, result, rss_before_kib, idle_kib):
    peak = contender.peak_rss_kib
    per_connection = (peak - rss_before_kib) / established if established else float('nan')
    return (f'| {contender.name} | {connections} | {established} | {established_seconds:.1f} | {result.socket_errors} '
            f'| {result.requests_per_second:,.0f} | {result.p99_ms:.1f} '
            f'| {fairness(result.p99_ms, established, result.requests_per_second):.1f} | {peak / 1024:.1f} '
            f'| {per_connection:.1f} | {idle_kib:.1f} |')


def machine():
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor())
    versions = subprocess.run([sys.executable, '-c', 'import apiphant, gevent, ujson, falcon, httptools, uvicorn, '
                               'granian; print(f"apiphant {apiphant.__version__}, gevent {gevent.__version__}, '
                               'ujson {ujson.__version__}, falcon {falcon.__version__}, '
                               'httptools {httptools.__version__}, uvicorn {uvicorn.__version__}, '
                               'granian {granian.__version__}")'],
                              capture_output=True, text=True).stdout.strip()
    wrk_version = subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split(' Copyright')[0]
    commit = subprocess.run(['git', '-C', str(HERE), 'describe', '--always', '--dirty'], capture_output=True,
                            text=True).stdout.strip() or 'not a git checkout'
    return (f'{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs ({cpu}); '
            f'Python {platform.python_version()}, {versions} (commit {commit}), {wrk_version.strip()}')


# Over this one-minute load average, or this many cores busy with other work, the other work on the
# machine shifts ratios by up to 2x: such a run's figures are kept, marked, and claim nothing.
QUIET_LOAD = 1.0
QUIET_OTHER_CORES = 0.2
TICKS = os.sysconf('SC_CLK_TCK')


def _processes():
    """{pid: the fields of /proc/PID/stat after the command's name} of every process now."""
    processes = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            processes[int(stat.parent.name)] = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, ValueError):
            continue
    return processes


def _descendants(processes, root):
    """The pids of `root`'s live descendants (the fields' second is the parent's pid)."""
    children = {}
    for pid, fields in processes.items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, pending = [], list(children.get(root, ()))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


class Machine:
    """How quiet the machine was around a benchmark run.

    The load average at the end counts the run's own servers and wrk, so it cannot tell whether
    anything else ran. What can: the CPU time the whole machine spent (/proc/stat) minus the run's
    own (this process, its reaped children, its live descendants such as a test host's processes,
    and the processes `own_pids()` names, such as a database server that left the run's process
    tree, with their descendants; each with what it reaped), over the run's wall time."""

    def __init__(self, own_pids=lambda: ()):
        self.own_pids = own_pids
        self.load = os.getloadavg()[0]
        self.wall = time.monotonic()
        self.other = self._busy() - self._own()

    @staticmethod
    def _busy():
        fields = Path('/proc/stat').read_text().split('\n', 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
        return (user + nice + system + irq + softirq + steal) / TICKS

    def _own(self):
        seconds = sum(usage.ru_utime + usage.ru_stime for usage in
                      (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
        processes = _processes()
        named = list(self.own_pids())
        own = {*_descendants(processes, os.getpid()), *named,
               *(pid for root in named for pid in _descendants(processes, root))}
        for pid in own:
            if pid in processes:
                seconds += sum(int(value) for value in processes[pid][11:15]) / TICKS  # utime stime cutime cstime
        return seconds

    def verdict(self):
        """The load before the run, the cores other work used during it, and what the run may claim."""
        other = max(0.0, (self._busy() - self._own() - self.other) / (time.monotonic() - self.wall))
        quiet = self.load < QUIET_LOAD and other < QUIET_OTHER_CORES
        verdict = ('quiet machine' if quiet else
                   f'**loaded machine (load {QUIET_LOAD:g} or more before the run, or other work over '
                   f'{QUIET_OTHER_CORES:g} core during it): these ratios claim nothing**')
        return (f'load average {self.load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (the run\'s '
                f'own processes included); other work used {other:.2f} cores during the run: {verdict}')


def publish(title, text, to_results):
    """Print a run's section and, with --write (`to_results`), put it into RESULTS.md under the
    command that made it."""
    print(text)
    if to_results:
        script = Path(sys.argv[0]).name
        write(title, shlex.join(['python', f'benchmarks/{script}', *sys.argv[1:]]), text)


def write(title, command, text):
    """Replace this section of RESULTS.md (throughput or concurrency), keeping the other one."""
    sections = {}
    if RESULTS.exists():
        for match in re.finditer(r'^## (.+?)\n(.*?)(?=^## |\Z)', RESULTS.read_text(), re.M | re.S):
            sections[match.group(1)] = match.group(2).strip()
    sections[title] = f'`{command}`\n\n{text}'
    RESULTS.write_text(_PREAMBLE + ''.join(f'\n## {name}\n\n{body}\n' for name, body in sections.items()))
