"""Product folder -> {'/api/v0/echo/read': Route, ...}, built once at start-up; the escape hatches.

Routes come from walking the product's files, never from a request: a path that is not in the table
is a 404, so nothing a client names is ever imported or opened.
"""

import importlib
import importlib.util
import inspect
import logging
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

log = logging.getLogger('apiphant')

ACTIONS = ('create', 'read', 'update', 'delete')
Action = TypeVar('Action', bound=Callable[..., Any])  # what the decorators mark, returned unchanged
_VERSION = re.compile(r'v\d+\Z')
_LOOKS_LIKE_VERSION = re.compile(r'(?:v|ver|version)?[-_.]?\d', re.IGNORECASE)  # V1, version1, v_2, 3


def raw_environ(action: Action) -> Action:
    """The action gets the WSGI environ instead of a parsed request, for any HTTP method."""
    action.raw_environ = True  # type: ignore[attr-defined]
    return action


def raw_response(action: Action) -> Action:
    """The action gets `start_response` too and returns the WSGI body iterable itself: a list, any
    iterable (sent chunked, as it comes) or `environ['wsgi.file_wrapper'](file)`."""
    action.raw_response = True  # type: ignore[attr-defined]
    return action


class Route(NamedTuple):
    path: str
    action: Callable
    raw_environ: bool
    raw_response: bool

    @property
    def doc(self):
        """The action's docstring, cleaned of indentation ('' without one)."""
        return inspect.getdoc(self.action) or ''

    @property
    def summary(self):
        return self.doc.partition('\n')[0]


class ProductError(Exception):
    """The product cannot be served; the message says why, in one line."""


def locate(product):
    """Return the product's package folder for a path ('example/myproduct') or an importable name.

    `apiphant new shop` makes the project folder shop/ around the package shop/shop/, so a folder
    without api/ that holds a package of its own name with one is taken to mean that package.
    """
    folder = Path(product)
    if not folder.is_dir():
        spec = importlib.util.find_spec(product) if product.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise ProductError(f'product {product!r} is neither a folder nor an importable package')
        folder = Path(next(iter(spec.submodule_search_locations)))
    folder = folder.resolve()
    if not (folder / 'api').is_dir() and (folder / folder.name / 'api').is_dir():
        folder = folder / folder.name
    if not folder.name.isidentifier():
        raise ProductError(f'product folder name {folder.name!r} is not a valid Python package name')
    if not (folder / 'api').is_dir():
        inner = sorted(str(api.parent) for api in folder.glob('*/api') if api.is_dir())
        meant = f': did you mean {" or ".join(inner)}?' if inner else ''
        raise ProductError(f'product folder {folder} has no api/ folder{meant}')
    return folder


def import_product_module(folder, dotted):
    """Import `product.<dotted>` with the product's parent on sys.path, naming the file on failure."""
    parent = str(folder.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    name = f'{folder.name}.{dotted}'
    try:
        return importlib.import_module(name)
    except Exception as error:
        raise ProductError(f'cannot import {name}: {describe_error(error, folder)}') from error


def discover(folder):
    """Import every action module under api/vN/ and return the route table.

    An action is a function named create, read, update or delete defined in the target module
    itself: a name it imports (`from sqlalchemy import update`, a helper of the product's named
    `delete`) is never an endpoint. What looks meant to serve but yields no route is logged as a
    warning: a module without an action, a folder named like a version that is not one (V1).
    """
    routes = {}
    api = folder / 'api'
    folders = sorted(p for p in api.iterdir() if p.is_dir())
    for lookalike in (p for p in folders if _LOOKS_LIKE_VERSION.match(p.name) and not _VERSION.match(p.name)):
        log.warning('%s is not a version folder (v0, v1, ...): nothing in it is served', lookalike)
    for version in (p for p in folders if _VERSION.match(p.name)):
        for file in sorted(version.rglob('*.py')):
            parts = file.relative_to(api).with_suffix('').parts
            if not all(_is_public_name(part) for part in parts):
                continue
            module = import_product_module(folder, 'api.' + '.'.join(parts))
            actions = _actions(module, file, folder.name)
            if not actions:
                log.warning('%s defines no action (a function create, read, update or delete): nothing '
                            'in it is served; a helper module is best named _%s', file, file.name)
            for name, action in actions.items():
                path = f'/api/{"/".join(parts)}/{name}'
                routes[path] = Route(path, action, getattr(action, 'raw_environ', False),
                                     getattr(action, 'raw_response', False))
    return routes


def _actions(module, file, product):
    """{name: function} of the actions `module` defines; ProductError for an `async def` one."""
    actions = {}
    for name in ACTIONS:
        action = getattr(module, name, None)
        if not callable(action) or isinstance(action, type):
            continue
        origin = getattr(action, '__module__', None)
        if origin != module.__name__:
            if origin is not None and origin.partition('.')[0] == product:
                # Most likely a decorator of the product's without functools.wraps, or an action
                # imported from another target: either way its author may expect a route here.
                log.warning('%s: %s comes from %s, so it is not an action: only functions defined in '
                            'the module itself are (a decorator should use functools.wraps)', file, name, origin)
            continue
        if _is_async(action):
            raise ProductError(f'{file}: async def {name}() cannot be an action: apiphant runs on gevent, '
                               f'not asyncio; write a plain def {name}() (blocking calls already let '
                               f'other requests run)')
        actions[name] = action
    return actions


def _is_async(function):
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
               for f in (function, inspect.unwrap(function)))


def _is_public_name(part):
    return part.isidentifier() and not part.startswith('_')


def describe_error(error, folder):
    """One line: the error and the last place in the product's own code it passed through."""
    text = f'{type(error).__name__}: {error}'
    if isinstance(error, SyntaxError):
        return text
    inside = [frame for frame in traceback.extract_tb(error.__traceback__)
              if frame.filename.startswith(str(folder))]
    if inside:
        text += f' ({inside[-1].filename}, line {inside[-1].lineno})'
    return text
