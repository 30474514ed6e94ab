"""The `apiphant` command: arguments, start-up errors, discovery, listening addresses."""

import os
import re
import resource
import socket

import pytest

from apiphant import __version__
from apiphant.test import serve, test
from support import EXAMPLE, KITCHEN, make_product, run_cli


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
    assert re.search(rf'apiphant {re.escape(__version__)} serving kitchen \(16 routes\) on '
                     rf'http://127\.0\.0\.1:\d+/api/', line)


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
