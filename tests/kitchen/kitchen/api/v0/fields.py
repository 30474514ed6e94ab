"""field() with every kind of option: whatever a client sends, a 200 or a 400, never a 500."""

from apiphant.validation import field

# check name -> (the field's path in the request, field()'s options)
CHECKS = {
    'set': ('value', {'valid_value': {'asc', 'desc'}}),
    'frozenset': ('value', {'valid_value': frozenset({0, 1, 'x'}), 'is_required': True}),
    'list': ('value', {'valid_value': [1, 'a', [1, 2], {'k': 'v'}], 'explain': 'one of the listed'}),
    'tuple': ('value', {'valid_value': ('red', 'blue'), 'valid_type': str}),
    'range': ('value', {'valid_value': range(1, 10 ** 9), 'default_value': 1}),
    'dict keys': ('value', {'valid_value': {'a': 1, 'b': 2}}),
    'string': ('value', {'valid_value': 'XY', 'is_required': True}),
    'number': ('value', {'valid_value': 42}),
    'true': ('value', {'valid_value': True, 'valid_type': bool}),
    'comparison': ('value', {'valid_value': lambda value: value > 0}),
    'conversion': ('value', {'valid_value': int}),
    'method': ('value', {'valid_value': str.isidentifier, 'explain': {'hint': 'a Python name'}}),
    'length': ('value', {'valid_length': (1, 3), 'max_length': 2}),
    'exact length': ('value', {'valid_length': 2, 'valid_type': (list, str)}),
    'types': ('value', {'valid_type': (float, str), 'max_length': 5}),
    'nested': ('value.inner.deep', {'is_required': True, 'valid_type': int, 'valid_value': range(10)}),
}


def read(request):
    """The names of the checks `create` applies."""
    return {'checks': sorted(CHECKS)}


def create(request):
    """Apply the check named by `check` to `value`."""
    path, options = CHECKS[field(request, 'check', is_required=True, valid_value=CHECKS)]
    return {'value': field(request, path, **options)}


def update(request):
    """A predicate with a bug of its own: the product's 500, its traceback in the log."""
    return {'value': field(request, 'value', valid_value=lambda value: {}['no such key'])}
