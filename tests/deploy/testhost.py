"""Throwaway Debian test hosts on this machine, reached over real SSH.

Each host is a network namespace on a private bridge (10.231.0.0/24, this machine at .1) and a Debian
rootfs from debootstrap (cached as a tarball, keyed by everything that goes into it). A Host is
Debian 12 in a PID and mount namespace running a tiny init that starts sshd; a SystemdHost is
Debian 13 booted by systemd under systemd-nspawn, and can be rebooted. A host reaches nothing but
the bridge: apt goes through an apt-cacher-ng on 10.231.0.1 that proxies only the Debian mirror
this machine uses.

Several test runs can share a machine, each in a lab of its own: APIPHANT_TEST_LAB=b names lab b
(namespaces apiphant-b*, bridge apiphant-brb, 10.232.0.0/24, its own apt cache); any letter from
b to y but t works (lab c is 10.233.0.0/24...). Unset, it is the default lab above. Cleaning up
touches only the chosen lab's names.

Run as root. `python3 tests/deploy/testhost.py clean` removes what a crashed run left behind.
"""

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get('APIPHANT_TEST_CACHE', '/var/cache/apiphant-tests'))


def lab_identity(name):
    """(name prefix, bridge, first three octets of the subnet, apt cache folder) of lab `name`;
    '' is the default lab. Interface names stay within Linux's 15 characters (apiphant-b4h)."""
    if not name:
        return 'apiphant-t', 'apiphant-br0', '10.231.0', 'acng'
    if len(name) != 1 or not 'b' <= name <= 'y' or name == 't':
        raise RuntimeError(f'APIPHANT_TEST_LAB={name!r}: needs one lowercase letter from b to y but t '
                           f'(the default lab has prefix t and subnet 10.231, lab y 10.255)')
    return f'apiphant-{name}', f'apiphant-br{name}', f'10.{231 + ord(name) - ord("a")}.0', f'acng-{name}'


# Every name this harness creates starts with PREFIX: netns, links, temp dirs.
PREFIX, BRIDGE, SUBNET, APT_CACHE = lab_identity(os.environ.get('APIPHANT_TEST_LAB', ''))
GATEWAY = f'{SUBNET}.1'
SUITE = 'bookworm'  # the sh-init hosts' Debian; the systemd hosts run the next one
SYSTEMD_SUITE = 'trixie'
PACKAGES = 'openssh-server,python3,python3-apt,sudo,iproute2'
SYSTEMD_PACKAGES = f'{PACKAGES},systemd,systemd-sysv,dbus'
PROXY_PORT = 3142
FORMAT = 2  # bump when the way a rootfs is made or configured changes

INIT = '''#!/bin/sh
# PID 1 of a test host: mount what a booted Debian has, start sshd, reap orphans.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sshd /run/lock
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
mount --bind /dev/pts/ptmx /dev/ptmx
mount -t tmpfs tmpfs /dev/shm
hostname "$(cat /etc/hostname)"
/usr/sbin/sshd -E /var/log/sshd.log
trap 'exit 0' TERM
while :; do wait; sleep 1; done
'''


def run(*command, **options):
    """Run a command; on failure raise with its output, naming the step."""
    result = subprocess.run(command, capture_output=True, text=True, **options)
    if result.returncode:
        raise RuntimeError(f'{" ".join(map(str, command))} failed ({result.returncode}): '
                           f'{result.stderr.strip() or result.stdout.strip()}')
    return result.stdout


def quiet(*command):
    """Run a teardown command whose failure only means there was nothing to remove."""
    subprocess.run(command, capture_output=True)


def can_make_namespaces():
    """Whether `ip netns add` works here; the deploy tests are skipped (with this reason) if not."""
    if os.geteuid() != 0:
        return 'the deploy tests need root (network namespaces, chroot)'
    name = f'{PREFIX}probe'
    quiet('ip', 'netns', 'del', name)
    result = subprocess.run(['ip', 'netns', 'add', name], capture_output=True, text=True)
    quiet('ip', 'netns', 'del', name)
    return None if result.returncode == 0 else f'ip netns add is impossible here: {result.stderr.strip()}'


def debian_mirror():
    """The Debian mirror apt already uses on this machine (for SUITE; it serves every suite): the
    only place test hosts may reach."""
    lines = run('apt-get', 'indextargets', '--format', '$(REPO_URI) $(RELEASE)').split('\n')
    for line in lines:
        uri, _, release = line.partition(' ')
        if release == SUITE:
            return uri if uri.endswith('/') else uri + '/'
    raise RuntimeError(f'no {SUITE} repository in `apt-get indextargets`: apt has no Debian mirror')


