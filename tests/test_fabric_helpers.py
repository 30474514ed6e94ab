"""The Fabric tasks' own logic and help, without a host or root: parsing Ansible's output, the
inventory's groups, lock holders, SSH targets, sudo; `fab --list` and `fab TASK --help`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from invoke.exceptions import Exit

from apiphant_deploy import tasks

from support import ROOT

FAB = Path(sys.executable).parent / 'fab'
TASKS = ('backup', 'deploy', 'history', 'logs', 'migrations', 'restart', 'restore', 'rollback', 'status',
         'unlock')


def test_the_failed_task_is_the_last_begun_before_the_first_failure():
    output = ('TASK [release : Pack the release] ***\nok: [web1]\n'
              'TASK [release : Unpack the product into the release] ***\nfatal: [web1]: FAILED! => {}\n'
              'RUNNING HANDLER [supervisor : Restart] ***\nfatal: [web1]: FAILED! => {}\n')
    assert tasks.failed_task(output) == 'release : Unpack the product into the release'
    assert tasks.failed_task('PLAY RECAP ***\n') == ''


def test_a_groups_hosts_include_its_childrens_once_in_inventory_order():
    listing = {'all': {'children': ['api', 'lb', 'ungrouped']}, 'api': {'hosts': ['web1', 'web2']},
               'lb': {'hosts': ['lb1', 'web2']}}
    assert tasks.group_hosts(listing, 'all') == ['web1', 'web2', 'lb1']
    assert tasks.group_hosts(listing, 'ungrouped') == []


def test_a_lock_holder_reads_as_a_sentence_even_when_cut_short():
    line = 'alice laptop 3d12ab 4242 1764000000 2026-11-26T10:00:00Z deploy 9f8e'
    assert tasks.lock_holder(line) == ('alice on laptop (machine id 3d12ab) since 2026-11-26T10:00:00Z, '
                                       'running deploy (pid 4242)')
    assert tasks.lock_holder('alice laptop') == 'alice on laptop (machine id ?) since ?, running ? (pid ?)'


def test_a_target_takes_user_and_port_from_the_command_line_else_the_inventory(monkeypatch):
    monkeypatch.setenv('ANSIBLE_HOST_KEY_CHECKING', 'False')  # nothing is connected to here
    variables = {'ansible_host': '192.0.2.10', 'ansible_user': 'root', 'product_name': 'shop'}
    plain = tasks.Target('web1', variables)
    assert (plain.connection.host, plain.connection.user, plain.connection.port) == ('192.0.2.10', 'root', 22)
    assert (plain.home, plain.overrides) == ('/opt/shop', {})
    given = tasks.Target('web1', variables, 'deployer@192.0.2.10:2222')
    assert (given.connection.user, given.connection.port) == ('deployer', 2222)
    assert given.overrides == {'ansible_user': 'deployer', 'ansible_port': 2222}


def test_a_sudoer_runs_the_tasks_commands_through_sudo_without_a_password(monkeypatch):
    monkeypatch.setenv('ANSIBLE_HOST_KEY_CHECKING', 'False')
    root = tasks.Target('web1', {'ansible_user': 'root'})
    sudoer = tasks.Target('web1', {'ansible_user': 'admin'})
    assert root.as_root("tail -n 3 '/opt/shop/log/x.log'") == "tail -n 3 '/opt/shop/log/x.log'"
    assert sudoer.as_root("tail -n 3 '/opt/shop/log/x.log'") == \
        """sudo -n sh -c 'tail -n 3 '"'"'/opt/shop/log/x.log'"'"''"""


def test_a_restore_time_is_an_iso_time_with_its_zone():
    assert tasks.restore_time('2026-12-06 04:20:01.5+00').isoformat() == '2026-12-06T04:20:01.500000+00:00'
    assert tasks.restore_time('2026-12-06T05:20+01:00').utcoffset().total_seconds() == 3600
    with pytest.raises(Exit, match='is not a time'):
        tasks.restore_time('yesterday')
    with pytest.raises(Exit, match='has no time zone'):
        tasks.restore_time('2026-12-06 04:20:01')


def fab(*args):
    env = {**os.environ, 'FABRIC_INVENTORY': '/nonexistent/inventory.ini'}  # help needs no inventory
    return subprocess.run([FAB, *args], cwd=ROOT / 'deploy', capture_output=True, text=True, timeout=60, env=env)


def test_the_task_list_shows_each_tasks_first_sentence_whole():
    listed = fab('--list')
    assert listed.returncode == 0, listed.stderr
    lines = ' '.join(listed.stdout.split('Available tasks:')[1].split())
    helplines = dict(re.findall(r'(\w+) (.+?\.)(?= \w+ [A-Z]|$)', lines))
    assert sorted(helplines) == sorted(TASKS), lines
    assert all(line[0].isupper() and 'HOST' in line for line in helplines.values()), helplines


@pytest.mark.parametrize('asked', [('deploy', '--help'), ('deploy', '-h'), ('--help', 'deploy'), ('-h', 'deploy')])
def test_help_on_a_task_describes_it_and_each_option(asked):
    shown = fab(*asked)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert 'Provision HOST and release the product there.' in shown.stdout
    for option, words in (('--host=STRING', 'an inventory host'), ('--full', 'run every role'),
                          ('--ask-vault-pass', 'ask once for the password')):
        assert re.search(rf'^\s+{re.escape(option)}\s+{words}', shown.stdout, re.M), shown.stdout


@pytest.mark.parametrize('task', TASKS)
def test_every_option_of_every_task_is_described(task):
    shown = fab(task, '--help')
    options = re.findall(r'^\s+(--[\w-]+)(?:=\w+)?\s*(.*)$', shown.stdout.split('Options:')[1], re.M)
    assert options and all(description for _, description in options), shown.stdout
