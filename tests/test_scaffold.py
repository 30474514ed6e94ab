"""`apiphant new`: a product whose own tests pass at once, its name filled in everywhere."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from psycopg.conninfo import make_conninfo

from apiphant import __version__
from apiphant.test import serve, test

from support import ROOT, run_cli

BIN = Path(sys.executable).parent


def new(name, cwd):
    return subprocess.run([sys.executable, '-m', 'apiphant', 'new', name], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope='module')
def shop(tmp_path_factory):
    parent = tmp_path_factory.mktemp('new')
    result = new('shop', parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'created shop/: try `cd shop && pytest`, then `apiphant shop --reload`\n'
    return parent / 'shop'


def test_new_writes_a_product_its_tests_and_a_deploy_inventory(shop):
    files = sorted(str(path.relative_to(shop)) for path in shop.rglob('*') if path.is_file())
    assert files == ['.gitignore', 'README.md', 'deploy/ansible.cfg', 'deploy/fabfile.py', 'deploy/inventory.ini',
                     'deploy/requirements.yml', 'pytest.ini', 'requirements.txt', 'shop/__init__.py',
                     'shop/api/__init__.py', 'shop/api/v0/__init__.py', 'shop/api/v0/echo.py', 'tests/test_echo.py']
    for path in shop.rglob('*'):
        if path.is_file():
            text = path.read_text()
            assert '${' not in text, path  # every placeholder replaced
    assert "response.server = 'shop'" in (shop / 'shop/api/v0/echo.py').read_text()
    assert 'product_name=shop\n' in (shop / 'deploy/inventory.ini').read_text()


def test_the_new_products_tests_pass_at_once(shop):
    result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider'], cwd=shop,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '5 passed' in result.stdout


def test_the_commands_find_the_package_from_where_new_ran_and_from_inside(shop):
    """`apiphant new shop` makes shop/shop/api: `shop` (beside it) and `.` (inside) both mean it."""
    for product, cwd in (('shop', shop.parent), ('.', shop)):
        routes = subprocess.run([sys.executable, '-m', 'apiphant', 'routes', product], cwd=cwd,
                                capture_output=True, text=True, timeout=60)
        assert routes.returncode == 0, routes.stderr
        assert routes.stdout.startswith('POST /api/v0/echo/read')
        openapi = subprocess.run([sys.executable, '-m', 'apiphant', 'openapi', product], cwd=cwd,
                                 capture_output=True, text=True, timeout=60)
        assert openapi.returncode == 0, openapi.stderr
        assert json.loads(openapi.stdout)['info']['title'] == 'shop'
    with serve(shop):
        test('echo', 'read', {'hello': 'world'}, 200, {'hello': 'world', 'server': 'shop'})


def test_the_deploy_inventory_points_at_the_product_wherever_it_is(shop):
    """The paths are relative to the inventory itself, so the folder can move."""
    variables = {}
    for name in ('product_name', 'product_source', 'product_requirements', 'apiphant_package'):
        result = subprocess.run(  # the inventory named by deploy/ansible.cfg, as fab and Ansible use it there
            [BIN / 'ansible', 'all', '-c', 'local', '-m', 'ansible.builtin.debug', '-a', f'msg={{{{ {name} }}}}',
             '-o'], cwd=shop / 'deploy', capture_output=True, text=True, timeout=120, env={'PATH': '/usr/bin:/bin'})
        assert result.returncode == 0, result.stdout + result.stderr
        variables[name] = result.stdout.split('"msg": "')[1].split('"')[0]
    assert variables['product_name'] == 'shop'
    assert Path(variables['product_source']).resolve() == (shop / 'shop').resolve()
    assert Path(variables['product_requirements']).resolve() == (shop / 'requirements.txt').resolve()
    assert variables['apiphant_package'] == f'apiphant=={__version__}'


def test_the_deploy_folder_names_the_collection_and_loads_the_fabric_tasks(shop):
    required = yaml.safe_load((shop / 'deploy' / 'requirements.yml').read_text())
    assert required == {'collections': [{'name': 'apiphant.deploy', 'version': __version__}]}
    listed = subprocess.run([BIN / 'fab', '--list'], cwd=shop / 'deploy', capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    tasks = re.findall(r'^  (\w+) ', listed.stdout, re.M)
    assert tasks == ['backup', 'deploy', 'history', 'logs', 'migrations', 'restart', 'restore', 'rollback', 'status',
                     'unlock']


def test_the_new_products_readme_says_how_to_install_its_tests_and_what_the_deploy_is_tested_on(shop):
    readme, main = (' '.join(path.read_text().split()) for path in (shop / 'README.md', ROOT / 'README.md'))
    assert "pip install 'apiphant[test]'" in readme
    tested = 'Ubuntu LTS may work, but no test covers it'  # the main README's words
    assert tested in readme and tested in main
    assert 'Debian 12 or 13' in readme and 'Debian or Ubuntu' not in readme


def test_the_new_product_never_mentions_a_checkout_of_apiphant(shop):
    mentions = [str(path.relative_to(shop)) for path in shop.rglob('*')
                if path.is_file() and 'checkout' in path.read_text().lower()]
    assert mentions == []


def test_new_refuses_an_existing_folder_and_changes_nothing(tmp_path):
    (tmp_path / 'shop').mkdir()
    (tmp_path / 'shop' / 'mine.txt').write_text('keep me')
    result = new('shop', tmp_path)
    assert result.returncode == 2
    assert result.stderr == 'apiphant new: shop already exists: choose another name or remove it first\n'
    assert [path.name for path in (tmp_path / 'shop').iterdir()] == ['mine.txt']


@pytest.mark.parametrize('name, reason', [
    ('my-shop', "'my-shop' is not a valid Python package name"),
    ('1shop', "'1shop' is not a valid Python package name"),
    ('class', "'class' is not a valid Python package name"),
    ('Shop', "'Shop': a package name is lower case by convention (PEP 8): try 'shop'"),
    ('json', "'json' is the name of a module already installed here"),
    ('gevent', "'gevent' is the name of a module already installed here"),
    ('routes', "'routes' is an apiphant command"),
])
def test_new_rejects_a_name_with_a_one_line_reason(tmp_path, name, reason):
    result = new(name, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f'apiphant new: {reason}')
    assert result.stderr.count('\n') == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope='module')
def stocked(tmp_path_factory):
    """`apiphant new stock --db postgresql`: the same product, keeping items in PostgreSQL."""
    parent = tmp_path_factory.mktemp('new-db')
    result = subprocess.run([sys.executable, '-m', 'apiphant', 'new', 'stock', '--db', 'postgresql'], cwd=parent,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ('created stock/: set DATABASE_URL as stock/README.md says, then try `cd stock && '
                             'apiphant migrate stock && pytest`, then `apiphant stock --reload`\n')
    return parent / 'stock'


def test_new_with_a_database_adds_items_a_migration_a_lifespan_and_their_tests(stocked):
    files = sorted(str(path.relative_to(stocked)) for path in stocked.rglob('*') if path.is_file())
    assert files == ['.gitignore', 'README.md', 'deploy/ansible.cfg', 'deploy/fabfile.py', 'deploy/inventory.ini',
                     'deploy/requirements.yml', 'pytest.ini', 'requirements.txt', 'stock/__init__.py',
                     'stock/api/__init__.py', 'stock/api/lifespan.py', 'stock/api/v0/__init__.py',
                     'stock/api/v0/echo.py', 'stock/api/v0/items.py', 'stock/migrations/0001.items.sql',
                     'tests/conftest.py', 'tests/test_echo.py', 'tests/test_items.py']
    assert all('${' not in path.read_text() for path in stocked.rglob('*') if path.is_file())
    readme = ' '.join((stocked / 'README.md').read_text().split())
    for step in ("pip install 'apiphant[postgresql,test]'", 'export DATABASE_URL=', 'apiphant migrate stock',
                 'apiphant stock --reload', 'pytest'):
        assert step in readme
    assert 'yoyo-migrations>=9.0,<10' in (stocked / 'requirements.txt').read_text()


def test_the_new_products_database_tests_pass_at_once(stocked, postgres):
    result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider'], cwd=stocked,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, 'DATABASE_URL': postgres.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert '19 passed' in result.stdout
    assert [name for (name,) in postgres.query('SELECT datname FROM pg_database')
            if name.startswith('test_stock_')] == []  # the tests' database is dropped


def test_the_new_products_tests_say_they_need_a_database(stocked):
    environment = {key: value for key, value in os.environ.items() if key != 'DATABASE_URL'}
    result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider'], cwd=stocked,
                            capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 2
    assert 'the tests need a PostgreSQL: set DATABASE_URL' in result.stdout + result.stderr


def test_the_new_product_migrates_and_serves_its_items(stocked, postgres):
    name = 'stock_served'
    postgres.query(f'CREATE DATABASE {name}')
    url = make_conninfo(postgres.url, dbname=name)
    try:
        migrated = run_cli('migrate', str(stocked / 'stock'), env={'DATABASE_URL': url})
        assert (migrated.returncode, migrated.stdout) == (0, 'applied 0001.items\nstock: 1 applied now, 0 before, '
                                                              '0 pending\n'), migrated.stderr
        with serve(stocked, env={**os.environ, 'DATABASE_URL': url}):
            item = test('items', 'create', {'name': 'teapot', 'quantity': 2}, 200)
            test('items', 'read', {}, 200, {'items': [item], 'next': None})
    finally:
        postgres.query(f'DROP DATABASE {name} WITH (FORCE)')