def release_date():
    """The Date: line of the Debian release apt last fetched: part of a cache key, so a cache made
    from an older release of the mirror is not reused. For SUITE, and for the other suites too (this
    machine fetches no lists of theirs): a rootfs is remade when this machine's apt refreshes."""
    lists = Path('/var/lib/apt/lists')
    release = next(iter(sorted(lists.glob(f'*_dists_{SUITE}_InRelease'))), None)
    return next((line for line in release.read_text(errors='replace').splitlines()
                 if line.startswith('Date:')), '') if release else ''


def rootfs_tarball(mirror, suite=SUITE, packages=PACKAGES):
    """A pristine debootstrap of Debian `suite` with `packages`, cached; its name hashes every input,
    so a change of suite, package list, mirror, format or the mirror's release date makes a new one."""
    key = hashlib.sha256(f'{FORMAT} {suite} {packages} {mirror} {release_date()}'.encode()).hexdigest()[:16]
    tarball = CACHE / f'rootfs-{suite}-{key}.tar'
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=PREFIX, dir=CACHE) as scratch:
        root = Path(scratch) / 'root'
        run('debootstrap', '--variant=minbase', f'--include={packages}', suite, root, mirror)
        partial = Path(scratch) / 'rootfs.tar'
        run('tar', '-C', root, '--numeric-owner', '-cf', partial, '.')
        partial.rename(tarball)
    return tarball


class Proxy:
    """apt-cacher-ng on `address`: the Debian mirror, nothing else (ForceManaged), cached in
    CACHE/`cache`. `passthrough` (a regular expression of host:port) lets CONNECT tunnels through to
    those hosts, for clients that need more than apt (pip on a controller inside a namespace)."""

    def __init__(self, workdir, mirror, address=GATEWAY, cache=APT_CACHE, passthrough=None):
        self.confdir = workdir / 'acng'
        self.confdir.mkdir()
        (CACHE / cache).mkdir(parents=True, exist_ok=True)
        # apt-cacher-ng runs as root here and writes its cache outside the repo, kept between runs.
        (self.confdir / 'acng.conf').write_text(
            f'CacheDir: {CACHE / cache}\nLogDir: {self.confdir}\nPort: {PROXY_PORT}\n'
            f'BindAddress: {address}\nForeGround: 1\nForceManaged: 1\nExThreshold: 30\n'
            f'Remap-debrep: /debian ; {mirror}\nPidFile: {self.confdir}/pid\n'
            f'SocketPath: {self.confdir}/socket\n'
            + (f'PassThroughPattern: {passthrough}\n' if passthrough else ''))
        self.log = (workdir / 'acng.out').open('w')
        self.process = subprocess.Popen(['/usr/sbin/apt-cacher-ng', '-c', str(self.confdir)],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(address, PROXY_PORT, 30, self.process)

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.log.close()


def wait_for_port(host, port, timeout, process=None):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError as error:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f'{process.args[0]} exited ({process.returncode}) before '
                                   f'listening on {host}:{port}') from None
            if time.monotonic() > deadline:
                raise RuntimeError(f'nothing listens on {host}:{port} after {timeout} s: {error}') from None
            time.sleep(0.1)


