"""A host run by a team: its deploy lock (two runs, by fab or ansible-playbook, never interleave; a
run that cannot take it fails naming its holder; a killed run's lock is stale; no other local user
can hold or delay it; `fab unlock HOST` breaks one saying whose it was) and its audit trail (`fab
status` and `fab history`). The lock's logic, roles/lock/files/deploy_lock.py, is tested here first
without a host."""

import fcntl
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ECHO = ROOT / 'example' / 'myproduct' / 'api' / 'v0' / 'echo.py'
LOCK = '/run/apiphant/myproduct.lock'
SCRIPT = ROOT / 'playbooks' / 'roles' / 'lock' / 'files' / 'deploy_lock.py'
spec = importlib.util.spec_from_file_location('deploy_lock', SCRIPT)
deploy_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deploy_lock)
# Asks the first API port which release answers.
READ_ECHO = '''
import json, urllib.request
request = urllib.request.Request('http://127.0.0.1:8001/api/v0/echo/read', b'{}')
print(json.load(urllib.request.urlopen(request, timeout=30))['server'])
'''
# On the host, as root: start a process that, as the user given, holds flock on every file and folder
# under the paths given it can open, and prints them, then `ready`; it runs until killed.
HOG = '''
import fcntl, os, pwd, resource, sys, time
user = pwd.getpwnam(sys.argv[1])
os.setgroups([]); os.setgid(user.pw_gid); os.setuid(user.pw_uid)
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
held = []
for root in sys.argv[2:]:
    for folder, _, files in os.walk(root):
        for path in [folder] + [os.path.join(folder, name) for name in files]:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: both users hold it
                held.append(path)
            except OSError:
                pass
print(*held, 'ready', sep='\\n', flush=True)
time.sleep(3600)
'''


@pytest.fixture(scope='module')
def host(lab):
    return lab.hosts[0]


def labelled(lab, product, label, inventory, host, **variables):
    """A copy of the product whose echo answers `server: label`, and an inventory deploying it."""
    folder = lab.workdir / f'product-{label}'
    shutil.copytree(product, folder, dirs_exist_ok=True)
    (folder / 'myproduct' / 'api' / 'v0' / 'echo.py').write_text(
        EXAMPLE_ECHO.read_text().replace("'myproduct'", repr(label)))
    return inventory([host], file=f'{label}.ini', product_source=folder / 'myproduct', **variables)


def locked(host):
    return host.ssh(f'cat {LOCK}', check=False).stdout.strip()


def audit_trail(host):
    return host.ssh('cat /opt/myproduct/audit.log', check=False).stdout.splitlines()


def holder_line(action='deploy', machine=None, pid=4242, user='alice', host='laptop'):
    line = deploy_lock.holder(action, user, host, pid, now=1)
    return line if machine is None else line.replace(f' {deploy_lock.machine_id()} ', f' {machine} ', 1)


@pytest.fixture
def lock(tmp_path):
    """A lock file's path in a folder as root's /run/apiphant: (the lock, the product's home)."""
    home = tmp_path / 'home'
    home.mkdir()
    tmp_path.chmod(0o755)
    return tmp_path / 'locks' / 'product.lock', home


def test_the_lock_is_taken_when_free_and_only_its_holder_releases_it(lock):
    path, home = lock
    me, other = holder_line(), holder_line(user='bob')
    assert deploy_lock.take(path, me, 0) == (True, '')
    assert deploy_lock.take(path, other, 0.2) == (False, me)
    assert not deploy_lock.free(path, other, time.monotonic() + 1)
    assert deploy_lock.main(['release', str(path), me, str(home), 'alice@laptop', 'deploy', 'r1', '-', 'ok']) == 0
    assert path.read_text() == ''  # free: the file stays, empty
    assert (home / 'audit.log').read_text().split()[1:] == ['alice@laptop', 'deploy', 'r1', '-', 'ok']
    assert oct(path.stat().st_mode & 0o777) == '0o600' and oct(path.parent.stat().st_mode & 0o777) == '0o700'


