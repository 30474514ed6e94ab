"""Product folder -> {'/api/v0/echo/read': Route, ...}, built once at start-up.

Routes come from walking the product's files, never from a request: a path that is not in the table
is a 404, so nothing a client names is ever imported or opened.
"""

import importlib
import importlib.util
import inspect
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

ACTIONS = ('create', 'read', 'update', 'delete')
_VERSION = re.compile(r'v\d+\Z')


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
        raise ProductError(f'cannot import {name}: {_describe(error, folder)}') from error


def discover(folder):
    """Import every action module under api/vN/ and return the route table."""
    routes = {}
    api = folder / 'api'
    for version in sorted(p for p in api.iterdir() if p.is_dir() and _VERSION.match(p.name)):
        for file in sorted(version.rglob('*.py')):
            parts = file.relative_to(api).with_suffix('').parts
            if not all(_is_public_name(part) for part in parts):
                continue
            module = import_product_module(folder, 'api.' + '.'.join(parts))
            target = '/'.join(parts)
            for name in ACTIONS:
                action = getattr(module, name, None)
                if callable(action):
                    path = f'/api/{target}/{name}'
                    routes[path] = Route(path, action, getattr(action, 'raw_environ', False),
                                         getattr(action, 'raw_response', False))
    return routes


def _is_public_name(part):
    return part.isidentifier() and not part.startswith('_')


def _describe(error, folder):
    """One line: the error and the last place in the product's own code it passed through."""
    text = f'{type(error).__name__}: {error}'
    if isinstance(error, SyntaxError):
        return text
    inside = [frame for frame in traceback.extract_tb(error.__traceback__)
              if frame.filename.startswith(str(folder))]
    if inside:
        text += f' ({inside[-1].filename}, line {inside[-1].lineno})'
    return text
