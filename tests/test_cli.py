"""The `apiphant` command: arguments, start-up errors, discovery, listening addresses."""

import json
import os
import re
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from apiphant import __version__
from apiphant.test import serve, test

from support import EXAMPLE, KITCHEN, exchange, http_request, log_has, make_product, run_cli

BIN = Path(sys.executable).parent


@pytest.mark.parametrize('args, message', [
    ([], 'the following arguments are required: product'),
    ([str(EXAMPLE), 'localhost'], 'is not HOST:PORT'),
    ([str(EXAMPLE), '127.0.0.1:http'], 'is not HOST:PORT'),
    ([str(EXAMPLE), '127.0.0.1:70000'], 'is not HOST:PORT'),
    ([str(EXAMPLE), '::1:8001'], 'IPv6 address in brackets'),
    ([str(EXAMPLE), '--workers', '0'], 'is not a whole number'),
    ([str(EXAMPLE), '--max-body', '-1'], 'is not a size'),
    ([str(EXAMPLE), '--drain-timeout', 'soon'], 'is not a positive number'),
    ([str(EXAMPLE), '--bogus'], 'unrecognized arguments'),
    (['/no/such/product'], 'neither a folder nor an importable package'),
    ([str(EXAMPLE.parent)], f'has no api/ folder: did you mean {EXAMPLE.resolve()}?'),
])
def test_bad_arguments_are_one_usage_line_and_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('apiphant: error: ')


def test_version_and_help():
    assert run_cli('--version').stdout.strip() == f'apiphant {__version__}'
    help_text = run_cli('--help').stdout
    for option in ('--workers', '--max-body', '--no-access-log', '--drain-timeout', '--idle-timeout',
                   '--request-timeout', 'HOST:PORT'):
        assert option in help_text


@pytest.mark.parametrize('command, some', [
    ([sys.executable, '-m', 'apiphant'], {'--log-format', '--log-level'}),
    ([str(BIN / 'apiphant-background')], {'--log-format', '--log-level'}),
    ([sys.executable, '-m', 'apiphant', 'migrate'], {'--list', '--lock-timeout'}),
])
def test_help_lists_an_environment_variable_for_every_option(command, some):
    help_text = subprocess.run([*command, '--help'], capture_output=True, text=True, timeout=30).stdout
    options = set(re.findall(r'^  (--[a-z-]+)', help_text, re.M)) - {'--help', '--version'}
    assert some <= options
    variables = set(re.findall(r'\[(APIPHANT_[A-Z_]+)\]', help_text))
    assert variables == {'APIPHANT_' + option[2:].upper().replace('-', '_') for option in options}


def test_options_come_from_the_environment_and_the_command_line_wins():
    env = {**os.environ, 'APIPHANT_WORKERS': '2', 'APIPHANT_MAX_BODY': '1k', 'APIPHANT_NO_ACCESS_LOG': 'true',
           'APIPHANT_CORS': 'http://a.test, http://b.test', 'APIPHANT_LOG_FORMAT': 'json',
           'APIPHANT_LOG_LEVEL': 'WARNING', 'APIPHANT_HEALTH_PATH': '/health', 'APIPHANT_METRICS': '',
           'APIPHANT_IDLE_TIMEOUT': '', 'APIPHANT_REQUEST_TIMEOUT': '5', 'APIPHANT_DRAIN_TIMEOUT': '3'}
    with serve(EXAMPLE, '--workers', '1', env=env) as server:
        test('echo', 'read', {'x': 'y' * 2000}, 413)
        assert exchange(server.port, http_request('GET', '/health')).status == 200
        server.process.terminate()
        assert server.process.wait(30) == 0
    started = json.loads(server.log[0])  # the start-up line is logged whatever the level
    assert started['message'].endswith(
        '(workers 1, max body 1024, access log off, cors http://a.test http://b.test, health /health)')
    assert [json.loads(line)['level'] for line in server.log[1:]] == []  # info is under the level
    with serve(EXAMPLE, '--cors', 'http://c.test', '--no-access-log', env={**env, 'APIPHANT_WORKERS': '1'}) as server:
        assert log_has(server, 'cors http://c.test, health')  # a list on the command line replaces the variable's


