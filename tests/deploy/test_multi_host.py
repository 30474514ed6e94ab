"""Several API hosts behind a load-balancer host: `fab deploy all` rolls out host by host."""

import http.client
import json

import pytest


@pytest.fixture(scope='module')
def roles(lab):
    lb, *api = lab.hosts[1:4]
    return lb, api


@pytest.fixture(scope='module')
def deployed(fab, inventory, roles):
    lb, api = roles
    run = fab('deploy', 'all', inventory=inventory(api, file='multi.ini', lb=[lb], api_ports='[8001, 8002]'))
    assert run.returncode == 0, run.output
    return run


def test_hosts_are_deployed_one_after_another_api_first(deployed, roles):
    lb, api = roles
    starts = [deployed.output.index(f'[{host.name}] deploy: ansible-playbook') for host in (*api, lb)]
    ends = [deployed.output.index(f'[{host.name}] deploy: done') for host in (*api, lb)]
    assert starts == sorted(starts) and all(end < start for end, start in zip(ends, starts[1:]))


def test_the_load_balancer_spreads_requests_over_every_api_host(deployed, roles, lab):
    lb, api = roles
    for number in range(40):
        connection = http.client.HTTPConnection(lb.address, 80, timeout=30)
        connection.request('POST', '/api/v0/echo/read', json.dumps({'n': number}))
        reply = connection.getresponse()
        assert reply.status == 200 and json.loads(reply.read())['n'] == number
        connection.close()
    for host in api:
        served = host.ssh('cat /opt/myproduct/log/api-*.log', key=lab.key).stdout
        assert served.count('POST /api/v0/echo/read 200') >= 5, host.name


def test_api_hosts_listen_on_their_private_address_and_run_no_nginx(deployed, roles, lab):
    lb, api = roles
    for host in api:
        listening = host.ssh('ss -Hltn', key=lab.key).stdout
        assert f'{host.address}:8001' in listening and f'{host.address}:8002' in listening
        assert ':80 ' not in listening
        assert 'nginx' not in host.ssh('dpkg -l nginx 2>/dev/null | grep ^ii || true', key=lab.key).stdout
    assert ':80 ' in lb.ssh('ss -Hltn', key=lab.key).stdout
    assert 'apiphant' not in lb.ssh('ps -eo args', key=lab.key).stdout
