"""`ansible-playbook site.yml` on a fresh host, over real SSH: a Debian 12 host with a shell as PID 1,
and a Debian 13 host booted by systemd, which is rebooted to show the product comes back by itself."""

import http.client
import json
import re
import shutil
import time
from pathlib import Path

import pytest

ECHO = {'hello': 'world'}
EXAMPLE_ECHO = Path(__file__).resolve().parents[2] / 'example' / 'myproduct' / 'api' / 'v0' / 'echo.py'

# Each system and the CPython its Debian ships.
PYTHONS = {'bookworm-sh': '311', 'trixie-systemd': '313'}
SYSTEMS = tuple(PYTHONS)


def pytest_generate_tests(metafunc):
    """Each test runs on every system, or on those its `systems` marker names: the roles' checks of
    the variables stop the run on the controller the same way on every system, and only systemd
    brings services up at boot."""
    if 'system' in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker('systems')
        metafunc.parametrize('system', marker.args if marker else SYSTEMS, scope='module')


def post(address, path, body, port=80, headers=()):
    connection = http.client.HTTPConnection(address, port, timeout=30)
    try:
        connection.request('POST', path, json.dumps(body), {'Content-Type': 'application/json', **dict(headers)})
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), json.loads(reply.read())
    finally:
        connection.close()


@pytest.fixture(scope='module')
def host(lab, system):
    return lab.hosts[0] if system == 'bookworm-sh' else lab.systemd_hosts[0]


@pytest.fixture(scope='module')
def site(playbook, host):
    """Run site.yml on this module's host: site(api_ports='[8001]')."""
    return lambda *args, **variables: playbook('site.yml', *args, hosts=[host], **variables)


@pytest.fixture(scope='module')
def first_run(site, product):
    # The example's own echo, whatever release another module made of the shared product copy.
    shutil.copy(EXAMPLE_ECHO, product / 'myproduct' / 'api' / 'v0' / 'echo.py')
    run = site()
    assert run.returncode == 0, run.output
    return run


def on_host(host, command):
    """Run a shell command line on the host (ssh hands it to the remote shell); return its output."""
    return host.ssh(command).stdout


def test_the_echo_answers_through_nginx(first_run, host):
    status, headers, body = post(host.address, '/api/v0/echo/read', ECHO)
    assert (status, body) == (200, {**ECHO, 'server': 'myproduct'})
    assert headers['Server'] == 'nginx'  # server_tokens off: no version
    assert headers['Content-Type'] == 'application/json'
    assert post(host.address, '/api/v0/echo/nothing', ECHO)[0] == 404


def test_every_program_runs_as_the_product_user(first_run, host):
    status = on_host(host, 'supervisorctl status')
    programs = [line.split() for line in status.splitlines() if line.strip()]
    names = sorted(program[0] for program in programs)
    cpus = int(on_host(host, 'nproc'))
    assert names == sorted([f'myproduct-api-{8001 + n}' for n in range(cpus)]
                           + ['myproduct-background'])
    assert all(program[1] == 'RUNNING' for program in programs), status
    users = {line.split()[0] for line in on_host(host, 'ps -eo user:20,args').splitlines()
             if 'apiphant' in line and 'ps -eo' not in line}
    assert users == {'myproduct'}
    assert on_host(host, 'getent passwd myproduct').strip().endswith(':/usr/sbin/nologin')


def test_api_ports_listen_on_loopback_only(first_run, host):
    listening = on_host(host, 'ss -Hltn')
    api = [line.split()[3] for line in listening.splitlines() if ':80' in line.split()[3]
           and not line.split()[3].endswith(':80')]
    assert api and all(address.startswith('127.0.0.1:') for address in api), listening
    with pytest.raises(OSError):
        post(host.address, '/api/v0/echo/read', ECHO, port=8001)


def test_without_api_metrics_the_ports_serve_no_metrics_and_the_extra_is_not_installed(first_run, host):
    ask = "import urllib.request as u; u.urlopen('http://127.0.0.1:8001/metrics', timeout=30)"
    asked = host.ssh(f'python3 -c "{ask}"', check=False)
    assert asked.returncode != 0 and 'HTTP Error 404' in asked.stderr, asked.stderr
    imported = host.ssh('/opt/myproduct/current/venv/bin/python -c "import prometheus_client"',
                        check=False)
    assert imported.returncode != 0 and 'No module named' in imported.stderr


def test_configuration_checks_pass(first_run, host):
    host.ssh('nginx', '-t')
    rotate = host.ssh('logrotate', '-d', '/etc/logrotate.d/myproduct')
    output = rotate.stdout + rotate.stderr
    assert not [line for line in output.splitlines() if line.lower().startswith('error')], output
    assert '/opt/myproduct/log/nginx-*.log' in output


