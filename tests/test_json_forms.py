"""Every common value an action returns has one JSON form, the same in process and over HTTP; a value
without one is a 500 whose log line says where it is and what it is."""

import datetime
import decimal
import uuid

import pytest

from apiphant.errors import NotJson, encode
from apiphant.test import call
from support import log_has, wait_for

FORMS = [
    ('datetime', '2026-12-06T01:02:03.456789+00:00'),
    ('naive datetime', '2026-12-06T01:02:03'),
    ('date', '2026-12-06'),
    ('time', '01:02:03'),
    ('uuid', '12345678-1234-5678-1234-567812345678'),
    ('decimal', '12345678901234567890.123456789'),
    ('set', [7]),
    ('frozenset', ['a']),
    ('enum', 'large'),
    ('int enum', 3),
    ('tuple', [1, 'two']),
    ('big int', 2 ** 70),
]

REFUSED = [
    ('bytes', 'value: bytes has no JSON form'),
    ('object', 'value: object has no JSON form'),
    ('nan', 'value: nan is not a number JSON can hold'),
    ('infinity', 'value: inf is not a number JSON can hold'),
    ('decimal nan', 'value: Decimal NaN is not a number JSON can hold'),
    ('deep bytes', 'value.items[3].price: bytes has no JSON form'),
]


@pytest.mark.parametrize('kind, form', FORMS, ids=[kind for kind, _ in FORMS])
def test_each_common_value_has_one_json_form(kitchen_either, kind, form):
    assert call('values', 'read', {'kind': kind}) == (200, {'value': form, 'sent': None})


def test_the_test_client_sends_the_same_forms(kitchen_either):
    sent = {'when': datetime.date(2026, 12, 6), 'id': uuid.UUID(int=1), 'price': decimal.Decimal('0.10')}
    assert call('values', 'read', {'kind': 'date', 'sent': sent})[1]['sent'] == \
        {'when': '2026-12-06', 'id': '00000000-0000-0000-0000-000000000001', 'price': '0.10'}


@pytest.mark.parametrize('kind, where', REFUSED, ids=[kind for kind, _ in REFUSED])
def test_a_value_without_a_form_is_a_500_whose_log_line_says_where(kitchen, kind, where):
    assert call('values', 'read', {'kind': kind}) == (500, {'error': '500 Internal Server Error'})
    wait_for(lambda: log_has(kitchen, f'500 on /api/v0/values/read: the result holds a value without a '
                                      f'JSON form: {where}'))


@pytest.mark.parametrize('value, where', [
    ({'a': {'b c': [0, {1: b''}]}}, "a['b c'][1][1]: bytes has no JSON form"),
    ([float('-inf')], '[0]: -inf is not a number JSON can hold'),
    ({'key': {(1, 2): 'x'}}, 'key: a key of type tuple (an object key is a string)'),
    (b'', 'the value itself: bytes has no JSON form'),
])
def test_encode_names_the_path_and_the_type(value, where):
    with pytest.raises(NotJson) as raised:
        encode(value)
    assert str(raised.value) == where


def test_a_value_that_contains_itself_is_refused():
    loop = []
    loop.append(loop)
    with pytest.raises(NotJson, match=r'^loop\[0\]\[0\].*nested over 1000 levels deep'):
        encode({'loop': loop})


def test_error_bodies_fall_back_to_text():
    assert encode({'error': 'x', 'explain': b'raw'}, default=str) == b'{"error": "x", "explain": "b\'raw\'"}'
