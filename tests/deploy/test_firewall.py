"""The firewall role: behind load balancers, the API ports answer the load balancers only, seen from
a plain host that must be refused; host_firewall closes all but SSH, HTTP(S) and listed ports."""

import http.client
import shlex
import socket

import pytest

import testhost

API_PORTS = [8001, 8002]
# Seconds a connection attempt may take: on the lab's bridge an admitted one takes milliseconds, and
# a dropped one would otherwise wait for the kernel's SYN retries (two minutes).
ATTEMPT = 2

PROBE = f'''
import socket, sys
for target in sys.argv[1:]:
    address, port = target.rsplit(':', 1)
    try:
        socket.create_connection((address, int(port)), timeout={ATTEMPT}).close()
        print(target, 'open')
    except OSError as error:
        print(target, type(error).__name__)
'''

WAIT = '''
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
'''

LISTENER = '''
import socket, sys
server = socket.create_server(('', int(sys.argv[1])))
while True:
    server.accept()[0].close()
'''


def reachable_from(host, targets):
    """{'address:port': True if a TCP connection from `host` gets through, else False}."""
    command = f'python3 -c {shlex.quote(PROBE)} ' + ' '.join(targets)
    lines = host.ssh(command).stdout.split()
    return dict(zip(lines[::2], (state == 'open' for state in lines[1::2]), strict=True))


def reachable_here(address, port):
    """Whether a TCP connection from this machine (the lab's gateway, not a load balancer) gets through."""
    try:
        socket.create_connection((address, port), timeout=ATTEMPT).close()
        return True
    except OSError:
        return False


def api_targets(api):
    return [f'{host.address}:{port}' for host in api for port in API_PORTS]


@pytest.fixture(scope='module')
def roles(lab):
    """The plain host (the single-host tests' host, in no group here), the load balancer, the API hosts."""
    plain, lb, *api = lab.hosts[:4]
    return plain, lb, api


@pytest.fixture(scope='module')
def fleet(playbook, roles, lab):
    """Run site.yml on the load balancer topology; SSH must answer on every host after every run."""
    plain, lb, api = roles

    def deploy(*args, lbs=(lb,), **variables):
        run = playbook('site.yml', *args, hosts=api, lb=list(lbs), api_ports=str(API_PORTS), **variables)
        assert run.returncode == 0, run.output
        for host in (*api, *lbs):
            host.ssh('true')
        return run

    return deploy


@pytest.fixture(scope='module')
def deployed(fleet):
    return fleet()


def test_the_load_balancer_reaches_every_api_port(deployed, roles):
    plain, lb, api = roles
    assert reachable_from(lb, api_targets(api)) == dict.fromkeys(api_targets(api), True)
    connection = http.client.HTTPConnection(lb.address, 80, timeout=30)
    connection.request('POST', '/api/v0/echo/read', '{"through": "the load balancer"}')
    assert connection.getresponse().status == 200
    connection.close()


def test_a_plain_host_is_refused_the_api_ports_but_reaches_ssh(deployed, roles):
    plain, lb, api = roles
    ssh = [f'{host.address}:22' for host in api]
    seen = reachable_from(plain, api_targets(api) + ssh)
    assert seen == {**dict.fromkeys(api_targets(api), False), **dict.fromkeys(ssh, True)}
    assert not any(reachable_here(host.address, port) for host in api for port in API_PORTS)


def test_a_second_run_changes_nothing(deployed, fleet, roles):
    plain, lb, api = roles
    run = fleet('-e', 'apiphant_full=true')  # every role runs, as the first time: none changes a thing
    assert all(run.outcome('firewall : Write the firewall rules to try, checked by nft', host.name)
               == 'ok' for host in api)
    recap = run.recap()
    assert {host.name: recap[host.name]['changed'] for host in (lb, *api)} == dict.fromkeys(
        (host.name for host in (lb, *api)), 0)


def test_the_rules_are_a_table_of_their_own_loaded_again_at_boot(deployed, roles):
    plain, lb, api = roles
    host = api[0]
    tables = host.ssh('nft list tables').stdout.split('\n')
    assert 'table inet apiphant' in tables
    assert 'include "/etc/nftables.d/apiphant.nft"' in host.ssh('cat /etc/nftables.conf').stdout
    # What nftables.service runs at boot; the lab's hosts have no systemd to run it, and the run says so.
    unit = host.ssh('cat /lib/systemd/system/nftables.service').stdout
    assert 'ExecStart=/usr/sbin/nft -f /etc/nftables.conf' in unit
    assert f'{host.name} runs no systemd' in deployed.output
    host.ssh('nft flush ruleset && nft -f /etc/nftables.conf')
    assert 'table inet apiphant' in host.ssh('nft list tables').stdout.split('\n')
    assert reachable_from(plain, api_targets([host])) == dict.fromkeys(api_targets([host]), False)
    assert reachable_from(lb, api_targets([host])) == dict.fromkeys(api_targets([host]), True)


