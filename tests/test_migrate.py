"""`apiphant migrate` against a real PostgreSQL (tests/postgres.py): applies each pending migration in
a transaction of its own, names a failing one with the database's error, and two runs at once on one
database apply each migration once (the second waits for the first's advisory lock)."""

import secrets
import subprocess
import sys

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from support import make_product, run_cli

ITEMS = 'CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);\n'
SLOW = 'DO $$ BEGIN PERFORM pg_sleep(1.5); END $$;\nCREATE TABLE slow (id int);\n'


@pytest.fixture
def url(postgres):
    """A fresh database of its own for each test."""
    name = f'migrate_{secrets.token_hex(4)}'
    postgres.query(f'CREATE DATABASE {name}')
    yield make_conninfo(postgres.url, dbname=name)
    postgres.query(f'DROP DATABASE {name} WITH (FORCE)')


def product(tmp_path, migrations):
    return make_product(tmp_path, 'stock', {f'migrations/{name}': sql for name, sql in migrations.items()})


def tables(url):
    with psycopg.connect(url) as connection:
        return sorted(row[0] for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE '%yoyo%'"))


def migrate(folder, url, *args):
    return run_cli('migrate', str(folder), *args, env={'DATABASE_URL': url})


def test_migrate_applies_what_is_pending_once_and_lists_it(tmp_path, url):
    folder = product(tmp_path, {'0001.items.sql': ITEMS, '0002.prices.sql': 'ALTER TABLE items ADD price int;'})
    listed = migrate(folder, url, '--list')
    assert (listed.returncode, listed.stdout) == (0, 'pending  0001.items\npending  0002.prices\n'
                                                     'stock: 0 applied now, 0 before, 2 pending\n')
    assert tables(url) == []
    first = migrate(folder, url)
    assert (first.returncode, first.stdout, first.stderr) == (
        0, 'applied 0001.items\napplied 0002.prices\nstock: 2 applied now, 0 before, 0 pending\n', '')
    assert tables(url) == ['items']
    again = migrate(folder, url)
    assert (again.returncode, again.stdout) == (0, 'stock: 0 applied now, 2 before, 0 pending\n')
    listed = migrate(folder, url, '--list')
    assert listed.stdout == 'applied  0001.items\napplied  0002.prices\nstock: 0 applied now, 2 before, 0 pending\n'


def test_a_failing_migration_is_named_with_the_database_error_and_leaves_nothing_of_itself(tmp_path, url):
    folder = product(tmp_path, {'0001.items.sql': ITEMS,
                                '0002.broken.sql': 'CREATE TABLE prices (id int);\nSELECT nope FROM nowhere;\n',
                                '0003.later.sql': 'CREATE TABLE later (id int);\n'})
    result = migrate(folder, url)
    assert result.returncode == 1
    assert result.stdout == 'applied 0001.items\n'
    assert result.stderr == ('apiphant migrate: 0002.broken failed, and nothing of it was applied: '
                             'relation "nowhere" does not exist\n')
    assert tables(url) == ['items']  # not prices: its first statement was rolled back with the second
    listed = migrate(folder, url, '--list')
    assert listed.stdout.splitlines()[:3] == ['applied  0001.items', 'pending  0002.broken', 'pending  0003.later']


def test_two_runs_at_once_apply_each_migration_once(tmp_path, url):
    """Two hosts of a fleet deploying at once: the second waits, then finds nothing to do."""
    folder = product(tmp_path, {'0001.slow.sql': SLOW})
    command = [sys.executable, '-m', 'apiphant', 'migrate', str(folder)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={'DATABASE_URL': url, 'PATH': '/usr/bin:/bin'}) for _ in range(2)]
    outputs = [run.communicate(timeout=60) + (run.returncode,) for run in runs]
    assert [code for _, _, code in outputs] == [0, 0], outputs
    applied = sorted(out for out, _, _ in outputs)
    assert applied == ['applied 0001.slow\nstock: 1 applied now, 0 before, 0 pending\n',
                       'waiting for another apiphant migrate of this database (at most 300 s)\n'
                       'stock: 0 applied now, 1 before, 0 pending\n'], outputs
    assert tables(url) == ['slow']


def test_a_run_that_cannot_have_the_lock_in_time_applies_nothing(tmp_path, url):
    """The wait is bounded (here by APIPHANT_LOCK_TIMEOUT, as every option has its variable)."""
    folder = product(tmp_path, {'0001.items.sql': ITEMS})
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute('SELECT pg_advisory_lock(%s)', (0x61706970,))
        result = run_cli('migrate', str(folder), env={'DATABASE_URL': url, 'APIPHANT_LOCK_TIMEOUT': '0.5'})
    assert result.returncode == 1
    assert result.stderr == ('apiphant migrate: another apiphant migrate of this database held its lock over 0.5 s: '
                             'nothing was applied; run it again once that one has ended\n')
    assert tables(url) == []


def test_a_run_killed_midway_leaves_no_lock_behind(tmp_path, url):
    folder = product(tmp_path, {'0001.slow.sql': SLOW})
    with subprocess.Popen([sys.executable, '-m', 'apiphant', 'migrate', str(folder)], stdout=subprocess.PIPE,
                          text=True, env={'DATABASE_URL': url, 'PATH': '/usr/bin:/bin'}) as killed:
        with psycopg.connect(url, autocommit=True) as watcher:
            for _ in range(300):  # bounded: the migration's pg_sleep shows in pg_stat_activity
                if watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DO $$ BEGIN PERFORM%'"
                                   ' AND pid <> pg_backend_pid()').fetchone()[0]:
                    break
                watcher.execute('SELECT pg_sleep(0.05)')
        killed.kill()
    result = run_cli('migrate', str(folder), '--lock-timeout', '5', env={'DATABASE_URL': url})
    assert (result.returncode, result.stdout) == (0, 'applied 0001.slow\nstock: 1 applied now, 0 before, 0 pending\n')


@pytest.mark.parametrize('environment, code, message', [
    ({}, 2, 'DATABASE_URL is not set: give it the database to migrate'),
    ({'DATABASE_URL': 'nonsense'}, 2, 'DATABASE_URL is neither a postgresql:// URL nor a libpq connection string'),
    ({'DATABASE_URL': 'postgresql://nobody:wrong@127.0.0.1:1/none'}, 1, 'cannot connect to the database: '),
])
def test_a_database_that_cannot_be_used_fails_in_one_line(tmp_path, environment, code, message):
    folder = product(tmp_path, {'0001.items.sql': ITEMS})
    result = subprocess.run([sys.executable, '-m', 'apiphant', 'migrate', str(folder)], capture_output=True,
                            text=True, timeout=60, env={'PATH': '/usr/bin:/bin', **environment})
    assert result.returncode == code
    assert result.stderr.startswith(f'apiphant migrate: {message}') and result.stderr.count('\n') == 1, result.stderr


def test_a_product_without_migrations_says_where_they_go(tmp_path, url):
    result = migrate(make_product(tmp_path, 'stock', {}), url)
    assert result.returncode == 2
    assert result.stderr == f'apiphant migrate: {tmp_path}/stock/migrations does not exist: put the migrations there ' \
                            '(0001.name.sql, ...)\n'
