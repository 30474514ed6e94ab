"""apiphant.validation: the errors' bodies, every option of field(), and the property that no
JSON a client sends makes field() raise anything but Invalid or Missing, in process and over HTTP."""

import datetime
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiphant.app import Request, encode
from apiphant.test import call, client, test
from apiphant.validation import ApiError, Invalid, Missing, field, nested_errors

from support import KITCHEN, log_has, wait_for


def test_invalid_without_explain():
    error = Invalid('id')
    assert (error.status_code, error.body) == (400, {'error': 'id is Invalid', 'field': 'id',
                                                     'state': 'invalid'})


def test_invalid_with_explain():
    assert Invalid('id', -1).body == {'error': 'id is Invalid: -1', 'field': 'id', 'state': 'invalid',
                                      'explain': -1}


def test_missing():
    assert Missing('id').body == {'error': 'id is Missing', 'field': 'id', 'state': 'missing'}


def test_api_error_default_text_is_code_and_reason():
    assert ApiError(418).body == {'error': "418 I'm a Teapot"}
    assert ApiError(404).body == {'error': '404 Not Found'}
    assert ApiError(503, 'down for a minute').body == {'error': 'down for a minute'}
    assert ApiError(599).status == '599 Unknown'


@pytest.mark.parametrize('code', [0, 99, 100, 204, 304, 600, '404', True])
def test_api_error_refuses_codes_without_a_body(code):
    with pytest.raises(ValueError):
        ApiError(code)


def test_required_field_missing_or_null():
    for request in ({}, {'id': None}):
        with pytest.raises(Missing) as caught:
            field(request, 'id', is_required=True)
        assert caught.value.field == 'id'


def test_default_value_when_absent():
    assert field({}, 'page', default_value=1) == 1
    assert field({'page': 3}, 'page', default_value=1) == 3


def test_valid_type_int_refuses_bool_and_str():
    assert field({'id': 5}, 'id', valid_type=int) == 5
    for value in (True, False, '5', 5.0):
        with pytest.raises(Invalid):
            field({'id': value}, 'id', valid_type=int)


def test_valid_type_float_accepts_int_but_not_bool():
    assert field({'x': 2}, 'x', valid_type=float) == 2
    with pytest.raises(Invalid):
        field({'x': True}, 'x', valid_type=float)


def test_valid_type_bool_and_tuples():
    assert field({'x': True}, 'x', valid_type=bool) is True
    assert field({'x': 'a'}, 'x', valid_type=(int, str)) == 'a'


def test_valid_value_predicate_and_collection():
    assert field({'n': 3}, 'n', valid_value=lambda n: n > 0) == 3
    with pytest.raises(Invalid):
        field({'n': -3}, 'n', valid_value=lambda n: n > 0)
    assert field({'c': 'red'}, 'c', valid_value=('red', 'blue')) == 'red'
    with pytest.raises(Invalid):
        field({'c': 'pink'}, 'c', valid_value=('red', 'blue'))


@pytest.mark.parametrize('value', [[], {}, ['asc'], {'asc': 1}, 'as', 1, True])
def test_a_set_refuses_unhashable_and_other_values(value):
    for allowed in ({'asc', 'desc'}, frozenset({'asc', 'desc'}), {'asc': 1, 'desc': 2}):
        with pytest.raises(Invalid):
            field({'x': value}, 'x', valid_value=allowed)
    assert field({'x': 'asc'}, 'x', valid_value={'asc', 'desc'}) == 'asc'
    assert field({'x': 'desc'}, 'x', valid_value={'asc': 1, 'desc': 2}) == 'desc'  # a dict: its keys


def test_lists_and_tuples_compare_by_equality_whatever_the_value():
    allowed = [1, 'a', [1, 2], {'k': 'v'}]
    for value in (1, 1.0, 'a', [1, 2], {'k': 'v'}):
        assert field({'x': value}, 'x', valid_value=allowed) == value
        assert field({'x': value}, 'x', valid_value=tuple(allowed)) == value
    for value in ([1], {'k': 'w'}, 'b', 2, True):
        with pytest.raises(Invalid):
            field({'x': value}, 'x', valid_value=allowed)


