"""Every common value an action returns has one JSON form, the same in process and over HTTP; a value
without one is a 500 whose log line says where it is and what it is."""

import datetime
import decimal
import json
import uuid

import pytest

from apiphant import errors
from apiphant.errors import NotJson, encode
from apiphant.test import call, serve

from support import IN_PROCESS_OR_LIVE, in_process_or_live, log_has, make_product, wait_for

VALUES = {'api/v0/values.py': """
'''Answers with a value of the kind asked for, to show each kind's JSON form (or its refusal).'''

import dataclasses
import datetime
import decimal
import enum
import types
import uuid


@dataclasses.dataclass
class Point:
    x: int
    at: datetime.date


class Size(enum.Enum):
    LARGE = 'large'


class Level(enum.IntEnum):
    HIGH = 3


VALUES = {
    'datetime': datetime.datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=datetime.timezone.utc),
    'naive datetime': datetime.datetime(2026, 12, 6, 1, 2, 3),
    'date': datetime.date(2026, 12, 6),
    'time': datetime.time(1, 2, 3),
    'uuid': uuid.UUID('12345678-1234-5678-1234-567812345678'),
    'decimal': decimal.Decimal('12345678901234567890.123456789'),
    'set': {7},
    'frozenset': frozenset(['a']),
    'enum': Size.LARGE,
    'int enum': Level.HIGH,
    'tuple': (1, 'two'),
    'big int': 2 ** 70,
    'mapping': types.MappingProxyType({'a': 1}),
    'dataclass': Point(1, datetime.date(2026, 12, 6)),
    'bytes': b'plain ascii',
    'object': object(),
    'nan': float('nan'),
    'infinity': float('inf'),
    'decimal nan': decimal.Decimal('NaN'),
    'deep bytes': {'items': [{}, {}, {}, {'price': b'9.99'}]},
}


def read(request):
    '''{"value": the value of `kind`, "sent": what the request's "sent" was}.'''
    return {'value': VALUES[request.kind], 'sent': request.get('sent')}
"""}


@pytest.fixture(scope='module')
def product(tmp_path_factory):
    return make_product(tmp_path_factory.mktemp('values'), 'values', VALUES)


@pytest.fixture(scope='module')
def server(product):
    with serve(product) as running:
        yield running


@pytest.fixture(params=IN_PROCESS_OR_LIVE)
def either(request, product):
    """The product through the in-process client, then through a real server."""
    with in_process_or_live(request, product, 'server'):
        yield


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
    ('mapping', {'a': 1}),
    ('dataclass', {'x': 1, 'at': '2026-12-06'}),
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
def test_each_common_value_has_one_json_form(either, kind, form):
    assert call('values', 'read', {'kind': kind}) == (200, {'value': form, 'sent': None})


def test_the_test_client_sends_the_same_forms(either):
    sent = {'when': datetime.date(2026, 12, 6), 'id': uuid.UUID(int=1), 'price': decimal.Decimal('0.10')}
    assert call('values', 'read', {'kind': 'date', 'sent': sent})[1]['sent'] == \
        {'when': '2026-12-06', 'id': '00000000-0000-0000-0000-000000000001', 'price': '0.10'}


@pytest.mark.parametrize('kind, where', REFUSED, ids=[kind for kind, _ in REFUSED])
def test_a_value_without_a_form_is_a_500_whose_log_line_says_where(server, kind, where):
    with server.use():
        assert call('values', 'read', {'kind': kind}) == (500, {'error': '500 Internal Server Error'})
    wait_for(lambda: log_has(server, f'500 on /api/v0/values/read: the result holds a value without a '
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


SAMPLES = [{'hello': 'world'}, {'a': [1, 2.5, -0.0, 1e300, None, True, False], 'b': {'c': 'é ☃ "\n'}},
           [], 'text', 3, {'at': datetime.date(2026, 12, 6), 'id': uuid.UUID(int=1)}, (1, 2)]


@pytest.mark.parametrize('c_encoder', [True, False], ids=['C encoder', 'Python without one'])
def test_the_encoder_writes_what_pythons_json_encoder_writes(monkeypatch, c_encoder):
    """encode() calls Python's C encoder directly (made once) where JSONEncoder.encode would make it on
    every call; where Python has none, JSONEncoder. Both write JSONEncoder's text, byte for byte."""
    if not c_encoder:
        monkeypatch.setattr(errors, 'c_make_encoder', None)
    write = errors._encoder(errors._form)
    reference = json.JSONEncoder(separators=(', ', ': '), allow_nan=False, check_circular=False, default=errors._form)
    for sample in SAMPLES:
        assert write(sample) == reference.encode(sample)
    with pytest.raises(ValueError):
        write({'x': float('nan')})
