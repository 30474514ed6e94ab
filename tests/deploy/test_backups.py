"""Backups that restore: the [db] host's PostgreSQL archived by pgBackRest into a repository on the
[backup] host (playbooks/backup.yml), then restored by `fab restore`, to a point in time and after the
database's data is lost; `fab status` warning when archiving breaks."""

import shlex
import uuid

import pytest

from conftest import ANSIBLE_PLAYBOOK, PLAYBOOKS
from support import wait_for

# A short archive_timeout, so that the test of a lost host waits seconds, not the default minute.
ARCHIVE_TIMEOUT = 5


@pytest.fixture(scope='module')
def hosts(lab):
    """(database host, repository host)."""
    return lab.hosts[7], lab.hosts[6]


def install_postgresql(host):
    """Debian's PostgreSQL and its cluster 15/main, running: what the postgresql role leaves."""
    host.ssh('apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq '
             '--no-install-recommends postgresql')
    host.ssh('pg_ctlcluster 15 main status || pg_ctlcluster 15 main start')


@pytest.fixture(scope='module')
def backup_inventory(inventory, hosts):
    db, repository = hosts
    return inventory([], file='backup.ini', db=[db], backup=[repository],
                     pgbackrest_archive_timeout=ARCHIVE_TIMEOUT)


@pytest.fixture(scope='module')
def backed_up(hosts, backup_inventory, command, ansible_env):
    """The database host archiving to the repository host, which holds a first full backup."""
    install_postgresql(hosts[0])
    run = command([ANSIBLE_PLAYBOOK, '-i', backup_inventory, 'backup.yml'], PLAYBOOKS, ansible_env)
    assert run.returncode == 0, run.output
    return run


def sql(host, query):
    """Run SQL on the database host as postgres; its rows as text, one a line."""
    return host.ssh(f'runuser -u postgres -- psql -qAtX -v ON_ERROR_STOP=1 -c {shlex.quote(query)}').stdout.strip()


def archived(host, wal):
    """Whether the WAL segment `wal` (or a later one) is in the repository, as PostgreSQL's archiver
    says: 't|...' or 'f|...', with what the archiver did last, which a test that times out shows."""
    return sql(host, f"select coalesce(last_archived_wal >= '{wal}', false), '{wal}', last_archived_wal, "
                     f"last_archived_time, last_failed_wal, last_failed_time, now() from pg_stat_archiver")


def is_archived(row):
    return row.startswith('t|')


def test_a_second_run_changes_nothing(backed_up, backup_inventory, command, ansible_env, hosts):
    db, repository = hosts
    assert backed_up.outcome('pgbackrest : Take a first full backup', repository.name) == 'changed'
    run = command([ANSIBLE_PLAYBOOK, '-i', backup_inventory, 'backup.yml'], PLAYBOOKS, ansible_env)
    assert run.returncode == 0, run.output
    assert {host: counts['changed'] for host, counts in run.recap().items()} == {db.name: 0, repository.name: 0}
    cron = repository.ssh('cat /etc/cron.d/pgbackrest').stdout
    assert '--type=full' in cron and '--type=incr' in cron
    # Each side's key runs pgBackRest alone: a shell asked for is pgBackRest's to refuse.
    keys = db.ssh('cat /var/lib/postgresql/.ssh/authorized_keys').stdout
    assert keys.startswith(f'restrict,from="{repository.address}",command="/usr/bin/pgbackrest ')
    shell = repository.ssh(f'runuser -u pgbackrest -- ssh -o BatchMode=yes postgres@{db.address} id', check=False)
    assert 'uid=' not in shell.stdout and "invalid command 'id'" in shell.stderr, shell.stdout + shell.stderr


