"""apiphant.test: what `test()` prints, asserts and returns; APIPHANT_URL."""

import pytest

from apiphant.test import config, test


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
