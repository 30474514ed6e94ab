"""Day-to-day deploy tasks (Fabric 3). State changes live in the playbooks of the Ansible collection
apiphant.deploy; these tasks drive them host by host and add what Ansible is clumsy at: status,
logs, fast failure, one line per step.

    fab deploy HOST          the site playbook on HOST: an inventory host's name or address
                             (user@host:port works), or a group: `fab deploy all` rolls out host by
                             host, the API hosts first, then the load balancers (in inventory order);
                             --full runs every role, even those whose stamp proves them unchanged
    fab -H HOST deploy       the same with Fabric's host flag; several hosts: -H a,b
    fab rollback HOST        back to the previous release, one port at a time
    fab restart HOST         rolling restart, one port at a time
    fab unlock HOST          break the deploy lock a killed run (or one on another machine) left,
                             saying whose it was
    fab history HOST         the audit trail: every deploy, rollback, restart and unlock
    fab migrations HOST      the database migrations of the current release, applied and pending
    fab status HOST          releases (current marked), supervisor programs, last log lines,
                             the last lines of the audit trail, the certificate's expiry date
                             (a warning under 14 days); on a [db] host: the last backup's age and
                             the WAL archive's lag, with a warning when either is too old
    fab backup HOST          back up the [db] host's database now, on its [backup] host
    fab restore HOST         restore the [db] host's database from the repository: to a point in
                             time (--time '2026-12-06 04:30:00+00:00'), or to the newest WAL archived
    fab logs HOST            the API, background and nginx logs (--follow to keep reading);
                             --request ID: every line of that request, in every port's log

Each task takes --ask-vault-pass: it asks once for the password of the inventory's ansible-vault
files (the product's secrets) and hands it to every Ansible command it runs on stdin. Without it,
Ansible's own ANSIBLE_VAULT_PASSWORD_FILE (or vault_password_file in ansible.cfg) applies.

Configuration (fabric.yaml beside the fabfile, or FABRIC_INVENTORY, FABRIC_PLAYBOOKS), paths
relative to the fabfile's folder:

    inventory   the Ansible inventory: the hosts and the product (default inventory.ini), so
                nothing here knows the product
    playbooks   the installed collection whose site, rollback and restart playbooks run
                (default apiphant.deploy), or a folder holding site.yml, rollback.yml and
                restart.yml, such as a checkout's playbooks/ (a value with a /)
"""

import getpass
import io
import json
import os
import re
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from shlex import quote
from time import monotonic, sleep

from cryptography import x509
from fabric import Connection, task
from invoke.exceptions import Exit
from paramiko import RejectPolicy, SSHException

CONNECT_TIMEOUT = 10
CERTIFICATE_WARN_DAYS = 14
# When fab status warns about backups, unless the inventory sets backup_warn_hours and
# archive_warn_seconds: a day's incremental backup with two hours to spare, and WAL waiting for the
# repository ten times the default archive_timeout.
BACKUP_WARN_HOURS = 26
ARCHIVE_WARN_SECONDS = 600
PROMOTE_TIMEOUT = 600  # seconds a restored database may replay WAL before it is promoted
# Seconds fab migrations waits for a deploy that is migrating the same database (its advisory lock).
MIGRATIONS_LOCK_TIMEOUT = 10
REQUEST_ID = re.compile(r'[A-Za-z0-9._-]{1,128}')  # what nginx and apiphant pass on as an X-Request-ID
# The configuration a fabfile gets from namespace(), before its fabric.yaml and the environment.
DEFAULTS = {'inventory': 'inventory.ini', 'playbooks': 'apiphant.deploy'}


def ansible_tool(name):
    """The Ansible command installed beside this Python (a virtualenv), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise Exit(f'{name} not found: pip install "apiphant[deploy]"')
    return found


def configured_path(c, value):
    """A path from the configuration: relative ones are relative to the fabfile's folder."""
    return (Path(c.config.deploy_folder) / value).resolve()


def inventory_path(c):
    path = configured_path(c, c.config.inventory)
    if not path.exists():
        raise Exit(f'inventory {path} does not exist: write your hosts there, or name yours with '
                   f'inventory: in fabric.yaml or FABRIC_INVENTORY')
    return path


