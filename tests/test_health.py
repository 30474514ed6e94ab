"""The health path: up while serving, 503 from the moment a drain starts, the product's readiness
check (its error, its time limit, one run a second shared by concurrent probes)."""

import signal
import threading
import time

import requests

from apiphant.health import CHECK_PERIOD
from apiphant.test import serve

from support import KITCHEN, Connection, held_request, http_request, log_has, make_product, run_cli, wait_for

CHECKED = '''
import time
from pathlib import Path

STATE = Path(__file__).parent / 'state'
timeout = 0.5


def check():
    """Reads what the test wrote: ok, down, slow (0.3 s) or hang; counts its runs."""
    with open(Path(__file__).parent / 'runs', 'a') as runs:
        runs.write('.')
    state = STATE.read_text() if STATE.exists() else 'ok'
    if state == 'down':
        raise ConnectionError('database unreachable\\nat 10.0.0.5:5432')
    if state == 'slow':
        time.sleep(0.3)
    if state == 'hang':
        time.sleep(60)
'''


def up(server, path='/up'):
    reply = requests.get(f'http://127.0.0.1:{server.port}{path}', timeout=10)
    return reply.status_code, reply.json()


def checked_product(tmp_path):
    return make_product(tmp_path, 'checked', {'api/health.py': CHECKED, 'api/v0/things.py': '''
        def read(request):
            return {}
    '''})


def test_up_answers_200_and_the_path_is_settable():
    with serve(KITCHEN, '--no-access-log') as server:
        assert up(server) == (200, {'status': 'up'})
        reply = requests.head(f'http://127.0.0.1:{server.port}/up', timeout=10)
        assert reply.status_code == 200 and reply.headers['Cache-Control'] == 'no-store'
    with serve(KITCHEN, '--no-access-log', '--health-path', '/healthz') as server:
        assert up(server, '/healthz') == (200, {'status': 'up'})
        assert up(server, '/up')[0] == 404


def test_a_bad_health_path_is_refused():
    for bad in ('up', '/api/up', '/metrics'):
        result = run_cli(str(KITCHEN), '--health-path', bad)
        assert result.returncode == 2 and 'outside /api/' in result.stderr


def test_up_answers_503_from_the_moment_a_drain_starts(tmp_path):
    """A probe on a kept-alive connection (as a balancer or nginx keeps one) during the drain."""
    gate = tmp_path / 'gate'
    with serve(KITCHEN, '--drain-timeout', '60') as server:
        with Connection(server.port, timeout=30) as connection:
            connection.send(held_request(gate, 'probe'), http_request('GET', '/up'))  # pipelined: one read
            wait_for(lambda: log_has(server, 'in flight: probe'))
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: log_has(server, 'draining'))
            gate.touch()  # the probe behind the held action is answered only now, in the drain
            first, second = connection.answer(), connection.answer()
        assert first.status == 200 and first.json() == {'released': True}
        assert second.status == 503 and second.headers['connection'] == 'close'
        assert second.json() == {'status': 'draining'}
        assert server.process.wait(30) == 0


def test_the_product_check_makes_up_503_with_its_error_in_one_line(tmp_path):
    product = checked_product(tmp_path)
    with serve(product, '--no-access-log') as server:
        assert up(server) == (200, {'status': 'up'})
        (product / 'api' / 'state').write_text('down')
        expected = (503, {'status': 'down', 'error': 'ConnectionError: database unreachable'})
        wait_for(lambda: up(server) == expected)
        # (the log is read by a thread)
        wait_for(lambda: log_has(server, 'health check fails: ConnectionError: database unreachable'))
        (product / 'api' / 'state').write_text('ok')
        wait_for(lambda: up(server) == (200, {'status': 'up'}))
        assert requests.post(f'http://127.0.0.1:{server.port}/api/health/check', timeout=10).status_code == 404
    listed = run_cli('routes', str(product))
    assert listed.returncode == 0 and 'health' not in listed.stdout


def test_the_check_has_a_time_limit(tmp_path):
    product = checked_product(tmp_path)
    (product / 'api' / 'state').write_text('hang')
    with serve(product, '--no-access-log') as server:
        # Answered within up()'s 10 s client timeout, so the 60 s hang was cut off, and said so.
        assert up(server) == (503, {'status': 'down', 'error': 'CheckTimeout: the check took over 0.5 s'})


def test_concurrent_probes_share_one_run_and_it_runs_at_most_once_a_second(tmp_path):
    product = checked_product(tmp_path)
    runs = product / 'api' / 'runs'
    (product / 'api' / 'state').write_text('slow')
    with serve(product, '--no-access-log') as server:
        answers = []
        probes = [threading.Thread(target=lambda: answers.append(up(server))) for _ in range(10)]
        started = time.monotonic()
        for probe in probes:
            probe.start()
        for probe in probes:
            probe.join()
        assert answers == [(200, {'status': 'up'})] * 10
        assert up(server) == (200, {'status': 'up'})
        # Shared and spaced: however long these 11 probes took, at most one run a CHECK_PERIOD
        # (runs of their own would be 11 unless they took 10 periods).
        shared = len(runs.read_text())
        assert 1 <= shared <= 1 + (time.monotonic() - started) // CHECK_PERIOD
        wait_for(lambda: up(server) and len(runs.read_text()) > shared, timeout=30, interval=0.2)  # and again later


def test_a_health_module_without_check_stops_the_start(tmp_path):
    product = make_product(tmp_path, 'nocheck', {'api/health.py': 'ready = True\n'})
    result = run_cli(str(product), '127.0.0.1:0')
    assert result.returncode == 1 and 'api/health.py has no function check()' in result.stderr
