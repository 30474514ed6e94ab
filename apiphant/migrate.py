"""`apiphant migrate PRODUCT`: apply the product's pending migrations (PRODUCT/migrations/*.sql).

The migrations are yoyo-migrations' (docs/product/data.md says why that tool): plain SQL files,
applied in their names' order (or as their `-- depends:` lines say), each in a transaction of its
own, so a failing one leaves nothing of itself behind. What this module adds:

- one run at a time per database: a PostgreSQL advisory lock, taken before yoyo looks at anything,
  so a second run (another host of the fleet) waits, then finds nothing left to do. The server
  frees the lock when the holder's connection ends, so a run killed midway never leaves a lock
  for someone to break (yoyo's own lock is a row, and would);
- the database from DATABASE_URL, as the server's pool reads it (a URL or a connection string);
- output for a deploy to show: a line per migration applied, and on failure the migration's name
  and the database's error, with the exit code FAILED.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from yoyo import get_backend, read_migrations
except ImportError as error:  # pragma: no cover  (the extra is installed wherever the suite runs)
    raise ImportError('apiphant migrate needs psycopg 3 and yoyo-migrations: '
                      'pip install "apiphant[postgresql]"') from error

FOLDER = 'migrations'
LOCK = 0x61706970  # the advisory lock's key ('apip'), taken in the database being migrated
LOCK_TIMEOUT = 300.0  # seconds to wait for another run: longer than a migration usually takes
FAILED = 1  # a migration or the database failed
UNUSABLE = 2  # nothing was tried: no DATABASE_URL, no migrations folder


class MigrationError(Exception):
    """A run that cannot go on; the message says why in one line. `code`: the exit code."""

    def __init__(self, message, code=FAILED):
        super().__init__(message)
        self.code = code


@dataclass
class Result:
    applied: list = field(default_factory=list)   # ids applied by this run, in order
    already: list = field(default_factory=list)   # ids applied before
    pending: list = field(default_factory=list)   # ids left to apply (--list, or after a failure)
    waited: float = 0.0                           # seconds spent waiting for another run


def folder_of(product_folder):
    folder = Path(product_folder) / FOLDER
    if not folder.is_dir():
        raise MigrationError(f'{folder} does not exist: put the migrations there (0001.name.sql, ...)', UNUSABLE)
    return folder


def yoyo_uri(url):
    """DATABASE_URL (a postgresql:// URL or a libpq connection string) as yoyo's psycopg 3 URI.

    Every parameter goes in the query, which yoyo hands to psycopg.connect as it is: a socket folder
    as host, a password with any character, sslmode and the like all pass unchanged."""
    try:
        parameters = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise MigrationError('DATABASE_URL is neither a postgresql:// URL nor a libpq connection string '
                             '(not repeated here: it may hold a password)', UNUSABLE) from None
    return 'postgresql+psycopg:///?' + urlencode({key: str(value) for key, value in parameters.items()})


def run(url, product_folder, apply=True, lock_timeout=LOCK_TIMEOUT, on_wait=None, on_applied=None):
    """Apply the pending migrations (or only list them when not `apply`); return a Result.

    `on_wait()` is called when another run holds the lock, `on_applied(id)` after each migration
    is committed. MigrationError when the database cannot be reached, the lock is not had within
    `lock_timeout` seconds, or a migration fails (its id and the database's error in the message,
    the migrations before it applied, it and those after it not)."""
    if not url:
        raise MigrationError('DATABASE_URL is not set: give it the database to migrate, e.g. '
                             'postgresql://user:password@host/name', UNUSABLE)
    migrations = read_migrations(str(folder_of(product_folder)))
    uri = yoyo_uri(url)
    try:
        lock = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as error:
        raise MigrationError(f'cannot connect to the database: {_reason(error)}') from None
    with lock:
        result = Result(waited=_lock(lock, lock_timeout, on_wait))
        try:
            backend = get_backend(uri)
        except psycopg.Error as error:
            raise MigrationError(f'cannot connect to the database: {_reason(error)}') from None
        with backend:
            pending = backend.to_apply(migrations)
            applied = {migration.id for migration in pending}
            result.already = [migration.id for migration in migrations if migration.id not in applied]
            result.pending = [migration.id for migration in pending]
            if not apply:
                return result
            for migration in pending:
                try:
                    backend.apply_one(migration)
                except Exception as error:
                    raise MigrationError(f'{migration.id} failed, and nothing of it was applied: '
                                         f'{_reason(error)}') from error
                result.applied.append(result.pending.pop(0))
                if on_applied:
                    on_applied(migration.id)
        return result


def _lock(connection, timeout, on_wait):
    """Take the advisory lock on `connection`, waiting up to `timeout` s; return the seconds waited."""
    if connection.execute('SELECT pg_try_advisory_lock(%s)', (LOCK,)).fetchone()[0]:
        return 0.0
    if on_wait:
        on_wait()
    started = time.monotonic()
    connection.execute(f"SET lock_timeout = '{int(timeout * 1000)}ms'")
    try:
        connection.execute('SELECT pg_advisory_lock(%s)', (LOCK,))
    except psycopg.errors.LockNotAvailable:
        raise MigrationError(f'another apiphant migrate of this database held its lock over {timeout:g} s: '
                             f'nothing was applied; run it again once that one has ended') from None
    return time.monotonic() - started


def _reason(error):
    """The database's own message, on one line (psycopg's spans several: DETAIL, LINE, a caret)."""
    diagnosis = getattr(error, 'diag', None)
    primary = getattr(diagnosis, 'message_primary', None)
    text = primary or str(error) or type(error).__name__
    return ' '.join(text.split())
