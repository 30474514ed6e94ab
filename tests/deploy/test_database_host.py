"""A [db] host: Debian's PostgreSQL with the product's role and database, which two API hosts behind a
load balancer reach through the DATABASE_URL the deploy gives them, and nobody else reaches.

One site.yml run deploys the four hosts; a second, at Ansible's highest verbosity, changes nothing
and never shows the database password; a max_connections too small for the API hosts' pools stops a
run before it changes any host.
"""

import http.client
import json
import shlex
import shutil

import pytest
from test_firewall import reachable_from, reachable_here

from conftest import ANSIBLE_PLAYBOOK, PLAYBOOKS, ROOT, write_inventory

PASSWORD_FILE = '/etc/apiphant/myproduct-database.password'
API_PORTS = [8001, 8002]
POOL_SIZE = 3
# Each API port's pool, the background process's, the reserve (10) and the superuser slots (3).
NEEDED = 2 * len(API_PORTS) * POOL_SIZE + POOL_SIZE + 10 + 3

LIFESPAN = '''from apiphant import database


def lifespan():
    with database.pool():
        yield
'''

VISITS = '''"""Record which API host served the request, in the product's database."""

import socket

from apiphant import database


def create(request):
    with database.connection() as db:
        db.execute('CREATE TABLE IF NOT EXISTS visits (id serial PRIMARY KEY, host text NOT NULL)')
        db.execute('INSERT INTO visits (host) VALUES (%s)', (socket.gethostname(),))
        (count,) = db.execute('SELECT count(*) FROM visits').fetchone()
    return {'host': socket.gethostname(), 'count': count}
'''


@pytest.fixture(scope='module')
def roles(lab):
    """The load balancer, the two API hosts, the database host."""
    lb, *api = lab.hosts[1:4]
    return lb, api, lab.hosts[4]


@pytest.fixture(scope='module')
def database_product(lab):
    """The example product with a database pool in its lifespan and an action that writes a row."""
    folder = lab.workdir / 'database-product'
    shutil.copytree(ROOT / 'example', folder, ignore=shutil.ignore_patterns('__pycache__', 'tests'))
    (folder / 'myproduct' / 'api' / 'lifespan.py').write_text(LIFESPAN)
    (folder / 'myproduct' / 'api' / 'v0' / 'visits.py').write_text(VISITS)
    (folder / 'requirements.txt').write_text('psycopg[binary]>=3.1.14,<3.4\npsycopg_pool>=3.2,<3.4\n')
    return folder


@pytest.fixture(scope='module')
def site(lab, roles, database_product, command, ansible_env):
    """Run site.yml on the four hosts: site('-vvv', postgresql_max_connections=20)."""
    lb, api, db = roles

    def run(*args, **variables):
        inventory = write_inventory(
            lab, database_product, api, file='database.ini', lb=[lb], db=[db], api_ports=str(API_PORTS),
            product_env=json.dumps({'DATABASE_POOL_SIZE': POOL_SIZE}),
            # Wheels of their own: psycopg's would change the release of the other modules' products.
            release_wheelhouse=lab.workdir / 'cache' / 'database-wheels', **variables)
        return command([ANSIBLE_PLAYBOOK, '-i', inventory, *args, 'site.yml'], PLAYBOOKS, ansible_env)

    return run


@pytest.fixture(scope='module')
def deployed(site):
    run = site()
    assert run.returncode == 0, run.output
    return run


def visit(lb):
    connection = http.client.HTTPConnection(lb.address, 80, timeout=30)
    try:
        connection.request('POST', '/api/v0/visits/create', '{}')
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def psql(db, sql):
    return db.ssh(f'cd / && runuser -u postgres -- psql -X -A -t -c {shlex.quote(sql)}').stdout.split()


def test_the_products_action_reaches_the_database_through_nginx_from_both_api_hosts(deployed, roles):
    lb, api, db = roles
    served = set()
    for _ in range(40):  # nginx spreads them over the four ports of the two hosts
        status, answer = visit(lb)
        assert status == 200, answer
        served.add(answer['host'])
        if len(served) == 2:
            break
    assert served == {host.name for host in api}
    clients = psql(db, "SELECT DISTINCT client_addr FROM pg_stat_activity WHERE usename = 'myproduct'")
    assert sorted(clients) == sorted(host.address for host in api)


