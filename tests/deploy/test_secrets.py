"""A production host, deployed by one run: the product's settings and secrets, and HTTPS with a
certificate from a real ACME server (tls=acme).

product_env and product_secrets (kept in an ansible-vault file) reach every process's os.environ, a
secret never shows, changing a setting alone restarts the ports one at a time under load.

The ACME server is Debian's pebble (Let's Encrypt's test server), started on the lab's bridge
address with pebble-challtestsrv as its DNS, which resolves the site's name to the test host. certbot
gets the certificate over HTTP-01 through nginx; it is served (TLS 1.2 and 1.3 only), and renewed
(forced) by certbot's scheduled command, nginx reloaded by the deploy hook, losing no request.
"""

import fcntl
import json
import os
import pty
import re
import secrets
import select
import shlex
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml
from test_fabric_tasks import Load, logs_of
from test_tls import assert_https_only

from acmeserver import DomainConnection, served_certificate
from conftest import ANSIBLE_PLAYBOOK, PLAYBOOKS, ROOT
from support import wait_for

BIN = Path(sys.executable).parent
# Random, so finding it anywhere can only be a leak of this run's secret.
SECRET = f'vaulted-{secrets.token_hex(12)}'
DOMAIN = 'shop.apiphant.test'


@pytest.fixture(scope='module')
def host(lab):
    return lab.hosts[0]


class Settings:
    """An inventory folder with its group_vars: the settings in the clear, the secret in a vault."""

    def __init__(self, folder, inventory):
        self.folder, self.inventory = folder, inventory
        self.password_file = folder / 'vault-password'
        self.password_file.write_text(f'{secrets.token_hex(16)}\n')
        self.password_file.chmod(0o600)
        group_vars = folder / 'group_vars' / 'api'
        group_vars.mkdir(parents=True)
        vault = group_vars / 'vault.yml'
        vault.write_text(yaml.safe_dump({'vault_database_password': SECRET}))
        encrypted = subprocess.run([BIN / 'ansible-vault', 'encrypt', '--vault-password-file', self.password_file,
                                    vault], capture_output=True, text=True, timeout=60)
        assert encrypted.returncode == 0, encrypted.stderr
        assert SECRET not in vault.read_text()
        self.set_greeting('Hello from the inventory')

    def set_greeting(self, greeting):
        self.greeting = greeting
        (self.folder / 'group_vars' / 'api' / 'settings.yml').write_text(yaml.safe_dump({
            'product_env': {'GREETING': greeting},
            'product_secrets': {'DATABASE_PASSWORD': '{{ vault_database_password }}'},
        }))


@pytest.fixture(scope='module')
def settings(lab, inventory, host, pebble):
    folder = lab.workdir / 'settings'
    folder.mkdir()
    pebble.resolve(DOMAIN, host)
    tls = {'tls': 'acme', 'server_name': DOMAIN, 'tls_acme_email': 'ops@apiphant.test',
           'tls_acme_directory': pebble.directory, 'tls_acme_ca_bundle': pebble.ca}
    return Settings(folder, inventory([host], file='settings/inventory.ini', **tls))


@pytest.fixture(scope='module')
def fab_with_vault(command, ansible_env, settings):
    """`fab ARGS` on the settings inventory, the vault password from Ansible's own variable."""
    env = {**ansible_env, 'FABRIC_INVENTORY': str(settings.inventory),
           'ANSIBLE_VAULT_PASSWORD_FILE': str(settings.password_file)}
    return lambda *args: command([BIN / 'fab', *args], ROOT / 'deploy', env)


@pytest.fixture(scope='module')
def deployed(command, ansible_env, settings, pebble):
    """site.yml at Ansible's highest verbosity, the vault password from a file: settings, secrets
    and the ACME server's certificate in one run."""
    run = command([ANSIBLE_PLAYBOOK, '-vvv', '-i', settings.inventory, '--vault-password-file',
                   settings.password_file, 'site.yml'], PLAYBOOKS, ansible_env)
    assert run.returncode == 0, run.output + pebble.output()
    return run


