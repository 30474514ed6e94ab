"""PostgreSQL the recommended way: psycopg 3 and its pool, one pool per serving process.

    # myproduct/api/lifespan.py
    from apiphant import database

    def lifespan():
        with database.pool():             # DATABASE_URL, in each worker after the fork
            yield

    # myproduct/api/v0/items.py
    def read(request):
        with database.connection() as db:     # one transaction: committed, or rolled back on error
            row = db.execute('SELECT id, name FROM items WHERE id = %s', (request.id,)).fetchone()

psycopg 3 (from 3.1.14) waits on gevent's hub once gevent has patched the standard library, so a
query holds up only its own request. What this module adds to psycopg_pool:
- the settings from the environment, as the deploy passes them (DATABASE_URL, DATABASE_POOL_SIZE,
  DATABASE_POOL_TIMEOUT, DATABASE_POOL_MAX_WAITING; arguments of pool() win over them);
- a bounded wait: an action that gets no connection within the timeout, or finds max_waiting
  requests queued already, answers 503 with Retry-After (Busy) instead of queueing without end;
- the pool seen by the server: GET /up runs `SELECT 1` on it (apiphant.health), and --metrics
  shows its size, connections in use and requests waiting (apiphant.metrics).
"""

import math
import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gevent.monkey import get_original

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests
except ImportError as error:  # pragma: no cover  (the extra is installed wherever the suite runs)
    raise ImportError('apiphant.database needs psycopg 3 and psycopg_pool: '
                      'pip install "apiphant[postgresql]"') from error

from apiphant.validation import ApiError

POOL_SIZE = 10
POOL_TIMEOUT = 5.0
POOL_MAX_WAITING = 1000
RETRY_AFTER = 1  # seconds: a saturated pool usually frees a connection within one

_pool = None  # the process's open pool
_poll = get_original('select', 'poll')  # (it never waits here: gevent's would only add a detour)


class Busy(ApiError):
    """503: no database connection was free within the pool's timeout, or too many were waiting."""

    headers = (('Retry-After', str(RETRY_AFTER)),)

    def __init__(self):
        super().__init__(503, 'no database connection is free: try again shortly')


class SettingError(ValueError):
    """A database setting that cannot be used; the message names it."""


def _setting(value, name, default, kind, zero_allowed=False):
    """An argument, else the environment variable `name`, else `default`: a finite number above 0
    (or 0 itself where `zero_allowed`)."""
    if value is None:
        value = os.environ.get(name, default)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = -1
    if isinstance(value, bool) or not math.isfinite(number) or not (number > 0 or zero_allowed and number == 0):
        raise SettingError(f'{name} should be a {"whole " if kind is int else ""}number above '
                           f'{"or equal to " if zero_allowed else ""}0, not {value!r}')
    return number


@contextmanager
def pool(url: str | None = None, size: int | None = None, timeout: float | None = None,
         max_waiting: int | None = None) -> Iterator[ConnectionPool]:
    """Open this process's pool for a `with` block (in the product's lifespan), then close it.

    `url` (else DATABASE_URL): a libpq URL or connection string. `size` (DATABASE_POOL_SIZE, 10):
    connections this process opens at start and keeps. `timeout` (DATABASE_POOL_TIMEOUT, 5 s): how
    long an action waits for a free one before its 503. `max_waiting` (DATABASE_POOL_MAX_WAITING,
    1000; 0 for no limit): requests waiting beyond it get their 503 at once.
    A database that cannot be reached fails the start-up with the driver's own reason."""
    global _pool
    if _pool is not None:
        raise RuntimeError('the database pool is open already: open it once, in api/lifespan.py')
    url = url or os.environ.get('DATABASE_URL')
    if not url:
        raise SettingError('DATABASE_URL is not set: give it the database to use, e.g. '
                           'postgresql://user:password@host/name')
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise SettingError('DATABASE_URL is neither a postgresql:// URL nor a libpq connection string '
                           '(not repeated here: it may hold a password)') from None
    size = _setting(size, 'DATABASE_POOL_SIZE', POOL_SIZE, int)
    timeout = _setting(timeout, 'DATABASE_POOL_TIMEOUT', POOL_TIMEOUT, float)
    max_waiting = _setting(max_waiting, 'DATABASE_POOL_MAX_WAITING', POOL_MAX_WAITING, int, zero_allowed=True)
    psycopg.connect(url, connect_timeout=max(1, round(timeout))).close()  # the reason, if it cannot connect
    opened = ConnectionPool(url, min_size=size, max_size=size, timeout=timeout, max_waiting=max_waiting,
                            open=False, name='apiphant')
    try:
        opened.open(wait=True, timeout=max(timeout, 30.0))
        _pool = opened
        yield opened
    finally:
        _pool = None
        opened.close()


def is_open() -> bool:
    return _pool is not None


@contextmanager
def connection() -> Iterator[psycopg.Connection[Any]]:
    """A connection of the pool for one action, in a transaction: committed when the block ends,
    rolled back when it raises. Busy (503) when none is free within the pool's timeout."""
    if _pool is None:
        raise RuntimeError('no database pool: open one with database.pool() in api/lifespan.py')
    opened = _pool
    held = _lend(opened)
    try:
        with held:
            yield held
    finally:
        opened.putconn(held)


def _lend(opened):
    """A pooled connection the server has not closed while it sat idle.

    A server that closes a connection (a restart, a failover, pg_terminate_backend, an idle timeout)
    sends its reason first: an idle connection with something to read is such a one, so it is
    closed, which makes the pool replace it, and the next one is taken. A poll with no wait costs a
    system call, where psycopg_pool's own `check` would cost a round trip to the server per action."""
    deadline = time.monotonic() + opened.timeout
    for _ in range(opened.max_size + 1):
        try:
            held = opened.getconn(timeout=max(0.0, deadline - time.monotonic()))
        except (PoolTimeout, TooManyRequests):
            raise Busy() from None
        if not held.closed and not _has_input(held.fileno()):
            return held
        held.close()
        opened.putconn(held)
    raise Busy()


def _has_input(descriptor):
    poller = _poll()
    poller.register(descriptor, select.POLLIN)
    return bool(poller.poll(0))


def check():
    """GET /up's check: the database answers a query on a pooled connection."""
    with connection() as db:
        db.execute('SELECT 1')


def stats():
    """{'size': connections open, 'in_use': lent to actions, 'waiting': requests waiting}, or None
    without an open pool."""
    opened = _pool
    if opened is None:
        return None
    figures = opened.get_stats()
    return {'size': figures['pool_size'], 'in_use': figures['pool_size'] - figures['pool_available'],
            'waiting': figures.get('requests_waiting', 0)}
