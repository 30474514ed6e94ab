"""The HTTP layer in memory: one Connection driven over a socket pair beside a stub server (a State
and a small WSGI app), no process, no port. Signals, workers and draining stay with the subprocess
tests (test_server.py, test_load.py)."""

import json
from urllib.parse import unquote

import gevent
import httptools
import pytest
from gevent import socket

from apiphant.app import App
from apiphant.connection import Connection, State
from apiphant.errors import BODY_REFUSED
from apiphant.routes import Route, raw_environ

from support import http_request

BASE_ENVIRON = {'SCRIPT_NAME': '', 'SERVER_NAME': 'test', 'SERVER_PORT': '80', 'wsgi.url_scheme': 'http'}


def echo(environ, start_response):
    """Answers PATH_INFO and the body; 413 for a refused body, as apiphant's App does; a header
    from the decoded query, as a careless app might."""
    if BODY_REFUSED in environ:
        start_response('413 Request Entity Too Large', [('Connection', 'close')])
        return [b'too large']
    headers = [('Content-Type', 'text/plain')]
    if environ['QUERY_STRING']:
        headers.append(('X-Echo', unquote(environ['QUERY_STRING'])))
    start_response('200 OK', headers)
    return [environ['PATH_INFO'].encode() + b' ' + environ['wsgi.input'].read()]


class Stub:
    """A connection over a socket pair; `client` is the other end."""

    def __init__(self, app=echo):
        self.forgotten = []
        self.state = State(app, BASE_ENVIRON, max_body=1024, forget=self.forgotten.append)
        self.client, server_side = socket.socketpair()
        self.connection = Connection(server_side, ('127.0.0.1', 1234), self.state)
        self.greenlet = gevent.spawn(self.connection.run)

    def answers(self, count):
        """The next `count` answers as (status, headers, body), read as a client would; fewer when
        the connection closes first."""
        found = []
        current = {}

        class Reader:
            def on_header(self, name, value):
                current['headers'][name.decode().lower()] = value.decode()

            def on_body(self, body):
                current['body'] += body

            def on_message_begin(self):
                current.update(headers={}, body=b'')

            def on_message_complete(self):
                found.append((parser.get_status_code(), current['headers'], current['body']))

        parser = httptools.HttpResponseParser(Reader())
        with gevent.Timeout(5):
            while len(found) < count:
                data = self.client.recv(65536)
                if not data:
                    break
                parser.feed_data(data)
        return found

    def closed(self):
        """Whether the server's side closed: the client reads end of file."""
        with gevent.Timeout(5):
            return self.client.recv(65536) == b''

    def close(self):
        self.client.close()
        self.greenlet.join(5)
        assert self.greenlet.dead and self.forgotten == [self.connection]


@pytest.fixture
def stub():
    running = Stub()
    yield running
    running.close()


def test_pipelined_requests_are_answered_in_order_in_one_send(stub):
    stub.client.sendall(b''.join(http_request('POST', f'/{index}', str(index)) for index in range(5)))
    answers = stub.answers(5)
    assert [body for _, _, body in answers] == [b'/%d %d' % (index, index) for index in range(5)]
    assert stub.connection.requests_served == 5
    ids = {headers['x-request-id'] for _, headers, _ in answers}
    assert len(ids) == 5


def test_100_continue_only_when_the_body_will_be_taken(stub):
    head, _, body = http_request('POST', '/up', b'x' * 10, headers=[('Expect', '100-continue')]).partition(b'\r\n\r\n')
    stub.client.sendall(head + b'\r\n\r\n')
    with gevent.Timeout(5):
        assert stub.client.recv(65536) == b'HTTP/1.1 100 Continue\r\n\r\n'
    stub.client.sendall(body)
    assert stub.answers(1)[0][2] == b'/up ' + b'x' * 10


def test_a_body_over_the_limit_is_refused_unread_and_never_continued(stub):
    stub.client.sendall(http_request('POST', '/big', b'', headers=[('Expect', '100-continue')], framing=None)[:-2]
                        + b'Content-Length: 2000\r\n\r\n')
    (status, headers, body), = stub.answers(1)
    assert (status, headers['connection'], body) == (413, 'close', b'too large')


