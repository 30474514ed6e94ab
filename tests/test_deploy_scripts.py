"""The shell programs the roles run on the controller (roles' files/), run here as the roles run
them, without a test host; and shellcheck over every shell program of the repository."""

import hashlib
import importlib.util
import os
import platform
import re
import resource
import shlex
import shutil
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
STOP_PROGRAM = ROLES / 'supervisor' / 'files' / 'stop-program'
RELEASE_ID = ROLES / 'release' / 'files' / 'release-id'
PRODUCT_COMMIT = ROLES / 'lock' / 'files' / 'product-commit'
MIGRATE = ROLES / 'release' / 'files' / 'migrate'
APPLY_SYSCTL = ROLES / 'kernel' / 'files' / 'apply-sysctl'
RAISE_FD_LIMIT = ROLES / 'supervisor' / 'files' / 'raise-fd-limit'
DESCRIPTOR_CEILING = ROLES / 'nginx' / 'files' / 'descriptor-ceiling'
PROGRAMS_BEHIND = ROLES / 'supervisor' / 'files' / 'programs_behind.py'


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


def sdist(source, folder):
    """Build the sdist of the project in SOURCE into FOLDER, with this Python's setuptools."""
    build = f'from setuptools import build_meta; build_meta.build_sdist({str(folder)!r})'
    subprocess.run([sys.executable, '-c', build], cwd=source, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope='module')
def build_tools(tmp_path_factory):
    """A folder holding what building sdistonly needs (setuptools, which builds wheels by itself)."""
    folder = tmp_path_factory.mktemp('build-tools')
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--only-binary=:all:', '--dest', folder,
                    'setuptools>=70.1'], check=True, capture_output=True, timeout=300)
    return folder


@pytest.fixture
def sdist_only(built, build_tools, tmp_path):
    """A wheelhouse holding the apiphant wheel, requirements naming 'sdistonly', and pip options
    whose only indexes are folders: one holding sdistonly's sdist and no wheel of it, one holding
    the build tools."""
    _, built_wheels, _ = built
    links, wheelhouse = tmp_path / 'links', tmp_path / 'wheels'
    links.mkdir()
    wheelhouse.mkdir()
    shutil.copy(built_wheels / 'apiphant-1.0-py3-none-any.whl', wheelhouse)
    source = project(tmp_path / 'sdistonly', 'sdistonly', '1.0')
    sdist(source, links)
    requirements = tmp_path / 'requirements.txt'
    requirements.write_text('sdistonly==1.0\n')
    return wheelhouse, requirements, ['--no-index', '--find-links', links, '--find-links', build_tools]


def test_download_builds_a_wheel_of_an_sdist_only_requirement_for_hosts_of_this_python(sdist_only):
    wheelhouse, requirements, index = sdist_only
    this = ['--python-version', f'{sys.version_info.major}.{sys.version_info.minor}',
            f'--platform=manylinux_2_17_{platform.machine()}']
    result = run(DOWNLOAD, wheelhouse, requirements, sys.executable, '', *this, *index)
    assert 'building a wheel of sdistonly==1.0' in result.stderr
    assert 'sdistonly-1.0-py3-none-any.whl' in wheels(wheelhouse) and (wheelhouse / '.downloaded').exists()


def test_download_refuses_an_sdist_only_requirement_it_cannot_build_for_the_hosts(sdist_only):
    wheelhouse, requirements, index = sdist_only
    other = ['--python-version', f'3.{sys.version_info.minor - 1}', f'--platform=manylinux_2_17_{platform.machine()}']
    result = run(DOWNLOAD, wheelhouse, requirements, sys.executable, '', *other, *index, check=False)
    assert result.returncode != 0
    assert 'sdistonly==1.0 ships no wheel for the hosts' in result.stderr
    assert 'psycopg[binary]' in result.stderr and 'psycopg2-binary' in result.stderr
    assert wheels(wheelhouse) == ['apiphant-1.0-py3-none-any.whl'] and not (wheelhouse / '.downloaded').exists()


