"""The Ansible collection apiphant.deploy, built from playbooks/: what it holds, that its playbooks
run by their full names, and that ansible-lint's production profile passes on it."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from apiphant import __version__

from support import ROOT

BIN = Path(sys.executable).parent
PLAYBOOKS = ROOT / 'playbooks'
ROLES = sorted(path.name for path in (PLAYBOOKS / 'roles').iterdir())


@pytest.fixture(scope='module')
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp('collection')
    built = subprocess.run([BIN / 'ansible-galaxy', 'collection', 'build', '--output-path', out, PLAYBOOKS],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    return out / f'apiphant-deploy-{__version__}.tar.gz'


def test_the_collection_holds_the_roles_playbooks_and_argument_specs_at_apiphants_version(tarball):
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
        manifest = json.load(archive.extractfile('MANIFEST.json'))['collection_info']
    assert (manifest['namespace'], manifest['name'], manifest['version']) == ('apiphant', 'deploy', __version__)
    assert ROLES == ['firewall', 'kernel', 'lock', 'logrotate', 'nginx', 'packages', 'pgbackrest', 'postgresql',
                     'product', 'release', 'stamps', 'supervisor']
    for role in ROLES:
        assert f'roles/{role}/meta/argument_specs.yml' in names
    assert {'playbooks/site.yml', 'playbooks/rollback.yml', 'playbooks/restart.yml', 'playbooks/backup.yml'} <= names
    # What serves only a checkout: its ansible.cfg, example inventory and the links to the playbooks.
    assert not names & {'ansible.cfg', 'inventory', 'site.yml', 'rollback.yml', 'restart.yml', 'backup.yml'}


def test_every_role_variable_is_described_with_its_default_in_the_argument_spec():
    """The spec's defaults are documentation (ansible-doc shows them; Ansible sets none from them):
    they must say what defaults/main.yml sets."""
    for role in ROLES:
        folder = PLAYBOOKS / 'roles' / role
        defaults = yaml.safe_load((folder / 'defaults' / 'main.yml').read_text()) or {}
        declared = yaml.safe_load((folder / 'meta' / 'argument_specs.yml').read_text())['argument_specs']
        options = declared['main']['options']
        assert {name: option['default'] for name, option in options.items() if 'default' in option} == defaults
        assert all(option.get('description') for option in options.values()), role
        assert all('default' in option or option.get('required') for option in options.values()), role


def test_the_installed_collections_playbooks_run_by_their_full_names(tarball, tmp_path):
    env = {**os.environ, 'ANSIBLE_COLLECTIONS_PATH': str(tmp_path / 'collections'), 'ANSIBLE_NOCOLOR': '1'}
    installed = subprocess.run([BIN / 'ansible-galaxy', 'collection', 'install', tarball], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    (tmp_path / 'inventory.ini').write_text('[api]\nhost.example ansible_host=192.0.2.10\n')
    for name in ('site', 'rollback', 'restart'):
        listed = subprocess.run([BIN / 'ansible-playbook', '-i', 'inventory.ini', f'apiphant.deploy.{name}',
                                 '--list-tasks'], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert 'apiphant.deploy.product : Check product_name is a Python package name' in listed.stdout


def test_ansible_lint_production_profile_passes_on_the_collection():
    env = {**os.environ, 'PATH': f'{BIN}{os.pathsep}{os.environ.get("PATH", "")}', 'NO_COLOR': '1'}
    result = subprocess.run([BIN / 'ansible-lint', '--offline', '--profile', 'production'], cwd=PLAYBOOKS,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr
