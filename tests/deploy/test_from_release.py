"""From a release's files alone, as a user without a checkout of apiphant: the wheel and the
collection tarball installed into a fresh virtualenv, `apiphant new shop`, then `fab deploy HOST`
in shop/deploy, and the collection's site playbook changes nothing after it. The user's package
index (a --find-links folder beside the public index) holds the release's wheel and the 2013
apiphant 0.2.5: neither `pip install apiphant` nor the skeleton's pin may pick the old one."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from apiphant import __version__

import testhost

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def check(command, **options):
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600,
                            **options)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    """The wheel and the collection tarball, built as a release builds them."""
    dist = tmp_path_factory.mktemp('dist')
    check([ROOT / 'tools' / 'build-release', dist], env={**os.environ, 'PYTHON': sys.executable,
                                                       'PATH': f'{BIN}{os.pathsep}{os.environ["PATH"]}'})
    [wheel], [collection] = dist.glob('apiphant-*.whl'), dist.glob('apiphant-deploy-*.tar.gz')
    return wheel, collection


def the_2013_release():
    """The 2013 apiphant's sdist, downloaded once into a cache outside the repository (a release on
    the index never changes, so the cache cannot go stale)."""
    cache = Path.home() / '.cache' / 'apiphant-tests' / 'index'
    sdist = cache / 'apiphant-0.2.5.tar.gz'
    if not sdist.exists():
        check([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--dest', cache, 'apiphant==0.2.5'])
    return sdist


@pytest.fixture(scope='module')
def user(release, tmp_path_factory):
    """A user's machine: a fresh HOME and virtualenv holding the wheel with its deploy extra and the
    collection, and an environment in which nothing leads to this checkout."""
    home = tmp_path_factory.mktemp('home')
    wheel, collection = release
    links = home / 'index'
    links.mkdir()
    shutil.copy(wheel, links)
    shutil.copy(the_2013_release(), links)
    venv = home / 'venv'
    control = home / 'cp'
    control.mkdir()
    env = {name: value for name, value in os.environ.items()
           if str(ROOT) not in value and not name.startswith(('ANSIBLE_', 'VIRTUAL_ENV', 'PYTHON'))}
    env.update({
        'HOME': str(home),
        'PATH': os.pathsep.join([str(venv / 'bin')] + [part for part in os.environ['PATH'].split(os.pathsep)
                                                       if str(ROOT) not in part]),
        'PIP_CACHE_DIR': str(Path.home() / '.cache' / 'pip'),  # this machine's downloads, not its state
        'PIP_FIND_LINKS': str(links),
        'LC_ALL': 'C.UTF-8', 'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_SSH_CONTROL_PATH_DIR': str(control),
    })
    check([BIN / 'virtualenv', '--quiet', '--python', sys.executable, venv], cwd=home, env=env)
    check([venv / 'bin' / 'pip', 'install', '--quiet', 'apiphant[deploy]'], cwd=home, env=env)
    check([venv / 'bin' / 'ansible-galaxy', 'collection', 'install', collection], cwd=home, env=env)
    yield home, env
    testhost.close_ssh_masters(control)


@pytest.fixture(scope='module')
def shop(user, lab):
    """`apiphant new shop`, its inventory given a lab host (ports of its own: the example product,
    deployed by the other tests, may be on the host); apiphant's pin left as `apiphant new` wrote it."""
    home, env = user
    host = lab.hosts[0]
    check(['apiphant', 'new', 'shop'], cwd=home, env=env)
    deploy = home / 'shop' / 'deploy'
    inventory = deploy / 'inventory.ini'
    ssh_args = ' '.join(testhost.ssh_options(lab.key)[2:])
    text = inventory.read_text().replace(
        'staging.example.com ansible_user=root',
        f'{host.name} ansible_host={host.address} ansible_user=root '
        f"ansible_ssh_private_key_file={lab.key} ansible_ssh_common_args='{ssh_args}'")
    inventory.write_text(text + 'api_ports=[9001]\nnginx_port=8080\n')
    # The host's SSH key, known as a user makes it known (fab refuses an unknown one; this inventory's
    # SSH arguments tell Ansible alone not to check).
    ssh = home / '.ssh'
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / 'known_hosts').write_text(check(['ssh-keyscan', host.address], cwd=home, env=env).stdout)
    # The collection installed from its tarball satisfies the product's requirements.yml offline.
    installed = check(['ansible-galaxy', 'collection', 'install', '--offline', '-r', 'requirements.yml'],
                    cwd=deploy, env=env)
    assert 'All requested collections are already installed' in installed.stdout
    return deploy