def test_postgresql_is_debians_with_the_products_settings(deployed, roles):
    lb, api, db = roles
    assert psql(db, 'SHOW server_version_num')[0].startswith('15')
    assert psql(db, 'SHOW listen_addresses') == [db.address]
    assert psql(db, 'SHOW password_encryption') == ['scram-sha-256']
    assert psql(db, 'SHOW max_connections') == ['100']
    assert psql(db, "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'myproduct'") == ['t']
    assert psql(db, "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding) FROM pg_database "
                    "WHERE datname = 'myproduct'") == ['myproduct|UTF8']
    memory_kb = int(db.ssh("awk '/^MemTotal:/ {print $2}' /proc/meminfo").stdout)
    shared_buffers_mb = int(psql(db, "SELECT setting::bigint * 8 / 1024 FROM pg_settings "
                                     "WHERE name = 'shared_buffers'")[0])
    assert abs(shared_buffers_mb - memory_kb // 1024 // 4) <= 1
    hba = [line.split() for line in db.ssh('cat /etc/postgresql/15/main/pg_hba.conf').stdout.splitlines()
           if line.strip() and not line.startswith('#')]
    assert hba == [['local', 'all', 'postgres', 'peer']] + [
        ['host', 'myproduct', 'myproduct', f'{host.address}/32', 'scram-sha-256'] for host in api]


def test_the_database_port_answers_the_api_hosts_alone(deployed, roles):
    lb, api, db = roles
    target = f'{db.address}:5432'
    assert all(reachable_from(host, [target]) == {target: True} for host in api)
    assert reachable_from(lb, [target]) == {target: False}
    assert not reachable_here(db.address, 5432)
    # Nor on the database host's other addresses: it listens on its private one alone.
    assert reachable_from(db, ['127.0.0.1:5432', '192.0.2.1:5432']) == {'127.0.0.1:5432': False,
                                                                         '192.0.2.1:5432': False}


def test_the_password_is_root_only_on_the_db_host_and_in_the_products_environment(deployed, roles):
    lb, api, db = roles
    modes = db.ssh(f'stat -c "%U %a" {PASSWORD_FILE} /etc/apiphant').stdout.split('\n')
    assert modes[:2] == ['root 600', 'root 700']
    password = db.ssh(f'cat {PASSWORD_FILE}').stdout.strip()
    assert len(password) == 48
    for host in api:
        assert host.ssh('stat -c "%U %G %a" /opt/myproduct/environment').stdout.split() == ['root', 'myproduct', '640']
        url = f'postgresql://myproduct:{password}@{db.address}:5432/myproduct'
        lines = host.ssh('cat /opt/myproduct/environment').stdout.splitlines()
        assert [shlex.split(line) for line in lines if line.startswith('DATABASE_URL=')] == [[f'DATABASE_URL={url}']]
    assert password not in deployed.output


def test_a_second_run_changes_nothing_and_never_shows_the_password(deployed, site, roles):
    lb, api, db = roles
    run = site('-vvv')
    assert run.returncode == 0, run.output[-5000:]
    assert db.ssh(f'cat {PASSWORD_FILE}').stdout.strip() not in run.output
    recap = run.recap()
    assert {host.name: recap[host.name]['changed'] for host in (db, lb, *api)} == dict.fromkeys(
        (host.name for host in (db, lb, *api)), 0)


def test_max_connections_too_small_for_the_pools_fails_before_any_change(deployed, site, roles):
    lb, api, db = roles
    run = site(postgresql_max_connections=str(NEEDED - 1))
    assert run.returncode != 0
    message = ' '.join(run.output.split())
    assert (f'postgresql_max_connections={NEEDED - 1} is too small: the [api] hosts\' pools need {NEEDED}'
            in message), run.output
    assert f'{api[0].name}: 2 ports x {POOL_SIZE}' in message
    recap = run.recap()
    assert recap[db.name]['changed'] == 0 and recap[db.name]['failed'] == 1
    assert not any(host.name in recap for host in (lb, *api))  # their plays never ran
    assert psql(db, 'SHOW max_connections') == ['100']

