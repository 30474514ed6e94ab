"""Actions written for apiphant 0.2, kept answering 0.2's clients (docs/product/migrating.md)."""

from apiphant.validation import ApiError, field, nested_errors

OPTIONS = {
    'optional': {},
    'default': {'default_value': 'X'},
    'required': {'is_required': True},
    'valid_value': {'is_required': True, 'valid_value': 'X'},
    'valid_type': {'is_required': True, 'valid_type': int},
    'valid_length': {'is_required': True, 'valid_length': 2},
    'max_length': {'is_required': True, 'max_length': 2},
    'explain': {'is_required': True, 'valid_type': int, 'explain': 'should be integer'},
}


@nested_errors
def create(request):
    """Check `x` with the options `test` names; or misbehave as 0.2's self-test asked."""
    test = field(request, 'test')
    if test == 'return invalid_json_object':
        return 'invalid_json_object'
    if test == '1/0':
        return 1 / 0
    return {'ok': True, 'x': field(request, 'x', **OPTIONS.get(test, {}))}


def read(request):
    """Refuse an unknown id by hand, in 0.2's spelling."""
    if request.get('id') != 1:
        raise ApiError(400, {'field': 'id', 'state': 'invalid'})
    return {'id': 1}
