"""Errors an action raises to answer the client, and `field()` to check request fields.

An `ApiError` already knows its response (status line and JSON body), so an action can raise it from
any depth and the app only has to send what the error carries.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from apiphant.errors import ApiError  # (defined where the server can use it; imported from here too)

__all__ = ['ApiError', 'Invalid', 'Missing', 'field', 'nested_errors']

Action = TypeVar('Action', bound=Callable[..., Any])


class _FieldError(ApiError):
    state = ''

    def __init__(self, name: str, explain: Any = None) -> None:
        text = f'{name} is {self.state.capitalize()}'
        details = {'field': name, 'state': self.state}
        if explain is not None:
            text = f'{text}: {explain}'
            details['explain'] = explain
        self.field = name
        self.explain = explain
        super().__init__(400, text, **details)


class Invalid(_FieldError):
    """400: the field is there but its value is wrong."""

    state = 'invalid'


class Missing(_FieldError):
    """400: a required field is absent (or null)."""

    state = 'missing'


def nested_errors(action: Action) -> Action:
    """Answer the action's Invalid and Missing in apiphant 0.2's shape, for clients written for it.

    400 `{"error": {"field": "id", "state": "invalid"}}` (with "explain" when given) instead of
    `{"error": "id is Invalid", "field": "id", "state": "invalid"}`: a product moving from 0.2 keeps
    its old clients working while it moves one action at a time.
    """
    @functools.wraps(action)
    def answer_as_in_0_2(*args: Any) -> Any:
        try:
            return action(*args)
        except _FieldError as error:
            nested = {key: value for key, value in error.body.items() if key != 'error'}
            raise ApiError(400, nested) from None
    return answer_as_in_0_2  # type: ignore[return-value]  (wraps keeps its signature)


def field(request: Mapping[str, Any] | None, name: str, is_required: bool = False, default_value: Any = None,
          valid_value: Any = None, valid_type: type | tuple[type, ...] | None = None,
          valid_length: int | tuple[int, int] | None = None, max_length: int | None = None,
          explain: Any = None) -> Any:
    """Return `request[name]` after the checks asked for, or raise Missing / Invalid naming the field.

    Whatever JSON a client sends, field() returns or raises Missing or Invalid, never anything else.
    `name` may be a dotted path into nested objects ('user.name'); errors name the whole path.
    Absent and null are the same: Missing when `is_required`, else `default_value`.
    The checks run in this order, so each sees only values the previous ones let through:
    `valid_type`: a type or tuple of types; true/false never pass for int, an int passes for float.
    `valid_length`: an exact length, or an inclusive (min, max) pair; `max_length`: an upper bound.
    `valid_value`: a callable is a predicate (its ValueError or TypeError means Invalid; any other
    exception is the product's bug, a 500); a set, frozenset, list, tuple, range or dict (its keys)
    holds the allowed values; anything else, a string included, is the one allowed value.
    `explain`: put into the error, to tell the client what a good value is.
    """
    value = request
    walked = []
    for part in name.split('.'):
        if value is None:
            break
        if not isinstance(value, dict):
            raise Invalid('.'.join(walked) or name, explain)
        walked.append(part)
        value = value.get(part)
    if value is None:
        if is_required:
            raise Missing(name, explain)
        return default_value
    if valid_type is not None and not _has_type(value, valid_type):
        raise Invalid(name, explain)
    if valid_length is not None or max_length is not None:
        _check_length(name, value, valid_length, max_length, explain)
    if valid_value is not None and not _is_allowed(value, valid_value):
        raise Invalid(name, explain)
    return value


def _has_type(value, valid_type):
    types = valid_type if isinstance(valid_type, tuple) else (valid_type,)
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def _check_length(name, value, valid_length, max_length, explain):
    try:
        length = len(value)
    except TypeError:
        raise Invalid(name, explain) from None
    if isinstance(valid_length, (tuple, list)):
        low, high = valid_length
        fits = low <= length <= high
    else:
        fits = valid_length is None or length == valid_length
    if not fits or (max_length is not None and length > max_length):
        raise Invalid(name, explain)


def _is_allowed(value, valid_value):
    if callable(valid_value):
        try:
            return bool(valid_value(value))
        except (ValueError, TypeError):  # int('x'), 'a' < 1, len(5): the value, not the code, is wrong
            return False
    if isinstance(valid_value, range):
        # `in` on a range compares item by item for anything but an int (1.5 in range(10**9) takes
        # seconds), so a number is looked up arithmetically, as an int, and nothing else at all
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return type(value) is int and value in valid_value
    if isinstance(valid_value, (set, frozenset, dict)):
        try:
            found = value in valid_value  # a hash lookup
        except (TypeError, ValueError):  # unhashable (a list, an object): in no set
            return False
        # true == 1 and hash(true) == hash(1): confirm by kind where that can matter
        return found and (value not in (0, 1) or any(_equals(value, item) for item in valid_value))
    if isinstance(valid_value, (list, tuple)):
        return any(_equals(value, item) for item in valid_value)
    return _equals(value, valid_value)


def _equals(value, allowed):
    """JSON's equality: Python's ==, except that true and false are not the numbers 1 and 0."""
    try:
        return isinstance(value, bool) == isinstance(allowed, bool) and bool(value == allowed)
    except (ValueError, TypeError):  # an allowed object whose == refuses a JSON value
        return False
