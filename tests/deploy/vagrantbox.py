"""A Debian 12 Vagrant box for the libvirt provider, built here from Debian's packages.

No box can be downloaded on the test machine, so the test builds one: debootstrap, a `vagrant` user
with password-less sudo and Vagrant's insecure key, an ext4 image made without a loop device
(`mkfs.ext4 -d`), converted to qcow2. The box boots its kernel directly (the box's own Vagrantfile
names the kernel, the initrd and the command line), so it needs no boot loader. Its apt reaches
Debian only through the test's apt proxy, like the test hosts.

Under QEMU's software emulation every program in the guest runs some 20 times slower than here,
so the box is made ready for the playbook where a box maker could: it already holds the Debian
packages the packages role installs (read from the role's defaults, so the box follows the role)
and python3-apt for Ansible's apt module, with apt's package lists fetched and indexed here; the
playbook still runs every step and finds them installed. The kernel command line turns off the
CPU-bug mitigations (page-table isolation makes every system call flush QEMU's emulated TLB) and
trusts the TSC as the clock, so a clock read is an instruction, not an emulated device access.

The box is cached under /var/cache/apiphant-tests; its name hashes this file, the packages role's
defaults, the mirror, the mirror's release date and the proxy, so any change to how it is made
builds a new one.
"""

import ast
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import jinja2
import yaml

import testhost

PACKAGES = ('openssh-server,sudo,python3,systemd-sysv,linux-image-amd64,ifupdown,isc-dhcp-client,'
            'iproute2,dbus,rsync,python3-apt')
ROLE_DEFAULTS = Path(__file__).resolve().parents[2] / 'playbooks/roles/packages/defaults/main.yml'
DISK_SIZE = '8G'  # what the VM sees; the qcow2 holds only what is written
INSECURE_KEY = Path('/usr/share/rubygems-integration/all/gems').glob('vagrant-*/keys/vagrant.pub')

BOX_VAGRANTFILE = '''\
# Direct kernel boot: the box carries its kernel and initrd instead of a boot loader.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.kernel = File.join(__dir__, "vmlinuz")
    libvirt.initrd = File.join(__dir__, "initrd.img")
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 mitigations=off tsc=reliable clocksource=tsc quiet"
  end
end
'''

INTERFACES = '''\
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
'''


def insecure_key():
    """Vagrant's well-known public key, as Debian's vagrant package ships it."""
    key = next(INSECURE_KEY, None)
    if key is None:
        raise RuntimeError("no keys/vagrant.pub in Debian's vagrant package: is vagrant installed?")
    return key.read_text()


def role_packages():
    """The packages role's `packages_apt` for a host that serves nginx itself, as Vagrant's VM does."""
    expression = yaml.safe_load(ROLE_DEFAULTS.read_text())['packages_apt']
    return ast.literal_eval(jinja2.Template(expression).render(product_behind_lb=False))


def box(mirror, proxy):
    """The path of the cached .box file for `mirror`, reached by the VM through `proxy` (host:port),
    which must be up: the box's apt lists are fetched through it."""
    key_text = insecure_key()
    packages = ','.join(dict.fromkeys([*PACKAGES.split(','), *role_packages()]))
    source = Path(__file__).read_bytes()
    key = hashlib.sha256(source + f'{packages} {mirror} {testhost.release_date()} {proxy} {key_text}'.encode())
    path = testhost.CACHE / f'vagrant-{testhost.SUITE}-libvirt-{key.hexdigest()[:16]}.box'
    if path.exists():
        return path
    testhost.CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='apiphant-vbox', dir=testhost.CACHE) as scratch:
        scratch = Path(scratch)
        root, contents = scratch / 'root', scratch / 'box'
        contents.mkdir()
        testhost.run('debootstrap', '--variant=minbase', f'--include={packages}', testhost.SUITE, root,
                     mirror)
        _configure(root, proxy, key_text)
        boot = root / 'boot'
        shutil.copy(next(boot.glob('vmlinuz-*')), contents / 'vmlinuz')
        shutil.copy(next(boot.glob('initrd.img-*')), contents / 'initrd.img')
        raw = scratch / 'disk.raw'
        testhost.run('mkfs.ext4', '-q', '-L', 'root', '-d', root, raw, DISK_SIZE)
        testhost.run('qemu-img', 'convert', '-O', 'qcow2', raw, contents / 'box.img')
        (contents / 'metadata.json').write_text(json.dumps(
            {'provider': 'libvirt', 'format': 'qcow2', 'virtual_size': int(DISK_SIZE.rstrip('G'))}))
        (contents / 'Vagrantfile').write_text(BOX_VAGRANTFILE)
        partial = scratch / 'partial.box'
        testhost.run('tar', '-C', contents, '-cf', partial, '.')
        for old in testhost.CACHE.glob(f'vagrant-{testhost.SUITE}-libvirt-*.box'):
            old.unlink()  # one box is kept: each is the size of a Debian install
        partial.rename(path)
    return path


def _configure(root, proxy, public_key):
    """What a Vagrant base box has: a vagrant user with sudo and the insecure key, DHCP on eth0."""
    etc = root / 'etc'
    (etc / 'hostname').write_text('debian\n')
    (etc / 'hosts').write_text('127.0.0.1 localhost\n127.0.1.1 debian\n')
    (etc / 'fstab').write_text('/dev/vda / ext4 defaults 0 1\n')
    (etc / 'network/interfaces').write_text(INTERFACES)
    (etc / 'machine-id').write_text('')  # each VM makes its own on first boot
    (etc / 'apt/sources.list').write_text(f'deb http://{proxy}/debian {testhost.SUITE} main\n')
    with (etc / 'ssh/sshd_config').open('a') as sshd_config:
        sshd_config.write('UseDNS no\n')
    testhost.run('chroot', root, 'useradd', '--create-home', '--shell', '/bin/bash', 'vagrant')
    sudoers = etc / 'sudoers.d/vagrant'
    sudoers.write_text('vagrant ALL=(ALL) NOPASSWD: ALL\n')
    sudoers.chmod(0o440)
    ssh = root / 'home/vagrant/.ssh'
    ssh.mkdir(mode=0o700)
    (ssh / 'authorized_keys').write_text(public_key)
    testhost.run('chroot', root, 'chown', '-R', 'vagrant:vagrant', '/home/vagrant/.ssh')
    testhost.run('chroot', root, 'apt-get', 'clean')
    # The lists under the proxy's URL, as the VM's apt names them, and their index built here.
    testhost.run('chroot', root, 'apt-get', 'update', '-qq')
