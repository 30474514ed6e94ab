"""The shell programs the roles run on the controller (roles' files/), run here as the roles run
them, without a test host; and shellcheck over every shell program of the repository."""

import os
import re
import subprocess
import sys
import textwrap

import jinja2
import pytest

from support import ROOT

ROLES = ROOT / 'playbooks' / 'roles'
BUILD = ROLES / 'release' / 'files' / 'build-apiphant-wheel'
DOWNLOAD = ROLES / 'release' / 'files' / 'download-wheels'
HASH = ROLES / 'stamps' / 'files' / 'hash-role-files'
STILL_RUNNING = ROLES / 'stamps' / 'files' / 'still-running'


def run(*command, check=True):
    result = subprocess.run(['bash', *map(str, command)], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def project(folder, name, version):
    """A package pip can build: NAME at VERSION, with no dependencies."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / '__init__.py').write_text(f'__version__ = {version!r}\n')
    (folder / 'pyproject.toml').write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "{version}"
    '''))
    return folder


def wheels(folder):
    return sorted(path.name for path in folder.glob('*.whl'))


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """A wheelhouse into which build-apiphant-wheel built a checkout of 'apiphant' 1.0."""
    root = tmp_path_factory.mktemp('build')
    source = project(root / 'checkout', 'apiphant', '1.0')
    wheelhouse, archives = root / 'wheels', root / 'releases'
    run(BUILD, wheelhouse, source, sys.executable, archives)
    return source, wheelhouse, archives


def test_build_makes_the_wheel_and_the_release_cache(built):
    source, wheelhouse, archives = built
    assert wheels(wheelhouse) == ['apiphant-1.0-py3-none-any.whl'] and archives.is_dir()


def test_build_skips_an_unchanged_source_and_rebuilds_a_changed_one(built):
    source, wheelhouse, archives = built
    wheel = wheelhouse / 'apiphant-1.0-py3-none-any.whl'
    before = wheel.stat().st_mtime_ns
    # What is not the source: hidden folders, setuptools' staging, bytecode.
    for noise in ('.git/HEAD', 'build/lib/x.py', 'apiphant/__pycache__/x.pyc'):
        (source / noise).parent.mkdir(parents=True, exist_ok=True)
        (source / noise).write_text('noise')
    run(BUILD, wheelhouse, source, sys.executable, archives)
    assert wheel.stat().st_mtime_ns == before and not (wheelhouse / '.apiphant-source.new').exists()
    project(source, 'apiphant', '1.1')
    run(BUILD, wheelhouse, source, sys.executable, archives)
    assert 'apiphant-1.1-py3-none-any.whl' in wheels(wheelhouse)


def test_build_failing_leaves_no_mark_so_the_next_run_builds_again(tmp_path):
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'pyproject.toml').write_text('[project\n')
    result = run(BUILD, tmp_path / 'wheels', broken, sys.executable, tmp_path / 'releases', check=False)
    assert result.returncode != 0
    assert not (tmp_path / 'wheels' / '.apiphant-source').exists()


def test_download_asks_the_index_only_when_its_inputs_changed(built, tmp_path):
    _, wheelhouse, _ = built
    requirements = tmp_path / 'requirements.txt'
    requirements.write_text('')
    # The wheelhouse is the only index: what a requirement names must already be there.
    offline = ['--no-index', '--find-links', wheelhouse]
    run(DOWNLOAD, wheelhouse, requirements, sys.executable, '', *offline)
    mark = wheelhouse / '.downloaded'
    before = mark.read_text()
    os.utime(mark, ns=(0, 0))
    run(DOWNLOAD, wheelhouse, requirements, sys.executable, '', *offline)
    assert mark.stat().st_mtime_ns == 0  # nothing changed: not asked again
    requirements.write_text('no-such-package-anywhere==1\n')
    failed = run(DOWNLOAD, wheelhouse, requirements, sys.executable, '', *offline, check=False)
    assert failed.returncode != 0 and 'no-such-package-anywhere' in failed.stderr
    assert mark.read_text() == before  # a failed download is never marked done


def test_download_without_an_apiphant_wheel_says_so(tmp_path):
    result = run(DOWNLOAD, tmp_path, '/dev/null', sys.executable, '', check=False)
    assert result.returncode != 0 and f'no apiphant wheel in {tmp_path}' in result.stderr


@pytest.fixture
def roles(tmp_path):
    for role in ('nginx', 'product'):
        (tmp_path / 'roles' / role / 'tasks').mkdir(parents=True)
        (tmp_path / 'roles' / role / 'tasks' / 'main.yml').write_text(f'# {role}\n')
    (tmp_path / 'plays').mkdir()
    (tmp_path / 'plays' / 'site.yml').write_text('# site\n')
    return tmp_path


def hashes(roles, *names):
    output = run(HASH, roles / 'roles', roles / 'plays', *names).stdout
    return dict(line.split() for line in output.splitlines())


def test_role_hashes_change_with_the_roles_files_and_with_the_playbooks(roles):
    first = hashes(roles, 'nginx', 'product')
    assert list(first) == ['nginx', 'product'] and first == hashes(roles, 'nginx', 'product')
    (roles / 'roles' / 'nginx' / 'templates').mkdir()
    (roles / 'roles' / 'nginx' / 'templates' / 'site.conf.j2').write_text('server {}\n')
    second = hashes(roles, 'nginx', 'product')
    assert second['nginx'] != first['nginx'] and second['product'] == first['product']
    (roles / 'plays' / 'site.yml').write_text('# site, changed\n')
    third = hashes(roles, 'nginx', 'product')
    assert third['nginx'] != second['nginx'] and third['product'] != second['product']


def test_an_unknown_role_is_an_error_not_an_empty_hash(roles):
    result = run(HASH, roles / 'roles', roles / 'plays', 'nginx', 'nosuch', check=False)
    assert result.returncode != 0 and 'no role nosuch' in result.stderr


def test_still_running_names_what_stopped_then_prints_the_stamps(tmp_path):
    stamps = tmp_path / 'stamps.json'
    assert run(STILL_RUNNING, stamps, '', '', '').stdout == '{}\n'  # none written yet
    stamps.write_text('{"nginx": "abc"}\n')
    assert run(STILL_RUNNING, stamps, '', '', '').stdout == '{"nginx": "abc"}\n'
    # This machine runs no Supervisor and has no such nftables table: both are named.
    lines = run(STILL_RUNNING, stamps, 'apiphant-no-such-table', 'supervisor', '').stdout.splitlines()
    assert lines == ['firewall', 'supervisor', '{"nginx": "abc"}']


SHELL = re.compile(rb'#!\S*/(?:env )?(?:ba|da)?sh\b')


def shell_programs():
    """Every tracked file that is a shell program: by its #! line or a .sh name."""
    listed = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in listed.decode().split('\0') if name]
    return [path for path in paths if path.is_file() and not path.is_symlink()
            and (path.suffix == '.sh' or SHELL.match(path.read_bytes()[:64]))]


def test_shellcheck_passes_on_every_shell_program(tmp_path):
    """Templates (.j2) are checked as rendered, with a product's values."""
    programs = shell_programs()
    ours = {BUILD, DOWNLOAD, HASH, STILL_RUNNING, ROOT / 'tests' / 'run', ROOT / 'tools' / 'build-release'}
    assert ours <= set(programs)
    values = {'product_name': 'shop', 'product_home': '/opt/shop', 'ansible_managed': 'Ansible managed'}
    checked = []
    for path in programs:
        if path.suffix == '.j2':
            rendered = tmp_path / path.stem
            rendered.write_text(jinja2.Template(path.read_text(), undefined=jinja2.StrictUndefined).render(values))
            path = rendered
        checked.append(path)
    result = subprocess.run(['shellcheck', *map(str, checked)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