def playbook_source(c, name):
    """Where to run ansible-playbook and what to give it: a playbook of the installed collection
    (apiphant.deploy.site), or NAME.yml in the playbooks folder."""
    source = c.config.playbooks
    if '/' not in source:
        return Path(c.config.deploy_folder), f'{source}.{name}'
    folder = configured_path(c, source)
    if not (folder / f'{name}.yml').is_file():
        raise Exit(f'no {name}.yml in {folder} (playbooks: in fabric.yaml or FABRIC_PLAYBOOKS)')
    return folder, f'{name}.yml'


def local(c, command, **options):
    """Run a command on this machine, whether the task got a Connection (-H) or a plain Context."""
    return (c.local if isinstance(c, Connection) else c.run)(command, **options)


def step(host, text):
    print(f'[{host}] {text}', flush=True)


def ask_vault_password(c, ask):
    """With --ask-vault-pass, ask once for the vault password every Ansible command of the task gets."""
    if ask:
        c.config.vault_password = getpass.getpass('Vault password: ')


def vault(c):
    """(option, run() keywords) handing Ansible the vault password asked for, on stdin so no file or
    command line holds it; nothing when none was asked for."""
    password = c.config.get('vault_password')
    if password is None:
        return '', {}
    return ' --vault-password-file /dev/stdin', {'in_stream': io.StringIO(password + '\n')}


def inventory(c):
    """The inventory as Ansible resolves it: {group: {'hosts': [...]}, '_meta': {'hostvars': ...}}."""
    option, stdin = vault(c)
    result = local(c, f'{quote(ansible_tool("ansible-inventory"))} -i {quote(str(inventory_path(c)))} --list'
                      f'{option}', hide=True, warn=True, **stdin)
    if result.failed:
        raise Exit(f'cannot read the inventory {inventory_path(c)}: {result.stderr.strip()}')
    return json.loads(result.stdout)


def targets(c, host):
    """The hosts a task acts on: HOST (or Fabric's -H host), or every host of the group HOST names."""
    if isinstance(c, Connection):  # fab -H: put back the user and port given with it, if any
        host = c.original_host
        if c.user != c.config.user:
            host = f'{c.user}@{host}'
        if c.port != c.config.port:
            host = f'{host}:{c.port}'
    listing = inventory(c)
    hostvars = listing.get('_meta', {}).get('hostvars', {})
    if host in listing:
        return [Target(name, hostvars.get(name, {}), config=c.config) for name in group_hosts(listing, host)]
    wanted = Connection(host)
    for name, variables in hostvars.items():
        if wanted.host in (name, variables.get('ansible_host')):
            return [Target(name, variables, host, c.config)]
    raise Exit(f'{host} is neither a host nor a group of {inventory_path(c)}')


def group_hosts(listing, group):
    """A group's hosts, its children's included, in inventory order, each once."""
    members = listing.get(group, {})  # an empty group (like 'ungrouped') may not be listed at all
    hosts = list(members.get('hosts', []))
    for child in members.get('children', []):
        hosts += [host for host in group_hosts(listing, child) if host not in hosts]
    return hosts


class Target:
    """One API host: its inventory name and variables, and how to reach it over SSH."""

    def __init__(self, name, variables, spec='', config=None):
        self.name = name
        self.variables = variables
        self.product = variables.get('product_name', '')
        self.home = variables.get('product_home', f'/opt/{self.product}')
        address = variables.get('ansible_host', name)
        given = Connection(spec) if spec else None  # user@host:port, as on the command line
        user = given.user if '@' in spec else variables.get('ansible_user')
        port = given.port if re.search(r':\d+$', spec) else variables.get('ansible_port', 22)
        key = variables.get('ansible_ssh_private_key_file')
        self.overrides = {'ansible_user': user, 'ansible_port': port} if given else {}
        self.connection = Connection(address, user=user, port=int(port), connect_timeout=CONNECT_TIMEOUT,
                                     connect_kwargs={'key_filename': [key]} if key else {}, config=config)
        check_host_keys(self.connection)

    def as_root(self, command):
        """The command run as root: as is for root, through sudo for a sudoer ansible_user (as Ansible's
        become), never asking for a password."""
        return command if self.connection.user == 'root' else f'sudo -n sh -c {quote(command)}'

    def run(self, command, **options):
        return self.connection.run(self.as_root(command), hide=True, warn=True, in_stream=False, **options)