MEMORY = "awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo"  # Ansible's memtotal_mb
CEILING = ("awk '/^CapEff:/ {print $2} /^Max open files/ {print $5}' /proc/self/status /proc/self/limits; "
           "cat /proc/sys/fs/nr_open")
LIMITS = "awk '/^Max open files/ {print $4, $5}' /proc/%s/limits"


def limits(host, pids):
    """{pid: (soft, hard)}: the descriptor limits of the host's processes."""
    return {pid: tuple(map(int, on_host(host, LIMITS % pid).split())) for pid in pids}


def test_the_host_is_set_for_tens_of_thousands_of_connections(first_run, host):
    """The kernel's listen queues and local ports, nginx's connections and descriptors, the API
    processes' descriptors: as the roles size them from the host's memory, in force in the running
    processes. Within what the host allows a process: fs.nr_open, or where root may not raise its
    hard limit (no CAP_SYS_RESOURCE, as in a container, and this machine) that limit."""
    memory = int(on_host(host, MEMORY))
    capabilities, hard, nr_open = on_host(host, CEILING).split()
    ceiling = int(nr_open) if int(capabilities, 16) >> 24 & 1 else int(hard)
    asked = max(1024, min(memory * 8, 131072))
    worker_connections, worker_nofile = min(asked, ceiling), min(asked * 2, ceiling)
    minfds = min(max(4096, min(memory * 16, 1048576)), ceiling)
    cpus = int(on_host(host, 'nproc'))
    api_ports = [str(port) for port in range(8001, 8001 + cpus)]
    sysctl = on_host(host, 'cd /proc/sys/net && cat core/somaxconn ipv4/tcp_max_syn_backlog '
                           'ipv4/ip_local_port_range ipv4/ip_local_reserved_ports').split()
    if host.ssh('test', '-w', '/proc/sys/net/core/somaxconn', check=False).returncode == 0:
        assert sysctl == ['65535', '65535', '10240', '65535', '-'.join(dict.fromkeys([api_ports[0], api_ports[-1]]))]
    else:  # read-only, as systemd-nspawn leaves /proc/sys: each setting kept, and named in the run's output
        kept = re.findall(r'kept (net\.[a-z0-9_.]+): ', first_run.output)
        assert kept == ['net.core.somaxconn', 'net.ipv4.tcp_max_syn_backlog', 'net.ipv4.ip_local_port_range',
                        'net.ipv4.ip_local_reserved_ports'], first_run.output
    # A listening socket's Send-Q is its listen queue: nginx's and every API port's as long as somaxconn.
    listening = [(line.split()[3].rsplit(':', 1)[1], line) for line in on_host(host, 'ss -Hltnp').splitlines()]
    queues = {port: line.split()[2] for port, line in listening}
    assert {port: queues.get(port) for port in ['80', *api_ports]} == dict.fromkeys(['80', *api_ports], sysctl[0])
    configuration = on_host(host, 'nginx -T 2>/dev/null')
    assert f'\tworker_connections {worker_connections};' in configuration
    assert f'\nworker_rlimit_nofile {worker_nofile};' in configuration
    workers = on_host(host, "pgrep -fx 'nginx: worker process'").split()
    assert workers and set(limits(host, workers).values()) == {(worker_nofile,) * 2}
    assert f'\nminfds={minfds}\n' in on_host(host, 'cat /etc/supervisor/supervisord.conf')
    programs = limits(host, on_host(host, 'supervisorctl pid all').split())
    assert len(programs) == cpus + 1 and all(hard >= minfds for _, hard in programs.values()), programs
    # apiphant raises its own limit to the hard one: each listening API process may use all of it.
    api = limits(host, [re.search(r'pid=(\d+)', line).group(1) for port, line in listening if port in api_ports])
    assert len(api) == cpus and all(soft == hard >= minfds for soft, hard in api.values()), api


def test_the_product_user_cannot_write_its_code_or_virtualenv(first_run, host):
    for path in ('/opt/myproduct/current/myproduct', '/opt/myproduct/current/venv/bin',
                 '/opt/myproduct/wheels', '/opt/myproduct/log'):
        result = host.ssh('sudo', '-u', 'myproduct', 'touch', f'{path}/x', check=False)
        assert result.returncode != 0 and 'Permission denied' in result.stderr
    host.ssh('sudo', '-u', 'myproduct', 'touch', '/opt/myproduct/shared/x')


