"""`apiphant new NAME`: a new product folder with the name filled in everywhere it appears.

The files come from skeleton/ next to this module, and with `--db postgresql` from
skeleton_postgresql/ too, whose files are added or replace the first's of the same path: a
`PRODUCT` folder is renamed to the name, a `.tmpl` suffix dropped, `gitignore` dotted, and
`${product}` and `${apiphant_version}` replaced (string.Template, so a placeholder misspelt in the
skeleton fails loudly rather than ship).
"""

import importlib.util
import keyword
import sys
from pathlib import Path
from string import Template

from apiphant import __version__

SKELETON = Path(__file__).parent / 'skeleton'
DATABASES = {'postgresql': Path(__file__).parent / 'skeleton_postgresql'}  # --db: overlays of SKELETON


class ScaffoldError(Exception):
    """The product cannot be created; the message says why, in one line."""


def check_name(name, commands):
    """`commands`: the apiphant commands, as `apiphant NAME` would mean the command, not the product."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ScaffoldError(f'{name!r} is not a valid Python package name '
                            f'(letters, digits and _, not starting with a digit, not a keyword)')
    if name != name.lower():
        raise ScaffoldError(f'{name!r}: a package name is lower case by convention (PEP 8): '
                            f'try {name.lower()!r}')
    if name in sys.stdlib_module_names or importlib.util.find_spec(name) is not None:
        raise ScaffoldError(f'{name!r} is the name of a module already installed here: the product '
                            f'and that module would hide one another')
    if name in commands:
        raise ScaffoldError(f'{name!r} is an apiphant command: `apiphant {name}` could not serve it')


def create(name, commands, parent='.', database=None):
    """Write the product folder `parent/name`, with `database` (a key of DATABASES) when given;
    return its path. Refuses to touch an existing one."""
    root = Path(parent) / name
    if root.exists():
        raise ScaffoldError(f'{root} already exists: choose another name or remove it first')
    check_name(name, commands)
    values = {'product': name, 'apiphant_version': __version__}
    rendered = {}
    for skeleton in (SKELETON, *([DATABASES[database]] if database else [])):
        for path in sorted(path for path in skeleton.rglob('*.tmpl') if path.is_file()):
            rendered[_destination(path.relative_to(skeleton), name)] = Template(path.read_text()).substitute(values)
    root.mkdir(parents=True)
    for relative, text in rendered.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def _destination(relative, name):
    parts = [name if part == 'PRODUCT' else part for part in relative.with_suffix('').parts]
    if parts[-1] == 'gitignore':
        parts[-1] = '.gitignore'
    return Path(*parts)
