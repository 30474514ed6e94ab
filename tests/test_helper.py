"""apiphant.test: what `test()` prints, asserts and returns, in process and live; APIPHANT_URL."""

import pytest

from apiphant.routes import ProductError
from apiphant.test import call, client, config, test

from support import KITCHEN, make_product


def test_the_same_tests_pass_in_process_and_live(kitchen_either):
    test('things', 'create', {'id': 1, 'user': {'city': 'Oslo'}}, 200,
         {'id': 1, 'name': 'anonymous', 'city': 'Oslo'})
    test('things', 'create', {'id': 'x'}, 400, {'error': 'id is Invalid', 'field': 'id', 'state': 'invalid'})
    test('things', 'update', {'code': 418}, 418, {'error': "418 I'm a Teapot"})
    test('things', 'delete', {'mode': 'crash'}, 500, {'error': '500 Internal Server Error'})
    test('things', 'read', '[1]', 400, {'error': 'Request content should be JSON Object'})
    test('nothing', 'read', {}, 404, {'error': '404 Not Found'})
    test('things', 'read', None, 405, {'error': '405 Method Not Allowed'}, method='GET')
    assert call('raw', 'create', {'x': 'y'}) == (200, 'plain y')
    assert call('raw', 'read', b'abc', method='PUT') == (200, {'method': 'PUT', 'length': 3})
    assert call('raw', 'update', method='DELETE') == (200, 'method,DELETE')


def test_request_headers_in_response_headers_out(kitchen_either):
    reply = call('raw', 'read', method='GET', headers={'X-Tag': 'blue'})
    assert reply == (200, {'method': 'GET', 'length': 0, 'tag': 'blue'})
    assert reply.status == 200 and reply.body['tag'] == 'blue'
    assert reply.headers['content-type'] == 'application/json'  # any case
    assert reply.headers['Content-Length'] == str(len(b'{"method": "GET", "length": 0, "tag": "blue"}'))
    status, body = call('raw', 'create', {'x': 'y'})  # still unpacks as (status, body)
    assert (status, body) == (200, 'plain y')
    assert test('raw', 'update', None, 200, 'method,GET', method='GET', headers={'X-Tag': 'red'},
                response_headers={'Content-Type': 'text/csv'}) == 'method,GET'
    with pytest.raises(AssertionError, match=r"GET raw/update: expected the header content-type: 'text/plain', "
                                             r"got 'text/csv'"):
        test('raw', 'update', None, 200, method='GET', response_headers={'content-type': 'text/plain'})
    test('things', 'read', None, 405, method='GET', response_headers={'Allow': 'POST'})


def test_a_live_server_answers_with_the_request_id_sent(kitchen):
    test('things', 'create', {'id': 1}, 200, headers={'X-Request-ID': 'helper-1'},
         response_headers={'X-Request-ID': 'helper-1'})


def test_in_process_an_actions_exception_reaches_the_test_as_in_starlette():
    with client(KITCHEN):
        with pytest.raises(RuntimeError, match='secret detail'):
            test('things', 'delete', {'mode': 'crash'}, 500)
        with pytest.raises(TypeError, match=r'/api/v0/things/delete returned list; an action returns a dict or None'):
            call('things', 'delete', {'mode': 'list'})
        test('things', 'update', {'code': 418}, 418)  # an ApiError is an answer, not a failure
        test('things', 'create', {}, 400)
    with client(KITCHEN, raise_server_exceptions=False):
        test('things', 'delete', {'mode': 'crash'}, 500, {'error': '500 Internal Server Error'})
    assert config.raise_server_exceptions is True


def test_only_functions_defined_in_the_target_are_actions(kitchen_either):
    test('imports', 'read', {}, 200, {'defined': 'here'})
    test('imports', 'update', {}, 404)  # os.replace, imported as update
    test('imports', 'delete', {}, 404)  # shutil.rmtree


def test_the_in_process_client_prints_the_path_and_is_undone_after(capsys):
    with client(KITCHEN):
        test('things', 'create', {'id': 2}, 200)
    assert capsys.readouterr().out.startswith('POST /api/v0/things/create (in process) {"id": 2} --> 200')
    assert config.app is None


def test_the_in_process_client_refuses_a_product_as_the_server_does(tmp_path):
    broken = make_product(tmp_path, 'broken', {'api/v0/echo.py': 'import nowhere\n'})
    with pytest.raises(ProductError, match=r'cannot import broken.api.v0.echo: ModuleNotFoundError'):
        with client(broken):
            pass


def test_prints_the_exchange_and_returns_the_body(example, capsys):
    body = test('echo', 'read', {'hello': 'world'}, 200, {'hello': 'world', 'server': 'myproduct'})
    assert body == {'hello': 'world', 'server': 'myproduct'}
    assert capsys.readouterr().out == (
        f'POST http://127.0.0.1:{example.port}/api/v0/echo/read {{"hello": "world"}} --> '
        f"200 {{'hello': 'world', 'server': 'myproduct'}}\n")


def test_status_mismatch_shows_both_sides(example):
    with pytest.raises(AssertionError) as caught:
        test('echo', 'read', {}, 201)
    assert "expected 201 None, got 200 {'server': 'myproduct'}" in str(caught.value)


def test_body_mismatch_shows_both_sides(example):
    with pytest.raises(AssertionError) as caught:
        test('echo', 'read', {'a': 1}, 200, {'a': 2})
    assert "expected 200 {'a': 2}, got 200 {'a': 1, 'server': 'myproduct'}" in str(caught.value)


def test_response_none_checks_only_the_status(example):
    assert test('nothing', 'read', {}, 404) == {'error': '404 Not Found'}


def test_apiphant_url_wins(example, monkeypatch):
    monkeypatch.setattr(config, 'port', 1)  # would be refused
    monkeypatch.setenv('APIPHANT_URL', f'http://127.0.0.1:{example.port}/api/v0/')
    test('echo', 'read', {}, 200, {'server': 'myproduct'})