def check_host_keys(connection):
    """Check the host's SSH key as ssh and Ansible do, against ~/.ssh/known_hosts, the SSH config's
    UserKnownHostsFile and /etc/ssh/ssh_known_hosts: an unknown key is refused (Fabric alone would
    accept any). ANSIBLE_HOST_KEY_CHECKING=False, Ansible's own switch, turns the check off for both."""
    if os.environ.get('ANSIBLE_HOST_KEY_CHECKING', 'true').lower() in ('false', 'no', 'off', '0'):
        return
    files = connection.ssh_config.get('userknownhostsfile', '~/.ssh/known_hosts').split()
    for path in [*files, '/etc/ssh/ssh_known_hosts']:
        path = os.path.expanduser(path)
        if os.path.isfile(path):
            connection.client.load_system_host_keys(path)
    connection.client.set_missing_host_key_policy(RejectPolicy())


def reach(target):
    """Fail fast, naming the host, when it cannot be reached over SSH, its host key is unknown, or
    its user cannot act as root."""
    step(target.name, 'checking SSH')
    where = f'{target.connection.host}:{target.connection.port}'
    try:
        result = target.run('true')
    except SSHException as error:
        if 'not found in known_hosts' not in str(error):
            raise Exit(f'[{target.name}] cannot reach {where} over SSH: {error}') from None
        user = f'{target.connection.user}@' if target.connection.user else ''
        raise Exit(f'[{target.name}] the SSH host key of {where} is unknown, so it is refused. Check its '
                   f'fingerprint with whoever runs the host, then accept it with: ssh -p '
                   f'{target.connection.port} {user}{target.connection.host} true') from None
    except Exception as error:  # socket errors and the like: all mean "cannot reach"
        raise Exit(f'[{target.name}] cannot reach {where} over SSH: {error}') from None
    if result.failed:
        raise Exit(f'[{target.name}] {target.connection.user} on {where} cannot act as root without a '
                   f'password (sudo -n): {result.stderr.strip()}')


def playbook(c, target, name, what, variables=None):
    """Run one playbook limited to this host, with extra `variables`; on failure name the host and
    the task that failed."""
    folder, playbook_name = playbook_source(c, name)
    step(target.name, f'{what}: ansible-playbook {playbook_name}')
    given = {key: value for key, value in {**target.overrides, **(variables or {})}.items() if value}
    extra = f'-e {quote(json.dumps(given))} ' if given else ''
    option, stdin = vault(c)
    result = local(c, f'cd {quote(str(folder))} && {quote(ansible_tool("ansible-playbook"))} '
                      f'-i {quote(str(inventory_path(c)))} --limit {quote(target.name)} {extra}{option} '
                      f'{quote(playbook_name)}', warn=True, pty=False, **stdin)
    if f'the playbook: {playbook_name} could not be found' in result.stderr:
        raise Exit(f'[{target.name}] the Ansible collection {c.config.playbooks} is not installed: '
                   f'ansible-galaxy collection install -r requirements.yml (or from the release\'s '
                   f'tarball, ./apiphant-deploy-VERSION.tar.gz)')
    if result.failed:
        task = failed_task(result.stdout)
        failed_at = f' at task "{task}"' if task else ''
        raise Exit(f'[{target.name}] {what} failed{failed_at} (ansible-playbook {playbook_name}, exit '
                   f'{result.exited}); see the output above')
    step(target.name, f'{what}: done')


def failed_task(output):
    """The task that failed in ansible-playbook's output: the last one begun before the first failure,
    not the ones that ran after it (releasing the deploy lock)."""
    failure = re.search(r'^(?:fatal|failed): \[', output, re.M)
    tasks = re.findall(r'^(?:TASK|RUNNING HANDLER) \[(.+?)\]', output[:failure.start()] if failure else output, re.M)
    return tasks[-1] if tasks else ''


