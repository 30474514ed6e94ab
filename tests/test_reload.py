"""`apiphant PRODUCT --reload`: a new server process after each change, until stopped."""

import os
import signal
import socket
from pathlib import Path

from apiphant.test import call, serve
from support import log_has, make_product, wait_for

ECHO = '''
def read(request):
    """Say which version of the code answered."""
    return {'version': %r}
'''


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def children(pid):
    found = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def answers():
    try:
        return call('echo', 'read', {})
    except OSError:  # between two processes
        return None


def test_reload_restarts_on_a_change_survives_a_broken_one_and_stops_cleanly(tmp_path):
    product = make_product(tmp_path, 'dev', {'api/v0/__init__.py': '', 'api/v0/echo.py': ECHO % 1})
    echo = product / 'api' / 'v0' / 'echo.py'
    with serve(product, '--reload', port=free_port()) as server:
        assert log_has(server, f'reload: watching {product} for .py changes (for development only)')
        assert log_has(server, 'reload on: development only')
        assert answers() == (200, {'version': 1})

        echo.write_text(ECHO % 2)
        wait_for(lambda: answers() == (200, {'version': 2}))
        assert log_has(server, f'reload: {echo} changed, restarting')

        broken = product / 'api' / 'v0' / 'broken.py'
        broken.write_text('def read(request):\n    return {\n')
        wait_for(lambda: log_has(server, 'it starts again on the next change'))
        assert log_has(server, 'cannot import dev.api.v0.broken: SyntaxError')
        broken.unlink()
        wait_for(lambda: answers() == (200, {'version': 2}))

        served = children(server.process.pid)
        assert len(served) == 1
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    assert not os.path.exists(f'/proc/{served[0]}')
    assert sum('serving dev' in line for line in server.log) == 3