def test_adding_and_removing_a_load_balancer_updates_the_rules(deployed, fleet, roles):
    """As `fab deploy all` does, the API hosts first; a table of the operator's own stays as it is."""
    plain, lb, api = roles
    operator = 'table inet operator { chain input { type filter hook input priority filter; tcp dport 9 drop; }; }'
    for host in api:
        host.ssh(f'nft {shlex.quote(operator)}')
    listed = [host.ssh('nft list table inet operator').stdout for host in api]
    try:
        added = fleet('--limit', 'api', lbs=(lb, plain), firewall_monitoring_addresses=f"['{testhost.GATEWAY}']")
        assert all(added.recap()[host.name]['changed'] > 0 for host in api)
        assert reachable_from(plain, api_targets(api)) == dict.fromkeys(api_targets(api), True)
        assert all(reachable_here(host.address, port) for host in api for port in API_PORTS)
    finally:
        removed = fleet('--limit', 'api')
    assert all(removed.recap()[host.name]['changed'] > 0 for host in api)
    assert reachable_from(plain, api_targets(api)) == dict.fromkeys(api_targets(api), False)
    assert not any(reachable_here(host.address, port) for host in api for port in API_PORTS)
    assert reachable_from(lb, api_targets(api)) == dict.fromkeys(api_targets(api), True)
    assert [host.ssh('nft list table inet operator').stdout for host in api] == listed
    for host in api:
        host.ssh('nft delete table inet operator')


@pytest.mark.parametrize('variable, value, message', [
    ('host_firewall_ports', '[8080, 99999]', 'host_firewall_ports=[8080, 99999]'),
    ('firewall_monitoring_addresses', "['metrics.example.com']", 'not host names (metrics.example.com)'),
])
def test_a_bad_firewall_variable_fails_naming_it_before_any_change(deployed, playbook, roles, variable, value,
                                                                   message):
    plain, lb, api = roles
    run = playbook('site.yml', '--limit', api[0].name, hosts=api, lb=[lb], api_ports=str(API_PORTS),
                   **{variable: value})
    assert run.returncode != 0 and message in run.output, run.output
    assert run.recap()[api[0].name]['changed'] == 0


def listen(host, port):
    """Start a process on the host accepting connections on every address at `port`; its PID, once
    it accepts them (checked from the host itself, through loopback, which every rule admits)."""
    command = f'setsid python3 -c {shlex.quote(LISTENER)} {port} </dev/null >/dev/null 2>&1 & echo $!'
    pid = host.ssh(command).stdout.strip()
    host.ssh(f'python3 -c {shlex.quote(WAIT)} {host.address} {port}')
    # Still running: the connections waited for were its own, not another server's on that port.
    host.ssh(f'kill -0 {pid}')
    return pid


def test_host_firewall_admits_ssh_http_https_and_listed_ports_only(playbook, lab):
    host = lab.hosts[0]  # a single host: nginx and the API processes together
    pids = []
    try:
        on = playbook('site.yml', host_firewall='true', host_firewall_ports='[9998]')
        try:
            assert on.returncode == 0, on.output
            host.ssh('true')
            pids = [listen(host, port) for port in (443, 9998, 9999)]
            seen = {port: reachable_here(host.address, port) for port in (22, 80, 443, 9998, 9999)}
            assert seen == {22: True, 80: True, 443: True, 9998: True, 9999: False}
            connection = http.client.HTTPConnection(host.address, 80, timeout=30)
            connection.request('GET', '/')
            assert connection.getresponse().status == 404  # nginx answers, through the firewall
            connection.close()
        finally:
            off = playbook('site.yml')
        assert off.returncode == 0, off.output
        host.ssh('true')
        assert 'apiphant' not in host.ssh('nft list tables').stdout
        assert 'apiphant' not in host.ssh('cat /etc/nftables.conf').stdout
        assert reachable_here(host.address, 9999)  # the port the table closed answers again
    finally:
        if pids:
            host.ssh('kill', *pids)


def test_rules_that_shut_ssh_out_undo_themselves(playbook, lab):
    """sshd answers Ansible on a port its configuration does not name (started with -p, as a port a
    forward or NAT would give): the rules admit the ports `sshd -T` names, no new SSH connection
    gets through them, and the host undoes them by itself, before anything is saved for boot."""
    host = lab.hosts[0]
    rules = ('nft list ruleset 2>/dev/null; grep -s apiphant /etc/nftables.conf; '
             'cat /etc/nftables.d/apiphant.nft 2>/dev/null; true')
    before = host.ssh(rules).stdout
    host.ssh('/usr/sbin/sshd -p 2200 -o PidFile=/run/sshd-2200.pid')
    try:
        run = playbook('site.yml', host_firewall='true', ansible_port='2200', firewall_confirm_timeout='20')
        assert run.returncode != 0
        assert (f'{host.name}: Wait for a new SSH connection through the new rules failed' in run.output
                and 'The new firewall rules were not kept: the host is back on its previous ones '
                    '(the new ones admitted SSH on 22' in ' '.join(run.output.split())), run.output
        assert reachable_here(host.address, 2200)
        assert host.ssh(rules).stdout == before  # running and for boot
        # The run ended under its own lock, released: the next run takes it at once.
        assert playbook('site.yml').returncode == 0
    finally:
        host.ssh('kill "$(cat /run/sshd-2200.pid)"')
