"""Migrations in the deploy, against an existing database the roles never touched (PostgreSQL
installed by hand on another lab host, its DATABASE_URL in product_secrets): two API hosts behind a
load balancer deploy the expand-then-contract example of docs/deploy/migrations.md, release by
release, in one ansible-playbook run each.

Each deploy is a fixture of its own, taking the one before it, so any test runs alone: the first
release migrates once, on one host, and serves; the expand release under load loses no request; a
release whose migration fails stops on every host with current unchanged and the error shown;
`fab migrations` lists what was applied; a second deploy changes nothing.
"""

import http.client
import json
import re
import shutil
import threading
import time

import psycopg
import pytest
import yaml

from conftest import ANSIBLE_PLAYBOOK, PLAYBOOKS, ROOT
from support import wait_for

DOC = ROOT / 'docs' / 'deploy' / 'migrations.md'
# The product's requirements for apiphant.database and apiphant migrate, as `apiphant new --db postgresql` writes them.
REQUIREMENTS = (ROOT / 'apiphant' / 'skeleton_postgresql' / 'requirements.txt.tmpl').read_text()
BAD = {'migrations/0004.bad.sql': 'SELECT * FROM nowhere;\n'}
HOME = '/opt/myproduct'


def example_releases():
    """{N: {path in the product package: text}} of the example's '### Release N' sections in DOC,
    each fenced block named by its first line (`# api/v0/items.py`, `-- migrations/0001.items.sql`)."""
    parts = re.split(r'^### Release (\d+)\b.*$', DOC.read_text(), flags=re.M)
    releases = {}
    for number, section in zip(parts[1::2], parts[2::2], strict=True):
        blocks = re.findall(r'^```\w+\n(.*?)^```', section, re.M | re.S)
        releases[int(number)] = {re.match(r'(?:#|--) (\S+)', block).group(1): block for block in blocks}
    return releases


@pytest.fixture(scope='module')
def roles(lab):
    lb, *api = lab.hosts[1:4]
    return lb, api


class Fleet:
    """The product's folder (a copy of the example) and the inventory deploying it with the
    database's URL among its secrets."""

    def __init__(self, lab, inventory, roles, database):
        self.lab, self.database = lab, database
        self.lb, self.api = roles
        self.folder = lab.workdir / 'migrating'
        self.folder.mkdir()
        (self.folder / 'requirements.txt').write_text(REQUIREMENTS)
        group_vars = lab.workdir / 'migrations' / 'group_vars' / 'api'
        group_vars.mkdir(parents=True)
        secrets = group_vars / 'settings.yml'
        secrets.touch(mode=0o600)
        secrets.write_text(yaml.safe_dump({'product_env': {'DATABASE_POOL_SIZE': '2'},
                                           'product_secrets': {'DATABASE_URL': database.url}}))
        self.inventory = inventory(self.api, file='migrations/inventory.ini', lb=[self.lb], api_ports='[8001, 8002]',
                                   product_source=self.folder / 'myproduct',
                                   product_requirements=self.folder / 'requirements.txt')

    def release(self, number, extra=None):
        """Make the product release `number` of the example (its files and those of the releases
        before it), with `extra` files."""
        package = self.folder / 'myproduct'
        shutil.rmtree(package, ignore_errors=True)
        shutil.copytree(ROOT / 'example' / 'myproduct', package, ignore=shutil.ignore_patterns('__pycache__'))
        releases = example_releases()
        files = {path: text for release in range(1, number + 1) for path, text in releases[release].items()}
        for path, text in {**files, **(extra or {})}.items():
            (package / path).parent.mkdir(parents=True, exist_ok=True)
            (package / path).write_text(text)

    def deploy(self, command, ansible_env):
        run = command([ANSIBLE_PLAYBOOK, '-i', self.inventory, 'site.yml'], PLAYBOOKS, ansible_env)
        assert self.database.password not in run.output  # no_log wherever the URL passes
        return run

    def releases(self):
        """[current, the release folders] of each API host."""
        return [(host.ssh(f'readlink {HOME}/current').stdout.strip(),
                 sorted(host.ssh(f'ls {HOME}/releases').stdout.split())) for host in self.api]

    def audit(self):
        """The last line of each API host's audit trail."""
        return [host.ssh(f'tail -n 1 {HOME}/audit.log').stdout.strip() for host in self.api]

    def applied(self):
        """yoyo's log of the migrations applied: [(id, the host that applied it)], oldest first."""
        with psycopg.connect(self.database.url, connect_timeout=10) as db:
            return db.execute("SELECT migration_id, hostname FROM _yoyo_log WHERE operation = 'apply' "
                              'ORDER BY created_at_utc').fetchall()


@pytest.fixture(scope='module')
def fleet(lab, inventory, roles, external_database):
    return Fleet(lab, inventory, roles, external_database)


def call(connection, action, body):
    connection.request('POST', f'/api/v0/items/{action}', json.dumps(body))
    reply = connection.getresponse()
    return reply.status, json.loads(reply.read())


def create_and_read(host, name):
    """An item created and read back through the load balancer's nginx: the name read."""
    connection = http.client.HTTPConnection(host.address, 80, timeout=30)
    try:
        status, created = call(connection, 'create', {'name': name})
        assert status == 200, created
        status, read = call(connection, 'read', {'id': created['id']})
        assert status == 200, read
        return read['name']
    finally:
        connection.close()


