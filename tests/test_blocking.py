"""`--warn-blocking MS`: the action and stack that held the event loop, logged once per incident;
an action that waits cooperatively is not reported."""

import pytest

from apiphant.test import call, serve

from support import log_has, make_product, run_cli, wait_for

SLOW = '''
import time

from gevent import monkey

unpatched_sleep = monkey.get_original('time', 'sleep')


def read(request):
    """Hold the loop in a C call gevent has not patched."""
    unpatched_sleep(request.seconds)
    return {}


def update(request):
    """Hold the loop with Python code that never yields."""
    deadline = time.monotonic() + request.seconds
    while time.monotonic() < deadline:
        pass
    return {}


def create(request):
    """Wait as long, cooperatively (time.sleep is gevent's here)."""
    time.sleep(request.seconds)
    return {}
'''


@pytest.fixture(scope='module', params=['1', '2'], ids=['one process', 'workers'])
def server(tmp_path_factory, request):
    """(Under --workers, gevent starts the monitor thread again in each worker after the fork.)"""
    product = make_product(tmp_path_factory.mktemp('blocking'), 'slow', {'api/v0/calls.py': SLOW})
    with serve(product, '--warn-blocking', '50', '--workers', request.param) as running:
        yield running


def reports(server):
    return [line for line in list(server.log) if 'the event loop was held' in line]


@pytest.mark.parametrize('action, where', [('read', 'unpatched_sleep(request.seconds)'),
                                           ('update', 'while time.monotonic() < deadline')])
def test_an_action_that_blocks_is_reported_once_with_its_stack(server, action, where):
    before = len(reports(server))
    assert call('calls', action, {'seconds': 0.6}) == (200, {})
    wait_for(lambda: len(reports(server)) > before)
    assert call('calls', 'create', {'seconds': 0}) == (200, {})  # (the loop has run: the report is in)
    new = reports(server)[before:]
    assert len(new) == 1, new
    assert f'held over 50 ms by the action /api/v0/calls/{action}; the stack:' in new[0]
    text = ''.join(server.log)
    stack = text[text.index(new[0]):]
    assert f'in {action}\n    {where}' in stack


def test_an_action_that_waits_cooperatively_is_not_reported(server):
    before = len(reports(server))
    assert call('calls', 'create', {'seconds': 0.6}) == (200, {})
    assert call('calls', 'read', {'seconds': 0.01}) == (200, {})  # (under 50 ms: not reported either)
    # The monitor measures wall time: on a loaded machine the kernel may pause the process while the
    # server's own code runs, and that is truthfully reported as held "by code outside any action".
    assert [line for line in reports(server)[before:] if 'by the action' in line] == []
    assert not log_has(server, 'Warning'), ''.join(server.log)  # (gevent's about psutil included)


@pytest.mark.parametrize('value', ['0', '-5', 'soon', 'inf'])
def test_warn_blocking_needs_a_number_of_milliseconds(tmp_path, value):
    product = make_product(tmp_path, 'slow', {'api/v0/calls.py': SLOW})
    result = run_cli(str(product), '--warn-blocking', value)
    assert result.returncode == 2 and f'{value!r} is not a number of milliseconds' in result.stderr
