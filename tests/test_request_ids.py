"""Request IDs: the client's when well-formed, else a new one; in the answer, the access log, the
action (`apiphant.request_id()`), and on every log record written while the request runs."""

import re
import threading

import pytest
import requests

import apiphant
from apiphant.test import call, client, serve

from support import log_has, make_product, wait_for

TRACED = {'api/v0/trace.py': '''
    import logging
    import time

    import apiphant

    log = logging.getLogger('traced.trace')


    def read(request):
        """Logs before and after waiting, so two requests' records interleave."""
        log.info('start %s', request.get('tag'))
        time.sleep(request.get('seconds', 0))
        log.info('end %s', request.get('tag'))
        return {'request_id': apiphant.request_id()}


    def update(request):
        raise RuntimeError('boom')
'''}
GENERATED = re.compile(r'[0-9a-f]{16}-[0-9a-f]+\Z')


@pytest.fixture(scope='module')
def traced(tmp_path_factory):
    with serve(make_product(tmp_path_factory.mktemp('ids'), 'traced', TRACED)) as server:
        yield server


def trace(server, action='read', body=None, request_id=None):
    headers = {} if request_id is None else {'X-Request-ID': request_id}
    return requests.post(f'http://127.0.0.1:{server.port}/api/v0/trace/{action}', json=body or {},
                         headers=headers, timeout=30)


def test_a_well_formed_client_id_is_used_everywhere(traced):
    given = 'Req-1.a_' + 'x' * 120
    reply = trace(traced, body={'tag': 'given'}, request_id=given)
    assert reply.headers['X-Request-ID'] == given and reply.json() == {'request_id': given}
    wait_for(lambda: log_has(traced, f'/api/v0/trace/read 200 {len(reply.content)} '))
    assert any(line.endswith(f'ms {given}\n') for line in traced.log if '/trace/read 200' in line)
    assert log_has(traced, f'INFO {given} start given')


@pytest.mark.parametrize('bad', ['', 'has space', 'x' * 129, 'semi;colon', 'é'])
def test_a_malformed_client_id_is_replaced(traced, bad):
    reply = trace(traced, request_id=bad)
    made = reply.headers['X-Request-ID']
    assert made != bad and GENERATED.match(made) and reply.json() == {'request_id': made}


def test_each_request_gets_its_own_new_id_and_errors_carry_one_too(traced):
    made = {trace(traced).headers['X-Request-ID'] for _ in range(5)}
    assert len(made) == 5
    reply = requests.get(f'http://127.0.0.1:{traced.port}/nowhere', timeout=10,
                         headers={'X-Request-ID': 'lost-1'})
    assert reply.status_code == 404 and reply.headers['X-Request-ID'] == 'lost-1'


def test_concurrent_requests_keep_their_own_id_on_their_log_records(traced):
    """contextvars are per greenlet under gevent: records of interleaved requests do not mix."""
    replies = {}

    def one(tag):
        replies[tag] = trace(traced, body={'tag': tag, 'seconds': 0.5}, request_id=f'id-{tag}')

    threads = [threading.Thread(target=one, args=(tag,)) for tag in ('a', 'b', 'c')]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: all(log_has(traced, f'end {tag}') for tag in ('a', 'b', 'c')))  # (read by a thread)
    for tag in ('a', 'b', 'c'):
        assert replies[tag].json() == {'request_id': f'id-{tag}'}
        for event in ('start', 'end'):
            lines = [line for line in traced.log if line.rstrip().endswith(f'{event} {tag}')]
            assert len(lines) == 1 and f'INFO id-{tag} {event} {tag}' in lines[0], lines


def test_the_500_traceback_carries_the_request_id(traced):
    reply = trace(traced, 'update', request_id='fails-1')
    assert reply.status_code == 500 and reply.headers['X-Request-ID'] == 'fails-1'
    wait_for(lambda: log_has(traced, 'ERROR fails-1 500 on /api/v0/trace/update'))
    wait_for(lambda: log_has(traced, 'RuntimeError: boom'))


def test_outside_a_request_the_id_is_a_dash():
    assert apiphant.request_id() == '-'


def test_the_id_reaches_an_action_through_the_in_process_client_as_a_dash(tmp_path):
    """The in-process client has no server: no ID is made, and the call says so instead of failing."""
    with client(make_product(tmp_path, 'traced', TRACED)):
        assert call('trace', 'read', {}) == (200, {'request_id': '-'})

