"""`--workers N`: a pre-fork master that keeps N serving processes on one listening socket."""

import logging
import os
import signal
import time

import gevent

from apiphant import logs
from apiphant.server import on_stop_signals, serve

log = logging.getLogger('apiphant')


def run_workers(app, listener, options, started_message='', metrics_workers=None):
    """Fork `options.workers` processes on one listening socket and replace any that dies.

    The master binds before forking so all workers share one accept queue: a worker's death loses
    no queued connection. On SIGTERM/SIGINT the master forwards the signal and waits for them all.
    `metrics_workers` (apiphant.metrics.Workers, with --metrics) hears of each start and death.
    """
    master_pid = os.getpid()
    workers = {}
    stopping = False

    def start_worker():
        pid = os.fork()
        if pid == 0:
            for handler in handlers:
                handler.cancel()
            code = 1
            try:
                code = serve(app, listener, options, parent_pid=master_pid)
            finally:
                os._exit(code)
        workers[pid] = time.monotonic()
        if metrics_workers is not None:
            metrics_workers.started(pid)
        return pid

    def on_signal(signum):
        nonlocal stopping
        stopping = True
        listener.close()
        for pid in list(workers):
            _kill(pid, signum)

    handlers = on_stop_signals(on_signal)
    for _ in range(options.workers):
        start_worker()
    if started_message:
        logs.start.info('%s', started_message)
    log.info('master pid %d: %d workers %s', master_pid, len(workers), sorted(workers))
    failures = 0
    while workers:
        pid, status = os.waitpid(-1, 0)
        started = workers.pop(pid, None)
        if started is None:
            continue  # gevent's waitpid(-1) may report an already reaped child once more
        if metrics_workers is not None:
            metrics_workers.died(pid)
        if stopping:
            failures += bool(os.waitstatus_to_exitcode(status))
            continue
        log.error('worker pid %d died (%s); starting another', pid, _describe_status(status))
        if time.monotonic() - started < 1:
            gevent.sleep(1)  # a worker that dies at once would otherwise be restarted in a tight loop
        if not stopping:
            start_worker()
    return 1 if failures else 0


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_status(status):
    if os.WIFSIGNALED(status):
        return f'signal {signal.Signals(os.WTERMSIG(status)).name}'
    return f'exit code {os.waitstatus_to_exitcode(status)}'
