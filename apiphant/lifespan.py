"""A product's start-up and shutdown code: the generator `lifespan()` in its api/lifespan.py.

    # myproduct/api/lifespan.py
    from apiphant import database

    def lifespan():
        with database.pool():       # start-up: the code before `yield`
            yield                   # the process serves
        # shutdown: the code after `yield` (here, the `with` closing the pool), after the drain

One generator, as Starlette's lifespan and pytest's yield fixtures, rather than a pair of start-up
and shutdown functions: what start-up opens, the same `with` or `finally` closes; shutdown runs only
for what start-up got to open; nothing has to be kept in a global for the other function.

It runs in the process that serves: in each worker after the fork (a pool or a socket made before
it would be shared by every worker), in the single process, in apiphant-background and around the
in-process test client, never in the `--workers` master. A start-up that raises stops that process
with one line naming the error, and exit code STARTUP_FAILED.
"""

import contextlib
import inspect
import logging

from apiphant.blocking import warn_blocking_drivers
from apiphant.routes import ProductError, describe_error, import_product_module

log = logging.getLogger('apiphant')

STARTUP_FAILED = 3  # as gunicorn's worker boot error: the --workers master stops rather than retry


class Lifespan:
    """The product's lifespan, entered by `start()` and left by `stop()` (or used as `with`)."""

    def __init__(self, folder, function=None):
        self.folder = folder
        self.function = function
        self.manager = None

    def start(self):
        """Run the code before `yield`; ProductError (one line) when it raises or never yields."""
        if self.function is None:
            return
        manager = contextlib.contextmanager(self.function)()
        try:
            manager.__enter__()
        except Exception as error:
            raise ProductError(f'start-up failed: {self._describe(error)}') from error
        self.manager = manager

    def stop(self):
        """Run the code after `yield`, once; ProductError when it raises."""
        manager, self.manager = self.manager, None
        if manager is None:
            return
        try:
            manager.__exit__(None, None, None)
        except Exception as error:
            raise ProductError(f'shutdown failed: {self._describe(error)}') from error

    def _describe(self, error):
        return ' '.join(describe_error(error, self.folder).split())  # (driver errors span lines)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()


def load(folder):
    """The product's Lifespan; one that does nothing when it has no api/lifespan.py."""
    if not (folder / 'api' / 'lifespan.py').is_file():
        return Lifespan(folder)
    module = import_product_module(folder, 'api.lifespan')
    function = getattr(module, 'lifespan', None)
    if not inspect.isgeneratorfunction(function):
        raise ProductError(f'{folder.name}/api/lifespan.py should define lifespan() as a generator: '
                           f'start-up code, then `yield`, then shutdown code')
    return Lifespan(folder, function)


def run(lifespan, main):
    """Start up, run `main()` (which returns an exit code), shut down; return the exit code.

    A failed start-up is logged as one line and returns STARTUP_FAILED; a failed shutdown is
    logged with its traceback and makes the exit code 1. Between the two, the drivers the product
    has loaded by then are checked (apiphant.blocking)."""
    try:
        lifespan.start()
    except ProductError as error:
        log.error('%s', error)
        return STARTUP_FAILED
    warn_blocking_drivers()
    try:
        code = main()
    finally:
        try:
            lifespan.stop()
        except ProductError as error:
            log.error('%s', error, exc_info=error.__cause__)
            code = 1
    return code
