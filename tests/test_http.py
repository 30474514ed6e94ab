"""The request path over real HTTP to a real server: routing, bodies, responses, errors."""

import http.client
import json
import socket

import pytest

from apiphant.test import call, config, serve, test

from support import EXAMPLE, Connection, exchange, http_request, log_has, wait_for

ERROR_NOT_OBJECT = {'error': 'Request content should be JSON Object'}


def test_the_seed_echo(example):
    assert test('echo', 'read', {'hello': 'world'}, 200, {'hello': 'world', 'server': 'myproduct'}) \
        == {'hello': 'world', 'server': 'myproduct'}


def test_response_is_json_with_content_type_and_exact_bytes(example):
    answer = exchange(example.port, http_request('POST', '/api/v0/echo/read', b'{"hello": "world"}'))
    assert answer.status == 200
    assert answer.headers['content-type'] == 'application/json'
    assert answer.body == b'{"hello": "world", "server": "myproduct"}'
    assert 'date' in answer.headers


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
    answer = exchange(kitchen.port, http_request('POST', path, b'{}'))
    assert (answer.status, answer.json()) == (404, {'error': '404 Not Found'})
    assert answer.headers['content-type'] == 'application/json'


@pytest.mark.parametrize('method', ['GET', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])
def test_other_methods_are_405_with_allow(kitchen, method):
    answer = exchange(kitchen.port, http_request(method, '/api/v0/things/read'))
    assert answer.status == 405
    assert answer.headers['allow'] == 'POST'
    assert answer.json() == {'error': '405 Method Not Allowed'}


def test_head_is_405_without_body(kitchen):
    with Connection(kitchen.port) as connection:
        connection.send(http_request('HEAD', '/api/v0/things/read', framing=None),
                        http_request('POST', '/api/v0/process/read'))
        answer = connection.answer(head=True)
        assert (answer.status, answer.headers['allow'], answer.body) == (405, 'POST', b'')
        assert connection.answer().status == 200  # so the HEAD's answer had no body at all


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
    answer = exchange(kitchen.port, http_request('POST', '/api/v0/things/update', json.dumps({'code': code})))
    assert answer.status == code
    assert answer.json()['error'].startswith(f'{code} ')


def test_api_error_with_text(kitchen):
    test('things', 'update', {'code': 409, 'error': 'already there'}, 409, {'error': 'already there'})


def test_none_result_is_empty_object(kitchen):
    test('things', 'delete', {'mode': 'none'}, 200, {})


@pytest.mark.parametrize('mode', ['list', 'crash', 'nan', 'missing-attribute'])
def test_unexpected_results_and_exceptions_are_500_without_details(kitchen, mode):
    request = {} if mode == 'missing-attribute' else {'mode': mode}
    answer = exchange(kitchen.port, http_request('POST', '/api/v0/things/delete', json.dumps(request)))
    assert (answer.status, answer.json()) == (500, {'error': '500 Internal Server Error'})
    assert b'secret' not in answer.body and b'Traceback' not in answer.body


def test_500_traceback_and_path_go_to_the_log(kitchen):
    call('things', 'delete', {'mode': 'crash'})
    wait_for(lambda: log_has(kitchen, 'RuntimeError: secret detail'))  # the log is read by a thread
    assert log_has(kitchen, '500 on /api/v0/things/delete')


def test_raw_environ_any_method_and_body(kitchen):
    for method in ('GET', 'PUT', 'POST'):
        answer = exchange(kitchen.port, http_request(method, '/api/v0/raw/read', b'12345'))
        assert (answer.status, answer.json()) == (200, {'method': method, 'length': 5})


def test_raw_response_gets_parsed_request(kitchen):
    answer = exchange(kitchen.port, http_request('POST', '/api/v0/raw/create', b'{"x": "yz"}'))
    assert (answer.status, answer.headers['content-type'], answer.body) == (200, 'text/plain', b'plain yz')
    assert exchange(kitchen.port, http_request('GET', '/api/v0/raw/create')).status == 405


def test_raw_environ_and_raw_response_together(kitchen):
    answer = exchange(kitchen.port, http_request('PUT', '/api/v0/raw/update', b'anything'))
    assert (answer.status, answer.headers['content-type'], answer.body) == (200, 'text/csv', b'method,PUT')


def test_body_limit_by_content_length_is_413_before_reading(kitchen):
    # A claimed 2 MiB body, none of it sent: the answer comes at once, and the connection closes.
    with Connection(kitchen.port) as connection:
        connection.send(http_request('POST', '/api/v0/things/create', headers=[('Content-Length', 2097152)],
                                     framing=None))
        answer = connection.answer()
        assert (answer.status, answer.json()) == (413, {'error': '413 Request Entity Too Large'})
        assert answer.headers['connection'] == 'close'
        assert connection.closes()


def test_body_limit_for_chunked_bodies(kitchen):
    request = http_request('POST', '/api/v0/things/create', [b'x' * 65536] * 40, framing='chunked')
    assert exchange(kitchen.port, request).status == 413