def test_a_string_is_the_one_allowed_value_not_a_set_of_substrings():
    assert field({'x': 'XY'}, 'x', valid_value='XY') == 'XY'
    for value in ('X', 'Y', '', ['X'], ['XY'], {'XY': 1}, 1):
        with pytest.raises(Invalid):
            field({'x': value}, 'x', valid_value='XY')


def test_any_other_object_is_the_one_allowed_value():
    assert field({'x': 42}, 'x', valid_value=42) == 42
    assert field({'x': 42.0}, 'x', valid_value=42) == 42.0
    assert field({'x': False}, 'x', valid_value=False) is False
    for value in (41, '42', [42], {'42': 42}, True):
        with pytest.raises(Invalid):
            field({'x': value}, 'x', valid_value=42)


def test_true_and_false_are_not_the_numbers_one_and_zero():
    for allowed in ({0, 1}, [0, 1], (0, 1), range(2), {0: 'no', 1: 'yes'}, 1):
        with pytest.raises(Invalid):
            field({'x': True}, 'x', valid_value=allowed)
    for allowed in ({True}, [True], True):
        with pytest.raises(Invalid):
            field({'x': 1}, 'x', valid_value=allowed)
    assert field({'x': True}, 'x', valid_value={True, 'maybe'}) is True
    assert field({'x': 1.0}, 'x', valid_value={1, 2}) == 1.0


def test_a_range_holds_integral_numbers_only_and_answers_at_once():
    huge = range(1, 10 ** 12)
    assert field({'x': 5}, 'x', valid_value=huge) == 5
    assert field({'x': 5.0}, 'x', valid_value=huge) == 5.0
    for value in (0, 1.5, 1e300, '5', [5], {'5': 5}, False):  # 1.5 in range(10**12) would take hours
        with pytest.raises(Invalid):
            field({'x': value}, 'x', valid_value=huge)


def test_a_predicate_raising_value_or_type_error_means_invalid():
    for value in ('x', [1], {'a': 1}, 1.5):
        with pytest.raises(Invalid):
            field({'x': value}, 'x', valid_value=lambda v: int(v) == v and v > 0)
    with pytest.raises(Invalid):
        field({'x': 'abc'}, 'x', valid_value=lambda v: v > 0)  # TypeError: '>' between str and int
    with pytest.raises(Invalid):
        field({'x': '2026-13-01'}, 'x', valid_value=datetime.date.fromisoformat)  # ValueError
    assert field({'x': '2026-11-26'}, 'x', valid_value=datetime.date.fromisoformat) == '2026-11-26'


def test_a_predicate_raising_anything_else_is_the_products_bug():
    with pytest.raises(KeyError):
        field({'x': 1}, 'x', valid_value=lambda v: {}['nothing'])
    with pytest.raises(ZeroDivisionError):
        field({'x': 0}, 'x', valid_value=lambda v: 1 / v)


def test_an_allowed_object_whose_equality_refuses_is_not_a_match():
    class Fussy:
        def __eq__(self, other):
            raise TypeError('cannot compare')

        __hash__ = object.__hash__

    for allowed in (Fussy(), [Fussy()], (Fussy(),), {Fussy()}):
        with pytest.raises(Invalid):
            field({'x': 'a'}, 'x', valid_value=allowed)


def test_lengths():
    assert field({'s': 'abc'}, 's', valid_length=3) == 'abc'
    assert field({'s': 'abc'}, 's', valid_length=(1, 3)) == 'abc'
    assert field({'s': [1, 2]}, 's', max_length=2) == [1, 2]
    for options in ({'valid_length': 2}, {'valid_length': (4, 9)}, {'max_length': 2}):
        with pytest.raises(Invalid):
            field({'s': 'abc'}, 's', **options)
    with pytest.raises(Invalid):
        field({'s': 5}, 's', max_length=2)


