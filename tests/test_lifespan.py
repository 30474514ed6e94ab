"""The product's api/lifespan.py: start-up and shutdown in each serving process, after the fork and
after the drain; a start-up that fails stops the process with one line."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from apiphant.test import call, client, serve

from support import children, log_has, make_product, run_cli, wait_for

LIFESPAN = '''
import logging
import os

log = logging.getLogger('recorded')
state = {}


def lifespan():
    log.warning('start-up in pid %d', os.getpid())
    state['pid'] = os.getpid()
    try:
        yield
    finally:
        state.clear()
        log.warning('shutdown in pid %d', os.getpid())
'''

ACTIONS = '''
import os

from recorded.api import lifespan


def read(request):
    """Which process answers, and the pid its start-up saw (None: start-up did not run there)."""
    return {'pid': os.getpid(), 'started_in': lifespan.state.get('pid')}
'''

BACKGROUND = '''
from apiphant.background import seconds

from recorded.api import lifespan


@seconds(60)
def report():
    import logging
    logging.getLogger('recorded').warning('task sees start-up of pid %s', lifespan.state.get('pid'))
'''


@pytest.fixture
def recorded(tmp_path):
    return make_product(tmp_path, 'recorded', {'api/lifespan.py': LIFESPAN, 'api/v0/where.py': ACTIONS,
                                              'api/background.py': BACKGROUND})


def lines(server, text):
    return [line for line in server.log if text in line]


def test_single_process_starts_up_before_serving_and_shuts_down_after_the_drain(recorded):
    with serve(recorded) as server:
        assert lines(server, 'start-up in pid'), server.log  # before the start-up line: serve() waited for it
        status, body = call('where', 'read')
        assert status == 200 and body['started_in'] == body['pid'] == server.process.pid
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    log = ''.join(server.log)
    assert log.index(f'pid {server.process.pid}: stopped') < log.index(f'shutdown in pid {server.process.pid}')


def test_each_worker_runs_its_own_start_up_after_the_fork_and_shutdown_after_its_drain(recorded):
    with serve(recorded, '--workers', '2') as server:
        line = next(line for line in server.log if 'workers [' in line)
        workers = set(json.loads(line[line.index('['):]))
        log = ''.join(server.log)
        for pid in workers:  # the start-up line is logged once both workers have started up
            assert log.index(f'start-up in pid {pid}') < log.index('serving recorded'), log
        assert not lines(server, f'start-up in pid {server.process.pid}')  # never in the master
        answers = [call('where', 'read')[1] for _ in range(100)]
        assert all(answer['started_in'] == answer['pid'] and answer['pid'] in workers for answer in answers)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    log = ''.join(server.log)
    for pid in workers:
        assert log.index(f'pid {pid}: stopped') < log.index(f'shutdown in pid {pid}')


def test_the_in_process_client_runs_start_up_and_shutdown_around_its_block(recorded, caplog):
    with client(recorded):
        assert call('where', 'read')[1]['started_in'] == os.getpid()
        assert 'shutdown' not in caplog.text
    assert f'shutdown in pid {os.getpid()}' in caplog.text


def test_apiphant_background_runs_the_lifespan_around_its_tasks(recorded):
    process = subprocess.Popen([str(Path(sys.executable).parent / 'apiphant-background'), str(recorded)],
                               stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in process.stderr:
            seen.append(line)
            if 'Task report: OK.' in line:
                break
        process.send_signal(signal.SIGTERM)
        seen += process.stderr.readlines()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = ''.join(seen)
    assert f'task sees start-up of pid {process.pid}' in log
    assert log.index('background: stopped') < log.index(f'shutdown in pid {process.pid}')


ECHO = '''
def read(request):
    return request
'''

FAILING = '''
import socket


def lifespan():
    socket.create_connection(('127.0.0.1', 1)).close()   # nothing listens on port 1
    yield
'''


@pytest.mark.parametrize('workers', ['1', '2'])
def test_a_start_up_that_fails_stops_the_process_with_one_line(tmp_path, workers):
    product = make_product(tmp_path, 'failing', {'api/lifespan.py': FAILING, 'api/v0/echo.py': ECHO})
    result = run_cli(str(product), '127.0.0.1:0', '--workers', workers)
    assert result.returncode == 3, result.stderr
    failures = [line for line in result.stderr.splitlines() if 'start-up failed:' in line]
    assert failures and all(line.endswith(f'start-up failed: ConnectionRefusedError: [Errno 111] Connection '
                                          f'refused ({product}/api/lifespan.py, line 6)') for line in failures), \
        result.stderr
    assert 'Traceback' not in result.stderr and 'serving failing' not in result.stderr


def test_a_start_up_that_fails_stops_apiphant_background_with_one_line(tmp_path):
    product = make_product(tmp_path, 'failing', {'api/lifespan.py': FAILING, 'api/background.py': '''
        from apiphant.background import seconds


        @seconds(60)
        def report():
            pass
        '''})
    result = subprocess.run([str(Path(sys.executable).parent / 'apiphant-background'), str(product)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert result.stderr.strip().endswith('start-up failed: ConnectionRefusedError: [Errno 111] Connection '
                                          f'refused ({product}/api/lifespan.py, line 6)'), result.stderr
    assert 'Traceback' not in result.stderr and 'Task report' not in result.stderr


def test_workers_that_fail_to_start_leave_no_process_behind(tmp_path):
    product = make_product(tmp_path, 'failing', {'api/lifespan.py': FAILING, 'api/v0/echo.py': ECHO})
    process = subprocess.Popen([sys.executable, '-m', 'apiphant', str(product), '127.0.0.1:0', '--workers', '3'],
                               stderr=subprocess.PIPE, text=True)
    forked = wait_for(lambda: children(process.pid) or process.poll() is not None)
    assert process.wait(30) == 3
    assert 'its start-up failed; stopping' in process.stderr.read()
    if forked is not True:
        wait_for(lambda: not any(os.path.exists(f'/proc/{pid}') for pid in forked))


@pytest.mark.parametrize('source, error', [
    ('def lifespan():\n    pass\n', 'should define lifespan() as a generator'),
    ('lifespan = None\n', 'should define lifespan() as a generator'),
    ('def lifespan():\n    if False:\n        yield\n', "start-up failed: RuntimeError: generator didn't yield"),
])
def test_a_lifespan_that_is_not_one_generator_is_refused(tmp_path, source, error):
    product = make_product(tmp_path, 'odd', {'api/lifespan.py': source, 'api/v0/echo.py': ECHO})
    result = run_cli(str(product), '127.0.0.1:0')
    assert result.returncode and error in result.stderr, result.stderr


def test_a_shutdown_that_fails_is_logged_and_the_exit_code_says_so(tmp_path):
    product = make_product(tmp_path, 'odd', {'api/v0/echo.py': ECHO, 'api/lifespan.py': '''
        def lifespan():
            yield
            raise OSError('could not flush')
        '''})
    with serve(product) as server:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 1
    wait_for(lambda: log_has(server, 'shutdown failed: OSError: could not flush'))
