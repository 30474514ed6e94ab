"""`fab deploy / rollback / restart / status / logs` on a test host; a release under load loses nothing.

Each test needs only the `deployed` fixture (the product released by `fab deploy`) and what it sets
up itself, so any one of them runs alone, or in any order.
"""

import http.client
import json
import threading
import time

import pytest

ECHO = {'hello': 'world'}


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
        connection.request('POST', '/api/v0/echo/read', json.dumps(ECHO))
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read()).get('server')
    finally:
        connection.close()


class Load(threading.Thread):
    """Keep-alive clients POSTing through nginx until stopped; every answer is recorded."""

    def __init__(self, host, clients=8, limit=1_000_000, seconds=300, connect=None):
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
                connection.request('POST', '/api/v0/echo/read', json.dumps(ECHO))
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

    def wait_for_more(self, count, timeout=10):
        target, deadline = len(self.answers) + count, time.monotonic() + timeout
        while len(self.answers) < target and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self):
        self.stopped.set()
        self.join(60)


@pytest.fixture(scope='module')
def deployed(fab, host, echo_file):
    """The product released by `fab deploy HOST` (positional host), its echo answering 'deployed'."""
    release_as(echo_file, 'deployed')
    run = fab('deploy', host.address)
    assert run.returncode == 0, run.output
    return run


def test_deploy_by_positional_host_prints_its_steps_and_no_warning(deployed, host):
    assert f'[{host.name}] checking SSH' in deployed.output
    assert 'WARNING' not in deployed.output  # e.g. none for the [lb] group this inventory lacks
    assert f'[{host.name}] deploy: done' in deployed.output
    assert served_by(host) == (200, 'deployed')


def logs_of(lab, host):
    """What nginx and the API processes said, for a failure message."""
    log = '/opt/myproduct/log'
    return host.ssh(f"grep -v 'connect() failed (111' {log}/nginx-error.log | tail -n 20; "
                    f"grep -hv ' POST ' {log}/api-*.log | tail -n 20", key=lab.key, check=False).stdout


def test_a_release_under_load_loses_no_request(deployed, lab, fab, host, echo_file):
    release_as(echo_file, 'release under load')
    load = Load(host)
    load.start()
    try:
        run = fab('-H', f'root@{host.address}', 'deploy')
    finally:
        load.wait_for_more(50)  # some traffic after the release, for the checks below
        load.stop()
    assert run.returncode == 0, run.output
    assert 'Restart myproduct-api-8002' in run.output
    assert load.failures == [], logs_of(lab, host)
    assert len(load.answers) > 200
    assert load.answers[-1] == 'release under load'
    assert served_by(host) == (200, 'release under load')


def test_a_release_that_cannot_start_stops_at_the_first_port_and_rollback_restores(deployed, fab, host,
                                                                                   echo_file):
    serving = served_by(host)
    good = echo_file.read_text()
    echo_file.write_text('import a_module_that_does_not_exist\n' + good)
    try:
        run = fab('deploy', host.address)
    finally:
        echo_file.write_text(good)
    assert run.returncode != 0
    assert f'[{host.name}] deploy failed at task "supervisor : Restart myproduct-api-8001"' in run.output
    assert served_by(host) == serving  # port 8002 still runs the old release

    run = fab('rollback', host.address)
    assert run.returncode == 0, run.output
    status = fab('status', host.address)
    assert status.returncode == 0, status.output
    assert status.output.count('RUNNING') >= 3 and 'FATAL' not in status.output and 'BACKOFF' not in status.output
    assert len([line for line in status.output.splitlines() if line.startswith('  * ')]) == 1
    assert served_by(host) == serving


def test_restart_is_rolling_and_logs_show_the_traffic(deployed, fab, host):
    assert served_by(host)[0] == 200  # traffic for the logs to show
    run = fab('restart', host.address)
    assert run.returncode == 0, run.output
    assert run.output.index('myproduct-api-8001') < run.output.index('myproduct-api-8002')
    logs = fab('logs', host.address, '--lines', '20')
    assert logs.returncode == 0, logs.output
    assert 'POST /api/v0/echo/read 200' in logs.output


def test_an_unreachable_host_fails_fast_naming_it(fab, host):
    started = time.monotonic()
    run = fab('status', f'root@{host.address}:2222')
    assert run.returncode != 0
    assert f'[{host.name}] cannot reach {host.address}:2222 over SSH' in run.output
    assert time.monotonic() - started < 60
    run = fab('deploy', '10.231.0.250')
    assert run.returncode != 0 and '10.231.0.250 is neither a host nor a group' in run.output
