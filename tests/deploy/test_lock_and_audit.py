"""A host run by a team: its deploy lock (two runs, by fab or ansible-playbook, never interleave; a
run that cannot take it fails naming its holder; a killed run's lock is stale; `fab unlock HOST`
breaks one saying whose it was) and its audit trail (`fab status` and `fab history`)."""

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

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ECHO = ROOT / 'example' / 'myproduct' / 'api' / 'v0' / 'echo.py'
LOCK = '/opt/myproduct/deploy.lock'


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


def locked(lab, host):
    return host.ssh(f'cat {LOCK}', key=lab.key, check=False).stdout.strip()


def audit_trail(lab, host):
    return host.ssh('cat /opt/myproduct/audit.log', key=lab.key, check=False).stdout.splitlines()


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
    assert locked(lab, host) == ''  # the winner released it; the loser left it alone


def test_a_lock_from_elsewhere_is_named_then_broken_by_fab_unlock(deployed, fab, lab, product, inventory,
                                                                 host, served_on_ports):
    holder = f'alice laptop 4242 {int(time.time())} 2026-11-26T10:00:00Z rollback'
    host.ssh(f'echo {shlex.quote(holder)} > {LOCK}', key=lab.key)
    blocked = labelled(lab, product, 'blocked', inventory, host, lock_timeout=1)
    run = fab('deploy', host.address, inventory=blocked)
    assert run.returncode != 0
    assert (f'{host.name} is locked by alice on laptop since 2026-11-26T10:00:00Z, running rollback (pid 4242)'
            in ' '.join(run.output.split())), run.output
    assert locked(lab, host) == holder
    assert set(served_on_ports(host).values()) != {'blocked'}

    run = fab('unlock', host.address, inventory=blocked)
    assert run.returncode == 0, run.output
    assert (f'[{host.name}] broke the deploy lock of alice on laptop since 2026-11-26T10:00:00Z, running '
            f'rollback (pid 4242)') in run.output
    assert locked(lab, host) == ''
    assert ' unlock ' in audit_trail(lab, host)[-1]
    assert audit_trail(lab, host)[-1].endswith(' - broke the lock of alice@laptop')
    run = fab('unlock', host.address, inventory=blocked)
    assert run.returncode == 0 and f'[{host.name}] no deploy lock to break' in run.output, run.output

    run = fab('deploy', host.address, inventory=blocked)
    assert run.returncode == 0, run.output
    assert set(served_on_ports(host).values()) == {'blocked'}


def test_a_deploy_killed_halfway_leaves_the_old_release_serving_and_the_next_takes_over_its_lock(
        deployed, fab, lab, product, inventory, host, ansible_env, served_on_ports):
    serving = served_on_ports(host)
    releases = set(host.ssh('ls /opt/myproduct/releases', key=lab.key).stdout.split())
    killed = labelled(lab, product, 'killed', inventory, host, lock_timeout=5)
    run = subprocess.Popen([Path(sys.executable).parent / 'fab', 'deploy', host.address], cwd=ROOT / 'deploy',
                           env={**ansible_env, 'FABRIC_INVENTORY': str(killed)}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # killed once the new release's folder is there: halfway through the release
        deadline = time.monotonic() + 300
        while (set(host.ssh('ls /opt/myproduct/releases', key=lab.key).stdout.split()) <= releases
               and run.poll() is None and time.monotonic() < deadline):
            time.sleep(0.2)
        assert run.poll() is None, 'the deploy ended before its release began'
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # fab and its ansible-playbook, as a closed terminal would
        run.wait()
    stale = locked(lab, host)
    assert stale.endswith(' deploy')
    assert served_on_ports(host) == serving

    # Its ansible-playbook is gone from this machine: the lock is stale at once, not after
    # lock_stale_after, and the half-made release is made again.
    rerun = fab('deploy', host.address, inventory=killed)
    assert rerun.returncode == 0, rerun.output
    assert f'took over the stale lock of a killed run: {stale}' in ' '.join(rerun.output.split())
    assert 'waited' not in rerun.output  # (it would fail after lock_timeout, 5 s, naming the holder)
    assert set(served_on_ports(host).values()) == {'killed'}
    assert locked(lab, host) == ''


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
    before = len(audit_trail(lab, host))
    for task in ('deploy', 'restart'):
        run = fab(task, host.address, inventory=audited)
        assert run.returncode == 0, run.output
    lines = audit_trail(lab, host)[before:]
    current = host.ssh('basename "$(readlink /opt/myproduct/current)"', key=lab.key).stdout.strip()
    me = f'{subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()}@{os.uname().nodename}'
    assert [line.split()[1:] for line in lines] == [[me, 'deploy', current, commit, 'ok'],
                                                    [me, 'restart', current, '-', 'ok']]
    assert all(line.split()[0].endswith('Z') for line in lines)

    status = fab('status', host.address, inventory=audited)
    assert status.returncode == 0 and '\n'.join(lines) in status.output, status.output
    history = fab('history', host.address, inventory=audited)
    assert history.returncode == 0 and '\n'.join(audit_trail(lab, host)) in history.output, history.output
