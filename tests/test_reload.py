"""`apiphant PRODUCT --reload`: a new server process after each change, until stopped."""

import os
import signal
import socket
from contextlib import ExitStack

from apiphant.test import call, serve

from support import children, log_has, make_product, wait_for

ECHO = '''
def read(request):
    """Say which version of the code answered, and from which file (no other test's server)."""
    return {'version': %r, 'file': __file__}
'''


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def serve_reloading(stack, product, *args, env=None):
    """`--reload` needs a fixed port (each new process binds it): one chosen free, and another if
    something took it before the server bound it."""
    for _ in range(5):
        try:
            return stack.enter_context(serve(product, *args, port=free_port(), env=env))
        except RuntimeError as error:
            if 'Address already in use' not in str(error):
                raise
    raise RuntimeError('5 ports chosen free were all taken before the server bound them')


def write(path, text):
    """Replace the file whole: `write_text` truncates, then writes, and a poll between the two would
    see a change of its own (one restart more). The temporary name is not a .py, so not watched."""
    temporary = path.with_name(path.name + '.new')
    temporary.write_text(text)
    os.replace(temporary, path)


def answers():
    try:
        return call('echo', 'read', {})
    except OSError:  # between two processes
        return None


def test_reload_restarts_on_a_change_survives_a_broken_one_and_stops_cleanly(tmp_path):
    product = make_product(tmp_path, 'dev', {'api/v0/__init__.py': '', 'api/v0/echo.py': ECHO % 1})
    echo = product / 'api' / 'v0' / 'echo.py'
    with ExitStack() as stack:
        server = serve_reloading(stack, product, '--reload')
        assert log_has(server, f'reload: watching {product} for .py changes (for development only)')
        assert log_has(server, 'reload on: development only')
        assert answers() == (200, {'version': 1, 'file': str(echo)})

        write(echo, ECHO % 2)
        wait_for(lambda: answers() == (200, {'version': 2, 'file': str(echo)}), timeout=30)
        assert log_has(server, f'reload: {echo} changed, restarting')

        broken = product / 'api' / 'v0' / 'broken.py'
        write(broken, 'def read(request):\n    return {\n')
        wait_for(lambda: log_has(server, 'it starts again on the next change'), timeout=30)
        assert log_has(server, 'cannot import dev.api.v0.broken: SyntaxError')
        broken.unlink()
        wait_for(lambda: answers() == (200, {'version': 2, 'file': str(echo)}), timeout=30)

        served = children(server.process.pid)
        assert len(served) == 1
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    assert not os.path.exists(f'/proc/{served[0]}')
    assert sum('serving dev' in line for line in server.log) == 3


def test_reload_from_the_environment_reloads_once(tmp_path):
    """APIPHANT_RELOAD reaches the child too, which must serve rather than watch in turn."""
    product = make_product(tmp_path, 'dev', {'api/v0/echo.py': ECHO % 1})
    with ExitStack() as stack:
        server = serve_reloading(stack, product, env={**os.environ, 'APIPHANT_RELOAD': 'true'})
        assert log_has(server, 'reload on: development only')
        assert answers() == (200, {'version': 1, 'file': str(product / 'api' / 'v0' / 'echo.py')})
        served = children(server.process.pid)
        assert len(served) == 1 and children(served[0]) == []