def test_the_audit_line_of_a_run_that_migrated_ends_with_the_migrations_applied(lock):
    path, home = lock
    me = holder_line()
    deploy_lock.take(path, me, 0)
    entry = ['alice@laptop', 'deploy', 'r2', '-', 'failed', '0002.title,0003.drop-name']
    assert deploy_lock.main(['release', str(path), me, str(home), *entry]) == 0
    assert (home / 'audit.log').read_text().split()[1:] == [*entry[:-1], 'migrated=0002.title,0003.drop-name']


def test_a_held_flock_delays_taking_the_lock_at_most_its_timeout(lock):
    path, _ = lock
    me = holder_line()
    deploy_lock.take(path, me, 0)
    assert deploy_lock.free(path, me, time.monotonic())
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert deploy_lock.take(path, holder_line(user='bob'), 0.3) == (False, '')
    finally:
        os.close(fd)
    assert deploy_lock.take(path, holder_line(user='bob'), 0)[0]


def test_a_failing_audit_write_still_frees_the_lock(lock, capsys):
    path, home = lock
    me = holder_line()
    deploy_lock.take(path, me, 0)
    (home / 'audit.log').mkdir()  # any error of the append: a full disk on the host test below
    assert deploy_lock.main(['release', str(path), me, str(home), 'alice@laptop', 'deploy', 'r1', '-', 'ok']) == 1
    assert 'cannot append to' in capsys.readouterr().err and path.read_text() == ''


def test_a_lock_folder_another_user_can_change_is_refused(lock):
    path, _ = lock
    path.parent.mkdir(mode=0o700)
    os.chown(path.parent, 65534, 65534)  # nobody made it first
    with pytest.raises(deploy_lock.Refused, match='not a folder only root can change'):
        deploy_lock.take(path, holder_line(), 0)
    path.parent.chmod(0o777)
    os.chown(path.parent, 0, 0)
    with pytest.raises(deploy_lock.Refused, match='not a folder only root can change'):
        deploy_lock.take(path, holder_line(), 0)


def test_only_a_lock_of_this_machine_whose_run_is_gone_is_stale():
    gone = subprocess.Popen(['true'])
    gone.wait()
    assert deploy_lock.stale(holder_line(pid=gone.pid))
    assert deploy_lock.stale(holder_line(pid=os.getpid()))  # the pid is alive, but no ansible-playbook
    # Another machine's, even of this machine's host name: never stale here.
    assert not deploy_lock.stale(holder_line(pid=gone.pid, machine='0' * 32, host=os.uname().nodename))
    assert not deploy_lock.stale(holder_line(pid=gone.pid, machine='-'))
    assert not deploy_lock.stale('alice laptop 4242 1 2026-11-26T10:00:00Z deploy')  # not a holder line


def test_a_stale_line_is_taken_over_only_while_it_holds_the_lock(lock):
    path, _ = lock
    killed, me = holder_line(user='killed'), holder_line()
    deploy_lock.take(path, killed, 0)
    assert deploy_lock.take(path, me, 0, stale_line=holder_line(user='other')) == (False, killed)
    assert deploy_lock.take(path, me, 0, stale_line=killed) == (True, killed)


@pytest.fixture(scope='module')
def deployed(fab, lab, product, inventory, host, served_on_ports):
    run = fab('deploy', host.address, inventory=labelled(lab, product, 'before', inventory, host))
    assert run.returncode == 0, run.output
    assert set(served_on_ports(host).values()) == {'before'}
    return run


