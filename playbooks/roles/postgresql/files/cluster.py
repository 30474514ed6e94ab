"""The product's PostgreSQL cluster as the postgresql role sees it; run by the role as root on the
[db] host, each command talking to the server through psql as the postgres user (peer
authentication on the local socket).

    cluster.py password FILE                generate the product's password into FILE, once
    cluster.py check VERSION                the errors PostgreSQL finds in its configuration files
    cluster.py pending                      the settings that wait for a restart
    cluster.py role FILE USER DATABASE LOCALE   the product's role and database

psql reaches the running server through its socket, whichever port it runs on (the new files may
name another): the one socket in /var/run/postgresql.

`password` writes a random password (48 hex digits: nothing in it needs quoting in a URL or a shell)
into FILE, root's and 0600, unless FILE holds one already; it prints `created` when it did.

`check` has PostgreSQL read the files on disk (postgres -C, pg_hba_file_rules), not what the server
runs: new files are judged before a reload or restart applies them. It prints one line per
error and exits 1 if there is any.

`role` creates the role USER (LOGIN, nothing more) with the password FILE holds, or sets that
password when the role has another, and the database DATABASE owned by USER (UTF8, LOCALE, from
template0). The password never reaches PostgreSQL, a command line or a log: the role gets a
SCRAM-SHA-256 secret computed here, as libpq's PQencryptPasswordConn computes it, on psql's standard
input; and whether the role has that password already is found by checking the stored secret
against it, as the server checks a client's proof. Prints {"changed": [what it did]}.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SOCKET = '/var/run/postgresql'


class ClusterError(Exception):
    """A step that failed; the message says which and why."""


def running_port():
    """The port of the one server whose socket is in SOCKET."""
    ports = sorted(path.name.rsplit('.', 1)[-1] for path in Path(SOCKET).glob('.s.PGSQL.*[0-9]'))
    if len(ports) != 1:
        raise ClusterError(f'expected the socket of one running PostgreSQL in {SOCKET}, found '
                           f'{len(ports)} ({", ".join(ports) or "is PostgreSQL running?"})')
    return ports[0]


def psql(sql, database='postgres'):
    """Run SQL (on standard input) as the postgres user; its output, unaligned, one row a line."""
    port = running_port()
    result = subprocess.run(
        ['runuser', '-u', 'postgres', '--', 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
         '-h', SOCKET, '-p', str(port), '-d', database],
        input=sql, capture_output=True, text=True, timeout=120, cwd='/')
    if result.returncode:
        raise ClusterError(f'psql failed ({result.returncode}): {result.stderr.strip()}')
    return result.stdout


def literal(value):
    return "'" + value.replace("'", "''") + "'"


def identifier(value):
    return '"' + value.replace('"', '""') + '"'


def _keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac('sha256', password.encode(), salt, iterations)
    client_key = hmac.new(salted, b'Client Key', hashlib.sha256).digest()
    server_key = hmac.new(salted, b'Server Key', hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


def _b64(raw):
    return base64.b64encode(raw).decode()


def scram_secret(password, salt=None, iterations=ITERATIONS):
    """The SCRAM-SHA-256 secret PostgreSQL stores for `password` (printable ASCII, which SASLprep
    leaves as it is): SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY, base64."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    stored, server = _keys(password, salt, iterations)
    return f'SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}'


def scram_matches(secret, password):
    """Whether the stored `secret` (pg_authid.rolpassword, or None) is one of `password`."""
    try:
        method, rest = secret.split('$', 1)
        head, keys = rest.split('$')
        iterations, salt = head.split(':')
        stored, server = keys.split(':')
        if method != 'SCRAM-SHA-256':
            return False
        expected = _keys(password, base64.b64decode(salt), int(iterations))
        return (hmac.compare_digest(expected[0], base64.b64decode(stored))
                and hmac.compare_digest(expected[1], base64.b64decode(server)))
    except (AttributeError, ValueError):  # no password, an MD5 one, or something else
        return False


def read_password(path):
    password = Path(path).read_text().strip()
    if not password:
        raise ClusterError(f'{path} holds no password')
    return password


def generate_password(path):
    path = Path(path)
    if path.exists() and path.read_text().strip():
        return ''
    new = path.with_name(path.name + '.new')
    descriptor = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, 'w') as file:
        file.write(secrets.token_hex(24) + '\n')
    os.replace(new, path)
    return 'created'


def config_errors(version):
    """postgres -C reads postgresql.conf and its conf.d as a start would, without starting (a
    running server is left alone), and fails on any setting it refuses; pg_hba_file_rules reads
    pg_hba.conf. (pg_file_settings cannot tell a refused value from one that waits for a restart.)"""
    config = f'/etc/postgresql/{version}/main/postgresql.conf'
    result = subprocess.run(['runuser', '-u', 'postgres', '--', f'/usr/lib/postgresql/{version}/bin/postgres',
                             '-C', 'data_directory', '-c', f'config_file={config}'],
                            capture_output=True, text=True, timeout=120, cwd='/')
    errors = [f'{config} and conf.d: {line}' for line in result.stderr.splitlines() if line and result.returncode]
    rows = psql('SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL;\n').splitlines()
    return errors + [f'pg_hba.conf:{line}: {error}' for line, error in (row.split('|', 1) for row in rows if row)]


def pending_restart():
    return psql('SELECT name FROM pg_settings WHERE pending_restart ORDER BY name;\n').split()


def ensure_role(password_file, user, database, locale):
    password = read_password(password_file)
    changed = []
    found = psql(f'SELECT rolpassword FROM pg_authid WHERE rolname = {literal(user)};\n').splitlines()
    if not found:
        psql(f'CREATE ROLE {identifier(user)} LOGIN PASSWORD {literal(scram_secret(password))};\n')
        changed.append(f'created the role {user}')
    elif not scram_matches(found[0], password):
        psql(f'ALTER ROLE {identifier(user)} LOGIN PASSWORD {literal(scram_secret(password))};\n')
        changed.append(f'set the password of the role {user}')
    owner = psql(f'SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {literal(database)};\n').strip()
    if not owner:
        psql(f"CREATE DATABASE {identifier(database)} OWNER {identifier(user)} ENCODING 'UTF8' "
             f'LOCALE {literal(locale)} TEMPLATE template0;\n')
        changed.append(f'created the database {database}')
    elif owner != user:
        psql(f'ALTER DATABASE {identifier(database)} OWNER TO {identifier(user)};\n')
        changed.append(f'gave the database {database} to {user} (it was {owner}\'s)')
    return changed


def main(argv):
    command, *args = argv
    try:
        if command == 'password':
            print(generate_password(*args))
        elif command == 'check':
            errors = config_errors(*args)
            print('\n'.join(errors))
            return 1 if errors else 0
        elif command == 'pending':
            print('\n'.join(pending_restart(*args)))
        elif command == 'role':
            print(json.dumps({'changed': ensure_role(*args)}))
        else:
            raise ClusterError(f'unknown command {command}')
    except ClusterError as error:
        print(f'cluster.py {command}: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
