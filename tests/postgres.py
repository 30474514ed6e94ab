"""A throwaway PostgreSQL cluster for the tests: Debian's initdb and pg_ctl, in a temporary folder.

The server runs as an unprivileged user (PostgreSQL refuses root): the test's own user, or, when the
tests run as root, the `postgres` user Debian's package creates. It listens on a free loopback port
and on a socket in its folder only, and takes a password (a random one, in the URL), so another
local user cannot use it. `python3 tests/postgres.py` starts one and prints its URL until Ctrl-C.
"""

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

USER = 'apiphant'
START_TIMEOUT = 60


def _bin():
    """The newest installed server's binaries (Debian keeps them out of PATH)."""
    versions = sorted(Path('/usr/lib/postgresql').glob('*/bin/initdb'), key=lambda path: int(path.parts[-3]))
    if not versions:
        raise RuntimeError("initdb not found under /usr/lib/postgresql: install Debian's postgresql "
                           '(tests/run installs what tests/apt-packages.txt lists)')
    return versions[-1].parent


def _free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class Cluster:
    """One PostgreSQL server; `url` reaches its `postgres` database as the superuser `apiphant`."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix='apiphant-postgres-'))
        self.data = self.folder / 'data'
        self.password = secrets.token_hex(16)
        self.port = None
        self.account = pwd.getpwnam('postgres') if os.geteuid() == 0 else None
        if self.account is not None:
            os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)

    @property
    def url(self):
        return f'postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/postgres'

    def _run(self, *command):
        run_as = {} if self.account is None else {'user': self.account.pw_uid, 'group': self.account.pw_gid,
                                                   'extra_groups': []}
        result = subprocess.run([str(_bin() / command[0]), *command[1:]], cwd=self.folder, capture_output=True,
                                text=True, timeout=START_TIMEOUT, **run_as)
        if result.returncode:
            raise RuntimeError(f'{command[0]} failed: {result.stdout}{result.stderr}')

    def start(self):
        secret = self.folder / 'password'
        secret.write_text(self.password)
        if self.account is not None:
            os.chown(secret, self.account.pw_uid, self.account.pw_gid)
        self._run('initdb', '-D', str(self.data), '-U', USER, '--auth=scram-sha-256', f'--pwfile={secret}',
                  '--no-sync', '-E', 'UTF8', '--locale=C')
        secret.unlink()
        self.port = _free_port()
        settings = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='{self.folder}' "
                    '-c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off')
        self._run('pg_ctl', '-D', str(self.data), '-l', str(self.folder / 'log'), '-w', '-t', str(START_TIMEOUT),
                  '-o', settings, 'start')
        return self

    def stop(self):
        try:
            if (self.data / 'postmaster.pid').exists():
                self._run('pg_ctl', '-D', str(self.data), '-m', 'fast', '-w', 'stop')
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def pids(self):
        """The server's process, the postmaster (its backends are its children), once it runs."""
        try:
            postmaster = int((self.data / 'postmaster.pid').read_text().split('\n', 1)[0])
        except (OSError, ValueError):
            return []
        return [postmaster]

    def query(self, sql, *params):
        """All rows of one statement, on a connection of its own (closed at once)."""
        with psycopg.connect(self.url, autocommit=True) as connection:
            cursor = connection.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info):
        self.stop()


if __name__ == '__main__':
    with Cluster() as cluster:
        print(cluster.url, flush=True)
        try:
            subprocess.run(['sleep', 'infinity'])
        except KeyboardInterrupt:
            pass
