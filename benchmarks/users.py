"""Tens of thousands of users on the stack the deploy builds: kept-alive client connections through
nginx to a throwaway test host (tests/deploy's lab) running the example product on two API ports.

    APIPHANT_TEST_LAB=e python benchmarks/users.py            20,000 then 50,000 connections, 30 s each
    APIPHANT_TEST_LAB=e python benchmarks/users.py --connections 2000 --seconds 10
    APIPHANT_TEST_LAB=e python benchmarks/users.py --write    also write benchmarks/RESULTS.md ("Users")

As root (the lab needs namespaces). site.yml deploys the host with the roles' defaults: nginx's
worker_connections and worker_rlimit_nofile, Supervisor's minfds and the kernel role's settings,
sized from the host. wrk runs in a second lab host's network namespace, a client of its own on the
lab's bridge: there, and only there, the local port range is widened to 1024-65535, so 50,000
connections fit between its one address and the host's port 80; its descriptor limit is raised to
match. The load goes to the host's address only, each count once, bounded in time.

For each count: the resident memory of nginx's workers and of the API processes before wrk, and
when the most connections were established (ss in the host's namespace), per connection; wrk's
req/s, p50 and p99 latency, p99 over the fair latency (report.fairness) and its errors.
"""

import argparse
import ctypes
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / 'tests' / 'deploy'), str(ROOT / 'tests')]  # (conftest imports tests/support)

import report  # noqa: E402
import wrk  # noqa: E402

import conftest  # noqa: E402  the deploy tests' inventory and Ansible environment, one definition
import testhost  # noqa: E402

COUNTS = (20000, 50000)
SECONDS = 30
TIMEOUT = '60s'  # at 50,000 connections the fair latency alone is seconds: a slow answer is no error
POLL = 0.5
OVERSTAY = 90  # s a wrk run may take beyond its duration: its last requests may wait TIMEOUT
WRK_SPARE_FDS = 1000  # a wrk process's descriptors beyond its connections
CLIENT_PORTS = '1024 65535'
PR_SET_PDEATHSIG = 1


def deploy(lab, host):
    product = lab.workdir / 'product'
    shutil.copytree(ROOT / 'example', product, ignore=shutil.ignore_patterns('__pycache__', 'tests'))
    inventory = conftest.write_inventory(lab, product, [host], api_ports='[8001, 8002]')
    run = conftest.run_command([conftest.ANSIBLE_PLAYBOOK, '-i', inventory, 'site.yml'], conftest.PLAYBOOKS,
                               conftest.lab_environment(lab))
    if run.returncode:
        raise SystemExit(f'site.yml failed:\n{run.output[-4000:]}')


def in_namespace(host, *command):
    return subprocess.run(['ip', 'netns', 'exec', host.name, *command], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def processes(host):
    """{'nginx': [its workers' pids], 'apiphant': [the API processes' pids]} as this machine sees them."""
    found = {'nginx': [], 'apiphant': []}
    pids = subprocess.run(['ip', 'netns', 'pids', host.name], capture_output=True, text=True, check=True).stdout
    for pid in pids.split():
        try:
            command = Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode()
        except OSError:
            continue  # gone meanwhile
        if command.startswith('nginx: worker'):
            found['nginx'].append(pid)
        elif 'bin/apiphant ' in command:
            found['apiphant'].append(pid)
    return found


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f'/proc/{pid}/status') as status:
            total += next(int(line.split()[1]) for line in status if line.startswith('VmRSS:'))
    return total


def established(host):
    return len(in_namespace(host, 'ss', '-Htn', 'state', 'established', '( sport = :80 )').splitlines())