@pytest.fixture(scope='module')
def deployed(shop, user, lab, command):
    run = command(['fab', 'deploy', lab.hosts[0].name], shop, user[1])
    assert run.returncode == 0, run.output[-4000:]
    return run


def test_pip_and_the_skeletons_pin_pick_this_release_over_2013s(user, shop):
    home, env = user
    installed = check(['python', '-c', 'import apiphant; print(apiphant.__version__)'], cwd=home, env=env)
    assert installed.stdout.strip() == __version__
    assert f'apiphant_package=apiphant=={__version__}\n' in (shop / 'inventory.ini').read_text()


def test_the_host_runs_exactly_the_users_apiphant(deployed, lab):
    code = shlex.quote('import apiphant; print(apiphant.__version__)')
    on_host = lab.hosts[0].ssh(f'/opt/shop/current/venv/bin/python -c {code}').stdout
    assert on_host.strip() == __version__


def test_nothing_is_imported_from_the_checkout(user):
    home, env = user
    modules = check(['python', '-c', 'import apiphant, apiphant_deploy as d; print(apiphant.__file__, d.__file__)'],
                    cwd=home, env=env).stdout.split()
    listed = check(['ansible-galaxy', 'collection', 'list', 'apiphant.deploy', '--format', 'json'], cwd=home, env=env)
    collections = json.loads(listed.stdout)
    paths = modules + list(collections)
    assert len(paths) == 3 and all(path.startswith(str(home)) for path in paths), paths
    assert 'apiphant.deploy' in collections[paths[2]]


def test_fab_deploy_serves_the_api_through_nginx(deployed, lab):
    host = lab.hosts[0]
    assert 'deploy: ansible-playbook apiphant.deploy.site' in deployed.output
    request = urllib.request.Request(f'http://{host.address}:8080/api/v0/echo/update',
                                     data=json.dumps({'name': 'Ada'}).encode(), method='POST')
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert json.loads(reply.read()) == {'greeting': 'Hello, Ada!'}
    users = host.ssh('getent', 'passwd', 'shop').stdout
    assert users.startswith('shop:') and users.rstrip().endswith(':/usr/sbin/nologin')


def test_the_collections_site_playbook_then_changes_nothing(deployed, shop, user, lab, command):
    # apiphant_full: every role of the installed collection runs again, none skipped by its stamp.
    site = ['ansible-playbook', '-i', 'inventory.ini', '-e', 'apiphant_full=true', 'apiphant.deploy.site']
    run = command(site, shop, user[1])
    assert run.returncode == 0, run.output[-4000:]
    recap = run.recap()[lab.hosts[0].name]
    assert recap['changed'] == 0 and recap['failed'] == 0, run.output[-4000:]


def test_without_the_collection_fab_says_how_to_install_it(shop, user, lab, command, tmp_path):
    env = {**user[1], 'ANSIBLE_COLLECTIONS_PATH': str(tmp_path)}  # a machine where it is not installed
    run = command(['fab', 'deploy', lab.hosts[0].name], shop, env)
    assert run.returncode != 0
    assert 'the Ansible collection apiphant.deploy is not installed: ansible-galaxy collection' in run.output