def read_settings(host, pebble_root):
    connection = DomainConnection(host, pebble_root, DOMAIN)
    try:
        connection.request('POST', '/api/v0/settings/read', '{}')
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def test_the_product_reads_its_setting_and_gets_its_secret(deployed, settings, host, pebble_root):
    assert read_settings(host, pebble_root) == (200, {'greeting': settings.greeting, 'database_password': 'set'})


def test_every_api_and_background_process_has_them_all_in_its_environment(deployed, settings, host):
    pids = host.ssh('pgrep', '-u', 'myproduct', '-f', 'bin/apiphant').stdout.split()
    commands = host.ssh('ps', '-o', 'args=', '-p', ','.join(pids)).stdout
    assert 'apiphant-background' in commands and commands.count('venv/bin/apiphant ') >= 1, commands
    for pid in pids:
        environment = host.ssh('cat', f'/proc/{pid}/environ').stdout.split('\0')
        assert f'GREETING={settings.greeting}' in environment
        assert f'DATABASE_PASSWORD={SECRET}' in environment


def test_ansible_at_vvv_never_shows_the_secret(deployed):
    assert 'DATABASE_PASSWORD' in deployed.output or 'product_secrets' in deployed.output  # it ran
    assert SECRET not in deployed.output


def test_the_acme_servers_certificate_is_served_https_only_refusing_tls_1_1(deployed, host, pebble_root):
    assert_https_only(host, pebble_root, DOMAIN)


def test_renewal_is_scheduled_and_a_forced_one_is_served_after_a_reload_losing_no_request(deployed, host, pebble_root):
    renewal = host.ssh('cat', '/etc/letsencrypt/renewal/myproduct.conf').stdout
    assert 'renew_hook = /usr/sbin/nginx -t -q && /usr/sbin/nginx -s reload' in renewal
    schedule = host.ssh('cat', '/etc/cron.d/certbot').stdout
    assert 'certbot -q renew' in schedule and 'REQUESTS_CA_BUNDLE=' in schedule, schedule
    assert host.ssh('pgrep', '-x', 'cron', check=False).returncode == 0  # cron runs the job
    before = served_certificate(host, pebble_root, DOMAIN)
    load = Load(host, connect=lambda: DomainConnection(host, pebble_root, DOMAIN))
    load.start()
    try:
        # The scheduled command, in the scheduled job's environment (as cron reads it), told to renew now.
        renewed = host.ssh('set -a; eval "$(grep ^REQUESTS_CA_BUNDLE= /etc/cron.d/certbot)"; '
                           'certbot -q renew --force-renewal --no-random-sleep-on-renew', check=False)
    finally:
        load.wait_for_more(50)
        load.stop()
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert load.failures == [], logs_of(host)
    assert len(load.answers) > 50
    # nginx reloaded: it serves the new certificate (its new workers, moments after the reload).
    wait_for(lambda: served_certificate(host, pebble_root, DOMAIN), until=before.__ne__)


def test_no_other_user_can_read_the_secret_and_no_log_holds_it(deployed, host):
    # The secret reaches grep in halves on stdin, so no command line of the search holds it whole.
    half = len(SECRET) // 2
    search = (f"printf '%s%s\\n' {SECRET[:half]} {SECRET[half:]} | grep -rlsF -D skip -f - "
              f"/etc /opt /var /tmp /run /root /home /srv /proc/[0-9]*/environ /proc/[0-9]*/cmdline")
    # As root the search finds the file the processes load and their environments, nothing else.
    found_by_root = host.ssh(search, check=False).stdout.split()
    assert '/opt/myproduct/environment' in found_by_root
    assert all(path == '/opt/myproduct/environment' or re.fullmatch(r'/proc/\d+/environ', path)
               for path in found_by_root), found_by_root
    as_nobody = host.ssh('sudo', '-u', 'nobody', 'sh', '-c', shlex.quote(search), check=False)
    assert as_nobody.stdout == '', as_nobody.stdout
    listing = host.ssh('stat', '-c', "'%U:%G %a'", '/opt/myproduct/environment').stdout.strip()
    assert listing == 'root:myproduct 640'


