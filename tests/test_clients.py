"""Real HTTP/1.1 clients against apiphant's own connection layer: curl, requests, ab, raw sockets.

What a client may rely on beyond one request per connection: `Expect: 100-continue`, keep-alive,
chunked uploads and chunked answers, pipelining (answers in order, one write per read), HTTP/1.0
with and without keep-alive, file-like answers, and a body limit owned by the server alone.
"""

import json
import re
import select
import shutil
import socket
import subprocess

import pytest
import requests

from apiphant.test import serve

from support import EXAMPLE, Connection, exchange, http_request, log_has, make_product, wait_for

ECHO = '/api/v0/echo/read'

# Raw answers of unknown length: chunked, or up to the close for HTTP/1.0; and a file.
STREAMS = {'api/v0/stream.py': '''
    from apiphant import raw_environ, raw_response


    @raw_environ
    @raw_response
    def read(environ, start_response):
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return (b'line %d\\n' % number for number in range(2000))


    @raw_environ
    @raw_response
    def update(environ, start_response):
        start_response('200 OK', [('Content-Type', 'text/x-python')])
        return environ['wsgi.file_wrapper'](open(__file__, 'rb'), 100)


    @raw_environ
    def create(environ):
        body = environ['wsgi.input'].read()
        return {'length': environ['CONTENT_LENGTH'], 'read': len(body)}


    @raw_environ
    def delete(environ):
        return {'client': [environ['REMOTE_ADDR'], environ['REMOTE_PORT']]}
'''}
STREAM_LINES = b''.join(b'line %d\n' % number for number in range(2000))


@pytest.fixture(scope='module')
def streams(tmp_path_factory):
    folder = make_product(tmp_path_factory.mktemp('streams'), 'streams', STREAMS)
    with serve(folder, '--max-body', '1k') as running:
        yield running


def url(server, path=ECHO):
    return f'http://127.0.0.1:{server.port}{path}'