# Invoke makes a parameter positional only while it has no default, and then requires it; with
# Fabric's -H the host comes from there instead, so HOST is positional only when -H is not given;
# nor when help is asked for (`fab deploy --help`, `fab deploy -h`), which HOST would swallow.
HOSTS_FLAG = any(arg in ('-H', '--hosts') or arg.startswith(('--hosts=', '-H')) for arg in sys.argv[1:])
HELP_FLAG = any(arg in ('-h', '--help') for arg in sys.argv[1:])
# What `fab TASK --help` says of each option, as Kamal's help does.
OPTION_HELP = {
    'host': 'an inventory host, its address (user@host:port works) or a group, whose hosts go one '
            'after another; or Fabric\'s -H HOST before the task',
    'ask-vault-pass': 'ask once for the password of the inventory\'s ansible-vault files (the '
                      'secrets) and hand it to every Ansible command on stdin',
    'full': 'run every role, even those whose stamp proves their inputs unchanged since they converged',
    'lines': 'how many last lines of each log (default 50)',
    'follow': 'keep reading the logs as they grow (Ctrl-C ends)',
    'request': 'show every line of the request with this X-Request-ID, in every log, rotated ones included',
    'backup-type': 'incr (the default: what changed since the last backup), diff (since the last full '
                   'one) or full',
    'time': "the point in time to restore to, with its time zone: '2026-12-06 04:30:00+00:00' (default: "
            "the newest WAL in the repository)",
}


def host_task(function):
    """A task acting on HOST, with its options described and no short flags (-h is help's)."""
    names = function.__code__.co_varnames[1:function.__code__.co_argcount]
    return task(positional=[] if HOSTS_FLAG or HELP_FLAG else ['host'], auto_shortflags=False,
                help={name: OPTION_HELP[name.replace('_', '-')] for name in names})(function)


def for_each(c, host, name, what, ask_vault_pass, variables=None):
    ask_vault_password(c, ask_vault_pass)
    for target in targets(c, host):
        reach(target)
        playbook(c, target, name, what, variables)


@host_task
def deploy(c, host=None, ask_vault_pass=False, full=False):
    """Provision HOST and release the product there.

    A group deploys its hosts one after another, the API hosts first, then the load balancers.
    Roles whose stamp proves their inputs unchanged are skipped (--full runs them all); every port
    not running the release is restarted one at a time, each answering GET /up before the next."""
    for_each(c, host, 'site', 'deploy', ask_vault_pass, {'apiphant_full': 'true' if full else ''})


@host_task
def rollback(c, host=None, ask_vault_pass=False):
    """Switch HOST back to its newest complete release before current.

    The ports restart one at a time, each answering GET /up before the next; with no complete
    release to go to, it refuses, naming each release and why."""
    for_each(c, host, 'rollback', 'rollback', ask_vault_pass)


@host_task
def restart(c, host=None, ask_vault_pass=False):
    """Restart the API processes of HOST one port at a time.

    Each port answers GET /up before the next one restarts; the first that does not stops it."""
    for_each(c, host, 'restart', 'rolling restart', ask_vault_pass)


@host_task
def status(c, host=None, ask_vault_pass=False):
    """Show the releases, programs, last log lines and runs, and the certificate of HOST.

    Releases newest first, current marked with *; Supervisor's program states; the last lines of
    each log and of the audit trail; the expiry of the site's certificate (a warning under 14 days).
    A [db] host shows its backups instead: the last one's age and the WAL archive's lag, with a
    warning when either is older than backup_warn_hours (26) or archive_warn_seconds (600)."""
    ask_vault_password(c, ask_vault_pass)
    databases = group_hosts(inventory(c), 'db')
    for target in targets(c, host):
        reach(target)
        if target.name in databases:
            backup_status(target)
            continue
        current = target.run(f'readlink {quote(target.home)}/current').stdout.strip().rsplit('/', 1)[-1]
        releases = target.run(f'ls -1t {quote(target.home)}/releases').stdout.split()
        step(target.name, 'releases (newest first, * current):')
        for release in releases:
            print(f'  {"*" if release == current else " "} {release}')
        step(target.name, 'programs:')
        # Each program is a Supervisor group of its own (PRODUCT-api-PORT, PRODUCT-background).
        programs = f'^{re.escape(target.product)}-(api-[0-9]+|background) '
        print(target.run(f'supervisorctl status | grep -E {quote(programs)}').stdout.rstrip())
        step(target.name, 'last log lines:')
        print(target.run(f'tail -n 3 {quote(target.home)}/log/*.log').stdout.rstrip())
        step(target.name, 'last runs (fab history for all):')
        print(target.run(f'tail -n 5 {quote(target.home)}/audit.log').stdout.rstrip() or '  (none yet)')
        certificate_expiry(target)


