"""Unit tests of apiphant.validation: the errors' bodies and every option of field()."""

import pytest

from apiphant.app import Request
from apiphant.validation import ApiError, Invalid, Missing, field


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
