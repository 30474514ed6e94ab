"""apiphant.database against a real PostgreSQL (tests/postgres.py): a pool per worker, opened by the
lifespan and closed after the drain; concurrency under gevent; the 503 of a saturated pool; /up and
--metrics; psycopg2 without a wait callback warned about at start-up."""

import json
import os
import signal
import threading
import time

import psycopg
import pytest
import requests

from apiphant.test import call, client, serve

from support import connected_ports, log_has, make_product, run_cli, wait_for

LIFESPAN = '''
from apiphant import database


def lifespan():
    with database.pool():
        yield
'''

ACTIONS = '''
from apiphant import database


def read(request):
    """Sleep in the database for request.seconds."""
    with database.connection() as db:
        db.execute('SELECT pg_sleep(%s)', (request.get('seconds', 0),))
    return {}


def update(request):
    """Wait for the test's advisory lock 42 to be free."""
    with database.connection() as db:
        db.execute('SELECT pg_advisory_lock(42)')
        db.execute('SELECT pg_advisory_unlock(42)')
    return {}


def create(request):
    """Store a row, then fail if asked: the transaction is rolled back."""
    with database.connection() as db:
        db.execute('CREATE TABLE IF NOT EXISTS things (name text)')
        db.execute('INSERT INTO things VALUES (%s)', (request.name,))
        if request.get('fail'):
            raise ValueError('failing after the insert')
    return {}
'''


@pytest.fixture
def product(tmp_path):
    return make_product(tmp_path, 'stored', {'api/lifespan.py': LIFESPAN, 'api/v0/db.py': ACTIONS})


def settings(postgres, **values):
    return {**os.environ, 'DATABASE_URL': postgres.url, **{f'DATABASE_POOL_{name.upper()}': str(value)
                                                            for name, value in values.items()}}


def backends(postgres):
    """Client ports of every other backend in the cluster."""
    return {port for (port,) in postgres.query(
        "SELECT client_port FROM pg_stat_activity WHERE backend_type = 'client backend' "
        'AND pid <> pg_backend_pid()')}


def worker_pids(server):
    line = wait_for(lambda: next((line for line in server.log if 'workers [' in line), None))
    return json.loads(line[line.index('['):].strip())


def test_each_worker_holds_its_own_connections_and_closes_them_after_sigterm(postgres, product):
    with serve(product, '--workers', '2', env=settings(postgres, size=3)) as server:
        first, second = worker_pids(server)
        ports = {pid: wait_for(lambda pid=pid: len(connected_ports(pid, postgres.port)) == 3
                               and connected_ports(pid, postgres.port)) for pid in (first, second)}
        assert not ports[first] & ports[second]
        assert ports[first] | ports[second] <= backends(postgres)
        assert not connected_ports(server.process.pid, postgres.port)  # the master opens none
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    wait_for(lambda: not (ports[first] | ports[second]) & backends(postgres))