def test_two_deploys_started_together_one_wins_the_other_names_it(deployed, fab, lab, product, inventory,
                                                                   host, served_on_ports):
    inventories = {label: labelled(lab, product, label, inventory, host, lock_timeout=2)
                   for label in ('first', 'second')}
    runs = {}
    threads = [threading.Thread(target=lambda label=label: runs.update(
        {label: fab('deploy', host.address, inventory=inventories[label])})) for label in inventories]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [label for label, run in runs.items() if run.returncode == 0]
    assert len(winners) == 1, {label: run.output[-3000:] for label, run in runs.items()}
    loser = runs[({'first', 'second'} - set(winners)).pop()]
    message = ' '.join(loser.output.split())
    assert f'{host.name} is locked by ' in message and ', running deploy (pid ' in message, loser.output
    assert 'waited 2 s (lock_timeout)' in message
    assert f'[{host.name}] deploy failed at task "lock : Fail naming the lock\'s holder"' in loser.output
    assert set(served_on_ports(host).values()) == {winners[0]}  # every port on the one release
    assert locked(host) == ''  # the winner released it; the loser left it alone


def test_a_lock_from_another_machine_is_never_broken_but_by_fab_unlock_naming_it(
        deployed, fab, lab, product, inventory, host, served_on_ports):
    # Taken a day ago on a machine of this one's host name, by a pid not running here: only its
    # machine id, another, tells it is not this machine's.
    holder = holder_line('rollback', machine='0' * 32, host=os.uname().nodename, pid=4242)
    host.ssh(f'mkdir -p -m 0700 /run/apiphant && echo {shlex.quote(holder)} > {LOCK}')
    named = (f'alice on {os.uname().nodename} (machine id {"0" * 32}) since 1970-01-01T00:00:01Z, '
             f'running rollback (pid 4242)')
    blocked = labelled(lab, product, 'blocked', inventory, host, lock_timeout=1)
    run = fab('deploy', host.address, inventory=blocked)
    assert run.returncode != 0
    assert f'{host.name} is locked by {named}' in ' '.join(run.output.split()), run.output
    assert locked(host) == holder
    assert set(served_on_ports(host).values()) != {'blocked'}

    run = fab('unlock', host.address, inventory=blocked)
    assert run.returncode == 0, run.output
    assert f'[{host.name}] the deploy lock is held by {named}' in run.output
    assert f'[{host.name}] broke the deploy lock of {named}' in run.output
    assert locked(host) == ''
    assert ' unlock ' in audit_trail(host)[-1]
    assert audit_trail(host)[-1].endswith(f' - broke the lock of alice@{os.uname().nodename}')
    run = fab('unlock', host.address, inventory=blocked)
    assert run.returncode == 0 and f'[{host.name}] no deploy lock to break' in run.output, run.output

    run = fab('deploy', host.address, inventory=blocked)
    assert run.returncode == 0, run.output
    assert set(served_on_ports(host).values()) == {'blocked'}


@pytest.fixture
def hogs(lab, host):
    """Start, on the host, `nobody` and the product's user each holding flock on every file and folder
    they can open where a lock could be; stop them after the test."""
    pids = []

    def start(user):
        out = f'/tmp/hog-{user}'
        command = (f'setsid python3 -c {shlex.quote(HOG)} {user} /opt /run /var/lock /tmp /var/tmp /dev/shm /etc '
                   f'</dev/null >{out} 2>&1 & echo $!')
        pids.append(host.ssh(command).stdout.strip())
        return wait_for(lambda: host.ssh(f'cat {out}').stdout.splitlines(), timeout=60,
                        until=lambda lines: lines[-1:] == ['ready'])

    yield start
    for pid in pids:
        host.ssh(f'kill {pid}', check=False)


def test_no_other_local_user_can_hold_or_delay_the_lock(deployed, fab, lab, product, inventory, host, hogs):
    held = {user: hogs(user) for user in ('nobody', 'myproduct')}
    assert '/opt/myproduct' in held['nobody'] and '/run/lock' in held['myproduct'], held
    assert not any(path.startswith('/run/apiphant') for paths in held.values() for path in paths)
    run = fab('restart', host.address, inventory=labelled(lab, product, 'hogged', inventory, host, lock_timeout=5))
    assert run.returncode == 0 and 'waited' not in run.output, run.output
    assert locked(host) == ''