# Every log name a root process opens: Supervisor's program logs (stdout_logfile, and the backups of
# its size rotation), nginx's access and error logs, and what logrotate makes of them.
LOG_NAMES = '''
sed -n 's/^stdout_logfile=//p' /etc/supervisor/conf.d/myproduct.conf
nginx -T 2>/dev/null | sed -n 's/^ *\\(access_log\\|error_log\\) \\([^ ;]*\\).*/\\2/p' | grep /opt/
'''


@pytest.mark.systems('bookworm-sh')
def test_root_writes_no_log_through_a_name_the_product_user_swapped_and_nobody_reads_them(first_run, host):
    """DSA-3701 (CVE-2016-1247) on this deploy: a product with a remote code execution bug swaps
    the logs root writes for links into /etc, then waits for a reopen."""
    logs = sorted(set(on_host(host, LOG_NAMES).split()))
    assert '/opt/myproduct/log/api-8001.log' in logs and '/opt/myproduct/log/nginx-error.log' in logs, logs
    names = logs + [f'{log}.1' for log in logs] + [f'{log}.2.gz' for log in logs]
    for number, name in enumerate(names):
        host.ssh('sudo', '-u', 'myproduct', 'ln', '-sfn', f'/etc/pwned-{number}', name, check=False)
    host.ssh('sudo', '-u', 'myproduct', 'sh', '-c', 'mv /opt/myproduct/log /opt/myproduct/shared/ && '
             'mkdir /opt/myproduct/log', check=False)
    # Every reopen: a program's restart, Supervisor's SIGUSR2, nginx's, a forced rotation.
    on_host(host, 'supervisorctl restart myproduct-api-8001 && kill -USR2 "$(supervisorctl pid)" '
                  '&& nginx -s reopen && logrotate -f /etc/logrotate.d/myproduct')
    assert post(host.address, '/api/v0/echo/read', ECHO)[0] == 200  # (nginx writes its access log)
    assert on_host(host, 'ls /etc | grep pwned || true') == ''
    for log in logs:
        # A file, not a link, and not the product's (nginx gives the logs it reopens to its workers' user).
        kind, owner = on_host(host, f'stat -c "%F|%U" {log}').strip().split('|')
        assert kind.startswith('regular') and owner in ('root', 'www-data'), (log, kind, owner)
        read = host.ssh('sudo', '-u', 'nobody', 'cat', log, check=False)
        assert read.returncode != 0 and 'Permission denied' in read.stderr, log
    assert on_host(host, 'stat -c "%U %G %a" /opt/myproduct/log').split() == ['root', 'myproduct', '750']


@pytest.mark.systems('bookworm-sh')
def test_programs_supervisor_refuses_are_not_left_in_place(first_run, site, host):
    """Supervisor refuses its configuration (here for a broken program file of an operator's, beside
    the product's): new programs are not kept, for Supervisor to refuse at its next start."""
    programs = 'cat /etc/supervisor/conf.d/myproduct.conf; ls /etc/supervisor/conf.d'
    before = on_host(host, programs)
    on_host(host, 'printf "[program:broken]\\n" > /etc/supervisor/conf.d/broken.conf')
    try:
        run = site(api_drain_timeout='11')  # a program setting: the programs' file changes
        assert run.returncode != 0
        assert 'Supervisor refuses its configuration with the new programs' in run.output
        assert 'program:broken' in run.output and 'The previous programs are back' in run.output, run.output
        assert on_host(host, programs) == before.replace('myproduct.conf', 'broken.conf\nmyproduct.conf')
    finally:
        on_host(host, 'rm /etc/supervisor/conf.d/broken.conf')
    assert site().returncode == 0


# A task of each role a stamp may skip, and whether it runs (ok or changed) when nothing changed.
ROLE_TASKS = ('product : Create the product user, without a login shell',
              'packages : Install the packages an API host needs',
              "firewall : Check the firewall's ports are port numbers",
              'kernel : Write the kernel settings, for every boot',
              "supervisor : Write the product's Supervisor programs", 'nginx : Start nginx',
              "logrotate : Write the logrotate configuration of the product's nginx logs")