class Load(threading.Thread):
    """Clients creating items and reading each back through nginx until stopped (at most `seconds`):
    `done` counts the items read back as created, `failures` holds everything else."""

    def __init__(self, host, clients=6, seconds=600):
        super().__init__(daemon=True)
        self.host, self.clients, self.deadline = host, clients, time.monotonic() + seconds
        self.stopped = threading.Event()
        self.done, self.failures = 0, []

    def client(self, number):
        connection, count = None, 0
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            connection = connection or http.client.HTTPConnection(self.host.address, 80, timeout=30)
            name, count = f'load {number}.{count}', count + 1
            try:
                status, created = call(connection, 'create', {'name': name})
                status, read = call(connection, 'read', {'id': created['id']}) if status == 200 else (status, created)
                if status == 200 and read['name'] == name:
                    self.done += 1
                else:
                    self.failures.append((name, status, read))
            except Exception as error:  # a client-side view of a lost request, whatever its form
                self.failures.append((name, repr(error)))
                connection.close()
                connection = None

    def run(self):
        workers = [threading.Thread(target=self.client, args=(number,), daemon=True) for number in range(self.clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def stop(self):
        self.stopped.set()
        self.join(60)


@pytest.fixture(scope='module')
def first(fleet, command, ansible_env):
    fleet.release(1)
    run = fleet.deploy(command, ansible_env)
    assert run.returncode == 0, run.output
    return run


@pytest.fixture(scope='module')
def expanded(first, fleet, command, ansible_env):
    """Release 2, its expand migration applied while clients create and read items throughout."""
    fleet.release(2)
    load = Load(fleet.lb)
    load.start()
    try:
        wait_for(lambda: load.done > 20 or load.failures, timeout=60)
        run = fleet.deploy(command, ansible_env)
        after = load.done
        wait_for(lambda: load.done > after + 20 or load.failures, timeout=60)
    finally:
        load.stop()
    assert run.returncode == 0, run.output
    return run, load


@pytest.fixture(scope='module')
def failed(expanded, fleet, command, ansible_env):
    """Release 3 with a migration after the contract that fails: (the run, [current, the releases]
    of each API host before it)."""
    before = fleet.releases()
    fleet.release(3, BAD)
    return fleet.deploy(command, ansible_env), before


@pytest.fixture(scope='module')
def contracted(failed, fleet, command, ansible_env):
    fleet.release(3)
    run = fleet.deploy(command, ansible_env)
    assert run.returncode == 0, run.output
    return run


def test_the_first_release_migrates_once_on_one_host_and_serves_its_items(first, fleet):
    # yoyo's log names the host that applied it: the first [api] host, the background tasks' one.
    assert fleet.applied() == [('0001.items', fleet.api[0].name)]
    assert 'applied 0001.items' in first.output
    audit = fleet.audit()
    assert audit[0].endswith(' ok migrated=0001.items') and audit[1].endswith(' ok'), audit
    assert create_and_read(fleet.lb, 'first') == 'first'


def test_an_expand_migration_released_under_load_loses_no_request(expanded, fleet):
    run, load = expanded
    assert load.failures == [], load.failures[:10]
    assert load.done > 40
    assert [migration for migration, _ in fleet.applied()] == ['0001.items', '0002.title']
    assert 'applied 0002.title' in run.output
    assert fleet.audit()[0].endswith(' ok migrated=0002.title')
    with psycopg.connect(fleet.database.url, connect_timeout=10) as db:
        # Items created by either release during the rolling restart have both columns.
        assert db.execute('SELECT count(*) FROM items WHERE title IS NULL OR name IS NULL').fetchone() == (0,)


def test_a_failing_migration_stops_every_host_with_current_unchanged_and_its_error_shown(failed, fleet):
    run, before = failed
    assert run.returncode != 0
    # current as it was on every host, and the release that failed gone (a rollback never picks it)
    assert fleet.releases() == before
    message = ' '.join(run.output.split())  # as the output wraps it
    for host in fleet.api:
        assert (f'{host.name}: the migrations of release ') in message, run.output
    assert (f' failed on {fleet.api[0].name} (apiphant migrate, exit 1): apiphant migrate: 0004.bad failed, and '
            f'nothing of it was applied: relation "nowhere" does not exist. Applied before the failure: '
            f'0003.drop-name.') in message, run.output
    audit = fleet.audit()
    assert audit[0].endswith(' failed migrated=0003.drop-name') and audit[1].endswith(' failed'), audit
    # The contract applied before the failure suits the release still serving: it never used name.
    assert create_and_read(fleet.lb, 'after the failure') == 'after the failure'


def test_fab_migrations_lists_the_applied_and_pending_migrations(contracted, fleet, fab):
    run = fab('migrations', fleet.api[1].name, inventory=fleet.inventory)
    assert run.returncode == 0, run.output
    listed = re.findall(r'^(applied|pending) +(\S+)$', run.output, re.M)
    assert listed == [('applied', '0001.items'), ('applied', '0002.title'), ('applied', '0003.drop-name')]
    assert 'myproduct: 0 applied now, 3 before, 0 pending' in run.output


def test_a_second_deploy_changes_nothing(contracted, fleet, command, ansible_env):
    assert not re.search(r'applied \d{4}\.', contracted.output)  # applied by the deploy that failed
    run = fleet.deploy(command, ansible_env)
    assert run.returncode == 0, run.output
    assert all(counts['changed'] == 0 for counts in run.recap().values()), run.recap()
    assert [migration for migration, _ in fleet.applied()] == ['0001.items', '0002.title', '0003.drop-name']
    assert create_and_read(fleet.lb, 'contracted') == 'contracted'
