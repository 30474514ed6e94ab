"""`apiphant PRODUCT --reload`: serve from a child process, replaced whenever a .py file changes.

For development only. A fresh process is the one sure way to run changed code (re-importing
modules in place leaves old objects behind). The product folder is polled, a stat of each .py file
every POLL seconds, instead of watched with inotify: no dependency, and it works on any filesystem
(a Vagrant or Docker mount too); a product has few enough files for that to cost nothing.
"""

import logging
import os
import signal
import subprocess
import sys

import gevent

log = logging.getLogger('apiphant')

POLL = 0.5
ENVIRONMENT = 'APIPHANT_RELOADING'  # set for the child, so its start-up line says it is reloaded


class _Watcher:
    def __init__(self, folder):
        self.folder = folder
        self.files = _snapshot(folder)
        self.signal = None

    def wait_for_change(self, child):
        """The first changed, new or removed file; None if `child` exits or a signal comes first."""
        while self.signal is None and (child is None or child.poll() is None):
            gevent.sleep(POLL)
            now = _snapshot(self.folder)
            if now != self.files:
                changed = sorted(set(now.items()) ^ set(self.files.items()))[0][0]
                self.files = now
                return changed
        return None


def run(folder, argv):
    """Serve `apiphant ARGV` (without --reload) until SIGTERM/SIGINT, restarting it on changes."""
    watcher = _Watcher(folder)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, setattr, watcher, 'signal', signum)
    log.info('reload: watching %s for .py changes (for development only)', folder)
    command = [sys.executable, '-m', 'apiphant', *argv]
    environment = {**os.environ, ENVIRONMENT: '1'}
    while True:
        child = subprocess.Popen(command, env=environment)
        changed = watcher.wait_for_change(child)
        if changed is None and watcher.signal is None:
            log.warning('reload: apiphant exited with code %s; it starts again on the next change',
                        child.returncode)
            changed = watcher.wait_for_change(None)
        if watcher.signal is not None:
            return _stop(child, watcher.signal)
        log.info('reload: %s changed, restarting', changed)
        _stop(child, signal.SIGTERM)


def _snapshot(folder):
    found = {}
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if name != '__pycache__']
        for name in names:
            if name.endswith('.py'):
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                found[path] = (stat.st_mtime_ns, stat.st_size)
    return found


def _stop(child, signum):
    """The child drains as in production; its exit code is ours when we stop.

    Ctrl-C reaches the whole process group, the child too; a second SIGINT would cut its drain
    short, so it gets a moment to stop by itself first.
    """
    if signum == signal.SIGINT:
        try:
            return child.wait(1)
        except subprocess.TimeoutExpired:
            pass
    if child.poll() is None:
        child.send_signal(signum)
    return child.wait()
