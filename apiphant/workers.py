"""`--workers N`: a pre-fork master that keeps N serving processes on one listening socket."""

import logging
import os
import signal
import time

import gevent
import gevent.os

from apiphant import lifespan as lifespans
from apiphant import logs
from apiphant.server import on_stop_signals, serve

log = logging.getLogger('apiphant')


def run_workers(app, listener, options, lifespan, started_message='', metrics_workers=None):
    """Fork `options.workers` processes on one listening socket and replace any that dies.

    The master binds before forking so all workers share one accept queue: a worker's death loses
    no queued connection. On SIGTERM/SIGINT the master forwards the signal and waits for them all.
    `metrics_workers` (apiphant.metrics.Workers, with --metrics) hears of each start and death.
    Each worker runs the product's `lifespan` (apiphant.lifespan) around its serving and tells the
    master through a pipe once its start-up is done: `started_message` is logged when every first
    worker has. A worker whose start-up fails stops them all, as a retry would fail the same way.
    """
    master_pid = os.getpid()
    workers = {}
    stopping = False
    ready_read, ready_write = os.pipe()
    os.set_blocking(ready_read, False)
    os.set_blocking(ready_write, False)  # (a full pipe must not hold up a replacement worker)

    def start_worker():
        pid = os.fork()
        if pid == 0:
            for handler in handlers:
                handler.cancel()
            os.close(ready_read)
            code = 1
            try:
                code = lifespans.run(lifespan, serve_ready)
            finally:
                os._exit(code)
        workers[pid] = time.monotonic()
        if metrics_workers is not None:
            metrics_workers.started(pid)
        return pid

    def serve_ready():
        try:
            os.write(ready_write, b'.')
        except OSError:
            pass  # (a full pipe: the master reads only its first workers' news)
        os.close(ready_write)
        return serve(app, listener, options, parent_pid=master_pid)

    def announce():
        """Log the start-up line once each first worker has started up."""
        ready = 0
        while ready < options.workers:
            ready += len(gevent.os.nb_read(ready_read, options.workers - ready))
        if started_message:
            logs.start.info('%s', started_message)

    def on_signal(signum):
        nonlocal stopping
        stopping = True
        listener.close()
        for pid in list(workers):
            _kill(pid, signum)

    handlers = on_stop_signals(on_signal)
    for _ in range(options.workers):
        start_worker()
    announcer = gevent.spawn(announce)
    log.info('master pid %d: %d workers %s', master_pid, len(workers), sorted(workers))
    failures = 0
    startup_failed = False
    while workers:
        pid, status = os.waitpid(-1, 0)
        started = workers.pop(pid, None)
        if started is None:
            continue  # gevent's waitpid(-1) may report an already reaped child once more
        if metrics_workers is not None:
            metrics_workers.died(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failures += bool(code)
            continue
        if code == lifespans.STARTUP_FAILED:
            log.error('worker pid %d: its start-up failed; stopping', pid)
            startup_failed = True
            announcer.kill()
            on_signal(signal.SIGTERM)
            continue
        log.error('worker pid %d died (%s); starting another', pid, _describe_status(status))
        if time.monotonic() - started < 1:
            gevent.sleep(1)  # a worker that dies at once would otherwise be restarted in a tight loop
        if not stopping:
            start_worker()
    announcer.kill()
    os.close(ready_read)
    os.close(ready_write)
    if startup_failed:
        return lifespans.STARTUP_FAILED
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
