"""The request path over real HTTP to a real server: routing, bodies, responses, errors."""

import http.client
import json

import pytest

from apiphant.test import call, config, serve, test
from support import EXAMPLE, post, raw_exchange

ERROR_NOT_OBJECT = {'error': 'Request content should be JSON Object'}


def exchange(server, method, path, body=b'', headers=None):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        connection.close()


def test_the_seed_echo(example):
    assert test('echo', 'read', {'hello': 'world'}, 200, {'hello': 'world', 'server': 'myproduct'}) \
        == {'hello': 'world', 'server': 'myproduct'}


def test_response_is_json_with_content_type_and_exact_bytes(example):
    status, headers, body = exchange(example, 'POST', '/api/v0/echo/read', b'{"hello": "world"}')
    assert status == 200
    assert headers['Content-Type'] == 'application/json'
    assert body == b'{"hello": "world", "server": "myproduct"}'
    assert 'Date' in headers


def test_nested_targets_and_versions(kitchen):
    test('users/admin', 'read', {}, 200, {'who': 'admin'})
    config.version = 'v1'
    try:
        test('echo', 'read', {'a': 1}, 200, {'version': 1, 'a': 1})
    finally:
        config.version = 'v0'


@pytest.mark.parametrize('path', [
    '/api/v0/things/patch',           # not a CRUD action
    '/api/v0/nothing/read',           # no such module
    '/api/v9/things/read',            # no such version
    '/api/vx/echo/read',              # not a version folder
    '/api/v0/_private/read',          # private module
    '/api/v0/not-a-module/read',      # not an identifier
    '/api/v0/things/read/',           # trailing slash
    '/api/v0/users/read',             # a package, not a module
    '/api/v0/../v1/echo/read',        # dot segments are not resolved
    '/api/v0/%2e%2e/v1/echo/read',
    '/',
])
def test_unknown_routes_are_404_json(kitchen, path):
    status, headers, body = exchange(kitchen, 'POST', path, b'{}')
    assert (status, json.loads(body)) == (404, {'error': '404 Not Found'})
    assert headers['Content-Type'] == 'application/json'


@pytest.mark.parametrize('method', ['GET', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])
def test_other_methods_are_405_with_allow(kitchen, method):
    status, headers, body = exchange(kitchen, method, '/api/v0/things/read')
    assert status == 405
    assert headers['Allow'] == 'POST'
    assert json.loads(body) == {'error': '405 Method Not Allowed'}


def test_head_is_405_without_body(kitchen):
    status, headers, body = exchange(kitchen, 'HEAD', '/api/v0/things/read')
    assert (status, headers['Allow'], body) == (405, 'POST', b'')


def test_empty_body_is_an_empty_object(kitchen):
    status, body = call('raw', 'read', b'')
    assert status == 200 and body == {'method': 'POST', 'length': 0}
    with pytest.raises(AssertionError):
        test('things', 'create', b'', 200)
    test('things', 'create', b'', 400, {'error': 'id is Missing', 'field': 'id', 'state': 'missing'})


@pytest.mark.parametrize('body', [
    b'{', b'{"a": }', b'nope', b'   ', b'{"a": "\xff"}', b'\xfe\xff{}',
    b'[]', b'[1, 2]', b'"text"', b'42', b'null', b'true',
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e999}', b'{"a": [1, {"b": NaN}]}',
    b'[' * 100000 + b']' * 100000,
])
def test_bad_json_is_400(kitchen, body):
    assert call('things', 'create', body) == (400, ERROR_NOT_OBJECT)


def test_strings_that_merely_look_non_finite_are_fine(example):
    body = {'hello': 'NaN Infinity 1e999', 'n': 1e300}
    test('echo', 'read', body, 200, {**body, 'server': 'myproduct'})


def test_unicode_round_trips(example):
    body = {'hello': 'wörld ☃ \U0001F418', 'lone': 'x'}
    test('echo', 'read', body, 200, {**body, 'server': 'myproduct'})


def test_attribute_access_to_nested_objects(kitchen):
    test('things', 'read', {'user': {'address': {'city': 'Oslo'}}, 'things': [{'tag': 'a'}]}, 200,
         {'city': 'Oslo', 'first_tag': 'a', 'type': 'Request'})


def test_validation_errors_reach_the_client(kitchen):
    test('things', 'create', {'id': 1, 'name': 'bob', 'user': {'city': 'Rome'}}, 200,
         {'id': 1, 'name': 'bob', 'city': 'Rome'})
    test('things', 'create', {'id': True}, 400, {'error': 'id is Invalid', 'field': 'id',
                                                 'state': 'invalid'})
    test('things', 'create', {'id': 1, 'name': 'too long'}, 400,
         {'error': 'name is Invalid', 'field': 'name', 'state': 'invalid'})


@pytest.mark.parametrize('code', [400, 401, 403, 409, 418, 422, 429, 500, 503, 599])
def test_api_error_any_status(kitchen, code):
    status, headers, body = exchange(kitchen, 'POST', '/api/v0/things/update',
                                     json.dumps({'code': code}).encode())
    assert status == code
    assert json.loads(body)['error'].startswith(f'{code} ')


def test_api_error_with_text(kitchen):
    test('things', 'update', {'code': 409, 'error': 'already there'}, 409, {'error': 'already there'})


def test_none_result_is_empty_object(kitchen):
    test('things', 'delete', {'mode': 'none'}, 200, {})


