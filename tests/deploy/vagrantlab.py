"""A place where the project's Vagrantfile really runs: libvirt, QEMU and Vagrant in a namespace.

Everything runs inside the network namespace `apiphant-v`: libvirtd (with its networks, dnsmasq and
the VM), vagrant, the ansible-playbook it starts and curl. The namespace's only link out is a veth
pair to an apt-cacher-ng on 10.230.0.1 that proxies the Debian mirror, and lets pip on the Ansible
controller tunnel to PyPI; nothing else leaves it. libvirtd runs in a mount and PID namespace of
its own: its configuration, state, logs and storage pool are folders of the lab's temp dir, and
when the lab stops, every process of it (QEMU included) goes with the PID namespace.

What only this machine needs comes from outside the project's Vagrantfile: a VAGRANT_HOME the lab
owns holds the locally built box (see vagrantbox.py) and a Vagrantfile that Vagrant reads before
the project's, with software emulation (TCG), the libvirt socket and the pool.

A `Rehearsal` runs a VM's whole life (up, curl, provision, destroy) in a thread: the test session
starts it when it collects test_vagrant.py, so that the minutes of emulation overlap the other
tests, and the test reads its results at the end. Run as root. `python3 tests/deploy/vagrantlab.py
clean` removes what a crashed run left behind.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import testhost
import vagrantbox

PREFIX = 'apiphant-v'  # every name the lab creates starts so: netns, links, temp dirs
NAMESPACE = PREFIX
HOST_LINK, INSIDE_LINK = f'{PREFIX}h', f'{PREFIX}c'
HOST_ADDRESS, INSIDE_ADDRESS = '10.230.0.1', '10.230.0.2'
PROXY = f'{HOST_ADDRESS}:{testhost.PROXY_PORT}'
# pip on the controller (the release role builds and downloads wheels) reaches PyPI through the
# proxy's CONNECT tunnel, and nothing else.
PYPI = r'^(pypi\.org|files\.pythonhosted\.org):443$'
BIN = Path(sys.executable).parent  # ansible-playbook for Vagrant's ansible provisioner
ECHO = {'hello': 'world'}  # what curl sends the example's echo action

LIBVIRT_FOLDERS = {'etc': '/etc/libvirt', 'lib': '/var/lib/libvirt', 'cache': '/var/cache/libvirt',
                   'log': '/var/log/libvirt'}

# PID 1 of libvirtd's namespace: its own libvirt folders, then libvirtd, and every orphan reaped
# (QEMU and dnsmasq daemonize, so they become its children).
INIT = '''
import os, subprocess, sys
for source, target in FOLDERS:
    os.makedirs(target, exist_ok=True)
    subprocess.run(['mount', '--bind', source, target], check=True)
subprocess.run(['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'tmpfs', '/run'], check=True)
libvirtd = subprocess.Popen(['/usr/sbin/libvirtd'])
while True:
    pid, status = os.wait()
    if pid == libvirtd.pid:
        sys.exit(os.waitstatus_to_exitcode(status))
'''

LIBVIRTD_CONF = '''\
unix_sock_dir = "{sockets}"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
'''

# QEMU as root with no confinement, cgroups or private /dev: the lab's namespaces are the boundary.
QEMU_CONF = '''\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
'''

HOME_VAGRANTFILE = '''\
# This machine's part, read before the project's Vagrantfile: software emulation (no usable KVM),
# the lab's libvirtd and storage pool, no disk flushes, and no box update checks (nothing outside
# is reachable).
Vagrant.configure("2") do |config|
  config.vm.box_check_update = false
  config.vm.boot_timeout = 900
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
    libvirt.socket = "{socket}"
    libvirt.cpu_mode = "custom"
    libvirt.cpu_model = "qemu64"
    libvirt.graphics_type = "none"
    libvirt.video_type = "none"
    libvirt.storage_pool_path = "{pool}"
    # The VM is thrown away after the test: its disk writes need not reach this machine's disk.
    libvirt.disk_driver :cache => "unsafe"
  end
end
'''


def netns(*command):
    return ['ip', 'netns', 'exec', NAMESPACE, *command]


class Lab:
    """The namespace, the proxy, libvirtd and a VAGRANT_HOME with the box; run vagrant in it."""

    def __init__(self, project):
        clean()
        self.project = project
        self.workdir = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.proxy = self.libvirtd = None
        try:
            mirror = testhost.debian_mirror()
            self._network()
            self.proxy = testhost.Proxy(self.workdir, mirror, address=HOST_ADDRESS, cache='acng-vagrant',
                                        passthrough=PYPI)
            self.box = vagrantbox.box(mirror, PROXY)
            self._libvirtd()
            self.home = self.workdir / 'vagrant.d'
            self.home.mkdir()
            # A HOME of the lab's own: the release role keeps the controller's wheels under
            # ~/.cache, which other deploy tests on the machine rewrite from their own checkouts;
            # shared, a second provision would see a new release.
            (self.workdir / 'home').mkdir()
            (self.home / 'Vagrantfile').write_text(HOME_VAGRANTFILE.format(
                socket=self.workdir / 'sockets/libvirt-sock', pool=self.workdir / 'pool'))
            self.env = {
                **os.environ, 'LC_ALL': 'C.UTF-8', 'PATH': f'{BIN}:{os.environ["PATH"]}',
                'HOME': str(self.workdir / 'home'),
                'VAGRANT_HOME': str(self.home), 'VAGRANT_CWD': str(project),
                'VAGRANT_DOTFILE_PATH': str(self.workdir / 'dotfile'),
                'VAGRANT_CHECKPOINT_DISABLE': '1', 'VAGRANT_BOX_UPDATE_CHECK_DISABLE': '1',
                'VAGRANT_NO_COLOR': '1', 'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_FORCE_COLOR': '0',
                'ANSIBLE_SSH_CONTROL_PATH_DIR': str(self.workdir / 'cp'),
                'https_proxy': f'http://{PROXY}', 'no_proxy': '127.0.0.1,localhost',
            }
            self.vagrant('box', 'add', '--name', 'debian/bookworm64', '--provider', 'libvirt', self.box,
                         timeout=300, check=True)
        except BaseException:
            self.stop()
            raise

    def _network(self):
        testhost.run('ip', 'netns', 'add', NAMESPACE)
        testhost.run('ip', 'link', 'add', HOST_LINK, 'type', 'veth', 'peer', 'name', INSIDE_LINK)
        testhost.run('ip', 'addr', 'add', f'{HOST_ADDRESS}/30', 'dev', HOST_LINK)
        testhost.run('ip', 'link', 'set', HOST_LINK, 'up')
        testhost.run('ip', 'link', 'set', INSIDE_LINK, 'netns', NAMESPACE)
        testhost.run(*netns('ip', 'link', 'set', 'lo', 'up'))
        testhost.run(*netns('ip', 'addr', 'add', f'{INSIDE_ADDRESS}/30', 'dev', INSIDE_LINK))
        testhost.run(*netns('ip', 'link', 'set', INSIDE_LINK, 'up'))

    def _libvirtd(self):
        folders = []
        for name, target in LIBVIRT_FOLDERS.items():
            (self.workdir / name).mkdir()
            folders.append((str(self.workdir / name), target))
        sockets = self.workdir / 'sockets'
        sockets.mkdir()
        (self.workdir / 'etc/libvirtd.conf').write_text(LIBVIRTD_CONF.format(sockets=sockets))
        (self.workdir / 'etc/qemu.conf').write_text(QEMU_CONF)
        self.libvirtd_log = (self.workdir / 'libvirtd.out').open('w')
        self.libvirtd = subprocess.Popen(
            netns('unshare', '--mount', '--pid', '--fork', '--kill-child', '--mount-proc',
                  '--propagation', 'private', sys.executable, '-c', f'FOLDERS = {folders!r}\n{INIT}'),
            start_new_session=True, stdout=self.libvirtd_log, stderr=subprocess.STDOUT)
        socket = sockets / 'libvirt-sock'
        deadline = time.monotonic() + 60
        while not socket.exists():
            if self.libvirtd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'libvirtd made no socket at {socket}:\n{self.log("libvirtd.log")}')
            time.sleep(0.1)

    def vagrant(self, *args, timeout, check=False):
        """Run `vagrant ARGS` in the namespace; a testhost.PlaybookRun (its provisioner's recap)."""
        result = subprocess.run(netns('vagrant', *map(str, args)), env=self.env, cwd=self.project,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise RuntimeError(f'vagrant {" ".join(map(str, args))} failed ({result.returncode}):\n'
                               f'{result.stdout}{result.stderr}')
        return testhost.PlaybookRun(result)

    def curl(self, *args):
        """Run curl in the namespace, where Vagrant's forwarded ports listen."""
        return subprocess.run(netns('curl', '--silent', '--show-error', '--max-time', '60', *args),
                              capture_output=True, text=True, timeout=90)

    def log(self, name):
        """A libvirt log of the lab (libvirtd.log, qemu/DOMAIN.log), for a failure's message."""
        return '\n'.join(path.read_text(errors='replace')[-4000:]
                         for path in sorted((self.workdir / 'log').rglob(name)))

    def stop(self):
        if self.libvirtd is not None:
            # unshare takes libvirtd's PID namespace down with it: libvirtd, dnsmasq, QEMU.
            self.libvirtd.send_signal(signal.SIGKILL)
            self.libvirtd.wait()
            self.libvirtd_log.close()
        remove_namespace()
        if self.proxy is not None:
            self.proxy.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Rehearsal(threading.Thread):
    """`vagrant up`, curl to the forwarded port, `vagrant provision`, `vagrant destroy`, in a lab
    that is stopped at the end whatever happened: each step's result and wall time, for the test."""

    def __init__(self, project):
        super().__init__(name='vagrant-rehearsal', daemon=True)
        self.project = project
        self.results, self.seconds = {}, {}
        self.error = self.lab = None
        self.logs = ''  # libvirt's logs, kept from the lab for a failure's message
        self.cancelled = threading.Event()

    def run(self):
        try:
            self._step('lab', Lab, self.project)
            up = self._step('up', self.lab.vagrant, 'up', '--provider=libvirt', timeout=5400)
            if up.returncode == 0 and not self.cancelled.is_set():
                self._step('curl', self.lab.curl, '--data-binary', json.dumps(ECHO),
                           '-H', 'Content-Type: application/json',
                           'http://127.0.0.1:8080/api/v0/echo/read')
                self._step('provision', self.lab.vagrant, 'provision', timeout=5400)
            # Also after a failed up: destroy must take a half-made VM away.
            self._step('destroy', self.lab.vagrant, 'destroy', '--force', timeout=600)
            self._step('status', self.lab.vagrant, 'status', timeout=300)
        except BaseException:
            self.error = traceback.format_exc()
        finally:
            if self.lab is not None:
                self.logs = self.lab.log('*.log')
                self.lab.stop()

    def _step(self, name, step, *args, **options):
        if self.cancelled.is_set():
            raise RuntimeError(f'cancelled before {name}')
        start = time.monotonic()
        result = step(*args, **options)
        if name == 'lab':
            self.lab = result
        self.results[name], self.seconds[name] = result, time.monotonic() - start
        return result

    def cancel(self):
        """End it now (the session is over): what runs in the namespace dies, the lab is stopped."""
        self.cancelled.set()
        while self.is_alive():  # again until it ends: a step may have started a command meanwhile
            kill_namespace_processes()
            self.join(timeout=1)


_rehearsal = None


def rehearsal(project):
    """The session's one Rehearsal, started on the first call."""
    global _rehearsal
    if _rehearsal is None:
        _rehearsal = Rehearsal(project)
        _rehearsal.start()
    return _rehearsal


def end_rehearsal():
    """Cancel the session's Rehearsal if it still runs (the session ended before its test)."""
    if _rehearsal is not None and _rehearsal.is_alive():
        _rehearsal.cancel()


def skip_reason():
    """Why a real `vagrant up` cannot run here, or None."""
    if os.environ.get('APIPHANT_TEST_VAGRANT') == '0':
        return 'APIPHANT_TEST_VAGRANT=0 opts out of booting a VM'
    if not shutil.which('vagrant') or not Path('/usr/sbin/libvirtd').exists():
        return 'vagrant or libvirtd is not installed (tests/run installs them)'
    return testhost.can_make_namespaces()


def kill_namespace_processes():
    for pid in subprocess.run(['ip', 'netns', 'pids', NAMESPACE], capture_output=True,
                              text=True).stdout.split():
        testhost.quiet('kill', '-KILL', pid)


def remove_namespace():
    """Kill what still runs in the namespace (Vagrant's port forwards, SSH masters), found by
    namespace, never by name; then remove it and the veth pair."""
    kill_namespace_processes()
    testhost.quiet('ip', 'netns', 'del', NAMESPACE)
    testhost.quiet('ip', 'link', 'del', HOST_LINK)


def clean():
    """Remove what a crashed run left: the namespace and its processes, the veth pair, the
    proxy and the temp dirs named apiphant-v*."""
    remove_namespace()
    for leftover in Path(tempfile.gettempdir()).glob(f'{PREFIX}*'):
        testhost.kill_proxy(leftover / 'acng')
        shutil.rmtree(leftover, ignore_errors=True)


if __name__ == '__main__':
    if sys.argv[1:] != ['clean']:
        sys.exit(f'usage: {sys.argv[0]} clean')
    clean()