def certificate_expiry(target):
    """The expiry of the certificate the host's nginx site serves, with a warning under
    CERTIFICATE_WARN_DAYS days left (Let's Encrypt no longer writes when one nears its end). Read
    here, with the cryptography package Fabric's SSH needs: a host need not have openssl."""
    sites = target.variables.get('nginx_sites_available', '/etc/nginx/sites-available')
    site = target.run(f'cat {quote(f"{sites}/{target.product}.conf")}')
    if site.failed:
        return  # an API host behind load balancers: no nginx site here
    path = re.search(r'^\s*ssl_certificate\s+(\S+);', site.stdout, re.M)
    if not path:
        step(target.name, 'certificate: none (tls=off)')
        return
    try:
        pem = target.run(f'cat {quote(path.group(1))}').stdout.encode()
        ends = x509.load_pem_x509_certificate(pem).not_valid_after_utc
    except ValueError as error:
        step(target.name, f'certificate {path.group(1)}: cannot read it: {error}')
        return
    left = ends - datetime.now(UTC)
    when = f'in {left.days} days' if left > timedelta(0) else 'EXPIRED'
    step(target.name, f'certificate {path.group(1)}: expires {ends:%Y-%m-%d %H:%M} UTC, {when}')
    if left < timedelta(days=CERTIFICATE_WARN_DAYS):
        step(target.name, f'WARNING: the certificate expires in less than {CERTIFICATE_WARN_DAYS} days: renew it '
                          f'(tls=acme renews by itself when due: see certbot\'s log, /var/log/letsencrypt/)')


@host_task
def logs(c, host=None, lines=50, follow=False, request=None, ask_vault_pass=False):
    """Show the API, background and nginx logs of HOST.

    --follow keeps reading (Ctrl-C ends); --request ID shows every line of that request (nginx's and
    every API port's, rotated logs included)."""
    if request is not None and not REQUEST_ID.fullmatch(request):
        raise Exit(f'--request {request!r}: a request ID is 1 to 128 of A-Z a-z 0-9 . _ -')
    ask_vault_password(c, ask_vault_pass)
    for target in targets(c, host):
        reach(target)
        if request:
            command = f'zgrep -F -- {quote(request)} {quote(target.home)}/log/*.log*'
        else:
            command = f'tail -n {int(lines)} {"-F " if follow else ""}{quote(target.home)}/log/*.log'
        step(target.name, command)
        result = target.connection.run(target.as_root(command), warn=True, in_stream=False)
        if request and result.return_code == 1:
            step(target.name, f'no log line has request ID {request}')


def lock_holder(line):
    """The words of a deploy lock (written by the collection's lock role, roles/lock/files/deploy_lock.py:
    user host machine-id pid epoch since action token) as a person reads them."""
    user, machine, machine_id, pid, _, since, action, _ = (line.split() + ['?'] * 8)[:8]
    return f'{user} on {machine} (machine id {machine_id}) since {since}, running {action} (pid {pid})'


@host_task
def unlock(c, host=None, ask_vault_pass=False):
    """Break the deploy lock of HOST, saying whose it was.

    For a lock a killed run left, or one taken on another machine: only the lock shown is broken, not
    one taken meanwhile, and the audit trail records it."""
    ask_vault_password(c, ask_vault_pass)
    for target in targets(c, host):
        reach(target)
        lock = f'/run/apiphant/{target.product}.lock'
        held = target.run(f'cat {quote(lock)}').stdout.strip()
        if not held:
            step(target.name, 'no deploy lock to break')
            continue
        step(target.name, f'the deploy lock is held by {lock_holder(held)}')
        playbook(c, target, 'unlock', 'unlock', {'lock_break': held})
        step(target.name, f'broke the deploy lock of {lock_holder(held)}')