def test_200_concurrent_queries_through_a_pool_of_50_run_in_waves(postgres, product):
    with serve(product, '--no-access-log', env=settings(postgres, size=50)) as server:
        results = []

        def one():
            results.append(requests.post(f'http://127.0.0.1:{server.port}/api/v0/db/read',
                                         json={'seconds': 0.2}, timeout=60).status_code)

        threads = [threading.Thread(target=one) for _ in range(200)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - started
    print(f'200 x pg_sleep(0.2) through a pool of 50: {took:.2f} s (one at a time: 40 s)')
    assert results == [200] * 200
    assert took < 10  # 4 waves of 0.2 s; one connection at a time would take 40 s


def test_a_saturated_pool_answers_503_with_retry_after_and_queues_no_more_than_max_waiting(postgres, product):
    with serve(product, '--metrics', env=settings(postgres, size=1, timeout=3, max_waiting=1)) as server, \
            psycopg.connect(postgres.url, autocommit=True) as holder:
        holder.execute('SELECT pg_advisory_lock(42)')
        held = threading.Thread(target=call, args=('db', 'update'))
        held.start()  # takes the only connection, and waits for the lock
        wait_for(lambda: metric(server, 'apiphant_database_pool_in_use') == 1)
        waiting = []
        second = threading.Thread(target=lambda: waiting.append(
            requests.post(f'http://127.0.0.1:{server.port}/api/v0/db/read', timeout=30)))
        second.start()  # waits for a connection, for the pool's 3 s
        wait_for(lambda: metric(server, 'apiphant_database_pool_waiting') == 1)
        third = requests.post(f'http://127.0.0.1:{server.port}/api/v0/db/read', timeout=30)
        assert metric(server, 'apiphant_database_pool_waiting') == 1  # refused at once: one waits already
        second.join()
        holder.execute('SELECT pg_advisory_unlock(42)')
        held.join()
        assert call('db', 'read') == (200, {})  # the pool serves again
    for answer in (third, waiting[0]):
        assert answer.status_code == 503, answer.text
        assert answer.headers['Retry-After'] == '1'
        assert answer.json() == {'error': 'no database connection is free: try again shortly'}


def test_connections_the_server_closed_while_idle_are_replaced_without_an_error(postgres, product):
    with serve(product, '--workers', '2', env=settings(postgres, size=3)) as server:
        first, second = worker_pids(server)
        ports = wait_for(lambda: len(held := connected_ports(first, postgres.port)
                                     | connected_ports(second, postgres.port)) == 6 and held)
        postgres.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = ANY(%s)',
                       list(ports))
        wait_for(lambda: not ports & backends(postgres))
        assert [call('db', 'read')[0] for _ in range(20)] == [200] * 20
    assert not log_has(server, 'Traceback'), ''.join(server.log)


def test_a_failed_action_rolls_back_its_transaction(postgres, product):
    with serve(product, env=settings(postgres, size=2)):
        assert call('db', 'create', {'name': 'kept'})[0] == 200
        assert call('db', 'create', {'name': 'dropped', 'fail': True})[0] == 500
    assert postgres.query('SELECT name FROM things') == [('kept',)]
    postgres.query('DROP TABLE things')


def test_up_checks_the_database(postgres, product):
    postgres.query('CREATE DATABASE checked')
    url = postgres.url.rsplit('/', 1)[0] + '/checked'
    try:
        with serve(product, env={**settings(postgres, size=1, timeout=1), 'DATABASE_URL': url}) as server:
            def up():
                reply = requests.get(f'http://127.0.0.1:{server.port}/up', timeout=10)
                return reply.status_code, reply.json()

            assert up() == (200, {'status': 'up'})
            postgres.query('ALTER DATABASE checked ALLOW_CONNECTIONS false')
            postgres.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'checked'")
            # (first the pooled connection's own end, then no new connection within the pool's 1 s)
            busy = 'Busy: no database connection is free: try again shortly'
            wait_for(lambda: up() == (503, {'status': 'down', 'error': busy}))
            postgres.query('ALTER DATABASE checked ALLOW_CONNECTIONS true')
            wait_for(lambda: up() == (200, {'status': 'up'}))
    finally:
        postgres.query('DROP DATABASE checked WITH (FORCE)')


def metric(server, name):
    text = requests.get(f'http://127.0.0.1:{server.port}/metrics', timeout=10).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + ' '))


def test_metrics_show_the_pools_of_all_workers(postgres, product):
    with serve(product, '--metrics', '--workers', '2', env=settings(postgres, size=3)) as server, \
            psycopg.connect(postgres.url, autocommit=True) as holder:
        wait_for(lambda: metric(server, 'apiphant_database_pool_size') == 6)
        holder.execute('SELECT pg_advisory_lock(42)')
        held = threading.Thread(target=call, args=('db', 'update'))
        held.start()
        wait_for(lambda: metric(server, 'apiphant_database_pool_in_use') == 1, timeout=10)
        holder.execute('SELECT pg_advisory_unlock(42)')
        held.join()
        wait_for(lambda: metric(server, 'apiphant_database_pool_in_use') == 0, timeout=10)
        assert metric(server, 'apiphant_database_pool_waiting') == 0


