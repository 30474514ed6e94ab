"""What a release publishes: a version the public index cannot confuse with the 2013 apiphant,
metadata an upload accepts, and the files a user installs from it."""

import email
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from trove_classifiers import classifiers as KNOWN_CLASSIFIERS

from apiphant import __version__

from support import ROOT

BIN = Path(sys.executable).parent
# The newest release of the 2013 apiphant on the public index: no pin may ever mean it.
LAST_2013_RELEASE = Version('0.2.5')
PROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']


@pytest.fixture(scope='module')
def dist(tmp_path_factory):
    """The release's files as tools/build-release builds them (sdist and wheel checked by twine)."""
    out = tmp_path_factory.mktemp('dist')
    built = subprocess.run([ROOT / 'tools' / 'build-release', out], capture_output=True, text=True, timeout=300,
                           env={**os.environ, 'PYTHON': sys.executable,
                                'PATH': f'{BIN}{os.pathsep}{os.environ["PATH"]}'})
    assert built.returncode == 0, built.stdout + built.stderr
    assert built.stdout.count('PASSED') == 2, built.stdout  # twine check --strict, sdist and wheel
    return out


def test_the_version_is_above_every_2013_release_and_the_collections_own():
    assert Version(__version__) > LAST_2013_RELEASE
    galaxy = yaml.safe_load((ROOT / 'playbooks' / 'galaxy.yml').read_text())
    assert galaxy['version'] == __version__


def test_every_classifier_is_one_the_index_accepts():
    unknown = [name for name in PROJECT['classifiers'] if name not in KNOWN_CLASSIFIERS]
    assert PROJECT['classifiers'] and unknown == []


def test_every_dependency_has_an_upper_bound():
    """Pinned to the ranges the tests run on: a major release of any of them is tried first."""
    requirements = PROJECT['dependencies'] + [
        line for extra in ('deploy', 'metrics', 'postgresql') for line in PROJECT['optional-dependencies'][extra]]
    unbounded = [text for text in requirements
                 if not any(spec.operator in ('<', '<=', '==', '~=') for spec in Requirement(text).specifier)]
    assert unbounded == []


def test_the_wheel_holds_the_framework_the_tasks_and_the_skeleton_at_this_version(dist):
    [wheel] = dist.glob(f'apiphant-{__version__}-py3-none-any.whl')
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.message_from_bytes(archive.read(f'apiphant-{__version__}.dist-info/METADATA'))
    assert {'apiphant/app.py', 'apiphant/py.typed', 'apiphant_deploy/tasks.py',
            'apiphant/skeleton/deploy/inventory.ini.tmpl',
            'apiphant/skeleton_postgresql/PRODUCT/migrations/0001.items.sql.tmpl',
            f'apiphant-{__version__}.dist-info/licenses/LICENSE'} <= names
    assert not any(name.startswith(('tests/', 'benchmarks/', 'example/')) for name in names)
    assert metadata['Version'] == __version__ and metadata['License-Expression'] == 'MIT'
    assert set(metadata.get_all('Provides-Extra')) == {'deploy', 'metrics', 'postgresql', 'test', 'dev'}
    assert metadata.get_all('Classifier') == PROJECT['classifiers']


def test_the_sdist_builds_the_same_package(dist):
    with tarfile.open(dist / f'apiphant-{__version__}.tar.gz') as archive:
        names = {name.split('/', 1)[1] for name in archive.getnames() if '/' in name}
    assert {'pyproject.toml', 'LICENSE', 'README.md', 'apiphant/cli.py', 'deploy/apiphant_deploy/tasks.py',
            'apiphant/skeleton/README.md.tmpl', 'apiphant/skeleton_postgresql/PRODUCT/migrations/0001.items.sql.tmpl',
            'apiphant/skeleton_postgresql/tests/test_items.py.tmpl'} <= names
    assert not any(name.startswith(('tests/', 'benchmarks/')) for name in names)


def test_the_deploy_installs_the_apiphant_released_with_it_unless_told_otherwise():
    defaults = yaml.safe_load((ROOT / 'playbooks' / 'roles' / 'release' / 'defaults' / 'main.yml').read_text())
    specs = yaml.safe_load((ROOT / 'playbooks' / 'roles' / 'release' / 'meta' / 'argument_specs.yml').read_text())
    pinned = f'apiphant=={__version__}'
    assert defaults['apiphant_package'] == pinned
    assert specs['argument_specs']['main']['options']['apiphant_package']['default'] == pinned
