"""Errors an action raises to answer the client, and `field()` to check request fields.

An `ApiError` already knows its response (status line and JSON body), so an action can raise it from
any depth and the app only has to send what the error carries.
"""

from http import HTTPStatus

_NO_BODY_STATUSES = {204, 205, 304}


class ApiError(Exception):
    """Answer the client with `status_code` and `{"error": error or "<code> <reason>"}`."""

    def __init__(self, status_code, error=None, **details):
        if not isinstance(status_code, int) or isinstance(status_code, bool) \
                or not 200 <= status_code <= 599 or status_code in _NO_BODY_STATUSES:
            raise ValueError(f'ApiError needs an HTTP status code from 200 to 599 that allows a body, '
                             f'not {status_code!r}')
        try:
            reason = HTTPStatus(status_code).phrase
        except ValueError:
            reason = 'Unknown'
        self.status_code = status_code
        self.status = f'{status_code} {reason}'
        self.error = error or self.status
        self.body = {'error': self.error, **details}
        super().__init__(self.error)


class _FieldError(ApiError):
    state = ''

    def __init__(self, name, explain=None):
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


def field(request, name, is_required=False, default_value=None, valid_value=None, valid_type=None,
          valid_length=None, max_length=None, explain=None):
    """Return `request[name]` after the checks asked for, or raise Missing / Invalid naming the field.

    `name` may be a dotted path into nested objects ('user.name'); errors name the whole path.
    Absent and null are the same: Missing when `is_required`, else `default_value`.
    `valid_type`: a type or tuple of types; bool never passes for int, int passes for float.
    `valid_value`: a predicate, or a collection of the allowed values.
    `valid_length`: an exact length, or an inclusive (min, max) pair; `max_length`: an upper bound.
    `explain`: put into the error, to tell the client what a good value is.
    """
    value = request
    walked = []
    for part in name.split('.'):
        if value is None:
            break
        if not isinstance(value, dict):
            raise Invalid('.'.join(walked), explain)
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
    if valid_value is not None and not _has_value(value, valid_value):
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
    if isinstance(valid_length, tuple):
        low, high = valid_length
        fits = low <= length <= high
    else:
        fits = valid_length is None or length == valid_length
    if not fits or (max_length is not None and length > max_length):
        raise Invalid(name, explain)


def _has_value(value, valid_value):
    if callable(valid_value):
        return bool(valid_value(value))
    return value in valid_value