def test_chunked_body_within_limit(example):
    body = b'{"hello": "chunks"}'
    answer = exchange(example.port, http_request('POST', '/api/v0/echo/read', [body[:5], body[5:]],
                                                 framing='chunked'))
    assert (answer.status, answer.body) == (200, b'{"hello": "chunks", "server": "myproduct"}')


def test_max_body_option():
    with serve(EXAMPLE, '--max-body', '100'):
        test('echo', 'read', {'hello': 'x' * 50}, 200)
        assert call('echo', 'read', {'hello': 'x' * 100}) == (413, {'error': '413 Request Entity Too Large'})


def test_bad_content_length_is_400(kitchen):
    for value in ('abc', '-5', '1, 2'):
        answer = exchange(kitchen.port, http_request('POST', '/api/v0/echo/read', b'{}',
                                                     headers=[('Content-Length', value)], framing=None))
        assert answer.status == 400, answer
        assert 'error' in answer.json()


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
    with Connection(example.port) as connection:
        connection.send(*(http_request('POST', '/api/v0/echo/read', b'{"n": %d}' % n) for n in (1, 2)))
        assert [connection.answer().json() for _ in range(2)] == [{'n': 1, 'server': 'myproduct'},
                                                                  {'n': 2, 'server': 'myproduct'}]


def test_http_1_0_closes(example):
    with Connection(example.port) as connection:
        connection.send(http_request('POST', '/api/v0/echo/read', b'{}', version='HTTP/1.0', host=None))
        answer = connection.answer()
        assert (answer.status, answer.json()) == (200, {'server': 'myproduct'})
        assert connection.closes()


def test_malformed_request_line_is_a_json_400(example):
    answer = exchange(example.port, b'BLAH\r\n\r\n')
    assert (answer.status, answer.json()) == (400, {'error': '400 Bad Request'})


def test_access_log_line_per_request_without_body(example):
    test('echo', 'read', {'hello': 'secret-body-text'}, 200)
    wait_for(lambda: log_has(example, ' POST /api/v0/echo/read 200 '))  # the log is read by a thread
    lines = [line for line in example.log if ' POST /api/v0/echo/read 200 ' in line]
    assert all('secret-body-text' not in line for line in example.log)
    duration, request_id = lines[-1].split()[-2:]  # the line ends with the duration and the request ID
    assert duration.endswith('ms') and len(request_id) > 16


H2C = [('Connection', 'Upgrade, HTTP2-Settings'), ('Upgrade', 'h2c'), ('HTTP2-Settings', 'AAMAAABkAARAAP__AAIAAAAA')]
WEBSOCKET = [('Connection', 'keep-alive, Upgrade'), ('Upgrade', 'websocket'), ('Sec-WebSocket-Version', '13'),
             ('Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ==')]


@pytest.mark.parametrize('upgrade', [H2C, WEBSOCKET], ids=['h2c', 'websocket'])
@pytest.mark.parametrize('framing', ['content-length', 'chunked'])
def test_an_upgrade_is_ignored_and_the_request_answered_over_http_1_1(example, upgrade, framing):
    """RFC 9110 §7.8: the body is read as HTTP/1.1, and the connection stays HTTP/1.1 after it."""
    with Connection(example.port) as connection:
        connection.send(http_request('POST', '/api/v0/echo/read', [b'{"a": ', b'"b"}'], upgrade, framing),
                        http_request('POST', '/api/v0/echo/read', b'{"n": 2}', upgrade),
                        http_request('POST', '/api/v0/echo/read', b'{"n": 3}'))
        answers = [connection.answer() for _ in range(3)]
    assert [answer.status for answer in answers] == [200, 200, 200]
    assert [answer.json() for answer in answers] == [{'a': 'b', 'server': 'myproduct'},
                                                     {'n': 2, 'server': 'myproduct'},
                                                     {'n': 3, 'server': 'myproduct'}]
    assert not any('upgrade' in answer.headers for answer in answers)


def test_an_upgrade_without_a_body_and_one_that_closes(example):
    with Connection(example.port) as connection:
        connection.send(http_request('POST', '/api/v0/echo/read', framing=None, headers=H2C),
                        http_request('POST', '/api/v0/echo/read', b'{}', [('Connection', 'close, Upgrade'),
                                                                          ('Upgrade', 'h2c')]))
        assert connection.answer().json() == {'server': 'myproduct'}
        answer = connection.answer()
        assert (answer.status, answer.headers['connection']) == (200, 'close')
        assert connection.closes()


def test_an_upgrade_arriving_a_byte_at_a_time(example):
    request = http_request('POST', '/api/v0/echo/read', b'{"slow": true}', H2C)
    with Connection(example.port) as connection:
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in range(len(request)):
            connection.send(request[byte:byte + 1])
        assert connection.answer().json() == {'slow': True, 'server': 'myproduct'}


def test_an_upgrade_with_a_body_over_the_limit_is_413(kitchen):
    with Connection(kitchen.port) as connection:
        connection.send(http_request('POST', '/api/v0/things/create', headers=[*H2C, ('Content-Length', 2097152)],
                                     framing=None))
        assert connection.answer().status == 413
        assert connection.closes()