def test_download_refuses_an_sdist_only_requirement_whose_build_fails_here(sdist_only, tmp_path):
    wheelhouse, requirements, index = sdist_only
    source = project(tmp_path / 'needslib', 'needslib', '1.0')
    # Builds its sdist, not its wheel: as psycopg2 without pg_config.
    (source / 'setup.py').write_text("import sys\nfrom setuptools import setup\n"
                                     "assert 'bdist_wheel' not in sys.argv, 'no pg_config here'\nsetup()\n")
    sdist(source, index[2])
    requirements.write_text('needslib==1.0\n')
    this = ['--python-version', f'{sys.version_info.major}.{sys.version_info.minor}',
            f'--platform=manylinux_2_17_{platform.machine()}']
    result = run(DOWNLOAD, wheelhouse, requirements, sys.executable, '', *this, *index, check=False)
    assert result.returncode != 0 and 'no pg_config here' in result.stderr
    assert 'needslib==1.0 ships no wheel for the hosts' in result.stderr and 'building one here failed' in result.stderr
    assert 'psycopg2-binary' in result.stderr and not (wheelhouse / '.downloaded').exists()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_release_id_hashes_the_shipped_files_and_what_the_virtualenv_is_installed_from(tmp_path):
    """The formula the release role has always used, written out: a changed one would make the next
    deploy of an unchanged product a new release."""
    source, wheelhouse = tmp_path / 'product', tmp_path / 'wheels'
    (source / 'api').mkdir(parents=True)
    (source / 'api' / 'echo.py').write_text('echo\n')
    (source / 'settings.py').write_text('settings\n')
    wheelhouse.mkdir()
    for name in ('apiphant-1.0-py3-none-any.whl', 'gevent-24.2-cp311-cp311-manylinux_2_28_x86_64.whl'):
        (wheelhouse / name).write_bytes(name.encode())
    requirements = tmp_path / 'requirements.txt'
    requirements.write_text('ujson\n')

    def expected(extras):
        wheels = ''.join(f'{sha256(path.read_bytes())}  {path.name}\n' for path in sorted(wheelhouse.glob('*.whl')))
        venv = sha256(f'apiphant{extras}\nujson\n{wheels}'.encode())[:12]
        files = sorted(path for path in source.rglob('*') if path.is_file())
        listing = ''.join(f'{sha256(path.read_bytes())}  ./{path.relative_to(source)}\n' for path in files)
        release = sha256(f'{sha256(listing.encode())} {venv}\n'.encode())[:12]
        return f'{release} {venv}\n'

    first = run(RELEASE_ID, source, wheelhouse, requirements, '[metrics]').stdout
    assert first == expected('[metrics]')
    assert run(RELEASE_ID, source, wheelhouse, requirements, '[metrics]').stdout == first
    assert run(RELEASE_ID, source, wheelhouse, requirements, '').stdout == expected('')
    (source / 'api' / 'echo.py').write_text('echo, changed\n')
    changed = run(RELEASE_ID, source, wheelhouse, requirements, '[metrics]').stdout
    assert changed.split()[0] != first.split()[0] and changed.split()[1] == first.split()[1]  # the same virtualenv


def test_product_commit_names_head_and_uncommitted_changes_or_no_checkout(tmp_path):
    product = tmp_path / 'product'
    product.mkdir()
    assert run(PRODUCT_COMMIT, product).stdout == '-\n'
    assert run(PRODUCT_COMMIT, tmp_path / 'nowhere').stdout == '-\n'
    git = ['git', '-C', product, '-c', 'user.name=t', '-c', 'user.email=t@t', '-c', 'init.defaultBranch=main']
    subprocess.run([*git, 'init', '--quiet'], check=True)
    assert run(PRODUCT_COMMIT, product).stdout == '-\n'  # a checkout without a commit
    (product / 'app.py').write_text('app\n')
    subprocess.run([*git, 'add', 'app.py'], check=True)
    subprocess.run([*git, 'commit', '--quiet', '-m', 'app'], check=True)
    head = subprocess.run([*git, 'rev-parse', '--short=12', 'HEAD'], capture_output=True, text=True, check=True)
    assert run(PRODUCT_COMMIT, product).stdout == head.stdout
    (product / 'app.py').write_text('app, changed\n')
    assert run(PRODUCT_COMMIT, product).stdout == head.stdout.strip() + '+\n'


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
    ours = {BUILD, DOWNLOAD, HASH, STILL_RUNNING, STOP_PROGRAM, RELEASE_ID, PRODUCT_COMMIT, MIGRATE, APPLY_SYSCTL,
            RAISE_FD_LIMIT, DESCRIPTOR_CEILING, ROOT / 'tests' / 'run', ROOT / 'tools' / 'build-release'}
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