def test_a_restore_to_a_time_between_two_commits_keeps_the_first_only(backed_up, hosts, fab, backup_inventory):
    db, _ = hosts
    table = f'pitr_{uuid.uuid4().hex[:8]}'
    backup = fab('backup', db.name, inventory=backup_inventory)
    assert backup.returncode == 0, backup.output
    sql(db, f"create table {table} (label text); insert into {table} values ('t1')")
    between = sql(db, 'select clock_timestamp()')
    sql(db, f"insert into {table} values ('t2')")
    wal = sql(db, 'select pg_walfile_name(pg_switch_wal())')
    wait_for(lambda: archived(db, wal), until=is_archived, timeout=60, interval=0.5)

    for time, reason in (('2000-01-01 00:00:00+00', 'oldest backup'), ('2999-01-01 00:00:00+00', 'future'),
                         ('yesterday', 'not a time'), ('2026-01-01 00:00:00', 'time zone')):
        refused = fab('restore', db.name, '--time', time, inventory=backup_inventory)
        assert refused.returncode != 0 and reason in refused.output, refused.output
    assert sql(db, f'select count(*) from {table}') == '2'  # a refused restore touched nothing

    restore = fab('restore', db.name, '--time', between, inventory=backup_inventory)
    assert restore.returncode == 0, restore.output
    assert sql(db, f'select label from {table}') == 't1'
    assert sql(db, 'select pg_is_in_recovery()') == 'f'


def test_a_lost_database_is_rebuilt_with_every_commit_older_than_archive_timeout(backed_up, hosts, fab,
                                                                               backup_inventory):
    db, _ = hosts
    table = f'lost_{uuid.uuid4().hex[:8]}'
    sql(db, f"create table {table} (label text); insert into {table} values ('kept')")
    wal = sql(db, 'select pg_walfile_name(pg_current_wal_lsn())')
    # archive_timeout alone (no pg_switch_wal) brings the commit's segment to the repository.
    wait_for(lambda: archived(db, wal), until=is_archived, timeout=ARCHIVE_TIMEOUT + 30, interval=0.5)
    sql(db, f"insert into {table} values ('late')")  # younger than archive_timeout: may be lost

    postmaster = db.ssh('head -n 1 /var/lib/postgresql/15/main/postmaster.pid').stdout.strip()
    db.ssh(f'kill -KILL {postmaster} && rm -rf /var/lib/postgresql/15/main')
    # The postmaster's children notice its death and end.
    wait_for(lambda: db.ssh("find /proc -maxdepth 1 -user postgres -regex '/proc/[0-9]+'").stdout == '',
             interval=0.2)

    restore = fab('restore', db.name, inventory=backup_inventory)
    assert restore.returncode == 0, restore.output
    assert 'kept' in sql(db, f'select label from {table}').split()


def test_status_shows_the_backups_and_warns_when_archiving_fails(backed_up, hosts, fab, backup_inventory):
    db, _ = hosts
    healthy = fab('status', db.name, inventory=backup_inventory)
    assert healthy.returncode == 0, healthy.output
    assert 'last backup:' in healthy.output and 'WARNING' not in healthy.output, healthy.output

    broken_at = sql(db, 'select now()')
    sql(db, "alter system set archive_command = '/bin/false'")
    try:
        sql(db, 'select pg_reload_conf()')
        wal = sql(db, 'create table if not exists status_check (n int); insert into status_check values (1); '
                      'select pg_walfile_name(pg_switch_wal())')
        # The archiver keeps retrying the oldest segment not archived, which may be older than this one.
        failed = wait_for(lambda: sql(db, f"select last_failed_wal from pg_stat_archiver "
                                          f"where last_failed_time > '{broken_at}'"), timeout=60, interval=0.5)
        broken = fab('status', db.name, inventory=backup_inventory)
        assert broken.returncode == 0, broken.output
        assert f'WARNING: WAL archiving fails: {failed}' in broken.output, broken.output
    finally:
        sql(db, 'alter system reset archive_command')
        sql(db, 'select pg_reload_conf()')
    wait_for(lambda: archived(db, wal), until=is_archived, timeout=120, interval=0.5)