@pytest.mark.systems('bookworm-sh')
def test_the_servers_options_come_from_the_inventory(first_run, site, host):
    """CORS, the log format and level, the timeouts: inventory variables, on apiphant's command line."""
    options = {'api_cors': ['https://app.example.com'], 'api_log_format': 'json', 'api_log_level': 'info',
               'api_idle_timeout': 80, 'api_request_timeout': 20}
    try:
        run = site('-e', json.dumps(options))
        assert run.returncode == 0, run.output
        status, headers, _ = post(host.address, '/api/v0/echo/read', ECHO, headers={'Origin': 'https://app.example.com'})
        assert status == 200 and headers['Access-Control-Allow-Origin'] == 'https://app.example.com'
        assert 'X-Request-ID' in headers['Access-Control-Expose-Headers']
        # The access line of that very request, as JSON, in one of the ports' logs.
        found = on_host(host, f"grep -h '{headers['X-Request-ID']}' /opt/myproduct/log/api-*.log")
        line = json.loads(found.splitlines()[-1])
        assert (line['request_id'], line['path'], line['status']) == (headers['X-Request-ID'], '/api/v0/echo/read', 200)
        programs = on_host(host, 'cat /etc/supervisor/conf.d/myproduct.conf')
        assert '--idle-timeout 80 --request-timeout 20 --cors https://app.example.com' in programs
    finally:
        assert site().returncode == 0  # the defaults again, for the tests after this one


def test_a_second_run_changes_nothing(first_run, site, host):
    # With apiphant_full every role runs, as the first run: the roles themselves change nothing. A
    # kernel setting the host may not change (read-only, as /proc/sys in many containers) is kept
    # and named, never a failure.
    read_only = '/proc/sys/net/core/somaxconn'
    on_host(host, f'mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only}')
    try:
        run = site('-e', 'apiphant_full=true')
    finally:
        on_host(host, f'umount {read_only}')
    assert run.returncode == 0, run.output
    kept = r'kept net\.core\.somaxconn: \d+ \(65535 refused here: Read-only file system\)'
    assert re.search(kept, ' '.join(run.output.split())), run.output
    recap = run.recap()[host.name]
    assert recap['changed'] == 0 and recap['failed'] == 0, run.output
    assert {task: run.outcome(task, host.name) for task in ROLE_TASKS} == dict.fromkeys(ROLE_TASKS, 'ok')


@pytest.mark.systems('bookworm-sh')
def test_the_stamps_skip_the_roles_until_a_variable_or_what_they_run_changes(first_run, site, host):
    run = site()
    assert run.returncode == 0 and run.recap()[host.name]['changed'] == 0, run.output
    assert {task: run.outcome(task, host.name) for task in ROLE_TASKS} == dict.fromkeys(ROLE_TASKS, 'skipping')
    # A variable of the packages role goes into its stamp only: that role runs again, the others not.
    run = site('-e', 'packages_cache_valid_time=86401')
    assert run.returncode == 0, run.output
    assert [task for task in ROLE_TASKS if run.outcome(task, host.name) != 'skipping'] == [ROLE_TASKS[1]]
    # nginx stopped: its stamp is the host's, but its role runs again and starts it.
    on_host(host, 'nginx -s stop; while [ -e /run/nginx.pid ]; do sleep 0.1; done')
    run = site()
    assert run.returncode == 0, run.output
    assert run.outcome('nginx : Start nginx', host.name) == 'changed'
    assert post(host.address, '/api/v0/echo/read', ECHO)[0] == 200


def test_a_new_release_is_served_and_the_old_one_kept(first_run, site, product, host):
    echo = product / 'myproduct' / 'api' / 'v0' / 'echo.py'
    before = set(on_host(host, 'ls /opt/myproduct/releases').split())
    echo.write_text(echo.read_text().replace("'myproduct'", "'myproduct, release 2'"))
    run = site()
    assert run.returncode == 0, run.output
    assert 'Restart myproduct-api-8001' in run.output
    assert post(host.address, '/api/v0/echo/read', ECHO)[2]['server'] == 'myproduct, release 2'
    after = set(on_host(host, 'ls /opt/myproduct/releases').split())
    assert before < after and len(after) == len(before) + 1
    current = on_host(host, 'readlink /opt/myproduct/current').strip()
    assert current.rsplit('/', 1)[1] in after - before