def test_the_in_process_client_opens_and_closes_the_pool(postgres, product, monkeypatch):
    monkeypatch.setenv('DATABASE_URL', postgres.url)
    monkeypatch.setenv('DATABASE_POOL_SIZE', '2')
    before = backends(postgres)
    with client(product):
        assert call('db', 'read') == (200, {})
        assert len(backends(postgres) - before) == 2
    assert backends(postgres) <= before


@pytest.mark.parametrize('env, error', [
    ({'DATABASE_URL': 'postgresql://nobody@127.0.0.1:1/none'},
     'start-up failed: OperationalError: connection failed: connection to server at "127.0.0.1", port 1 failed: '
     'Connection refused Is the server running on that host and accepting TCP/IP connections?'),
    ({'DATABASE_URL': ''}, 'start-up failed: SettingError: DATABASE_URL is not set'),
    ({'DATABASE_URL': 'postgresql//shop:s3cret@db/shop'},  # (libpq's own message would repeat it all)
     'start-up failed: SettingError: DATABASE_URL is neither a postgresql:// URL nor a libpq connection string'),
    ({'DATABASE_POOL_SIZE': 'ten'}, "start-up failed: SettingError: DATABASE_POOL_SIZE should be a whole number "
                                    "above 0, not 'ten'"),
    ({'DATABASE_POOL_TIMEOUT': '-1'}, 'DATABASE_POOL_TIMEOUT should be a number above 0'),
])
def test_a_database_that_cannot_be_used_fails_the_start_up_in_one_line(postgres, product, env, error):
    result = run_cli(str(product), '127.0.0.1:0', env={**settings(postgres), **env})
    assert result.returncode == 3
    assert error in result.stderr and 'Traceback' not in result.stderr, result.stderr
    assert 's3cret' not in result.stderr


def test_a_wrong_password_fails_the_start_up_with_the_servers_reason(postgres, product):
    result = run_cli(str(product), '127.0.0.1:0', env={**settings(postgres), 'DATABASE_URL': postgres.url.replace(
        postgres.password, 'wrong')})
    assert result.returncode == 3
    assert 'start-up failed: OperationalError: connection failed: connection to server at "127.0.0.1", port ' \
           f'{postgres.port} failed: FATAL: password authentication failed for user "apiphant"' in result.stderr, \
        result.stderr


PSYCOPG2 = '''
import psycopg2
import psycopg2.extensions
import psycopg2.extras

COOPERATIVE = {cooperative}


def lifespan():
    if COOPERATIVE:
        psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)  # (what psycogreen installs)
    yield
'''

PSYCOPG2_ACTION = '''
import os

import psycopg2


def read(request):
    connection = psycopg2.connect(os.environ['DATABASE_URL'])
    try:
        connection.cursor().execute('SELECT pg_sleep(0.3)')
    finally:
        connection.close()
    return {}
'''


@pytest.mark.parametrize('cooperative', [False, True])
def test_psycopg2_without_a_wait_callback_is_warned_about_and_its_queries_reported(tmp_path, postgres, cooperative):
    product = make_product(tmp_path, 'old', {'api/lifespan.py': PSYCOPG2.format(cooperative=cooperative),
                                            'api/v0/query.py': PSYCOPG2_ACTION})
    with serve(product, '--warn-blocking', '50', env=settings(postgres)) as server:
        assert call('query', 'read') == (200, {})
        assert call('query', 'read') == (200, {})
        held = [line for line in server.log if 'the event loop was held' in line]
    assert log_has(server, 'psycopg2 is loaded without a wait callback') is not cooperative
    if cooperative:
        assert held == []
    else:
        assert log_has(server, 'psycogreen.gevent.patch_psycopg()')
        assert len(held) == 2 and all('by the action /api/v0/query/read' in line for line in held), held