@pytest.mark.parametrize('variable, value, message', [
    ('APIPHANT_WORKERS', '0', "'0' is not a whole number of at least 1"),
    ('APIPHANT_MAX_BODY', 'lots', "'lots' is not a size in bytes"),
    ('APIPHANT_LOG_FORMAT', 'xml', "'xml' is not one of text, json"),
    ('APIPHANT_LOG_LEVEL', 'loud', "'loud' is not one of debug, info, warning, error, critical"),
    ('APIPHANT_NO_ACCESS_LOG', 'maybe', "'maybe' is neither true nor false (1/0, true/false, yes/no, on/off)"),
    ('APIPHANT_CORS', 'https://ok.test https://*.com', "'https://*.com' would let every site under .com in"),
])
def test_a_bad_environment_variable_is_one_usage_line_naming_it(variable, value, message):
    result = run_cli(str(EXAMPLE), env={variable: value})
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f'apiphant: error: environment variable {variable}: {message}')


def test_import_error_names_the_file_and_stops(tmp_path):
    folder = make_product(tmp_path, 'broken', {
        'api/v0/__init__.py': '',
        'api/v0/good.py': 'def read(request): return {}\n',
        'api/v0/bad.py': 'import os\n\nundefined_name + 1\n',
    })
    result = run_cli(str(folder), '127.0.0.1:0')
    assert result.returncode == 1
    assert 'cannot import broken.api.v0.bad: NameError' in result.stderr
    assert f'{folder}/api/v0/bad.py, line 3' in result.stderr
    assert 'Traceback' not in result.stderr


def test_syntax_error_names_the_file(tmp_path):
    folder = make_product(tmp_path, 'typo', {'api/v0/x.py': 'def read(request)\n    pass\n'})
    result = run_cli(str(folder), '127.0.0.1:0')
    assert result.returncode == 1
    assert 'cannot import typo.api.v0.x: SyntaxError' in result.stderr
    assert 'x.py' in result.stderr


def test_port_in_use_is_one_line(example_server):
    result = run_cli(str(EXAMPLE), f'127.0.0.1:{example_server.port}')
    assert result.returncode == 1
    assert 'cannot listen on 127.0.0.1' in result.stderr
    assert 'Traceback' not in result.stderr


def test_product_parent_is_importable_and_monkey_patched_first(tmp_path):
    folder = make_product(tmp_path, 'shop', {
        'helpers.py': 'import socket\nPATCHED = socket.socket.__module__\n',
        'api/v0/probe.py': '''
            from shop.helpers import PATCHED

            def read(request):
                return {'socket': PATCHED}
            ''',
    })
    with serve(folder):
        test('probe', 'read', {}, 200, {'socket': 'gevent._socket3'})


def test_start_up_line_says_what_is_served_where():
    with serve(KITCHEN, '--workers', '1') as server:
        line = next(line for line in server.log if 'serving' in line)
    assert re.search(rf'apiphant {re.escape(__version__)} serving kitchen \(17 routes\) on '
                     rf'http://127\.0\.0\.1:\d+/api/', line)
    listed = run_cli('routes', str(KITCHEN)).stdout.splitlines()
    assert len(listed) == 17  # the routes `apiphant routes` lists are the ones served


def test_an_imported_function_is_never_an_action(tmp_path):
    """`from shop.helpers import delete` in a target must not publish the helper (and let a client run it)."""
    ran = tmp_path / 'helper-ran'
    folder = make_product(tmp_path, 'shop', {
        'helpers.py': f'''
            from pathlib import Path

            def delete(request):
                Path({str(ran)!r}).touch()
                return {{'deleted': 'everything'}}
            ''',
        'api/v0/orders.py': '''
            from os import replace as update
            from shop.helpers import delete

            def read(request):
                return {'orders': []}
            ''',
    })
    listed = run_cli('routes', str(folder))
    assert listed.stdout == 'POST /api/v0/orders/read\n'
    warning = (f'{folder}/api/v0/orders.py: delete comes from shop.helpers, so it is not an action: only '
               f'functions defined in the module itself are')
    assert warning in listed.stderr
    assert 'update' not in listed.stderr  # a library's function (as SQLAlchemy's update) is no concern
    with serve(folder) as server:
        test('orders', 'read', {}, 200, {'orders': []})
        test('orders', 'delete', {}, 404)
        test('orders', 'update', {}, 404)
        assert '(1 routes)' in ''.join(server.log) and log_has(server, warning)
    assert not ran.exists()


