"""The same product under other WSGI servers: gunicorn's gevent worker and granian's WSGI interface.

The App is a plain PEP 3333 callable (`apiphant.wsgi:application`); what it answers must not
depend on apiphant's own server: JSON echo, errors, the escape hatches, its own body limit.
"""

import os
import subprocess
import sys

import pytest

from apiphant.test import RunningServer, call, test

from support import KITCHEN, children, exchange, http_request, listening_ports, wait_for

START_TIMEOUT = 30
SERVERS = {
    'gunicorn gevent': ['-m', 'gunicorn', '-k', 'gevent', '-w', '1', '-b', '127.0.0.1:{port}',
                        'apiphant.wsgi:application'],
    'granian wsgi': ['-m', 'granian', '--interface', 'wsgi', '--host', '127.0.0.1', '--port', '{port}',
                     '--workers', '1', '--no-ws', 'apiphant.wsgi:application'],
}


@pytest.fixture(scope='module', params=list(SERVERS), ids=list(SERVERS))
def other_server(request):
    """The server on port 0, the kernel's choice, read from /proc: no port chosen free can be taken
    meanwhile, and no start-up line to parse (each server words its own differently)."""
    command = [sys.executable, *(part.format(port=0) for part in SERVERS[request.param])]
    process = subprocess.Popen(command, env={**os.environ, 'APIPHANT_PRODUCT': str(KITCHEN)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ports = wait_for(lambda: process.poll() is not None
                         or listening_ports([process.pid, *children(process.pid)]), timeout=START_TIMEOUT)
        if process.poll() is not None:
            raise RuntimeError(f'{request.param} did not start: {process.stderr.read()}')
        port, = ports
        with RunningServer(process, f'http://127.0.0.1:{port}/api/', []).use():
            yield port
    finally:
        process.terminate()
        process.wait(START_TIMEOUT)  # each stops at once on SIGTERM when idle


def test_actions_and_errors(other_server):
    test('things', 'create', {'id': 1, 'name': 'bob', 'user': {'city': 'Rome'}}, 200,
         {'id': 1, 'name': 'bob', 'city': 'Rome'})
    test('things', 'create', {'id': True}, 400, {'error': 'id is Invalid', 'field': 'id', 'state': 'invalid'})
    test('nothing', 'read', {}, 404, {'error': '404 Not Found'})
    assert call('things', 'read', method='GET')[0] == 405
    assert call('things', 'delete', {'mode': 'crash'}) == (500, {'error': '500 Internal Server Error'})


def test_escape_hatches(other_server):
    assert call('raw', 'read', b'12345', method='PUT') == (200, {'method': 'PUT', 'length': 5})
    assert call('raw', 'create', {'x': 'yz'}) == (200, 'plain yz')


def test_the_app_refuses_a_body_over_its_limit_before_reading_it(other_server):
    # Only the head is sent: the answer must come without the body (a server that closes at once on
    # unread input, as granian does, would otherwise reset a client still sending).
    answer = exchange(other_server, http_request(path='/api/v0/things/create', framing=None,
                                                 headers=[('Content-Length', 2 * 1024 * 1024)]), timeout=5)
    assert (answer.status, answer.json()) == (413, {'error': '413 Request Entity Too Large'})


def test_bad_json_is_a_json_400(other_server):
    answer = exchange(other_server, http_request(path='/api/v0/things/create', body=b'{"a":'))
    assert (answer.status, answer.json()) == (400, {'error': 'Request content should be JSON Object'})
