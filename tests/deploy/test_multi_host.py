"""Several API hosts behind a load-balancer host: `fab deploy all` rolls out host by host, TLS ends on
the load balancer, and one API host runs the background tasks."""

import http.client
import json
import ssl
import threading

import pytest
from test_tls import assert_https_only, make_certificate


@pytest.fixture(scope='module')
def roles(lab):
    lb, *api = lab.hosts[1:4]
    return lb, api


@pytest.fixture(scope='module')
def certificate(roles, tmp_path_factory):
    """(CA, certificate, key): the load balancer's certificate for tls=files, from a CA of the test's."""
    return make_certificate(tmp_path_factory.mktemp('lb-tls'), roles[0].address)


@pytest.fixture(scope='module')
def deployed(fab, inventory, roles, certificate):
    lb, api = roles
    _, crt, key = certificate
    run = fab('deploy', 'all', inventory=inventory(api, file='multi.ini', lb=[lb], api_ports='[8001, 8002]',
                                                   tls='files', tls_certificate=crt, tls_certificate_key=key))
    assert run.returncode == 0, run.output
    return run


def test_hosts_are_deployed_one_after_another_api_first(deployed, roles):
    lb, api = roles
    starts = [deployed.output.index(f'[{host.name}] deploy: ansible-playbook') for host in (*api, lb)]
    ends = [deployed.output.index(f'[{host.name}] deploy: done') for host in (*api, lb)]
    assert starts == sorted(starts) and all(end < start for end, start in zip(ends[:-1], starts[1:], strict=True))


def test_tls_ends_on_the_load_balancer_with_the_users_certificate(deployed, roles, certificate):
    lb, _ = roles
    ca, _, key = certificate
    assert_https_only(lb, ca)
    assert all(line not in deployed.output for line in key.read_text().strip().splitlines()[1:-1])
    mode = lb.ssh('stat', '-c', "'%U %a'", '/etc/nginx/tls/myproduct.key', '/etc/nginx/tls').stdout
    assert mode.split('\n')[:2] == ['root 600', 'root 700']


def test_the_load_balancer_spreads_requests_over_every_api_host(deployed, roles, certificate):
    lb, api = roles
    context = ssl.create_default_context(cafile=str(certificate[0]))
    for number in range(40):
        connection = http.client.HTTPSConnection(lb.address, 443, timeout=30, context=context)
        connection.request('POST', '/api/v0/echo/read', json.dumps({'n': number}))
        reply = connection.getresponse()
        assert reply.status == 200 and json.loads(reply.read())['n'] == number
        connection.close()
    for host in api:
        served = host.ssh('cat /opt/myproduct/log/api-*.log').stdout
        assert served.count('POST /api/v0/echo/read 200') >= 5, host.name


def test_api_hosts_listen_on_their_private_address_and_run_no_nginx(deployed, roles):
    lb, api = roles
    for host in api:
        listening = host.ssh('ss -Hltn').stdout
        assert f'{host.address}:8001' in listening and f'{host.address}:8002' in listening
        assert ':80 ' not in listening and ':443 ' not in listening
        assert 'nginx' not in host.ssh('dpkg -l nginx 2>/dev/null | grep ^ii || true').stdout
    assert ':80 ' in lb.ssh('ss -Hltn').stdout and ':443 ' in lb.ssh('ss -Hltn').stdout
    assert 'apiphant' not in lb.ssh('ps -eo args').stdout


def background_runs(host):
    return 'apiphant-background' in host.ssh('ps -eo args').stdout


class Watch(threading.Thread):
    """Which API hosts run the background tasks, asked in turn until stopped; `overlaps` holds every
    time a host ran them both before and after another host was seen running them."""

    def __init__(self, hosts):
        super().__init__(daemon=True)
        self.hosts = hosts
        self.stopped = threading.Event()
        self.samples, self.overlaps = 0, []

    def run(self):
        seen = [background_runs(host) for host in self.hosts]
        while not self.stopped.is_set() and self.samples < 5000:
            for index, host in enumerate(self.hosts):
                before = list(seen)
                seen[index] = background_runs(host)
                others = [other for other in range(len(self.hosts)) if other != index]
                if seen[index] and before[index] and any(before[other] for other in others):
                    self.overlaps.append(before)
            self.samples += 1

    def stop(self):
        self.stopped.set()
        self.join(60)


def test_one_api_host_runs_the_background_tasks_and_moving_them_never_runs_two(deployed, fab, inventory,
                                                                               roles):
    lb, api = roles
    assert [background_runs(host) for host in api] == [True, False]  # the first [api] host's
    moved = inventory(api, file='moved.ini', lb=[lb], background=[api[1]], api_ports='[8001, 8002]')
    watch = Watch(api)
    watch.start()
    try:
        # The new host first: it stops them on the old one before it starts them.
        run = fab('deploy', api[1].name, inventory=moved)
        assert run.returncode == 0, run.output
        assert [background_runs(host) for host in api] == [False, True]
        run = fab('deploy', api[0].name, inventory=moved)
        assert run.returncode == 0, run.output
    finally:
        watch.stop()
    assert watch.samples > 10 and watch.overlaps == []
    assert [background_runs(host) for host in api] == [False, True]
    assert 'background' not in api[0].ssh('supervisorctl avail').stdout
    run = fab('restart', api[0].name, inventory=moved)  # a restart starts none where there is none
    assert run.returncode == 0, run.output
    assert [background_runs(host) for host in api] == [False, True]
