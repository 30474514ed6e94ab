"""Periodic background tasks: `@seconds(60)` and the loop `apiphant-background` runs.

Tasks run one at a time in one process, so they never overlap and need no locks; when several are
due, the one with the shortest period goes first, as it is the one that falls behind soonest.
"""

import logging
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gevent
from gevent.event import Event

from apiphant.routes import ProductError, import_product_module

log = logging.getLogger('apiphant.background')

STOP_TIMEOUT = 10.0
_tasks = []
Task_ = TypeVar('Task_', bound=Callable[..., Any])  # what @seconds decorates, returned unchanged


@dataclass
class Task:
    due: float
    period: float
    name: str = field(compare=False)
    function: Callable = field(compare=False)


def seconds(period: float) -> Callable[[Task_], Task_]:
    """Run the decorated function every `period` seconds (the first time when the loop starts)."""
    if not isinstance(period, (int, float)) or isinstance(period, bool) or period <= 0:
        raise ValueError(f'@seconds needs a positive number of seconds, not {period!r}')

    def register(function: Task_) -> Task_:
        _tasks.append(Task(0.0, float(period), function.__name__, function))
        return function
    return register


def registered():
    return list(_tasks)


def load(folder):
    """Import the product's api/background module (or package); its @seconds tasks register."""
    api = folder / 'api'
    if not ((api / 'background.py').is_file() or (api / 'background' / '__init__.py').is_file()):
        raise ProductError(f'{folder.name} has no background tasks (no api/background.py '
                           f'or api/background/__init__.py)')
    module = import_product_module(folder, 'api.background')
    if not _tasks:
        raise ProductError(f'{module.__name__} defines no @seconds task')
    return module


def run(tasks, on_error=None, stop_timeout=STOP_TIMEOUT):
    """Run due tasks until SIGTERM/SIGINT; a task that is running then gets `stop_timeout` to end."""
    stop = Event()
    handlers = [gevent.signal_handler(signum, stop.set) for signum in (signal.SIGTERM, signal.SIGINT)]
    log.info('background: %s', ', '.join(f'{task.name} every {task.period:g} s' for task in tasks))
    start = time.monotonic()
    for task in tasks:
        task.due = start
    while not stop.is_set():
        now = time.monotonic()
        due = [task for task in tasks if task.due <= now]
        if not due:
            stop.wait(min(task.due for task in tasks) - now)
            continue
        # The longest-waiting task first, shortest period among equals: a task that overruns its
        # period is due again at once, and picking by period alone would starve all the others.
        task = min(due, key=lambda task: (task.due, task.period))
        runner = gevent.spawn(_run_one, task, on_error)
        gevent.wait([runner, stop], count=1)
        if not runner.ready():
            log.info('background: stopping, waiting %.0f s for %s', stop_timeout, task.name)
            runner.join(stop_timeout)
            if not runner.ready():
                runner.kill(block=True)
                log.error('Task %s: stopped unfinished on SIGTERM.', task.name)
        task.due = max(task.due + task.period, time.monotonic())
    for handler in handlers:
        handler.cancel()
    log.info('background: stopped')
    return 0


def _run_one(task, on_error):
    try:
        task.function()
    except Exception:
        text = f'Task {task.name}: {traceback.format_exc()}'
        log.error('%s', text)
        if on_error is not None:
            try:
                on_error(text)
            except Exception:
                log.exception('on_error failed for task %s', task.name)
    else:
        log.info('Task %s: OK.', task.name)
