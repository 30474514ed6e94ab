"""`fab deploy / rollback / restart / status / logs` on a test host; a release under load loses nothing;
with api_metrics, every API port serves /metrics and nginx does not.

Each test needs only the `deployed` fixture (the product released by `fab deploy`) and what it sets
up itself, so any one of them runs alone, or in any order.
"""

import functools
import http.client
import json
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, lab_environment
from support import wait_for

ECHO = {'hello': 'world'}
ECHO_PATH = '/api/v0/echo/read'
# The product's readiness check (api/health.py), failing while the test's file exists on the host.
NOT_READY = '/opt/myproduct/log/not-ready'
HEALTH = f'''
from pathlib import Path


def check():
    if Path({NOT_READY!r}).exists():
        raise RuntimeError('the test made this port not ready')
'''
# Every API port's /metrics, asked on the host (the ports listen on its loopback): {port: text}.
SCRAPE = '''
import json, os, urllib.request
scraped = {}
for port in range(8001, 8001 + os.cpu_count()):
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=30) as reply:
        scraped[port] = reply.read().decode()
print(json.dumps(scraped))
'''


@pytest.fixture(scope='module')
def fab(fab, inventory, lab):
    """`fab` on the first lab host with api_metrics on: this module's deploys are also the test of
    a deploy that serves metrics, with no host or deploy of its own."""
    return functools.partial(fab, inventory=inventory(lab.hosts[:1], file='fab-metrics.ini', api_metrics='true'))


@pytest.fixture(scope='module')
def host(lab):
    return lab.hosts[0]


@pytest.fixture(scope='module')
def echo_file(product):
    return product / 'myproduct' / 'api' / 'v0' / 'echo.py'


def release_as(echo_file, label):
    """Change the product so its echo answers `server: label`: a new release."""
    source = echo_file.read_text()
    start = source.index("response.server = ") + len("response.server = ")
    end = source.index('\n', start)
    echo_file.write_text(source[:start] + repr(label) + source[end:])


def served_by(host):
    connection = http.client.HTTPConnection(host.address, 80, timeout=30)
    try:
        connection.request('POST', ECHO_PATH, json.dumps(ECHO))
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read()).get('server')
    finally:
        connection.close()


def through_nginx(host, requests):
    """Send (method, path, headers) requests through nginx on one keep-alive connection (so one
    nginx worker takes them in turn over the API ports): [(status, X-Request-ID)]."""
    connection = http.client.HTTPConnection(host.address, 80, timeout=30)
    answers = []
    try:
        for method, path, headers in requests:
            connection.request(method, path, json.dumps(ECHO) if method == 'POST' else None, headers)
            reply = connection.getresponse()
            reply.read()
            answers.append((reply.status, reply.getheader('X-Request-ID')))
    finally:
        connection.close()
    return answers