def test_curl_waits_for_100_continue_and_gets_the_answer(example, tmp_path):
    body = json.dumps({'hello': 'x' * 3000}).encode()
    (tmp_path / 'body.json').write_bytes(body)
    result = subprocess.run(['curl', '-sS', '-v', '--expect100-timeout', '30', '-H', 'Expect: 100-continue',
                             '--data-binary', f'@{tmp_path / "body.json"}', url(example)],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b'< HTTP/1.1 100 Continue' in result.stderr
    assert json.loads(result.stdout) == {'hello': 'x' * 3000, 'server': 'myproduct'}


def test_100_continue_is_a_413_without_reading_when_the_body_is_too_large(streams, tmp_path):
    (tmp_path / 'big').write_bytes(b'x' * 5000)
    result = subprocess.run(['curl', '-sS', '-v', '--expect100-timeout', '30', '-H', 'Expect: 100-continue',
                             '--data-binary', f'@{tmp_path / "big"}', url(streams, '/api/v0/stream/create')],
                            capture_output=True, timeout=60)
    assert b'100 Continue' not in result.stderr
    assert b'< HTTP/1.1 413 ' in result.stderr
    assert json.loads(result.stdout) == {'error': '413 Request Entity Too Large'}


@pytest.mark.parametrize('body', [[], ['--data-binary', '{"hello": "h2c"}']], ids=['no body', 'a body'])
def test_curl_http2_asks_for_h2c_and_is_answered_over_http_1_1(example, body):
    result = subprocess.run(['curl', '-sS', '-v', '--http2', '-X', 'POST', *body, url(example), url(example)],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b'> Upgrade: h2c' in result.stderr
    assert result.stderr.count(b'< HTTP/1.1 200 OK') == 2
    assert b'Re-using existing connection' in result.stderr  # still HTTP/1.1, kept alive
    expected = {'hello': 'h2c', 'server': 'myproduct'} if body else {'server': 'myproduct'}
    assert [json.loads(line) for line in result.stdout.replace(b'}{', b'}\n{').splitlines()] == [expected] * 2


def test_requests_keeps_one_connection_alive(streams):
    with requests.Session() as session:
        clients = {tuple(session.post(url(streams, '/api/v0/stream/delete'), timeout=10).json()['client'])
                   for _ in range(30)}
    assert len(clients) == 1  # one client port: one connection for all 30


def test_requests_chunked_upload(example, streams):
    pieces = [b'{"hello": ', b'"chunks", ', b'"n": 7}']
    reply = requests.post(url(example), data=iter(pieces), timeout=10)
    assert reply.json() == {'hello': 'chunks', 'n': 7, 'server': 'myproduct'}
    reply = requests.post(url(streams, '/api/v0/stream/create'), data=iter([b'a' * 300] * 3), timeout=10)
    assert reply.json() == {'length': '900', 'read': 900}


def test_chunked_upload_over_the_limit_is_refused_while_it_arrives(streams):
    reply = requests.post(url(streams, '/api/v0/stream/create'), data=iter([b'a' * 512] * 4000), timeout=30)
    assert (reply.status_code, reply.json()) == (413, {'error': '413 Request Entity Too Large'})


def test_the_body_limit_has_one_owner_the_action_never_runs(streams):
    """Over --max-body the server reads no body and the app answers 413 without running the action,
    with a Content-Length or chunked."""
    before = sum('POST /api/v0/stream/create 200' in line for line in streams.log)
    for framing in ('content-length', 'chunked'):
        answer = exchange(streams.port, http_request(path='/api/v0/stream/create', body=[b'a' * 1000] * 2,
                                                     framing=framing))
        assert (answer.status, answer.json()) == (413, {'error': '413 Request Entity Too Large'})
    assert sum('POST /api/v0/stream/create 200' in line for line in streams.log) == before


def test_unknown_length_answers_are_chunked_and_files_are_sent(streams):
    reply = requests.get(url(streams, '/api/v0/stream/read'), timeout=10)
    assert reply.headers['Transfer-Encoding'] == 'chunked'
    assert reply.content == STREAM_LINES
    reply = requests.get(url(streams, '/api/v0/stream/update'), timeout=10)
    assert reply.content.startswith(b'\nfrom apiphant import') and b'wsgi.file_wrapper' in reply.content


def test_http_1_0_gets_unknown_length_answers_up_to_the_close(streams):
    with Connection(streams.port) as connection:
        connection.send(http_request('GET', '/api/v0/stream/read', framing=None, version='HTTP/1.0', host=None))
        answer = connection.answer()
    assert 'transfer-encoding' not in answer.headers and answer.headers['connection'] == 'close'
    assert answer.body == STREAM_LINES


def test_http_1_0_keep_alive_and_close(example):
    with Connection(example.port) as connection:
        for number in range(3):
            connection.send(http_request(path=ECHO, body=b'{"n": %d}' % number, version='HTTP/1.0', host=None,
                                         headers=[('Connection', 'keep-alive')]))
            answer = connection.answer()
            assert answer.headers['connection'] == 'keep-alive'
            assert answer.json() == {'n': number, 'server': 'myproduct'}
        connection.send(http_request(path=ECHO, body=b'{"n": 9}', version='HTTP/1.0', host=None))
        answer = connection.answer()
        assert answer.headers['connection'] == 'close' and answer.json() == {'n': 9, 'server': 'myproduct'}
        assert connection.closes()


def test_pipelined_requests_are_answered_in_order_in_one_write(example):
    requests_ = b''.join(http_request(path=ECHO, body=b'{"n": %d}' % number) for number in range(10))
    with socket.create_connection(('127.0.0.1', example.port), timeout=10) as sock:
        sock.sendall(requests_)  # one send: on loopback the server reads all ten at once
        assert select.select([sock], [], [], 10)[0]
        first = sock.recv(1 << 20)  # the first bytes to arrive hold every answer, or there were several writes
    assert first.count(b'HTTP/1.1 200 OK') == 10
    assert [int(number) for number in re.findall(rb'"n": (\d+)', first)] == list(range(10))


@pytest.mark.skipif(not shutil.which('ab'), reason='ab is not installed (tests/run installs apache2-utils)')
def test_apachebench_keep_alive(tmp_path):
    (tmp_path / 'body.json').write_text('{"hello": "world"}')
    with serve(EXAMPLE, '--no-access-log') as server:
        result = subprocess.run(['ab', '-k', '-q', '-n', '3000', '-c', '20', '-p', str(tmp_path / 'body.json'),
                                 '-T', 'application/json', url(server)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    numbers = dict(re.findall(r'^([A-Za-z-]+(?: [a-z-]+)*):\s+(\d+)', result.stdout, re.M))
    assert numbers['Complete requests'] == '3000', result.stdout
    assert numbers['Failed requests'] == '0', result.stdout
    assert numbers['Keep-Alive requests'] == '3000', result.stdout
    assert 'Non-2xx responses' not in result.stdout


def test_python_client_sees_no_reset_on_a_refused_pipeline(example):
    """A refused request after good ones: the good ones are answered, then the 400, then a close."""
    good = http_request(path=ECHO, body=b'{}')
    with Connection(example.port) as connection:
        connection.send(good, good, b'BROKEN\r\n\r\n')
        answers = [connection.answer() for _ in range(3)]
        assert [answer.status for answer in answers] == [200, 200, 400]
        assert answers[2].json() == {'error': '400 Bad Request'}
        assert connection.closes()


def test_raw_utf8_path_is_a_404_not_a_parse_error(example):
    assert exchange(example.port, http_request(path='/api/v0/échø/read')).status == 404
    assert exchange(example.port, http_request(path=ECHO, body=b'{}')).status == 200


def test_a_stream_that_fails_halfway_is_cut_by_a_close_not_patched_with_a_500(tmp_path):
    folder = make_product(tmp_path, 'broken_stream', {'api/v0/stream.py': '''
        from apiphant.server import raw_environ, raw_response


        def lines():
            yield b'first\\n'
            raise RuntimeError('halfway')


        @raw_environ
        @raw_response
        def read(environ, start_response):
            start_response('200 OK', [('Content-Type', 'text/plain')])
            return lines()
    '''})
    with serve(folder) as server, socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(http_request('GET', '/api/v0/stream/read', framing=None))
        reply = b''.join(iter(lambda: sock.recv(65536), b''))  # up to the close
        assert reply.startswith(b'HTTP/1.1 200 OK') and b'Transfer-Encoding: chunked' in reply
        assert b'first' in reply and b'500' not in reply and not reply.endswith(b'0\r\n\r\n')
        wait_for(lambda: log_has(server, 'RuntimeError: halfway'))


def test_requests_after_a_close_are_not_answered(example):
    """Connection: close in the middle of a long pipeline (more than one read): the answers up to it
    arrive whole, nothing after it is answered, and the connection closes."""
    with Connection(example.port) as connection:
        connection.send(http_request(path=ECHO, body=b'{"n": 1}'),
                        http_request(path=ECHO, body=b'{"n": 2}', headers=[('Connection', 'close')]),
                        http_request(path=ECHO, body=b'{"n": 3}') * 3000)
        assert [connection.answer().json()['n'] for _ in range(2)] == [1, 2]
        assert connection.closes()
