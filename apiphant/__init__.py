"""apiphant: a small JSON web API framework on gevent, with its own HTTP/1.1 server on llhttp.

The public names are importable from here: `from apiphant import ApiError, field, Missing`. The
framework's are loaded when first asked for, so importing the server (apiphant.server, which
imports this package first) loads nothing of the framework.
"""

import importlib
from typing import TYPE_CHECKING, Any

from apiphant.errors import ApiError, NotJson
from apiphant.requestid import request_id

__version__ = '0.3.0'

if TYPE_CHECKING:  # what the lazy names below are, for type checkers (never imported at run time here)
    from apiphant.routes import raw_environ, raw_response
    from apiphant.validation import Invalid, Missing, field

_LAZY = {'field': 'apiphant.validation', 'Invalid': 'apiphant.validation', 'Missing': 'apiphant.validation',
         'raw_environ': 'apiphant.routes', 'raw_response': 'apiphant.routes'}
__all__ = ['ApiError', 'NotJson', 'request_id', 'field', 'Invalid', 'Missing', 'raw_environ', 'raw_response']


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