def test_what_yields_no_route_is_named_in_a_start_up_warning(tmp_path):
    folder = make_product(tmp_path, 'quiet', {
        'api/v0/echo.py': 'def read(request):\n    return {}\n',
        'api/v0/verbs.py': 'def get(request):\n    return {}\n',
        'api/v0/_helpers.py': 'def shared():\n    pass\n',
        'api/V1/echo.py': 'def read(request):\n    return {}\n',
        'api/version2/echo.py': 'def read(request):\n    return {}\n',
        'api/common/echo.py': 'def read(request):\n    return {}\n',
    })
    with serve(folder) as server:
        log = ''.join(server.log)
    assert f'{folder}/api/v0/verbs.py defines no action (a function create, read, update or delete): ' \
           f'nothing in it is served; a helper module is best named _verbs.py' in log
    assert f'{folder}/api/V1 is not a version folder (v0, v1, ...): nothing in it is served' in log
    assert f'{folder}/api/version2 is not a version folder' in log
    assert '_helpers' not in log and 'common' not in log and 'echo.py' not in log
    assert '(1 routes)' in log


def test_routes_of_a_product_without_any_says_so_and_fails(tmp_path):
    folder = make_product(tmp_path, 'empty', {'api/V0/echo.py': 'def read(request):\n    return {}\n'})
    result = run_cli('routes', str(folder))
    assert result.returncode == 1 and result.stdout == ''
    assert f'{folder}/api/V0 is not a version folder' in result.stderr
    assert result.stderr.endswith(f'apiphant routes: empty has no route: no action under {folder}/api/v*/\n')


@pytest.mark.parametrize('source', [
    'async def read(request):\n    return {}\n',
    'import functools\n\ndef logged(f):\n    @functools.wraps(f)\n    def wrapper(request):\n'
    '        return f(request)\n    return wrapper\n\n@logged\nasync def read(request):\n    return {}\n',
    'async def read(request):\n    yield {}\n',
])
def test_an_async_action_stops_the_start_up_with_one_line(tmp_path, source):
    folder = make_product(tmp_path, 'aio', {'api/v0/echo.py': source})
    result = run_cli(str(folder), '127.0.0.1:0')
    assert result.returncode == 1
    assert result.stderr.count('\n') == 1, result.stderr
    assert result.stderr.rstrip().endswith(
        f'{folder}/api/v0/echo.py: async def read() cannot be an action: apiphant runs on gevent, not asyncio; '
        f'write a plain def read() (blocking calls already let other requests run)')
    listed = run_cli('routes', str(folder))
    assert listed.returncode == 1 and 'async def read() cannot be an action' in listed.stderr


def test_product_by_import_name(tmp_path):
    make_product(tmp_path, 'named', {'api/v0/hi.py': 'def read(request): return {"hi": 1}\n'})
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    with serve('named', env=env):
        test('hi', 'read', {}, 200, {'hi': 1})


@pytest.mark.skipif(not socket.has_ipv6, reason='no IPv6 in this kernel')
def test_ipv6_loopback():
    try:
        socket.create_server(('::1', 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip('no IPv6 loopback address on this machine')
    with serve(EXAMPLE, host='::1') as server:
        assert server.url.startswith('http://[::1]:')
        test('echo', 'read', {'v': 6}, 200, {'v': 6, 'server': 'myproduct'})


def test_python_dash_m_and_no_access_log():
    with serve(EXAMPLE, '--no-access-log') as server:
        test('echo', 'read', {}, 200)
        assert 'access log off' in ''.join(server.log)
        assert not [line for line in server.log if '/api/v0/echo/read' in line]


def test_fd_limit_raised_to_hard_limit():
    """The server starts with a soft limit below the hard one (inherited from this process, lowered
    for the start) and must lift it: where both are equal already, as on CI, nothing would be shown."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, hard - 1)
    if lowered < 64:
        pytest.skip(f'the hard file descriptor limit ({hard}) leaves no room to start below it')
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        with serve(EXAMPLE) as server:
            limits = open(f'/proc/{server.process.pid}/limits').read()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    got_soft, got_hard = re.search(r'Max open files\s+(\S+)\s+(\S+)', limits).groups()
    assert (int(got_soft), int(got_hard)) == (hard, hard)