class Host:
    """One test host: namespace `apiphant-tN`, address 10.231.0.(N+1) (in the default lab), root
    over SSH with the private key `key`, whose `.pub` it authorizes. This kind is Debian SUITE with a
    tiny init as PID 1 that starts only sshd."""

    suite = SUITE

    def __init__(self, number, workdir, tarball, key):
        self.number = number
        self.key = key
        self.name = f'{PREFIX}{number}'
        self.address = f'{SUBNET}.{number + 1}'
        self.root = workdir / self.name
        self.workdir = workdir
        self.root.mkdir()
        run('tar', '-C', self.root, '--numeric-owner', '-xf', tarball)
        self._configure(Path(f'{key}.pub').read_text())
        self._install_init()
        self._network()
        self._boot()

    def _configure(self, public_key):
        etc = self.root / 'etc'
        (etc / 'hostname').write_text(f'{self.name}\n')
        (etc / 'hosts').write_text(f'127.0.0.1 localhost\n{self.address} {self.name}\n')
        (etc / 'apt/sources.list').write_text(f'deb http://{GATEWAY}:{PROXY_PORT}/debian {self.suite} main\n')
        # Package lists as stale as a long-installed host's, so the playbook must refresh them.
        lists = self.root / 'var/lib/apt/lists'
        for index in lists.glob('*_*'):
            index.unlink()
        os.utime(lists, (0, 0))
        sshd_config = etc / 'ssh/sshd_config'
        sshd_config.write_text(sshd_config.read_text().replace('\nAcceptEnv', '\n#AcceptEnv')
                               + f'\nListenAddress {self.address}\nUseDNS no\n')
        ssh = self.root / 'root/.ssh'
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / 'authorized_keys').write_text(public_key)

    def _install_init(self):
        init = self.root / 'usr/local/sbin/init'
        init.write_text(INIT)
        init.chmod(0o755)
        # Daemons start on install, as on a real host (the rootfs has no init system to do it).
        policy = self.root / 'usr/sbin/policy-rc.d'
        policy.write_text('#!/bin/sh\nexit 0\n')
        policy.chmod(0o755)

    def _boot(self):
        self.process = subprocess.Popen(
            ['ip', 'netns', 'exec', self.name, 'unshare', '--mount', '--pid', '--uts', '--ipc', '--fork',
             '--kill-child', '--propagation', 'private', 'chroot', str(self.root), '/usr/local/sbin/init'],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.address, 22, 30, self.process)

    def _network(self):
        inside, outside = f'{self.name}c', f'{self.name}h'
        run('ip', 'netns', 'add', self.name)
        run('ip', 'link', 'add', outside, 'type', 'veth', 'peer', 'name', inside)
        run('ip', 'link', 'set', outside, 'master', BRIDGE, 'up')
        run('ip', 'link', 'set', inside, 'netns', self.name)
        in_ns = ('ip', 'netns', 'exec', self.name, 'ip')
        run(*in_ns, 'link', 'set', 'lo', 'up')
        run(*in_ns, 'addr', 'add', f'{self.address}/24', 'dev', inside)
        run(*in_ns, 'link', 'set', inside, 'up')
        # A default route into a dead end: Ansible's default IPv4 facts need one; nothing leaves.
        run(*in_ns, 'link', 'add', 'dead0', 'type', 'veth', 'peer', 'name', 'dead1')
        run(*in_ns, 'addr', 'add', '192.0.2.1/30', 'dev', 'dead0')
        run(*in_ns, 'link', 'set', 'dead0', 'up')
        run(*in_ns, 'route', 'add', 'default', 'via', '192.0.2.2', 'dev', 'dead0')

    def ssh(self, *command, key=None, check=True):
        """Run a command on the host as root over SSH, with the lab's key or `key`; return the
        completed process."""
        result = subprocess.run(['ssh', *ssh_options(key or self.key), f'root@{self.address}', *command],
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode:
            raise RuntimeError(f'{" ".join(command)} on {self.name} failed ({result.returncode}): '
                               f'{result.stderr.strip() or result.stdout.strip()}')
        return result

    def stop(self):
        # unshare ignores SIGTERM; --kill-child takes the whole PID namespace down with it.
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        remove_host(self.name, self.root)


class SystemdHost(Host):
    """A test host as a server really is: Debian SYSTEMD_SUITE booted by systemd as PID 1 under
    systemd-nspawn, in the host's network namespace. Units start and are enabled as their packages
    and the playbooks say, and the host can be rebooted."""

    suite = SYSTEMD_SUITE
    BOOT_TIMEOUT = 120

    def _install_init(self):
        """Nothing to add: the rootfs has systemd as /sbin/init, and its packages enabled sshd."""

    def _boot(self):
        self.console = (self.workdir / f'{self.name}.console').open('a')
        self.process = subprocess.Popen(
            ['systemd-nspawn', '--quiet', '--boot', f'--directory={self.root}', f'--machine={self.name}',
             f'--network-namespace-path=/run/netns/{self.name}', '--link-journal=no', '--resolv-conf=off',
             '--timezone=off', '--console=pipe',
             # No machined or systemd on the test machine to register with or ask for a scope unit.
             '--register=no', '--keep-unit'],
            # systemd 256 and later boot only on the unified cgroup hierarchy, which nspawn gives the
            # container on its own only where the machine has nothing else.
            env={**os.environ, 'SYSTEMD_NSPAWN_UNIFIED_HIERARCHY': '1'},
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT)
        wait_for_port(self.address, 22, self.BOOT_TIMEOUT, self.process)

    def reboot(self):
        """`systemctl reboot` on the host, as its admin would; nspawn ends the container asking for
        a reboot (exit status 133), and the host boots again from the same root."""
        self.ssh('systemctl', 'reboot', check=False)  # the connection may drop mid-way
        status = self.process.wait(timeout=self.BOOT_TIMEOUT)
        self.console.close()
        if status != 133:
            raise RuntimeError(f'{self.name} did not reboot: systemd-nspawn exited {status} '
                               f'(console in {self.console.name})')
        self._boot()

    def stop(self):
        # SIGTERM asks systemd for a clean poweroff; a container that hangs in it is killed.
        self.process.terminate()
        try:
            self.process.wait(timeout=self.BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.console.close()
        remove_host(self.name, self.root)


class PlaybookRun:
    """What a run of ansible-playbook (directly, through fab or through vagrant) did."""

    def __init__(self, result):
        self.returncode = result.returncode
        self.output = result.stdout + result.stderr

    def recap(self):
        """{host: {'ok': n, 'changed': n, 'failed': n, ...}} from the PLAY RECAP."""
        hosts = {}
        for host, counts in re.findall(r'^(\S+)\s+:\s+(ok=.*)$', self.output, re.M):
            hosts[host] = {key: int(value) for key, value in re.findall(r'(\w+)=(\d+)', counts)}
        return hosts

    def outcome(self, task, host):
        """What the task (ROLE : NAME) did on host, as the output says it: 'ok', 'changed', 'skipping'...;
        None if the output has no such task for it."""
        found = re.search(r'^(?:TASK|RUNNING HANDLER) \[' + re.escape(task) + r'\][^\n]*\n(?:.*\n)*?(\w+): \['
                          + re.escape(host) + r'\]', self.output, re.M)
        return found and found.group(1)


def ssh_options(key):
    return ['-i', str(key), '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
            '-o', 'LogLevel=ERROR', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10']


def close_ssh_masters(folder):
    """End the SSH connections Ansible keeps open (ControlPersist) through sockets under `folder`:
    they would outlive the test by minutes, holding connections to hosts already gone."""
    for path in Path(folder).rglob('*'):
        if path.is_socket():
            quiet('ssh', '-o', f'ControlPath={path}', '-O', 'exit', 'apiphant-test-host')


def remove_host(name, root=None):
    quiet('ip', 'netns', 'del', name)
    quiet('ip', 'link', 'del', f'{name}h')
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


class Lab:
    """The bridge, the apt proxy and the hosts of one test session: `count` sh-init hosts in
    `hosts`, then `systemd` systemd hosts in `systemd_hosts`."""

    def __init__(self, count=1, systemd=0):
        clean()
        self.workdir = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.hosts, self.systemd_hosts, self.proxy = [], [], None
        try:
            mirror = debian_mirror()
            tarball = rootfs_tarball(mirror)
            systemd_tarball = rootfs_tarball(mirror, SYSTEMD_SUITE, SYSTEMD_PACKAGES) if systemd else None
            self.key = self.workdir / 'id_ed25519'
            run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'apiphant-tests', '-f', self.key)
            run('ip', 'link', 'add', BRIDGE, 'type', 'bridge')
            run('ip', 'addr', 'add', f'{GATEWAY}/24', 'dev', BRIDGE)
            run('ip', 'link', 'set', BRIDGE, 'up')
            self.proxy = Proxy(self.workdir, mirror)
            for number in range(1, count + 1):
                self.hosts.append(Host(number, self.workdir, tarball, self.key))
            for number in range(count + 1, count + systemd + 1):
                self.systemd_hosts.append(SystemdHost(number, self.workdir, systemd_tarball, self.key))
        except BaseException:
            self.stop()
            clean()  # a host that failed to boot is in no list yet: found by its namespace
            raise

    def stop(self):
        for host in self.hosts + self.systemd_hosts:
            host.stop()
        if self.proxy is not None:
            self.proxy.stop()
        quiet('ip', 'link', 'del', BRIDGE)
        close_ssh_masters(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)


def clean():
    """Remove what a crashed run of this lab left: namespaces, links and temp dirs named PREFIX*, and
    the processes running inside those namespaces (found by namespace, never by name)."""
    for line in subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout.splitlines():
        name = line.split()[0] if line.strip() else ''
        if name.startswith(PREFIX):
            for pid in subprocess.run(['ip', 'netns', 'pids', name], capture_output=True,
                                      text=True).stdout.split():
                quiet('kill', '-KILL', pid)
            remove_host(name)
    quiet('ip', 'link', 'del', BRIDGE)
    for leftover in Path(tempfile.gettempdir()).glob(f'{PREFIX}*'):
        kill_proxy(leftover / 'acng')
        close_ssh_masters(leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def kill_proxy(confdir):
    """Kill a crashed run's apt-cacher-ng by the PID file it wrote, if that PID still runs it."""
    try:
        pid = int((confdir / 'pid').read_text().split()[0])
        command = Path(f'/proc/{pid}/cmdline').read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if str(confdir).encode() in command:
        quiet('kill', '-KILL', str(pid))


if __name__ == '__main__':
    if sys.argv[1:] != ['clean']:
        sys.exit(f'usage: {sys.argv[0]} clean')
    clean()