def test_explain_reaches_the_error():
    with pytest.raises(Invalid) as caught:
        field({'n': -1}, 'n', valid_value=lambda n: n > 0, explain='should be positive')
    assert caught.value.body['error'] == 'n is Invalid: should be positive'
    with pytest.raises(Missing) as caught:
        field({}, 'n', is_required=True, explain='a page number')
    assert caught.value.body['explain'] == 'a page number'


def test_subfields_by_dotted_path_report_the_whole_path():
    request = {'user': {'name': 'ann', 'age': 'x'}}
    assert field(request, 'user.name', is_required=True) == 'ann'
    with pytest.raises(Invalid) as caught:
        field(request, 'user.age', valid_type=int)
    assert caught.value.field == 'user.age'
    with pytest.raises(Missing) as caught:
        field({}, 'user.name', is_required=True)
    assert caught.value.field == 'user.name'
    with pytest.raises(Invalid) as caught:
        field({'user': 'ann'}, 'user.name')
    assert caught.value.field == 'user'
    with pytest.raises(Invalid) as caught:
        field('ann', 'name')  # field(request.user, 'name') where the client sent a string for user
    assert caught.value.field == 'name'


def test_subfields_through_attribute_access():
    request = Request({'user': {'name': 'ann'}})
    assert field(request.user, 'name', valid_type=str) == 'ann'


def test_request_is_an_attribute_dict():
    request = Request({'a': 1, 'user': {'address': {'city': 'Oslo'}}, 'things': [{'tag': 't'}, 2]})
    assert request.a == 1
    assert request.user.address.city == 'Oslo'
    assert request.things[0].tag == 't'
    assert request.things[1] == 2
    copy = request.copy()
    assert type(copy) is Request and copy == request
    copy.b = 2
    assert 'b' not in request and copy['b'] == 2
    del copy.b
    with pytest.raises(AttributeError):
        request.nothing  # noqa: B018


def test_keys_named_like_dict_methods_stay_reachable_by_item():
    request = Request({'items': [1]})
    assert callable(request.items) and request['items'] == [1]


def test_the_0_2_spelling_of_a_field_error_nests_it():
    error = ApiError(400, {'field': 'id', 'state': 'invalid'})
    assert (error.status_code, error.body) == (400, {'error': {'field': 'id', 'state': 'invalid'}})


def test_nested_errors_answers_field_errors_as_0_2_did_and_keeps_the_rest():
    @nested_errors
    def read(request):
        """Read one."""
        if request.get('teapot'):
            raise ApiError(418)
        return {'id': field(request, 'id', is_required=True, valid_type=int, explain='a number')}

    read.raw_response = True  # the decorator's result is still an action like any other
    assert read.__doc__ == 'Read one.' and read({'id': 1}) == {'id': 1}
    with pytest.raises(ApiError) as caught:
        read({})
    assert caught.value.body == {'error': {'field': 'id', 'state': 'missing', 'explain': 'a number'}}
    with pytest.raises(ApiError) as caught:
        read({'teapot': True})
    assert caught.value.body == {'error': "418 I'm a Teapot"}


# Any JSON value, as ujson gives it to an action (NaN and infinities never get that far).
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
hashable_values = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()

# Predicates a product might well write, each raising ValueError or TypeError on some JSON value.
PREDICATES = [lambda v: v > 0, lambda v: len(v) < 3, lambda v: v in {'a', 'b'}, int, float,
              str.isidentifier, sorted, datetime.date.fromisoformat]

collections = st.one_of(
    st.sets(hashable_values, max_size=5), st.frozensets(hashable_values, max_size=5),
    st.lists(json_values, max_size=5), st.lists(json_values, max_size=5).map(tuple),
    st.builds(range, st.integers(-10, 10), st.integers(-10, 10 ** 12), st.integers(1, 10)),
    st.dictionaries(hashable_values, json_values, max_size=5))