def test_a_full_disk_at_the_audit_trail_fails_the_run_and_leaves_the_lock_free(deployed, fab, lab, product,
                                                                               inventory, host):
    # The audit trail on a full filesystem: a file of a 4 kB tmpfs filled up, mounted over it.
    full = ('mkdir -p /mnt/full && mount -t tmpfs -o size=4k tmpfs /mnt/full && touch /mnt/full/audit.log'
            ' && { dd if=/dev/zero of=/mnt/full/fill bs=4k 2>/dev/null; true; }'
            ' && mount --bind /mnt/full/audit.log /opt/myproduct/audit.log')
    host.ssh(full)
    try:
        run = fab('restart', host.address, inventory=labelled(lab, product, 'full', inventory, host))
        assert run.returncode != 0
        assert 'No space left on device; the deploy lock is free' in run.output, run.output
    finally:
        host.ssh('umount /opt/myproduct/audit.log; umount /mnt/full', check=False)
    assert locked(host) == ''
    run = fab('restart', host.address, inventory=labelled(lab, product, 'full', inventory, host))
    assert run.returncode == 0, run.output


def release_of(host):
    return host.ssh('readlink /opt/myproduct/current').stdout.strip()


def test_a_deploy_killed_halfway_leaves_the_old_release_serving_rollback_skips_it_the_next_deploy_makes_it(
        deployed, fab, lab, product, inventory, host, ansible_env, served_on_ports):
    run = fab('deploy', host.address, inventory=labelled(lab, product, 'previous', inventory, host))
    assert run.returncode == 0, run.output  # a complete release before the current one, to roll back to
    previous = release_of(host)
    run = fab('deploy', host.address, inventory=labelled(lab, product, 'current', inventory, host))
    assert run.returncode == 0, run.output
    serving = served_on_ports(host)
    releases = set(host.ssh('ls /opt/myproduct/releases').stdout.split())
    killed = labelled(lab, product, 'killed', inventory, host, lock_timeout=5)
    run = subprocess.Popen([Path(sys.executable).parent / 'fab', 'deploy', host.address], cwd=ROOT / 'deploy',
                           env={**ansible_env, 'FABRIC_INVENTORY': str(killed)}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # killed once the new release's folder is there: halfway through the release
        deadline = time.monotonic() + 300
        while (set(host.ssh('ls /opt/myproduct/releases').stdout.split()) <= releases
               and run.poll() is None and time.monotonic() < deadline):
            time.sleep(0.2)
        assert run.poll() is None, 'the deploy ended before its release began'
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # fab and its ansible-playbook, as a closed terminal would
        run.wait()
    stale = locked(host)
    assert deploy_lock.words(stale)['action'] == 'deploy', stale
    assert served_on_ports(host) == serving
    half_made = set(host.ssh('ls -t /opt/myproduct/releases').stdout.split()) - releases
    assert len(half_made) == 1

    # Its ansible-playbook is gone from this machine (the machine id in the lock): the lock is stale
    # at once. The half-made release is the newest folder; the rollback goes past it.
    rollback = fab('rollback', host.address, inventory=killed)
    assert rollback.returncode == 0, rollback.output
    assert f'took over the stale lock of a killed run: {stale}' in ' '.join(rollback.output.split())
    assert release_of(host) == previous
    assert set(served_on_ports(host).values()) == {'previous'}

    # The half-made release is made again.
    rerun = fab('deploy', host.address, inventory=killed)
    assert rerun.returncode == 0, rerun.output
    assert 'waited' not in rerun.output  # (it would fail after lock_timeout, 5 s, naming the holder)
    assert release_of(host).rsplit('/', 1)[-1] == half_made.pop()
    assert set(served_on_ports(host).values()) == {'killed'}
    assert locked(host) == ''


def test_a_rollback_with_no_complete_release_to_go_to_refuses_saying_why(deployed, fab, host):
    current = release_of(host)
    # Left: current and a release a killed deploy left half made (no .complete).
    host.ssh('cd /opt/myproduct/releases && for release in *; do [ "$PWD/$release" = "$(readlink ../current)" ]'
             ' || rm -rf "$release"; done && mkdir -p half-made/myproduct')
    run = fab('rollback', host.address)
    assert run.returncode != 0
    assert (f'{host.name}: no complete release before {current.rsplit("/", 1)[-1]} to roll back to, only '
            f'half-made incomplete (no .complete: a deploy failed or was killed while making it)'
            in ' '.join(run.output.split())), run.output
    assert release_of(host) == current
    assert locked(host) == ''
    host.ssh('rm -rf /opt/myproduct/releases/half-made')


def test_a_release_ships_what_git_tracks_with_modes_normalised(deployed, fab, lab, product, inventory, host):
    tracked = labelled(lab, product, 'tracked', inventory, host)
    folder = lab.workdir / 'product-tracked'
    (folder / 'myproduct' / 'api' / 'v0' / 'echo.py').chmod(0o666)  # world-writable
    (folder / 'myproduct' / '.env').write_text('SECRET=not for the host\n')
    shipped = '/opt/myproduct/current/myproduct'
    writable = f'find {shipped} -perm /022 ! -type l'

    # No git work tree: the folder ships as it is, but with root's modes.
    run = fab('deploy', host.address, inventory=tracked)
    assert run.returncode == 0, run.output
    assert host.ssh(writable).stdout == ''
    assert host.ssh(f'cat {shipped}/.env').stdout == 'SECRET=not for the host\n'

    # In a git work tree (product_source a folder of it): what git tracks at HEAD, nothing untracked.
    git = ['git', '-C', folder, '-c', 'user.name=t', '-c', 'user.email=t@example.com']
    subprocess.run([*git, 'init', '-q'], check=True)
    subprocess.run([*git, 'add', 'myproduct/api', 'myproduct/__init__.py'], check=True)
    subprocess.run([*git, 'commit', '-q', '-m', 'tracked'], check=True)
    run = fab('deploy', host.address, inventory=tracked)
    assert run.returncode == 0, run.output
    assert host.ssh(f'test -e {shipped}/.env', check=False).returncode == 1
    assert host.ssh(writable).stdout == ''
    assert host.ssh(f'stat -c %U:%G:%a {shipped}/api/v0/echo.py').stdout.strip() == 'root:root:644'
    assert host.ssh(f'python3 -c {shlex.quote(READ_ECHO)}').stdout.strip() == 'tracked'


def test_every_run_appends_to_the_audit_trail_that_status_and_history_show(deployed, fab, lab, product,
                                                                          inventory, host):
    audited = labelled(lab, product, 'audited', inventory, host)
    source = lab.workdir / 'product-audited'
    git = ['git', '-C', source, '-c', 'user.name=t', '-c', 'user.email=t@example.com']
    subprocess.run([*git, 'init', '-q'], check=True)
    subprocess.run([*git, 'add', '-A'], check=True)
    subprocess.run([*git, 'commit', '-q', '-m', 'audited'], check=True)
    commit = subprocess.run([*git, 'rev-parse', '--short=12', 'HEAD'], check=True, capture_output=True,
                            text=True).stdout.strip()
    before = len(audit_trail(host))
    for task in ('deploy', 'restart'):
        run = fab(task, host.address, inventory=audited)
        assert run.returncode == 0, run.output
    lines = audit_trail(host)[before:]
    current = host.ssh('basename "$(readlink /opt/myproduct/current)"').stdout.strip()
    me = f'{subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()}@{os.uname().nodename}'
    assert [line.split()[1:] for line in lines] == [[me, 'deploy', current, commit, 'ok'],
                                                    [me, 'restart', current, '-', 'ok']]
    assert all(line.split()[0].endswith('Z') for line in lines)

    status = fab('status', host.address, inventory=audited)
    assert status.returncode == 0 and '\n'.join(lines) in status.output, status.output
    history = fab('history', host.address, inventory=audited)
    assert history.returncode == 0 and '\n'.join(audit_trail(host)) in history.output, history.output
