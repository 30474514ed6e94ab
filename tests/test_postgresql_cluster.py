"""The postgresql role's files/cluster.py without a test host: the SCRAM-SHA-256 secret it gives the
product's role is one a real PostgreSQL accepts the password for, its check of a stored secret tells
the password apart, and the password it generates is made once, root's alone."""

import importlib.util
import secrets
import stat
import string

import psycopg
import pytest

from support import ROOT

SCRIPT = ROOT / 'playbooks' / 'roles' / 'postgresql' / 'files' / 'cluster.py'
spec = importlib.util.spec_from_file_location('cluster', SCRIPT)
cluster = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cluster)


@pytest.fixture
def role(postgres):
    name = f'product_{secrets.token_hex(4)}'
    yield name
    postgres.query(f'DROP ROLE IF EXISTS {name}')


def connect_as(postgres, role, password):
    url = f'postgresql://{role}:{password}@127.0.0.1:{postgres.port}/postgres'
    with psycopg.connect(url, connect_timeout=10) as connection:
        return connection.execute('SELECT current_user').fetchone()[0]


def test_postgresql_takes_the_password_of_the_secret_computed_here(postgres, role):
    password = secrets.token_hex(24)
    secret = cluster.scram_secret(password)
    postgres.query(f'CREATE ROLE {role} LOGIN PASSWORD {cluster.literal(secret)}')
    assert postgres.query('SELECT rolpassword FROM pg_authid WHERE rolname = %s', role) == [(secret,)]
    assert connect_as(postgres, role, password) == role
    with pytest.raises(psycopg.OperationalError, match='password authentication failed'):
        connect_as(postgres, role, password + 'x')


def test_a_stored_secret_is_recognised_as_its_passwords_alone(postgres, role):
    password = ' '.join(('printable', 'ASCII:', string.punctuation))  # (quotes and backslashes included)
    postgres.query(f"CREATE ROLE {role} LOGIN PASSWORD {cluster.literal(password)}")  # hashed by the server
    (stored,), = postgres.query('SELECT rolpassword FROM pg_authid WHERE rolname = %s', role)
    assert stored.startswith('SCRAM-SHA-256$')
    assert cluster.scram_matches(stored, password)
    assert not cluster.scram_matches(stored, password[:-1])
    assert not cluster.scram_matches(None, password)
    assert not cluster.scram_matches('md5' + '0' * 32, password)


def test_the_password_is_generated_once_readable_by_its_owner_alone(tmp_path):
    path = tmp_path / 'shop-database.password'
    assert cluster.generate_password(path) == 'created'
    first = path.read_text()
    assert len(first.strip()) == 48 and set(first.strip()) <= set('0123456789abcdef')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cluster.generate_password(path) == ''
    assert path.read_text() == first


def test_names_and_values_are_quoted_for_sql():
    assert cluster.literal("it's") == "'it''s'"
    assert cluster.identifier('a"b') == '"a""b"'