@pytest.mark.parametrize('mode', ['list', 'crash', 'nan', 'missing-attribute'])
def test_unexpected_results_and_exceptions_are_500_without_details(kitchen, mode):
    request = {} if mode == 'missing-attribute' else {'mode': mode}
    status, headers, body = exchange(kitchen, 'POST', '/api/v0/things/delete', json.dumps(request))
    assert (status, json.loads(body)) == (500, {'error': '500 Internal Server Error'})
    assert b'secret' not in body and b'Traceback' not in body


def test_500_traceback_and_path_go_to_the_log(kitchen):
    call('things', 'delete', {'mode': 'crash'})
    log = ''.join(kitchen.log)
    assert '500 on /api/v0/things/delete' in log
    assert 'RuntimeError: secret detail' in log


def test_raw_environ_any_method_and_body(kitchen):
    for method in ('GET', 'PUT', 'POST'):
        status, headers, body = exchange(kitchen, method, '/api/v0/raw/read', b'12345')
        assert (status, json.loads(body)) == (200, {'method': method, 'length': 5})


def test_raw_response_gets_parsed_request(kitchen):
    status, headers, body = exchange(kitchen, 'POST', '/api/v0/raw/create', b'{"x": "yz"}')
    assert (status, headers['Content-Type'], body) == (200, 'text/plain', b'plain yz')
    status, headers, body = exchange(kitchen, 'GET', '/api/v0/raw/create')
    assert status == 405


def test_raw_environ_and_raw_response_together(kitchen):
    status, headers, body = exchange(kitchen, 'PUT', '/api/v0/raw/update', b'anything')
    assert (status, headers['Content-Type'], body) == (200, 'text/csv', b'method,PUT')


def test_body_limit_by_content_length_is_413_before_reading(kitchen):
    # A claimed 2 MiB body, none of it sent: the answer comes at once, and the connection closes.
    request = post('/api/v0/things/create', b'', ['Content-Length: 2097152'])
    request = request.replace(b'Content-Length: 0\r\n', b'')
    reply = raw_exchange(kitchen.port, request)
    assert reply.startswith(b'HTTP/1.1 413 ')
    assert reply.endswith(b'{"error": "413 Request Entity Too Large"}')
    assert b'Connection: close' in reply


def test_body_limit_for_chunked_bodies(kitchen):
    chunk = b'x' * 65536
    chunks = b''.join(b'%x\r\n%s\r\n' % (len(chunk), chunk) for _ in range(40)) + b'0\r\n\r\n'
    head = (b'POST /api/v0/things/create HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n')
    reply = raw_exchange(kitchen.port, head + chunks)
    assert reply.startswith(b'HTTP/1.1 413 ')


def test_chunked_body_within_limit(example):
    body = b'{"hello": "chunks"}'
    head = b'POST /api/v0/echo/read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n'
    reply = raw_exchange(example.port, head + b'5\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n' % (
        body[:5], len(body) - 5, body[5:]))
    assert reply.startswith(b'HTTP/1.1 200 ')
    assert reply.endswith(b'{"hello": "chunks", "server": "myproduct"}')


def test_max_body_option():
    with serve(EXAMPLE, '--max-body', '100'):
        test('echo', 'read', {'hello': 'x' * 50}, 200)
        assert call('echo', 'read', {'hello': 'x' * 100}) == (413, {'error': '413 Request Entity Too Large'})


def test_bad_content_length_is_400(kitchen):
    for value in (b'abc', b'-5', b'1, 2'):
        request = post('/api/v0/echo/read', b'{}').replace(b'Content-Length: 2', b'Content-Length: ' + value)
        reply = raw_exchange(kitchen.port, request)
        assert reply.startswith(b'HTTP/1.1 400 '), reply
        assert reply.endswith(b'}')


def test_keep_alive_serves_many_requests_on_one_connection(example):
    connection = http.client.HTTPConnection(example.host, example.port, timeout=10)
    try:
        for number in range(50):
            connection.request('POST', '/api/v0/echo/read', body=json.dumps({'n': number}))
            reply = connection.getresponse()
            assert json.loads(reply.read()) == {'n': number, 'server': 'myproduct'}
    finally:
        connection.close()


def test_pipelined_requests_are_answered_in_order(example):
    one = b'POST /api/v0/echo/read HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n{"n": 1}'
    two = b'POST /api/v0/echo/read HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{"n": 2}'
    reply = raw_exchange(example.port, one + two)
    assert reply.count(b'HTTP/1.1 200 OK') == 2
    assert reply.index(b'"n": 1') < reply.index(b'"n": 2')


def test_http_1_0_closes(example):
    reply = raw_exchange(example.port, b'POST /api/v0/echo/read HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}')
    assert reply.startswith(b'HTTP/1.1 200 ') and reply.endswith(b'{"server": "myproduct"}')


def test_malformed_request_line_is_a_json_400(example):
    reply = raw_exchange(example.port, b'BLAH\r\n\r\n')
    assert reply.startswith(b'HTTP/1.1 400 ')
    assert reply.endswith(b'{"error": "400 Bad Request"}')


def test_access_log_line_per_request_without_body(example):
    test('echo', 'read', {'hello': 'secret-body-text'}, 200)
    lines = [line for line in example.log if ' POST /api/v0/echo/read 200 ' in line]
    assert lines
    assert all('secret-body-text' not in line for line in example.log)
    duration, request_id = lines[-1].split()[-2:]  # the line ends with the duration and the request ID
    assert duration.endswith('ms') and len(request_id) > 16