@host_task
def history(c, host=None, ask_vault_pass=False):
    """Show every deploy, rollback, restart and unlock of HOST, oldest first.

    Each line: time, user@machine, action, release, product commit, outcome; then, on the host
    that applied them, the migrations a deploy applied (migrated=ID,ID)."""
    ask_vault_password(c, ask_vault_pass)
    for target in targets(c, host):
        reach(target)
        step(target.name, 'audit trail (time, who, action, release, commit, outcome, migrations applied):')
        print(target.run(f'cat {quote(target.home)}/audit.log').stdout.rstrip() or '  (none yet)')


# What PostgreSQL's archiver says on the database host, with the host's clock: the newest segment in
# the repository, the last failure, and how long the oldest segment waiting for the archive has waited.
ARCHIVER = """select json_build_object(
    'now', extract(epoch from now()),
    'archived_wal', last_archived_wal, 'archived', extract(epoch from last_archived_time),
    'failed_wal', last_failed_wal, 'failed', extract(epoch from last_failed_time),
    'waiting', (select extract(epoch from min(modification)) from pg_ls_archive_statusdir()
                where name like '%.ready'))
from pg_stat_archiver"""


def stanza(target):
    return target.variables.get('pgbackrest_stanza', 'main')


def sql(target, query):
    """Run SQL as postgres on the database host; its output, or None when PostgreSQL does not answer."""
    result = target.run(f'runuser -u postgres -- psql -qAtX -v ON_ERROR_STOP=1 -c {quote(query)}')
    return None if result.failed else result.stdout.strip()


def must(target, command, failure):
    """Run a command as root on the host; when it fails, stop, saying `failure` and what it printed."""
    result = target.run(command)
    if result.failed:
        raise Exit(f'[{target.name}] {failure}: {result.stderr.strip() or result.stdout.strip()}')
    return result


def database_targets(c, host):
    """The [db] hosts HOST names; a host of another group is refused, saying so."""
    databases = group_hosts(inventory(c), 'db')
    chosen = targets(c, host)
    for target in chosen:
        if target.name not in databases:
            raise Exit(f'[{target.name}] is not a [db] host of {inventory_path(c)}: backups are of the [db] host')
    return chosen


def repository(c):
    """The [backup] host, which holds the repository and takes the backups."""
    listing = inventory(c)
    hosts = group_hosts(listing, 'backup')
    if not hosts:
        raise Exit(f'{inventory_path(c)} has no [backup] host: the repository and the backups are there')
    target = Target(hosts[0], listing.get('_meta', {}).get('hostvars', {}).get(hosts[0], {}), config=c.config)
    reach(target)
    return target


def backup_info(target):
    """The stanza's backups and archive as the repository lists them (pgbackrest info), asked from
    the database host, oldest backup first."""
    listed = json.loads(must(target, f'runuser -u postgres -- pgbackrest --stanza={quote(stanza(target))} '
                                     f'--output=json info', 'cannot read the repository: pgbackrest info').stdout)
    return listed[0] if listed else {}


def moment(epoch):
    return f'{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M:%S} UTC'


def ago(seconds):
    return f'{seconds / 3600:.1f} h' if seconds >= 3600 else f'{seconds:.0f} s'


