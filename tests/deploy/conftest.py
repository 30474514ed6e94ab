"""Fixtures of the deploy tests: a lab of throwaway Debian hosts and a way to run the playbooks."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import testhost
import vagrantlab
from acmeserver import Pebble
from database import Database

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / 'playbooks'
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / 'ansible-playbook'


def pytest_collection_modifyitems(config, items):
    """Skip the deploy tests, saying why, only where network namespaces cannot be made."""
    reason = testhost.can_make_namespaces()
    if reason:
        for item in items:
            if Path(str(item.fspath)).parent == Path(__file__).parent:
                item.add_marker(pytest.mark.skip(reason=reason))


VAGRANT_UP_TEST = 'test_vagrant.py::test_vagrant_up_serves_the_example_and_provisions_idempotently'


def pytest_collection_finish(session):
    """When the real `vagrant up` test is to run, start its VM now (vagrantlab.Rehearsal) and run
    the test last: the minutes of emulation overlap the other tests instead of adding to them."""
    wanted = [item for item in session.items if item.nodeid.endswith(VAGRANT_UP_TEST)]
    if (wanted and not session.config.option.collectonly and not wanted[0].get_closest_marker('skip')
            and vagrantlab.skip_reason() is None):
        session.items.remove(wanted[0])
        session.items.append(wanted[0])
        vagrantlab.rehearsal(ROOT)


def pytest_sessionfinish():
    """Stop the VM of a session that ended before its test (Ctrl-C, -x): nothing is left behind."""
    vagrantlab.end_rehearsal()


@pytest.fixture(scope='session')
def lab():
    # Eight Debian 12 hosts with a shell as PID 1: one for the single-host tests, an [lb] and two [api]
    # for the rest, a [db] host (index 4), an existing database the roles never touch (index 5), and a
    # [backup] host (index 6) with the database it backs up (index 7); one Debian 13 host booted by
    # systemd, for the single-host tests and a reboot.
    lab = testhost.Lab(count=8, systemd=1)
    yield lab
    lab.stop()


@pytest.fixture(scope='session')
def external_database(lab):
    """An existing database the roles never touched, as a managed one is: PostgreSQL installed by hand
    on lab.hosts[5]; `.url` (postgresql://..., its password random) and `.host`."""
    return Database(lab.hosts[5])


@pytest.fixture(scope='module')
def pebble(lab, tmp_path_factory):
    """A real ACME server on the lab's bridge, for a module's tls=acme deploys."""
    server = Pebble(tmp_path_factory.mktemp('pebble'))
    yield server
    server.stop()


@pytest.fixture(scope='module')
def pebble_root(pebble, tmp_path_factory):
    """The root certificate of what pebble issues, to verify the certificates served."""
    path = tmp_path_factory.mktemp('pebble-root') / 'root.pem'
    path.write_text(pebble.root())
    return path


@pytest.fixture(scope='session')
def product(lab):
    """A copy of the example product that tests may change to make a new release."""
    folder = lab.workdir / 'product'
    shutil.copytree(ROOT / 'example', folder, ignore=shutil.ignore_patterns('__pycache__', 'tests'))
    return folder


def write_inventory(lab, product, hosts, file='inventory.ini', lb=(), background=(), db=(), backup=(),
                    **variables):
    """An INI inventory of the lab's hosts with the example product's variables; returns its path.
    The [db] group comes first, as a user's should: `fab deploy all` takes the hosts in its order."""
    lines = []
    for group, members in (('db', db), ('api', hosts), ('lb', lb), ('background', background), ('backup', backup)):
        lines += [f'[{group}]'] + [f'{host.name} ansible_host={host.address} ansible_user=root'
                                   for host in members] + ['']
    values = {
        'product_name': 'myproduct',
        'product_source': product / 'myproduct',
        'product_requirements': product / 'requirements.txt',
        'apiphant_package': ROOT,
        'server_name': '_',
        # The session's own wheels and release archives: ~/.cache/apiphant is shared with every other
        # test session on the machine, whose apiphant wheel, built from another checkout, differs and
        # would make a second run release again.
        'release_wheelhouse': lab.workdir / 'cache' / 'wheels',
        'release_archives': lab.workdir / 'cache' / 'releases',
        'ansible_ssh_private_key_file': lab.key,
        'ansible_ssh_common_args': "'" + ' '.join(testhost.ssh_options(lab.key)[2:]) + "'",
        **variables,
    }
    lines += ['[all:vars]'] + [f'{name}={value}' for name, value in values.items()]
    path = lab.workdir / file
    path.write_text('\n'.join(lines) + '\n')
    return path


def run_command(command, cwd, env):
    """Run a deploy command (ansible-playbook, fab) to its end: a testhost.PlaybookRun."""
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    return testhost.PlaybookRun(result)


def lab_environment(lab):
    """What ansible-playbook needs here: no colour, no host key prompts, SSH sockets in the lab."""
    control = lab.workdir / 'cp'
    control.mkdir(exist_ok=True)
    return {**os.environ, 'LC_ALL': 'C.UTF-8', 'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_HOST_KEY_CHECKING': 'False',
            'ANSIBLE_SSH_CONTROL_PATH_DIR': str(control), 'ANSIBLE_CONFIG': str(PLAYBOOKS / 'ansible.cfg')}


@pytest.fixture(scope='session')
def ansible_env(lab):
    return lab_environment(lab)


@pytest.fixture(scope='session')
def playbook(lab, product, ansible_env):
    """Run a playbook against the lab's hosts: playbook('site.yml', '-e', 'x=y')."""

    def run(name, *args, hosts=None, **variables):
        inventory = write_inventory(lab, product, hosts or lab.hosts[:1], **variables)
        return run_command([ANSIBLE_PLAYBOOK, '-i', inventory, name, *args], PLAYBOOKS, ansible_env)

    return run


@pytest.fixture(scope='session')
def fab(lab, product, ansible_env):
    """Run `fab ARGS` in deploy/ against the first lab host: fab('deploy', host.address); with
    `inventory=` another inventory file."""
    single = write_inventory(lab, product, lab.hosts[:1], file='fab-inventory.ini')

    def run(*args, inventory=single):
        env = {**ansible_env, 'FABRIC_INVENTORY': str(inventory)}
        return run_command([Path(sys.executable).parent / 'fab', *args], ROOT / 'deploy', env)

    return run


@pytest.fixture(scope='session')
def command():
    """Run a deploy command as a user would: command([fab, 'deploy', host], cwd, env) -> PlaybookRun."""
    return run_command


@pytest.fixture(scope='session')
def inventory(lab, product):
    """Write an inventory: inventory(api_hosts, file='x.ini', lb=[host], background=[host], db=[host],
    api_ports='[8001]')."""
    return lambda hosts, **options: write_inventory(lab, product, hosts, **options)


# Asks every API port of a host which release answers: "PORT LABEL" lines.
SERVED = '''
import json, os, urllib.request
for port in range(8001, 8001 + os.cpu_count()):
    request = urllib.request.Request(f'http://127.0.0.1:{port}/api/v0/echo/read', b'{}')
    with urllib.request.urlopen(request, timeout=30) as reply:
        print(port, json.load(reply)['server'])
'''


@pytest.fixture(scope='session')
def served_on_ports(lab):
    """served_on_ports(host) -> {port: the server label its echo answers}, each API port asked on the
    host (they listen on loopback), one per CPU as the playbooks' default api_ports."""

    def ask(host):
        answers = host.ssh(f'python3 -c {shlex.quote(SERVED)}').stdout.splitlines()
        return dict(line.split(' ', 1) for line in answers if line)

    return ask