class Load(threading.Thread):
    """Keep-alive clients POSTing through nginx until stopped (or, should a test never stop them,
    `seconds` have passed); every answer is recorded."""

    def __init__(self, host, clients=8, limit=1_000_000, seconds=900, connect=None):
        super().__init__(daemon=True)
        self.host, self.clients, self.limit = host, clients, limit
        # How a client connects: plain HTTP to nginx unless told (HTTPS, say).
        self.connect = connect or (lambda: http.client.HTTPConnection(host.address, 80, timeout=30))
        self.deadline = time.monotonic() + seconds
        self.stopped = threading.Event()
        self.answers, self.failures = [], []

    def client(self):
        connection = None
        while not self.stopped.is_set() and len(self.answers) < self.limit and time.monotonic() < self.deadline:
            connection = connection or self.connect()
            try:
                connection.request('POST', ECHO_PATH, json.dumps(ECHO))
                reply = connection.getresponse()
                body = reply.read()
                if reply.status == 200:
                    self.answers.append(json.loads(body)['server'])
                else:
                    self.failures.append((reply.status, body[:200]))
            except Exception as error:  # a client-side view of a lost request, whatever its form
                self.failures.append(repr(error))
                connection.close()
                connection = None

    def run(self):
        workers = [threading.Thread(target=self.client, daemon=True) for _ in range(self.clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def wait_for_more(self, count, timeout=60):
        """Wait for `count` more answers; whether they came."""
        target, deadline = len(self.answers) + count, time.monotonic() + timeout
        while len(self.answers) < target and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.answers) >= target

    def stop(self):
        self.stopped.set()
        self.join(60)


@pytest.fixture(scope='module')
def deployed(fab, host, echo_file):
    """The product released by `fab deploy HOST` (positional host), its echo answering 'deployed', with
    a readiness check that a test can make fail."""
    release_as(echo_file, 'deployed')
    health = echo_file.parents[1] / 'health.py'
    health.write_text(HEALTH)
    try:
        run = fab('deploy', host.address)
        assert run.returncode == 0, run.output
        yield run
    finally:
        health.unlink()  # (the product copy is the session's: other modules release it as the example is)


def test_deploy_by_positional_host_prints_its_steps_and_no_warning(deployed, host):
    assert f'[{host.name}] checking SSH' in deployed.output
    assert 'WARNING' not in deployed.output  # e.g. none for the [lb] group this inventory lacks
    assert f'[{host.name}] deploy: done' in deployed.output
    assert served_by(host) == (200, 'deployed')


def test_deploy_full_runs_every_role_whatever_the_stamps_say(deployed, fab, host):
    run = fab('deploy', host.address, '--full')
    assert run.returncode == 0, run.output
    assert run.outcome('packages : Install the packages an API host needs', host.name) == 'ok'
    assert run.outcome("supervisor : Write the product's Supervisor programs", host.name) == 'ok'


def logs_of(host):
    """What nginx and the API processes said, for a failure message."""
    log = '/opt/myproduct/log'
    return host.ssh(f"grep -v 'connect() failed (111' {log}/nginx-error.log | tail -n 20; "
                    f"grep -hv ' POST ' {log}/api-*.log | tail -n 20", check=False).stdout


def test_a_release_under_load_loses_no_request(deployed, fab, host, echo_file):
    release_as(echo_file, 'release under load')
    load = Load(host)
    load.start()
    try:
        run = fab('-H', f'root@{host.address}', 'deploy')
        answering = load.wait_for_more(50)  # traffic after the release, for the checks below
    finally:
        load.stop()
    assert run.returncode == 0, run.output
    assert answering, (len(load.answers), load.failures)
    assert 'Restart myproduct-api-8002' in run.output
    assert load.failures == [], logs_of(host)
    assert len(load.answers) > 200
    assert load.answers[-1] == 'release under load'
    assert served_by(host) == (200, 'release under load')


def test_a_release_that_cannot_start_goes_back_to_the_previous_one_by_itself(deployed, fab, host,
                                                                              echo_file, served_on_ports):
    serving = served_on_ports(host)
    current = host.ssh('readlink /opt/myproduct/current').stdout.strip()
    good = echo_file.read_text()
    echo_file.write_text('import a_module_that_does_not_exist\n' + good)
    try:
        run = fab('deploy', host.address)
    finally:
        echo_file.write_text(good)
    assert run.returncode != 0
    assert (f'[{host.name}] deploy failed at task "supervisor : Fail naming the host, the port and the last '
            f'lines of its log"') in run.output, run.output
    message = ' '.join(run.output.split())
    assert f'{host.name}: port 8001 did not start or answer on release ' in message, run.output
    assert f'it is back on release {current.rsplit("/", 1)[-1]}, as the other ports' in message
    assert "No module named 'a_module_that_does_not_exist'" in run.output  # the port's log, last lines
    # Every port on the old release, with no fab rollback; the release that failed is gone.
    assert served_on_ports(host) == serving
    assert host.ssh('readlink /opt/myproduct/current').stdout.strip() == current
    status = fab('status', host.address)
    assert status.returncode == 0, status.output
    assert status.output.count('RUNNING') >= 3 and 'FATAL' not in status.output and 'BACKOFF' not in status.output
    # The last line of the audit trail: time, who, action, the release tried, commit, outcome.
    runs = status.output.split('last runs (fab history for all):', 1)[1].splitlines()[1:]
    audit = [line for line in runs if not line.startswith('[')][-1].split()
    assert audit[2] == 'deploy' and audit[3] != current.rsplit('/', 1)[-1] and audit[-1] == 'failed'

    release_as(echo_file, 'after the failed release')  # the next good release goes out as usual
    run = fab('deploy', host.address)
    assert run.returncode == 0, run.output
    assert set(served_on_ports(host).values()) == {'after the failed release'}


def test_a_full_disk_fails_the_release_before_current_switches(deployed, fab, host, echo_file):
    """/opt/myproduct/releases on a full tmpfs (in the host's own mount namespace) holding a copy of
    the releases, so current still resolves."""
    serving = served_by(host)
    current = host.ssh('readlink /opt/myproduct/current').stdout.strip()
    host.ssh('set -e; cd /opt/myproduct; mkdir -p /run/full; '
             'mount -t tmpfs -o size=$(( $(du -sm releases | cut -f1) + 2 ))m full /run/full; '
             'cp -a releases/. /run/full/; dd if=/dev/zero of=/run/full/filler bs=64k 2>/dev/null || true; '
             'mount --move /run/full releases')
    release_as(echo_file, 'after the full disk')
    try:
        run = fab('deploy', host.address)
        assert run.returncode != 0
        message = ' '.join(run.output.split())
        assert f'{host.name}: release ' in message and ' could not be built in /opt/myproduct/releases/' in message
        assert 'No space left on device' in message, run.output
        assert f'current is still {current}' in message
        assert host.ssh('readlink /opt/myproduct/current').stdout.strip() == current
        assert served_by(host) == serving
    finally:
        host.ssh('umount --lazy /opt/myproduct/releases')
    run = fab('deploy', host.address)  # with room again, the same release goes out
    assert run.returncode == 0, run.output
    assert served_by(host) == (200, 'after the full disk')


def running_again(host, program, old_pid):
    """Whether Supervisor runs `program` again, under a PID other than `old_pid`."""
    status = host.ssh(f'supervisorctl status {program}', check=False).stdout.split()
    return status[1:2] == ['RUNNING'] and status[2:4] != ['pid', f'{old_pid},']


def test_a_killed_api_process_is_restarted_while_nginx_serves_from_the_other_port(deployed, host):
    program = 'myproduct-api-8001'
    error_log = '/opt/myproduct/log/nginx-error.log'
    logged = int(host.ssh(f'wc -l < {error_log}').stdout)
    pid = host.ssh(f'supervisorctl pid {program}').stdout.strip()
    load = Load(host)
    load.start()
    try:
        assert load.wait_for_more(100)
        answered = len(load.answers)
        host.ssh(f'kill -KILL {pid}')
        served_while_down = load.wait_for_more(300)  # new requests while the port is down go to port 8002
        # Supervisor gives the new process its PID while it is STARTING (startsecs): restarted means
        # RUNNING under another PID.
        wait_for(lambda: running_again(host, program, pid), timeout=60)
        restarted = len(load.failures)
        served_after = load.wait_for_more(100)
    finally:
        load.stop()
    assert running_again(host, program, pid), host.ssh(f'supervisorctl status {program}').stdout
    # Lost: only requests nginx had sent to the killed process, each a 502 that nginx's error log
    # puts on port 8001. How many depends on how long the kernel takes to end the process (until
    # then it still holds its connections and its listening socket), not on the clients. A request
    # that could not reach port 8001 went to 8002 and was answered.
    errors = host.ssh(f'tail -n +{logged + 1} {error_log}').stdout.splitlines()
    lost = [line for line in errors if 'while reading response header from upstream' in line
            or 'while sending request to upstream' in line]
    assert all(failure[0] == 502 for failure in load.failures), load.failures
    assert len(lost) == len(load.failures) and all('upstream: "http://127.0.0.1:8001/' in line for line in lost), \
        (load.failures, errors)
    assert len(load.failures) == restarted, 'a request was lost after the port was back'
    assert served_while_down and served_after, (len(load.answers), answered)
    print(f'SIGKILL under load: {len(load.failures)} lost, all sent to the killed port; '
          f'{len(load.answers) - answered} answered after the kill')


def test_restart_is_rolling_and_logs_show_the_traffic(deployed, fab, host):
    assert served_by(host)[0] == 200  # traffic for the logs to show
    run = fab('restart', host.address)
    assert run.returncode == 0, run.output
    assert run.output.index('myproduct-api-8001') < run.output.index('myproduct-api-8002')
    logs = fab('logs', host.address, '--lines', '20')
    assert logs.returncode == 0, logs.output
    assert 'POST /api/v0/echo/read 200' in logs.output


def test_a_restart_waits_for_up_and_stops_at_a_port_that_is_not_ready(deployed, fab, host):
    """The process starts, but its readiness check fails: the restart stops at the first port, the
    others keep serving."""
    host.ssh(f'touch {NOT_READY}')
    try:
        run = fab('restart', host.address)
    finally:
        host.ssh(f'rm -f {NOT_READY}')
    assert run.returncode != 0
    assert ('failed at task "supervisor : Wait until GET /up answers 200 on the port of myproduct-api-8001"'
            in run.output), run.output
    assert 'Restart myproduct-api-8002' not in run.output
    assert served_by(host)[0] == 200


def test_an_unreachable_host_fails_fast_naming_it(fab, host):
    started = time.monotonic()
    run = fab('status', f'root@{host.address}:2222')
    assert run.returncode != 0
    assert f'[{host.name}] cannot reach {host.address}:2222 over SSH' in run.output
    assert time.monotonic() - started < 60
    run = fab('deploy', '10.231.0.250')
    assert run.returncode != 0 and '10.231.0.250 is neither a host nor a group' in run.output


def test_logs_of_one_request_show_its_nginx_and_api_lines_on_every_port_and_no_other(deployed, fab, host):
    """A client that sends one ID on four requests (a retried call, say): nginx takes them in turn
    over the two ports, so the ID is in both ports' logs; other requests' lines must not show."""
    wanted, others = f'trace-{uuid.uuid4().hex}', [f'other-{uuid.uuid4().hex}' for _ in range(2)]
    echo = ('POST', ECHO_PATH)
    answers = through_nginx(host, [(*echo, {'X-Request-ID': others[0]}), *[(*echo, {'X-Request-ID': wanted})] * 4,
                                   (*echo, {'X-Request-ID': others[1]}), (*echo, {})])
    assert answers[:6] == [(200, others[0])] + [(200, wanted)] * 4 + [(200, others[1])]
    run = fab('logs', host.address, '--request', wanted)
    assert run.returncode == 0, run.output
    lines = [line for line in run.output.splitlines() if line.startswith('/opt/myproduct/log/')]
    assert all(wanted in line for line in lines) and not any(other in run.output for other in others), run.output
    by_log = {}
    for line in lines:
        log = line.split(':', 1)[0].rsplit('/', 1)[1]
        by_log[log] = by_log.get(log, 0) + 1
    assert by_log == {'nginx-access.log': 4, 'api-8001.log': 2, 'api-8002.log': 2}, run.output
    assert all(f'POST {ECHO_PATH} 200' in line for line in lines if '/api-' in line)
    missing = fab('logs', host.address, '--request', f'never-{uuid.uuid4().hex}')
    assert missing.returncode == 0 and 'no log line has request ID never-' in missing.output, missing.output


def echo_count(text):
    """The echo's answers with status 200 in one port's /metrics."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == 'apiphant_requests_total'
               and sample.labels == {'route': ECHO_PATH, 'status': '200'})


def test_with_api_metrics_every_port_serves_metrics_and_nginx_does_not(deployed, host):
    def scrape():
        scraped = json.loads(host.ssh(f'python3 -c {shlex.quote(SCRAPE)}').stdout)
        return sum(echo_count(text) for text in scraped.values())

    before = scrape()
    answers = through_nginx(host, [('POST', ECHO_PATH, {})] * 6 + [('GET', '/metrics', {}), ('GET', '/up', {})])
    assert [status for status, _ in answers] == [200] * 6 + [404, 200]
    assert scrape() == before + 6


# Asks the API ports given which release answers, on the host: "PORT LABEL" lines, "PORT down" for none.
PORTS = '''
import json, sys, urllib.request
for port in sys.argv[1:]:
    request = urllib.request.Request(f'http://127.0.0.1:{port}/api/v0/echo/read', b'{}')
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            print(port, json.load(reply)['server'])
    except OSError:
        print(port, 'down')
'''
# Added to the product's api/__init__.py: port 8002 cannot start while the test's file exists.
CRASH = '/tmp/crash-port-8002'
CRASHING = f'''
import sys
from pathlib import Path
if Path({CRASH!r}).exists() and any(arg.endswith(':8002') for arg in sys.argv):
    raise SystemExit('the test made port 8002 fail to start')
'''


def on_ports(host, *ports):
    answers = host.ssh(f'python3 -c {shlex.quote(PORTS)} {" ".join(map(str, ports))}').stdout
    return {int(port): label for port, label in (line.split(' ', 1) for line in answers.splitlines())}


def test_a_deploy_that_failed_at_the_second_port_is_finished_by_the_next(deployed, lab, fab, inventory, host,
                                                                          echo_file):
    three = inventory(lab.hosts[:1], file='three-ports.ini', api_metrics='true', api_ports='[8001, 8002, 8003]')
    release_as(echo_file, 'on three ports')
    run = fab('deploy', host.address, inventory=three)
    assert run.returncode == 0, run.output
    assert on_ports(host, 8001, 8002, 8003) == dict.fromkeys((8001, 8002, 8003), 'on three ports')
    init = echo_file.parents[1] / '__init__.py'
    original = init.read_text()
    try:
        init.write_text(original + CRASHING)
        release_as(echo_file, 'the second port failed')
        host.ssh(f'touch {CRASH}')
        try:
            run = fab('deploy', host.address, inventory=three)
            assert run.returncode != 0
            assert (f'{host.name}: port 8002 did not start or answer on release '
                    in ' '.join(run.output.split())), run.output
            assert on_ports(host, 8001, 8002, 8003) == {8001: 'the second port failed', 8002: 'down',
                                                        8003: 'on three ports'}
        finally:
            host.ssh(f'rm -f {CRASH}')
        # The same release again, port 8002 able to start (Supervisor may have started it by now):
        # nothing to switch, port 8003 still to finish.
        run = fab('deploy', host.address, inventory=three)
    finally:
        init.write_text(original)
    assert run.returncode == 0, run.output
    assert 'myproduct-api-8003: runs release ' in run.output, run.output
    assert 'Restart myproduct-api-8001' not in run.output
    assert on_ports(host, 8001, 8002, 8003) == dict.fromkeys((8001, 8002, 8003), 'the second port failed')
    run = fab('deploy', host.address)  # back to the module's two ports: port 8003 is dropped
    assert run.returncode == 0, run.output
    assert on_ports(host, 8003) == {8003: 'down'}


def test_a_deploy_that_failed_between_the_switch_and_the_restart_is_finished_by_the_next(
        deployed, lab, fab, inventory, host, echo_file, served_on_ports):
    keep_two = inventory(lab.hosts[:1], file='keep-two.ini', api_metrics='true', releases_keep='2')
    release_as(echo_file, 'before the failure')
    run = fab('deploy', host.address, inventory=keep_two)
    assert run.returncode == 0, run.output
    # The releases but current, each a mount point (dated as they were, old): removing the one beyond
    # releases_keep fails (Device or resource busy), after current switched and before any port restarted.
    host.ssh('cd /opt/myproduct/releases && for release in *; do [ "$PWD/$release" = "$(readlink ../current)" ]'
             ' || { mount -t tmpfs busy "$release" && touch -d @1 "$release"; }; done')
    release_as(echo_file, 'failed after the switch')
    try:
        run = fab('deploy', host.address, inventory=keep_two)
    finally:
        host.ssh("awk '$2 ~ \"^/opt/myproduct/releases/\" {print $2}' /proc/mounts | xargs -r umount")
    assert run.returncode != 0
    assert 'deploy failed at task "release : Remove old releases, keeping 2"' in run.output, run.output
    assert set(served_on_ports(host).values()) == {'before the failure'}
    run = fab('deploy', host.address, inventory=keep_two)
    assert run.returncode == 0, run.output
    assert set(served_on_ports(host).values()) == {'failed after the switch'}


def test_a_changed_program_setting_restarts_one_port_at_a_time_and_a_bad_one_stops_at_the_first(
        deployed, lab, fab, inventory, host, served_on_ports):
    def pids():
        return {port: host.ssh(f'supervisorctl pid myproduct-api-{port}').stdout.strip()
                for port in (8001, 8002)}

    before = pids()
    slower = inventory(lab.hosts[:1], file='drain-12.ini', api_metrics='true', api_drain_timeout='12')
    run = fab('deploy', host.address, inventory=slower)
    assert run.returncode == 0, run.output
    each = ('Apply the Supervisor settings of', 'Restart', 'Wait until GET /up answers 200 on the port of')
    steps = [run.output.index(f'{step} myproduct-api-{port}') for port in (8001, 8002) for step in each]
    assert steps == sorted(steps), run.output  # each port applied, restarted and answering before the next
    assert all(before[port] != pid for port, pid in pids().items())
    assert '--drain-timeout 12' in host.ssh('ps -eo args').stdout

    serving = served_on_ports(host)
    bad = inventory(lab.hosts[:1], file='drain-0.ini', api_metrics='true', api_drain_timeout='0')
    run = fab('deploy', host.address, inventory=bad)
    assert run.returncode != 0
    assert f'{host.name}: port 8001 did not start or answer' in ' '.join(run.output.split()), run.output
    assert 'Apply the Supervisor settings of myproduct-api-8002' not in run.output
    assert on_ports(host, 8002) == {8002: serving['8002']}  # the other port kept serving
    assert served_by(host)[0] == 200
    run = fab('deploy', host.address)
    assert run.returncode == 0, run.output
    assert served_on_ports(host) == serving


def test_fab_refuses_an_unknown_host_key_naming_the_command_that_accepts_it(fab, lab, host, command):
    """Host keys checked as Ansible checks them (ANSIBLE_HOST_KEY_CHECKING, on unless turned off),
    against the known_hosts files of the SSH config that `fab -S` names."""
    known = lab.workdir / 'fab-known-hosts'
    known.write_text('')
    config = lab.workdir / 'fab-ssh-config'
    config.write_text(f'Host *\n    UserKnownHostsFile {known}\n')
    fab_command = [Path(sys.executable).parent / 'fab', '-S', config, 'history', host.address]
    env = {**lab_environment(lab), 'ANSIBLE_HOST_KEY_CHECKING': 'True',
           'FABRIC_INVENTORY': str(fab.keywords['inventory'])}
    run = command(fab_command, ROOT / 'deploy', env)
    assert run.returncode != 0
    assert (f'[{host.name}] the SSH host key of {host.address}:22 is unknown, so it is refused' in run.output
            and f'accept it with: ssh -p 22 root@{host.address} true' in run.output), run.output
    keys = subprocess.run(['ssh-keyscan', '-p', '22', host.address], capture_output=True, text=True, check=True)
    known.write_text(keys.stdout)
    run = command(fab_command, ROOT / 'deploy', env)
    assert run.returncode == 0, run.output


@pytest.fixture(scope='module')
def sudoer(lab, host, inventory):
    """An inventory of the module's host reached as `deployer`, a sudoer without a password (as on a
    cloud image), not root."""
    host.ssh('id deployer >/dev/null 2>&1 || useradd --create-home --shell /bin/bash deployer;'
             ' echo "deployer ALL=(ALL) NOPASSWD: ALL" > /etc/sudoers.d/deployer && chmod 0440 /etc/sudoers.d/deployer;'
             ' install -d -o deployer -m 0700 ~deployer/.ssh'
             ' && install -o deployer -m 0600 /root/.ssh/authorized_keys ~deployer/.ssh/')
    path = inventory(lab.hosts[:1], file='sudoer.ini', api_metrics='true')
    path.write_text(path.read_text().replace('ansible_user=root', 'ansible_user=deployer'))
    return path


def test_fab_tasks_work_with_a_sudoer_ansible_user(deployed, fab, host, sudoer):
    holder = 'alice laptop 0123456789abcdef0123456789abcdef 4242 1 1970-01-01T00:00:01Z rollback 0123456789abcdef'
    host.ssh(f'mkdir -p -m 0700 /run/apiphant && echo "{holder}" > /run/apiphant/myproduct.lock')
    run = fab('unlock', host.address, inventory=sudoer)
    assert run.returncode == 0 and f'[{host.name}] broke the deploy lock of alice on laptop' in run.output, run.output
    run = fab('restart', host.address, inventory=sudoer)
    assert run.returncode == 0, run.output
    audit = host.ssh('tail -n 2 /opt/myproduct/audit.log').stdout
    assert ' unlock ' in audit and ' restart ' in audit
    for task in ('status', 'history'):
        run = fab(task, host.address, inventory=sudoer)
        assert run.returncode == 0 and audit.strip() in run.output, run.output
    run = fab('logs', host.address, '--lines', '5', inventory=sudoer)
    assert run.returncode == 0 and '/opt/myproduct/log/api-8001.log' in run.output, run.output


def test_a_requirement_that_ships_only_an_sdist_is_built_into_a_wheel_for_a_host_of_this_python(
        deployed, lab, fab, host, product, command, tmp_path):
    """The lab's hosts run this machine's Python on its platform (Debian 12, x86_64): the deploy
    builds the wheel here, as it would psycopg2's. The sdist reaches pip from a folder, as a user's
    private index would."""
    source = tmp_path / 'sdistonly'
    (source / 'sdistonly').mkdir(parents=True)
    (source / 'sdistonly' / '__init__.py').write_text("WHERE = 'built from its sdist'\n")
    (source / 'pyproject.toml').write_text('[build-system]\nrequires = ["setuptools>=70.1"]\n'
                                           'build-backend = "setuptools.build_meta"\n'
                                           '[project]\nname = "sdistonly"\nversion = "1.0"\n')
    links = tmp_path / 'links'
    subprocess.run([sys.executable, '-c', f'from setuptools import build_meta; build_meta.build_sdist({str(links)!r})'],
                   cwd=source, check=True, capture_output=True, timeout=120)
    requirements = product / 'requirements.txt'
    before = requirements.read_text()
    requirements.write_text(before + 'sdistonly==1.0\n')
    env = {**lab_environment(lab), 'PIP_FIND_LINKS': str(links), 'FABRIC_INVENTORY': str(fab.keywords['inventory'])}
    try:
        run = command([Path(sys.executable).parent / 'fab', 'deploy', host.address], ROOT / 'deploy', env)
        assert run.returncode == 0, run.output
        imported = host.ssh('/opt/myproduct/current/venv/bin/python -c "import sdistonly; print(sdistonly.WHERE)"')
        assert imported.stdout.strip() == 'built from its sdist'
    finally:
        requirements.write_text(before)
        for built in (lab.workdir / 'cache' / 'wheels').glob('*/sdistonly-*.whl'):
            built.unlink()
