"""Where the server and the framework meet: the error an action raises, the one JSON form of
every value either of them sends, the statuses that carry no body, the default body limit.

The server imports this module, never the framework's: an `ApiError` already knows its answer
(status line and JSON body), so the server can send one for a request the app never sees.

JSON forms (docs/product/json.md): datetime, date and time as ISO 8601 (Python's
`isoformat()`), a UUID as its string, a Decimal as a string of all its digits, a set or frozenset as
a list, an Enum as its value, any other mapping and a dataclass instance as an object. A Decimal is
a string because most clients read every JSON number as a double (JavaScript's JSON.parse, Python's
json, Go's default decoding): written as a number, `12345678901234567890.123456789` would still
reach them as 1.2345678901234567e+19, while a string keeps every digit for a client to read with its
own decimal type, as Django REST framework and Pydantic do. NaN, infinities, bytes and any other
object have no form: `encode` refuses them with `NotJson`, naming where the value is and what it is
(`items[3].price: bytes`).
"""

import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from json.encoder import c_make_encoder, encode_basestring_ascii
from typing import Any

BODY_REFUSED = 'apiphant.body_refused'  # set by apiphant's server: the body was over its limit, and not read
MAX_BODY = 1024 * 1024  # the default limit of a request body, the server's and the App's

# RFC 9110: a 1xx, 204 (§15.3.5) or 304 (§15.4.5) answer ends with its head; a 205 has no content
# (§15.3.6). Neither an ApiError nor the server's framing gives any of them a body.
NO_BODY_STATUSES = frozenset({204, 205, 304})
_MAX_DEPTH = 1000  # Python's recursion limit: a deeper value (or one that contains itself) is refused
_KEY_TYPES = (str, int, float)  # (and None): what JSON objects' keys can be written from
_PATH_SHOWN = 200  # characters of a path named in an error


class ApiError(Exception):
    """Answer the client with `status_code` and `{"error": error or "<code> <reason>"}`."""

    headers: tuple[tuple[str, str], ...] = ()  # pairs the answer carries besides its own, e.g. Retry-After

    def __init__(self, status_code: int, error: Any = None, **details: Any) -> None:
        if not isinstance(status_code, int) or isinstance(status_code, bool) \
                or not 200 <= status_code <= 599 or not has_body(status_code):
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


def has_body(status_code):
    """Whether an answer with this status may carry content (see NO_BODY_STATUSES)."""
    return status_code >= 200 and status_code not in NO_BODY_STATUSES


class NotJson(TypeError):
    """A value with no JSON form; the message says where it is and what it is."""


def encode(value, default=None):
    """`value` as JSON bytes, spaced as the seed shows it (`{"hello": "world"}`), every common type
    in its one form (see the module docstring).

    Python's C encoder writes dicts, lists, tuples, str, int, float, bool and None itself and calls
    `_form` only for other types, so a value made of those pays nothing for the conversions; only
    when it fails is the value walked again, to say where. `default` (e.g. `str`) gives a value
    without a form one instead of refusing it; NaN and infinities are refused even then."""
    form = _form if default is None else _form_or(default)
    try:
        return (_ENCODE if default is None else _encoder(form))(value).encode()
    except (TypeError, ValueError, RecursionError) as error:
        raise NotJson(_locate(value, form) or str(error)) from None


def _form(value):
    """The JSON form of a value the encoder does not write itself; TypeError when it has none."""
    if isinstance(value, (datetime.date, datetime.time)):  # (a datetime is a date)
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f'Decimal {value} is not a number JSON can hold')
        return str(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):  # (a database row's mapping, a MappingProxyType)
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    raise TypeError(f'{type(value).__qualname__} has no JSON form')


def _encoder(form):
    """A function from a value to its JSON text, calling `form` for types the encoder does not write.

    Python's C encoder, made once here: JSONEncoder.encode makes it anew on every call, a third of
    the cost of encoding a small answer. (Where Python has no C encoder, JSONEncoder's own.)
    Not ujson, which reads the requests: it writes a Decimal as a double without asking `form`, so
    digits are lost. Not orjson: it writes NaN as null."""
    if c_make_encoder is None:
        return json.JSONEncoder(separators=(', ', ': '), allow_nan=False, check_circular=False, default=form).encode
    # (markers: None, as check_circular=False; indent None, key and item separators, no sort_keys,
    # no skipkeys, no allow_nan)
    chunks = c_make_encoder(None, form, encode_basestring_ascii, None, ': ', ', ', False, False, False)
    return lambda value: ''.join(chunks(value, 0))


_ENCODE = _encoder(_form)


def _form_or(default):
    def form(value):
        try:
            return _form(value)
        except TypeError:
            return default(value)
    return form


def _locate(value, form):
    """'items[3].price: bytes has no JSON form' for the first value the encoder could not write, or None."""
    stack = [(value, '', 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return f'{_shown(path)}: nested over {_MAX_DEPTH} levels deep (does a value contain itself?)'
        if isinstance(item, float):
            if not math.isfinite(item):
                return f'{_shown(path)}: {item} is not a number JSON can hold'
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, _KEY_TYPES) and key is not None:
                    return f'{_shown(path)}: a key of type {type(key).__qualname__} (an object key is a string)'
            stack.extend((child, _key_path(path, key), depth + 1) for key, child in reversed(item.items()))
        elif isinstance(item, (list, tuple)):
            stack.extend((item[index], f'{path}[{index}]', depth + 1) for index in reversed(range(len(item))))
        elif not isinstance(item, (str, int)) and item is not None:
            try:
                stack.append((form(item), path, depth))
            except (TypeError, ValueError) as error:
                return f'{_shown(path)}: {error}'
    return None


def _key_path(path, key):
    if isinstance(key, str) and key.isidentifier():
        return f'{path}.{key}' if path else key
    return f'{path}[{key!r}]'


def _shown(path):
    path = path or 'the value itself'
    return path if len(path) <= _PATH_SHOWN else path[:_PATH_SHOWN] + '...'
