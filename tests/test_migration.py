"""Coming from apiphant 0.2: its own functional test script, call by call, against an action kept
in 0.2's shape (kitchen/api/v0/legacy.py), in process and live. Where an answer differs from 0.2's,
docs/product/migrating.md ("Coming from apiphant 0.2") says so and what to change; the comment names the entry."""

import pytest

from apiphant.test import test

NESTED_MISSING = {'error': {'field': 'x', 'state': 'missing'}}
NESTED_INVALID = {'error': {'field': 'x', 'state': 'invalid'}}
OK_X = {'ok': True, 'x': 'X'}

# (request, method, status, body) as 0.2.5's test script checked them
CALLS = [
    (None, 'POST', 200, {'ok': True, 'x': None}),
    ({'test': 'optional'}, 'POST', 200, {'ok': True, 'x': None}),
    ({'test': 'default'}, 'POST', 200, OK_X),
    ({'test': 'required'}, 'POST', 400, NESTED_MISSING),
    ({'test': 'required', 'x': 'X'}, 'POST', 200, OK_X),
    ({'test': 'valid_value', 'x': 'Y'}, 'POST', 400, NESTED_INVALID),
    ({'test': 'valid_value', 'x': 'X'}, 'POST', 200, OK_X),
    ({'test': 'valid_type', 'x': 'X'}, 'POST', 400, NESTED_INVALID),
    ({'test': 'valid_type', 'x': 42}, 'POST', 200, {'ok': True, 'x': 42}),
    ({'test': 'valid_length', 'x': ['X']}, 'POST', 400, NESTED_INVALID),
    ({'test': 'valid_length', 'x': ['X', 'Y']}, 'POST', 200, {'ok': True, 'x': ['X', 'Y']}),
    ({'test': 'max_length', 'x': '123'}, 'POST', 400, NESTED_INVALID),
    ({'test': 'max_length', 'x': '12'}, 'POST', 200, {'ok': True, 'x': '12'}),
    ({'test': 'max_length', 'x': '1'}, 'POST', 200, {'ok': True, 'x': '1'}),
    ({'test': 'explain', 'x': 'X'}, 'POST', 400,
     {'error': {'field': 'x', 'state': 'invalid', 'explain': 'should be integer'}}),
    ('invalid_json_object', 'POST', 400, {'error': 'Request content should be JSON Object'}),
    ({'test': 'return invalid_json_object'}, 'POST', 500, {'error': '500 Internal Server Error'}),
    ({'test': '1/0'}, 'POST', 500, {'error': '500 Internal Server Error'}),
]


@pytest.mark.parametrize('request_, method, status, body', CALLS)
def test_an_action_kept_in_0_2s_shape_answers_as_0_2_did(kitchen_either, request_, method, status, body):
    test('legacy', 'create', request_, status, body, method=method)


def test_what_changed_on_the_way(kitchen_either):
    test('legacy', 'delete', None, 404, {'error': '404 Not Found'})
    # "Other methods get 405": 0.2 answered 501 {"error": "501 Not Implemented"}
    test('legacy', 'create', None, 405, {'error': '405 Method Not Allowed'}, method='GET')
    # "null is absent": 0.2 returned the null
    test('legacy', 'create', {'test': 'required', 'x': None}, 400, NESTED_MISSING)


def test_the_0_2_spelling_of_a_field_error(kitchen_either):
    test('legacy', 'read', {'id': 1}, 200, {'id': 1})
    test('legacy', 'read', {'id': 2}, 400, {'error': {'field': 'id', 'state': 'invalid'}})