def backup_status(target):
    """The database host's last backup and its WAL archive's lag, with a warning when either is too
    old, when the repository reports a problem, or when the archiver's last attempt failed."""
    info = backup_info(target)
    archiver = sql(target, ARCHIVER)
    state = json.loads(archiver) if archiver else {}
    now = state.get('now') or float(target.run('date +%s').stdout)
    warnings = []
    if info.get('status', {}).get('code', 0):
        warnings.append(f'the repository reports: {info["status"]["message"]}')
    backups = info.get('backup', [])
    step(target.name, f'backups of stanza {stanza(target)}: {len(backups)} in the repository')
    for backup in backups:
        print(f'  {backup["type"]:4} {backup["label"]}  ended {moment(backup["timestamp"]["stop"])}')
    limit = float(target.variables.get('backup_warn_hours', BACKUP_WARN_HOURS)) * 3600
    if backups:
        last = backups[-1]
        age = now - last['timestamp']['stop']
        step(target.name, f'last backup: {last["type"]} {last["label"]}, {ago(age)} ago')
        if age > limit:
            warnings.append(f'the last backup is {ago(age)} old, more than {ago(limit)}: is its schedule running?')
    else:
        warnings.append('no backup in the repository: fab backup HOST takes one')
    if not state:
        warnings.append('PostgreSQL does not answer: the WAL archive\'s lag is unknown')
    else:
        archived = f'{state["archived_wal"]}, {ago(now - state["archived"])} ago' if state['archived'] else 'none yet'
        waiting = now - state['waiting'] if state['waiting'] else 0
        step(target.name, f'WAL archive: last segment archived {archived}; the oldest waiting has waited '
                          f'{ago(waiting)}')
        if state['failed'] and (not state['archived'] or state['failed'] > state['archived']):
            warnings.append(f'WAL archiving fails: {state["failed_wal"]} last failed {ago(now - state["failed"])} '
                            f'ago (PostgreSQL\'s log on the host says why)')
        lag = float(target.variables.get('archive_warn_seconds', ARCHIVE_WARN_SECONDS))
        if waiting > lag:
            warnings.append(f'WAL has waited {ago(waiting)} for the repository, more than {ago(lag)}')
    for warning in warnings:
        step(target.name, f'WARNING: {warning}')


@host_task
def backup(c, host=None, backup_type='incr', ask_vault_pass=False):
    """Back up the database of HOST (a [db] host) now, into the repository on the [backup] host.

    The backup runs on the repository host, as the scheduled ones do; pgBackRest then expires what
    the retention no longer keeps."""
    if backup_type not in ('incr', 'diff', 'full'):
        raise Exit(f'--backup-type {backup_type!r}: incr, diff or full')
    ask_vault_password(c, ask_vault_pass)
    for target in database_targets(c, host):
        reach(target)
        keeper = repository(c)
        step(target.name, f'{backup_type} backup on {keeper.name}')
        made = must(keeper, f'runuser -u pgbackrest -- pgbackrest --stanza={quote(stanza(target))} '
                            f'--type={backup_type} --log-level-console=info backup', 'the backup failed')
        print(made.stdout.rstrip())
        step(target.name, 'backup: done')


def restore_time(text):
    """--time as an aware datetime; a time without a zone is refused, as the host's and this
    machine's zones may differ."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise Exit(f"--time {text!r} is not a time: give one such as '2026-12-06 04:30:00+00:00'") from None
    if when.tzinfo is None:
        raise Exit(f"--time {text!r} has no time zone: add one, such as +00:00 for UTC")
    return when


def cluster(target):
    """(version, name, status, data folder) of the PostgreSQL cluster to restore, from pg_lsclusters:
    pgbackrest_pg_version and pgbackrest_pg_cluster of the inventory, else the host's only cluster."""
    rows = [line.split() for line in target.run('pg_lsclusters -h').stdout.splitlines() if line.strip()]
    wanted = [row for row in rows
              if row[0] == str(target.variables.get('pgbackrest_pg_version', row[0]))
              and row[1] == target.variables.get('pgbackrest_pg_cluster', row[1])]
    if len(wanted) != 1:
        raise Exit(f'[{target.name}] cannot tell which PostgreSQL cluster to restore among '
                   f'{[" ".join(row[:2]) for row in rows]}: set pgbackrest_pg_version and pgbackrest_pg_cluster')
    version, name, _, status, _, data = wanted[0][:6]
    return version, name, status, data


def archive_current_wal(target):
    """Put the running database's current WAL into the repository before it is stopped, so that a
    time up to now can be reached."""
    wal = sql(target, 'select pg_walfile_name(pg_switch_wal())')
    deadline = monotonic() + 120
    while sql(target, f"select last_archived_wal >= '{wal}' from pg_stat_archiver") != 't':
        if monotonic() > deadline:
            raise Exit(f'[{target.name}] the current WAL {wal} did not reach the repository in 120 s, so nothing was '
                       f'restored: fab status HOST shows why archiving fails')
        sleep(0.5)