@pytest.mark.parametrize('variable, value, message', [
    ('api_cors', ['https://app.example.com/path'], 'api_cors=["https://app.example.com/path"]'),
    ('api_log_level', 'loud', 'api_log_level'),
    # Ansible's role argument validation: the types.
    ('api_ports', 'abc', "option ''api_ports'' is of type str and we were unable to convert to int"),
    ('api_drain_timeout', 'soon', "argument ''api_drain_timeout'' is of type str and we were unable to convert to int"),
    ('api_metrics', 'maybe', "argument ''api_metrics'' is of type str and we were unable to convert to bool"),
    # The roles' own checks: what a type cannot say.
    ('api_ports', '[8001, 99999]', 'api_ports=[8001, 99999]'),
    ('product_source', '/nonexistent/product', 'product_source=/nonexistent/product'),
    ('product_name', 'My-Product', 'product_name=My-Product'),
    ('releases_keep', '1', 'releases_keep=1: needs at least 2'),
    ('product_home', '/opt/my product', 'product_home="/opt/my product": needs an absolute path'),
    ('supervisor_log_maxbytes', '50MB;x', 'supervisor_log_maxbytes=50MB;x: needs a size such as 50MB'),
])
@pytest.mark.systems('bookworm-sh')
def test_a_bad_variable_fails_early_naming_it(first_run, site, host, variable, value, message):
    run = site(**{variable: value})
    assert run.returncode != 0
    assert message in ' '.join(run.output.split())  # as one line, however the YAML output wraps it
    assert run.recap()[host.name]['changed'] == 0


@pytest.mark.systems('bookworm-sh')
def test_check_mode_runs_through_and_changes_nothing(first_run, site, host):
    for extra in ([], ['-e', 'apiphant_full=true']):  # the stamps skipping the roles, then every role
        run = site('--check', *extra)
        assert run.returncode == 0, run.output
        assert run.recap()[host.name]['changed'] == 0, run.output


# What reaches a configuration or a command line is matched to its end (\\Z): a regular expression's $
# (Ansible's match) also matches before a final line break, which would start a line of its own there.
@pytest.mark.parametrize('variable, value, shown', [
    ('product_name', 'myproduct\n', 'product_name=myproduct'),
    ('product_home', '/opt/myproduct\n', 'product_home="/opt/myproduct\\n"'),
    ('api_host', '127.0.0.1\n', 'api_host="127.0.0.1\\n"'),
    ('api_max_body', '1m\n', 'api_max_body=1m'),
    ('server_name', 'shop.example.com\n', 'server_name=shop.example.com'),
    ('nginx_proxy_read_timeout', '60s\n', 'nginx_proxy_read_timeout=60s'),
    ('nginx_trusted_proxies', ['10.0.0.1\n'], "nginx_trusted_proxies=['10.0.0.1"),
    ('supervisor_log_maxbytes', '50MB\n', 'supervisor_log_maxbytes=50MB'),
    ('supervisor_conf_dir', '/etc/supervisor/conf.d\n', 'supervisor_conf_dir="/etc/supervisor/conf.d\\n"'),
    ('firewall_table', 'apiphant\n', 'firewall_table=apiphant'),
])
@pytest.mark.systems('bookworm-sh')
def test_a_value_with_a_trailing_line_break_fails_naming_it(first_run, site, host, variable, value, shown):
    run = site('-e', json.dumps({variable: value}))
    assert run.returncode != 0
    assert shown in run.output, run.output
    assert run.recap()[host.name]['changed'] == 0


def test_the_virtualenv_has_wheels_for_the_hosts_own_python(first_run, host, system):
    version = on_host(host, 'python3 -c "import sys; print(*sys.version_info[:2], sep=str())"').strip()
    assert version == PYTHONS[system]
    # Compiled for it, and only for it: the wheels of the other system's Python stay on the controller.
    tags = set(on_host(host, 'ls /opt/myproduct/wheels | grep -o "\\-cp3[0-9]*-" | sort -u').split())
    assert tags == {f'-cp{version}-'}
    module = on_host(host, '/opt/myproduct/current/venv/bin/python -c '
                           '"import gevent.libev.corecext as c; print(c.__file__)"')
    assert f'.cpython-{version}-' in module


def wait_for_answer(address, timeout):
    """The echo's reply through nginx once the host answers it, asked until `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return post(address, '/api/v0/echo/read', ECHO)
        except (OSError, http.client.HTTPException, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.systems('trixie-systemd')
def test_the_product_answers_again_after_a_reboot(first_run, host):
    current = on_host(host, 'readlink /opt/myproduct/current')
    server = post(host.address, '/api/v0/echo/read', ECHO)[2]['server']
    host.reboot()
    # Nobody touches the host: systemd starts nginx and Supervisor, Supervisor the product.
    status, _, body = wait_for_answer(host.address, 120)
    assert (status, body) == (200, {**ECHO, 'server': server})
    assert on_host(host, 'systemctl is-enabled nginx supervisor').split() == ['enabled', 'enabled']
    assert on_host(host, 'readlink /opt/myproduct/current') == current
    log = on_host(host, 'stat -c "%U %a" /opt/myproduct/log; ls /opt/myproduct/log').split()
    assert log[:2] == ['root', '750'] and 'api-8001.log' in log, log
