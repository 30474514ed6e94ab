"""`GET /up` (`--health-path`): whether a load balancer should send this process requests.

200 {"status": "up"} while it serves; 503 {"status": "draining"} from the moment a drain starts,
so a balancer polling it stops sending before the process exits; 503 {"status": "down", "error":
"..."} while the product's readiness check fails. The check is `check()` in the product's
api/health.py (never a route: routes live under api/vN/), and, while apiphant.database has a
pool open, a `SELECT 1` on it. It runs at most once a CHECK_PERIOD,
one run shared by every probe that arrives meanwhile, and is cut off after CHECK_TIMEOUT s (or the
module's own `timeout`, in seconds), so
probes cannot multiply the load on what it checks (a database) nor hang on it. A check that
blocks without yielding to gevent (a C library gevent does not patch) cannot be cut off.
"""

import logging
import sys
import time

import gevent

from apiphant.errors import encode

DEFAULT_PATH = '/up'
CHECK_PERIOD = 1.0
CHECK_TIMEOUT = 5.0
log = logging.getLogger('apiphant')
_HEADERS = [('Content-Type', 'application/json'), ('Cache-Control', 'no-store')]


class Check:
    """The product's readiness check and its time limit."""

    def __init__(self, function, timeout=CHECK_TIMEOUT):
        self.function = function
        self.timeout = timeout

    def __call__(self):
        with gevent.Timeout(self.timeout, CheckTimeout(f'the check took over {self.timeout:g} s')):
            self.function()


class CheckTimeout(Exception):
    """(An Exception, not gevent.Timeout's BaseException, so it reads as any failed check.)"""


def load_check(folder):
    """The product's check from api/health.py, or None when it has no such file."""
    # (imported here: the server imports this module for Health, and nothing of the framework)
    from apiphant.routes import ProductError, import_product_module
    if not (folder / 'api' / 'health.py').is_file():
        return None
    module = import_product_module(folder, 'api.health')
    function = getattr(module, 'check', None)
    if not callable(function):
        raise ProductError(f'{folder.name}/api/health.py has no function check()')
    timeout = getattr(module, 'timeout', CHECK_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ProductError(f'{folder.name}/api/health.py: timeout should be a positive number of seconds')
    return Check(function, timeout)


def _database():
    """apiphant.database when the product uses it (it needs the postgresql extra: never imported here)."""
    return sys.modules.get('apiphant.database')


def one_line(error):
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0]}' if text else type(error).__name__


class Health:
    """The WSGI app of the health path; `server` tells whether it drains."""

    def __init__(self, server, check=None):
        self.server = server
        self.check = check
        database = _database()  # (the server starts inside the product's lifespan: its pool is open)
        self.database_check = Check(database.check) if database is not None and database.is_open() else None
        self.error = None  # the last check's one-line error, or None
        self.checked_at = -CHECK_PERIOD
        self.running = None  # the greenlet of the check under way, shared by the probes meanwhile

    def __call__(self, environ, start_response):
        if self.server.draining:
            return _answer(start_response, '503 Service Unavailable', {'status': 'draining'})
        error = self.checked()
        if error is not None:
            return _answer(start_response, '503 Service Unavailable', {'status': 'down', 'error': error})
        return _answer(start_response, '200 OK', {'status': 'up'})

    def checked(self):
        """The readiness check's error (None: ready), from a fresh run or one under CHECK_PERIOD old."""
        if self.check is None and self.database_check is None:
            return None
        running = self.running
        if running is None and time.monotonic() - self.checked_at >= CHECK_PERIOD:
            self.checked_at = time.monotonic()
            running = self.running = gevent.spawn(self._run)
        if running is not None:
            running.join()
        return self.error

    def _run(self):
        """Run the check; log when its answer changes (not every probe: balancers poll often)."""
        before = self.error
        try:
            if self.database_check is not None:
                self.database_check()
            if self.check is not None:
                self.check()
            self.error = None
        except Exception as error:  # noqa: BLE001  (any failure of the product's check is "down")
            self.error = one_line(error)
        finally:
            self.running = None
        if self.error != before:
            if self.error is None:
                log.warning('health check passes again')
            else:
                log.warning('health check fails: %s', self.error)


def _answer(start_response, status, body):
    data = encode(body)
    start_response(status, _HEADERS + [('Content-Length', str(len(data)))])
    return [data]