def prepare_wrk():
    """wrk's descriptor limit (one a connection) as high as this process's hard limit, and its death
    with this process."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def split(connections):
    """The connections shared among as few wrk processes as their descriptor limit allows (a machine
    that drops CAP_SYS_RESOURCE, as containers do, raises no hard limit)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    processes = -(-connections // (hard - WRK_SPARE_FDS))
    return [connections // processes + (1 if n < connections % processes else 0) for n in range(processes)]


def finish(load, deadline):
    """wrk's result; one still running at `deadline` (its connections stuck in the host's listen
    queue) is stopped with SIGINT, which makes it print what it measured."""
    try:
        output, _ = load.communicate(timeout=max(0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        load.send_signal(signal.SIGINT)
        try:
            output, _ = load.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            load.kill()
            output, _ = load.communicate()
        print('a wrk process overstayed its run and was stopped', file=sys.stderr)
    return wrk.parse(output)


def combined(results):
    """One wrk result of several run side by side: counts and rates added, p50 the median of theirs,
    p99 the highest (an upper bound: percentiles do not add up)."""
    return wrk.Result(requests=sum(r.requests for r in results),
                      requests_per_second=sum(r.requests_per_second for r in results),
                      p50_ms=statistics.median(r.p50_ms for r in results), p99_ms=max(r.p99_ms for r in results),
                      socket_errors=sum(r.socket_errors for r in results), non_2xx=sum(r.non_2xx for r in results))


def out_of_descriptors(host):
    """Lines of nginx's error log saying a worker ran out of descriptors or connection slots."""
    return int(host.ssh("cat /opt/myproduct/log/nginx-error.log /var/log/nginx/error.log 2>/dev/null | "
                        "grep -c -e 'Too many open files' -e 'worker_connections are not enough'",
                        check=False).stdout.strip() or 0)


def measure(host, client, connections, seconds):
    """One count: RSS before, wrk from the client's namespace, RSS at the most connections established."""
    pids = processes(host)
    before = {name: rss_kib(group) for name, group in pids.items()}
    logged = out_of_descriptors(host)
    started = time.monotonic()
    deadline = started + seconds + OVERSTAY
    loads = [subprocess.Popen(['ip', 'netns', 'exec', client.name, 'wrk', '-t1', f'-c{share}', f'-d{seconds}s',
                               f'--timeout={TIMEOUT}', '--latency', '-s', str(HERE / 'post.lua'),
                               f'http://{host.address}{wrk.PATH}'],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=prepare_wrk)
             for share in split(connections)]
    peak, peak_seconds, at_peak = 0, float('nan'), before
    try:
        while any(load.poll() is None for load in loads) and time.monotonic() < deadline:
            count = established(host)
            if count > peak:
                peak, peak_seconds = count, time.monotonic() - started
                at_peak = {name: rss_kib(group) for name, group in pids.items()}
            time.sleep(POLL)
    finally:
        result = combined([finish(load, deadline) for load in loads])
    logged = out_of_descriptors(host) - logged
    per_connection = {name: (at_peak[name] - before[name]) / peak if peak else float('nan') for name in pids}
    errors = result.socket_errors + result.non_2xx
    print(f'{connections:>6} conns: {peak} established after {peak_seconds:.1f} s, {errors} errors, '
          f'{result.requests_per_second:,.0f} req/s, p99 {result.p99_ms:.0f} ms', file=sys.stderr)
    if not result.requests:  # no wrk summary to read: nothing measured, not zero errors
        return f'| {connections:,} | {len(loads)} | {peak:,} | {peak_seconds:.1f} | no wrk summary |' + ' |' * 9
    return (f'| {connections:,} | {len(loads)} | {peak:,} | {peak_seconds:.1f} | {errors} '
            f'| {result.requests_per_second:,.0f} '
            f'| {result.p50_ms:.0f} | {result.p99_ms:.0f} '
            f'| {report.fairness(result.p99_ms, peak or connections, result.requests_per_second):.1f} '
            f'| {before["nginx"] / 1024:.0f} / {at_peak["nginx"] / 1024:.0f} | {per_connection["nginx"]:.1f} '
            f'| {before["apiphant"] / 1024:.0f} / {at_peak["apiphant"] / 1024:.0f} '
            f'| {per_connection["apiphant"]:.1f} | {logged} |')


def can_raise_limits():
    """Whether this process may raise a hard limit (CAP_SYS_RESOURCE), which containers often drop."""
    capabilities = next(line.split()[1] for line in Path('/proc/self/status').read_text().splitlines()
                        if line.startswith('CapEff:'))
    return bool(int(capabilities, 16) >> 24 & 1)


def settings(host):
    """What the roles set on the host, as it runs: the table's context."""
    configured = host.ssh('nginx -T 2>/dev/null | grep -E "^\\s*(worker_connections|worker_rlimit_nofile) ";'
                          ' grep ^minfds= /etc/supervisor/supervisord.conf;'
                          ' echo somaxconn "$(cat /proc/sys/net/core/somaxconn)"').stdout
    return ', '.join(' '.join(line.strip(' \t;').split()) for line in configured.splitlines())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--connections', type=int, nargs='+', default=COUNTS, metavar='N')
    parser.add_argument('--seconds', type=int, default=SECONDS, help='length of one wrk run')
    parser.add_argument('--write', action='store_true', help='write the table to benchmarks/RESULTS.md as "Users"')
    args = parser.parse_args()
    if not shutil.which('wrk'):
        raise SystemExit('wrk is not installed (Debian: apt-get install wrk)')

    # Stopped by SIGTERM (or SIGINT, ignored in a background job), it still removes its lab.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit('stopped'))
    machine = report.Machine()
    lab = testhost.Lab(count=2)
    try:
        host, client = lab.hosts
        deploy(lab, host)
        in_namespace(client, 'sh', '-c', f'echo {CLIENT_PORTS} > /proc/sys/net/ipv4/ip_local_port_range')
        context = settings(host)
        rows = [measure(host, client, connections, args.seconds) for connections in args.connections]
    finally:
        lab.stop()

    table = '\n'.join([
        '| connections | wrk processes | established (peak) | after s | errors | req/s | p50 ms | p99 ms | p99 / fair '
        '| nginx workers RSS MiB, before / at peak | nginx KiB per connection '
        '| API processes RSS MiB, before / at peak | API KiB per connection '
        '| nginx log lines: out of descriptors or connections |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|', *rows])
    text = (f'{report.machine()}; {machine.verdict()}; '
            f'one test host (a network namespace on this machine, sharing its CPUs) with nginx and two API ports, '
            f'wrk (1 thread each) in another; {args.seconds} s of load per count; p99 is the highest of the wrk '
            f'processes\' (percentiles do not add up); the RSS at peak is under load, requests in flight included; '
            f'this machine\'s descriptor limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,}, which root '
            f'{"may" if can_raise_limits() else "may not"} raise; on the host: {context}\n\n{table}\n')
    report.publish('Users', text, args.write)


if __name__ == '__main__':
    main()