@host_task
def restore(c, host=None, time=None, ask_vault_pass=False):
    """Restore the database of HOST (a [db] host) from the repository, to a time or the newest WAL.

    PostgreSQL is stopped, its data brought back to the time by pgBackRest (--delta: only what
    differs is copied), started, and promoted once the WAL is replayed up to the time. A time before
    the oldest backup or in the future is refused, the database untouched."""
    when = restore_time(time) if time is not None else None
    ask_vault_password(c, ask_vault_pass)
    for target in database_targets(c, host):
        reach(target)
        info = backup_info(target)
        ends = [backup['timestamp']['stop'] for backup in info.get('backup', [])]
        if not ends:
            raise Exit(f'[{target.name}] the repository holds no backup of stanza {stanza(target)} to restore from')
        now = float(target.run('date +%s').stdout)
        if when is not None and when.timestamp() < min(ends):
            raise Exit(f'[{target.name}] cannot restore to {when}: the oldest backup in the repository ended at '
                       f'{moment(min(ends))}, and no earlier state is kept')
        if when is not None and when.timestamp() > now:
            raise Exit(f'[{target.name}] cannot restore to {when}: it is in the future (the host says {moment(now)})')
        version, name, status, data = cluster(target)
        if status.startswith('online'):
            step(target.name, 'archiving the current WAL')
            archive_current_wal(target)
            step(target.name, f'stopping PostgreSQL {version}/{name}')
            target.run(f'pg_ctlcluster {version} {name} stop -m fast')
        goal = ['--delta']
        if when is not None:
            goal += ['--type=time', f'--target={when.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f+00}',
                     '--target-action=promote']
        step(target.name, f'pgbackrest restore {" ".join(goal)}')
        must(target, f'install -d -o postgres -g postgres -m 0700 {quote(data)} && runuser -u postgres -- '
                     f'pgbackrest --stanza={quote(stanza(target))} {" ".join(map(quote, goal))} restore',
             'pgbackrest restore failed, PostgreSQL is stopped')
        step(target.name, f'starting PostgreSQL {version}/{name}: it replays the archived WAL')
        must(target, f'pg_ctlcluster {version} {name} start', 'PostgreSQL did not start after the restore')
        deadline = monotonic() + PROMOTE_TIMEOUT
        while sql(target, 'select pg_is_in_recovery()') != 'f':
            if monotonic() > deadline:
                raise Exit(f'[{target.name}] PostgreSQL is still replaying WAL after {PROMOTE_TIMEOUT} s: see its log')
            sleep(0.5)
        # The checkpointer went to sleep during recovery for checkpoint_timeout, not archive_timeout: a
        # checkpoint wakes it, so the new timeline's commits are archived within archive_timeout at once.
        if sql(target, 'checkpoint') is None:
            raise Exit(f'[{target.name}] PostgreSQL was restored but its first checkpoint failed: see its log')
        step(target.name, 'restore: done, PostgreSQL promoted and writable')


@host_task
def migrations(c, host=None, ask_vault_pass=False):
    """List the database migrations of the current release of HOST, applied and pending.

    The release's own `apiphant migrate --list` runs on the host as the product's user, with the
    product's settings and secrets (DATABASE_URL); it applies nothing."""
    ask_vault_password(c, ask_vault_pass)
    for target in targets(c, host):
        reach(target)
        home, release = quote(target.home), quote(f'{target.home}/current')
        user = quote(target.variables.get('product_user', target.product))
        command = (f'runuser -u {user} -- {home}/with-environment {release}/venv/bin/apiphant migrate --list '
                   f'--lock-timeout {MIGRATIONS_LOCK_TIMEOUT} {release}/{quote(target.product)}')
        step(target.name, 'migrations of the current release (apiphant migrate --list):')
        result = target.run(f'cd {home} && {command}')
        print(result.stdout.rstrip())
        if result.failed:
            raise Exit(f'[{target.name}] apiphant migrate --list failed (exit {result.exited}): '
                       f'{result.stderr.strip()}')