types = st.sampled_from([int, float, str, bool, list, dict])
options = st.fixed_dictionaries({
    'valid_value': st.one_of(st.none(), st.sampled_from(PREDICATES), collections, json_values),
}, optional={
    'is_required': st.booleans(),
    'default_value': json_values,
    'valid_type': types | st.lists(types, min_size=1, max_size=3).map(tuple),
    'valid_length': st.integers(0, 5) | st.tuples(st.integers(0, 3), st.integers(0, 6)),
    'max_length': st.integers(0, 5),
    'explain': json_values,
})
names = st.lists(st.text(st.characters(blacklist_characters='.'), min_size=1, max_size=3), min_size=1,
                 max_size=3).map('.'.join)


def at_path(name, value):
    for part in reversed(name.split('.')):
        value = {part: value}
    return value


def walk(request, name):
    """The oracle: what the request holds at the dotted path (None when absent or not reachable)."""
    for part in name.split('.'):
        if not isinstance(request, dict):
            return None
        request = request.get(part)
    return request


def returns_or_refuses(request, name, **options):
    """The property: field() returns what the request holds (or the default), or raises Invalid or
    Missing naming the path or a part of it, with a body the app can send; nothing else."""
    try:
        result = field(request, name, **options)
    except (Invalid, Missing) as error:
        assert error.status_code == 400
        assert error.field and (name + '.').startswith(error.field + '.')
        assert encode(error.body, default=str)
    else:
        found = walk(request, name)
        assert result is (found if found is not None else options.get('default_value'))


@pytest.mark.parametrize('predicate', PREDICATES)
@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_a_predicate_sees_any_json_value(predicate, value):
    returns_or_refuses({'x': value}, 'x', valid_value=predicate)


@settings(max_examples=500, deadline=None)
@given(allowed=collections | json_values, value=json_values)
def test_a_collection_or_a_single_allowed_value_takes_any_json_value(allowed, value):
    returns_or_refuses({'x': value}, 'x', valid_value=allowed)


@settings(max_examples=1000, deadline=None)
@given(name=names, options=options, data=st.data())
def test_any_options_with_any_json_request(name, options, data):
    kind = data.draw(st.sampled_from(['at the path', 'any object', 'any value']))
    if kind == 'at the path':
        request = Request(at_path(name, data.draw(json_values)))
    elif kind == 'any object':
        request = Request(data.draw(st.dictionaries(st.text(), json_values, max_size=4)))
    else:
        request = data.draw(json_values)
    returns_or_refuses(request, name, **options)


@pytest.fixture(scope='module')
def checks():
    """The checks of the kitchen's fields target (one field() call each, every kind of option)."""
    with client(KITCHEN):
        return test('fields', 'read', {}, 200)['checks']


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_json_to_an_action_built_on_field_is_a_200_or_a_400(checks, kitchen_either, data):
    check = data.draw(st.sampled_from(checks) | json_values)
    value = data.draw(json_values | st.fixed_dictionaries({'inner': json_values | st.fixed_dictionaries(
        {'deep': json_values})}))
    request = data.draw(st.sampled_from([{'check': check, 'value': value}, {'check': check}, {'value': value}]))
    status, body = call('fields', 'create', json.dumps(request).encode())
    if status == 200:
        assert list(body) == ['value']
    else:
        assert status == 400, (status, body)
        assert body['state'] in ('invalid', 'missing') and body['field'] in ('check', 'value', 'value.inner',
                                                                             'value.inner.deep')


def test_a_predicate_with_a_bug_is_a_500_with_its_traceback_in_the_log(kitchen):
    assert call('fields', 'update', {'value': 1}) == (500, {'error': '500 Internal Server Error'})
    wait_for(lambda: log_has(kitchen, "KeyError: 'no such key'"))
    assert log_has(kitchen, '500 on /api/v0/fields/update')