def test_stopping_a_program_where_supervisor_is_not_installed_does_nothing(tmp_path):
    """A host not yet set up (no supervisorctl on its PATH) has nothing to stop: no error, no output."""
    result = subprocess.run(['/bin/sh', str(STOP_PROGRAM), 'shop-background'], capture_output=True, text=True,
                            env={'PATH': str(tmp_path)}, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, '', '')


def test_migrating_runs_the_releases_apiphant_with_the_environment_from_stdin(tmp_path):
    """The release role gives the product's environment file on stdin, as the programs read it (values
    quoted for sh, any character): the release's own apiphant migrate finds it in its environment."""
    release = tmp_path / 'release'
    apiphant = release / 'venv' / 'bin' / 'apiphant'
    apiphant.parent.mkdir(parents=True)
    apiphant.write_text('#!/bin/sh\nprintf \'%s|\' "$@" "$DATABASE_URL" "$GREETING"\n')
    apiphant.chmod(0o755)
    url = "postgresql://shop:it's $HOME; `x`@db/shop"
    environment = f"# Ansible managed\nDATABASE_URL={shlex.quote(url)}\nGREETING='a b'\n"
    result = subprocess.run(['sh', '-c', MIGRATE.read_text(), 'migrate', str(release), 'shop'], input=environment,
                            capture_output=True, text=True, env={'PATH': os.environ['PATH']}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'migrate|{release}/shop|{url}|a b|'


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('unshare'), reason='needs root, for a network namespace')
def test_apply_sysctl_sets_what_it_may_and_keeps_what_is_read_only(tmp_path):
    """In a network namespace of its own (its net.* settings are its own): each setting applied and
    reported once, a read-only one (as /proc/sys in a container) or one the kernel lacks kept and
    named, never a failure."""
    settings = tmp_path / 'sysctl.conf'
    settings.write_text('# comment\nnet.core.somaxconn = 1000\nnet.ipv4.ip_local_port_range = 20000   30000\n'
                        'net.ipv4.tcp_max_syn_backlog = 3000\nnet.nosuch.setting = 1\n')
    net = '/proc/sys/net'
    read_only = f'{net}/ipv4/tcp_max_syn_backlog'
    script = (f'mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only} && '
              f'cat {net}/core/somaxconn {net}/ipv4/ip_local_port_range {read_only} | tr "\t" " " && '
              f'sh {APPLY_SYSCTL} {settings} && echo again && sh {APPLY_SYSCTL} {settings}')
    result = subprocess.run(['unshare', '--net', '--mount', '--propagation', 'private', 'sh', '-c', script],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    somaxconn, port_range, syn_backlog, *lines = result.stdout.splitlines()
    kept = [f'kept net.ipv4.tcp_max_syn_backlog: {syn_backlog} (3000 refused here: Read-only file system)',
            'kept net.nosuch.setting: (no such setting on this kernel)']
    assert lines == [f'set net.core.somaxconn: {somaxconn} -> 1000',
                     f'set net.ipv4.ip_local_port_range: {port_range} -> 20000 30000', *kept, 'again', *kept]


def test_programs_behind_reads_a_processs_descriptor_limit():
    """The hard limit, which a program started before Supervisor's was raised has too few of."""
    spec = importlib.util.spec_from_file_location('programs_behind', PROGRAMS_BEHIND)
    programs_behind = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(programs_behind)
    # (Popen returns once sleep runs, its limit set before the exec.)
    child = subprocess.Popen(['sleep', '30'],
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 4096)))
    try:
        assert programs_behind.descriptor_limit(child.pid) == 4096
    finally:
        child.kill()
        child.wait()
