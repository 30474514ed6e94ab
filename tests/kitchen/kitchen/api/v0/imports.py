"""A target that imports functions named like actions: only `read`, defined here, is one."""

from os import replace as update  # noqa: F401  (as SQLAlchemy's update and delete would be imported)
from shutil import rmtree as delete  # noqa: F401


def read(request):
    """The one action of this module."""
    return {'defined': 'here'}
