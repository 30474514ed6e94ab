"""A PostgreSQL server installed by hand on a lab host that the roles never touch: the "existing
(managed) database" a product reaches through DATABASE_URL in product_secrets.

Debian's package, listening on the host's lab address, scram-sha-256 for the lab's subnet only, one
database owned by one role. The password is made here and never leaves this machine but inside the
URL: the host gets only its SCRAM verifier (what PostgreSQL stores anyway), so no command, script,
log or error message on the host can show it.
"""

import base64
import hashlib
import hmac
import os
import secrets
import shlex
import subprocess

import testhost

PORT = 5432
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default

# Run as root on the host, the verifier on stdin. Debian 12's test hosts run no init system: the
# cluster the package made is (re)started with pg_ctlcluster, as its init script would.
INSTALL = '''
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends postgresql >/dev/null
version=$(ls /etc/postgresql)
conf=/etc/postgresql/$version/main
printf "listen_addresses = '%s'\\n" "$ADDRESS" > "$conf/conf.d/lab.conf"
printf 'host %s %s %s scram-sha-256\\n' "$NAME" "$NAME" "$SUBNET" >> "$conf/pg_hba.conf"
install -d -o postgres -g postgres -m 2775 /run/postgresql
pg_ctlcluster "$version" main stop 2>/dev/null || true
pg_ctlcluster "$version" main start
verifier=$(cat)
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -v name="$NAME" -v hash="$verifier" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'hash';
CREATE DATABASE :"name" OWNER :"name";
SQL
'''


def scram_verifier(password, salt=None):
    """PostgreSQL's stored form of `password` (SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey, as
    RFC 5803 and its CREATE ROLE ... PASSWORD take it): the server checks logins against it, and
    the password cannot be read back from it."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac('sha256', password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b'Client Key', 'sha256').digest()
    server_key = hmac.new(salted, b'Server Key', 'sha256').digest()
    encoded = [base64.b64encode(part).decode() for part in (salt, hashlib.sha256(client_key).digest(), server_key)]
    return f'SCRAM-SHA-256${SCRAM_ITERATIONS}:{encoded[0]}${encoded[1]}:{encoded[2]}'


class Database:
    """The database `name`, owned by the role `name`, on `host` (a testhost.Host). Its repr names
    no password: a failing test shows it, not the secret."""

    def __init__(self, host, name='shop'):
        self.host, self.name = host, name
        self.password = secrets.token_urlsafe(24)  # URL-safe: no escaping in the URL
        subnet = f'{testhost.SUBNET}.0/24'
        script = f'ADDRESS={host.address} NAME={name} SUBNET={subnet}\n{INSTALL}'
        result = subprocess.run(['ssh', *testhost.ssh_options(host.key), f'root@{host.address}',
                                 f'sh -c {shlex.quote(script)}'], input=scram_verifier(self.password),
                                capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise RuntimeError(f'installing PostgreSQL on {host.name} failed ({result.returncode}): '
                               f'{result.stderr.strip()[-2000:]}')
        testhost.wait_for_port(host.address, PORT, 30)

    @property
    def url(self):
        return f'postgresql://{self.name}:{self.password}@{self.host.address}:{PORT}/{self.name}'

    def __repr__(self):
        return f'<Database {self.name} on {self.host.name}>'