def test_lingering_close_reads_and_drops_what_follows_a_refusal(stub):
    stub.client.sendall(http_request('POST', '/big', b'y' * 600, framing=None, headers=[('Content-Length', 2000)]))
    assert stub.answers(1)[0][0] == 413
    assert stub.closed()  # the server stopped sending...
    stub.client.sendall(b'y' * 1400)  # ...and still reads: the rest of the body meets no reset
    assert not stub.greenlet.dead


def test_a_header_with_a_line_break_is_a_500_never_an_injected_header(stub):
    stub.client.sendall(http_request('GET', '/x?a%0d%0aSet-Cookie:%20stolen=1', framing=None))
    (status, headers, body), = stub.answers(1)
    assert status == 500 and 'set-cookie' not in headers and b'stolen' not in body
    assert stub.closed()


def test_a_refused_head_is_a_400_and_a_close(stub):
    stub.client.sendall(b'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n')
    assert stub.answers(1)[0][0] == 400
    assert stub.closed()


def test_a_status_with_a_line_break_is_a_500_never_an_injected_header():
    def careless(environ, start_response):
        start_response('200 ' + unquote(environ['QUERY_STRING']), [('Content-Type', 'text/plain')])
        return [b'hello']

    stub = Stub(careless)
    try:
        stub.client.sendall(http_request('GET', '/x?OK%0d%0aSet-Cookie:%20stolen=1', framing=None))
        (status, headers, _), = stub.answers(1)
        assert status == 500 and 'set-cookie' not in headers
    finally:
        stub.close()


def test_a_205_has_no_content_and_a_zero_length(stub):
    def reset(environ, start_response):
        start_response('205 Reset Content', [('Content-Type', 'text/plain')])
        return [b'dropped']

    stub.state.app = reset
    stub.client.sendall(http_request('POST', '/a', b'') + http_request('POST', '/b', b''))
    answers = stub.answers(2)
    assert [(status, headers['content-length'], body) for status, headers, body in answers] == [(205, '0', b'')] * 2


class Direct(App):
    """apiphant's App over a plain and a raw_environ action, keeping the requests it was handed."""

    def __init__(self):
        def read(request):
            return {'echo': request}

        @raw_environ
        def raw(environ):
            return {key: environ[key] for key in ('REQUEST_METHOD', 'PATH_INFO', 'QUERY_STRING', 'CONTENT_TYPE',
                                                  'HTTP_X_REQUEST_ID', 'HTTP_X_TWICE', 'SERVER_PROTOCOL',
                                                  'REMOTE_ADDR')} | {'body': environ['wsgi.input'].read().decode()}

        super().__init__({'/read': Route('/read', read, False, False), '/raw': Route('/raw', raw, True, False)})
        self.handed = []

    def serve_request(self, request, start_response):
        self.handed.append(request)
        return super().serve_request(request, start_response)

    def __call__(self, environ, start_response):
        raise AssertionError('called through WSGI')


def test_an_app_with_serve_request_is_called_directly_and_an_environ_is_made_only_when_asked_for():
    stub = Stub(Direct())
    try:
        stub.client.sendall(http_request('POST', '/read', '{"a": 1}')
                            + http_request('PUT', '/raw?q=1', 'x', headers=[('Content-Type', 'text/plain'),
                                                                             ('X-Request-ID', 'abc'),
                                                                             ('X-Twice', '1'), ('X-Twice', '2')])
                            + http_request('POST', '/read', 'y' * 2000))
        (read, plain), (raw, environ), (big, _) = [(status, json.loads(body)) for status, _, body in stub.answers(3)]
        assert (read, plain) == (200, {'echo': {'a': 1}})
        assert (raw, environ) == (200, {'REQUEST_METHOD': 'PUT', 'PATH_INFO': '/raw', 'QUERY_STRING': 'q=1',
                                        'CONTENT_TYPE': 'text/plain', 'HTTP_X_REQUEST_ID': 'abc',
                                        'HTTP_X_TWICE': '1,2', 'SERVER_PROTOCOL': 'HTTP/1.1',
                                        'REMOTE_ADDR': '127.0.0.1', 'body': 'x'})
        assert big == 413  # (over the stub's max_body: refused unread, answered by the App)
        first, second, third = stub.state.app.handed
        assert first._environ is None and second._environ is not None and third.body_refused
    finally:
        stub.close()