def test_fab_status_and_logs_never_show_the_secret(deployed, fab_with_vault, host, pebble_root):
    read_settings(host, pebble_root)  # a request for the logs to show
    for task in ('status', 'logs'):
        run = fab_with_vault(task, host.address)
        assert run.returncode == 0, run.output
        assert 'settings/read 200' in run.output
        assert SECRET not in run.output


def test_changing_a_setting_alone_restarts_the_ports_one_at_a_time_losing_no_request(
        deployed, settings, fab_with_vault, host, pebble_root):
    settings.set_greeting(f'Hello, release {secrets.token_hex(4)}')
    release = host.ssh('readlink', '/opt/myproduct/current').stdout
    load = Load(host, connect=lambda: DomainConnection(host, pebble_root, DOMAIN))
    load.start()
    try:
        run = fab_with_vault('deploy', host.address)
    finally:
        load.wait_for_more(50)
        load.stop()
    assert run.returncode == 0, run.output
    assert run.output.index('Restart myproduct-api-8001') < run.output.index(
        'Restart myproduct-api-8002')
    assert SECRET not in run.output
    assert load.failures == [], logs_of(host)
    assert len(load.answers) > 100
    assert read_settings(host, pebble_root) == (200, {'greeting': settings.greeting, 'database_password': 'set'})
    assert host.ssh('readlink', '/opt/myproduct/current').stdout == release  # settings alone


def in_terminal(command, cwd, env, answer, timeout=600):
    """Run a command in a terminal of its own, as at a user's shell, typing `answer` at each password
    prompt; return (exit status, output, number of prompts)."""
    leader, follower = pty.openpty()

    def own_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen([str(part) for part in command], cwd=cwd, env=env, stdin=follower,
                               stdout=follower, stderr=follower, preexec_fn=own_terminal)
    os.close(follower)
    output, prompts, deadline = b'', 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and select.select([leader], [], [], deadline - time.monotonic())[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command has exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if output.count(b'Vault password:') > prompts:
                prompts += 1
                os.write(leader, answer.encode() + b'\n')
    finally:
        os.close(leader)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:  # still running at the deadline: the test fails below
            process.kill()
            process.wait()
    return process.returncode, output.decode(errors='replace'), prompts


# certbot runs at each deploy too (the certificate is not due): it changes nothing either.
def test_fab_asks_for_the_vault_password_once_and_a_second_deploy_changes_nothing(
        deployed, settings, ansible_env, host):
    env = {**ansible_env, 'FABRIC_INVENTORY': str(settings.inventory)}
    password = settings.password_file.read_text().strip()
    status, output, prompts = in_terminal([BIN / 'fab', 'deploy', host.address, '--ask-vault-pass'],
                                          ROOT / 'deploy', env, password)
    assert status == 0, output
    assert prompts == 1, output
    assert password not in output and SECRET not in output
    recap = re.search(rf'^{re.escape(host.name)}\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0', output, re.M)
    assert recap and recap.group(1) == '0', output


@pytest.mark.parametrize('variable, value, message', [
    ('product_env', '{"BAD-NAME": "x"}', 'BAD-NAME not an environment variable name'),
    ('product_secrets', '["not", "a", "dict"]', "argument 'product_secrets' is of type list"),
])
def test_a_bad_setting_fails_naming_it(deployed, playbook, host, variable, value, message):
    run = playbook('site.yml', '-e', f'{{"{variable}": {value}}}')
    assert run.returncode != 0
    assert message in ' '.join(run.output.split()).replace("''", "'")
    assert run.recap()[host.name]['changed'] == 0
