"""The deploy lock of a host and its audit trail; the lock role runs it on the host as root, and on
the controller to name the run and judge a lock stale.

The lock is one file in a folder only root can change (/run/apiphant/PRODUCT.lock, 0600): no other
local user can open it, so none can hold its flock or delay a run. The file stays; its one line names
the run holding the lock, and a free lock is an empty file. flock guards only the moment a line is read
and written, and is waited for at most until the deadline.

A holder line is: user host machine-id pid epoch since action token. The run is identified by its
token and the controller's machine id (/etc/machine-id); the user and host name only tell a person who
it was. A lock is stale only when the machine id is this controller's and that machine's pid is not
an ansible-playbook: a lock taken on another machine is never broken here, only by `fab unlock`.

    deploy_lock.py holder ACTION                   (controller) print this run's holder line
    deploy_lock.py stale HELD                      (controller) print HELD if its run is gone
    deploy_lock.py read LOCK                       print the holder, nothing when free
    deploy_lock.py take LOCK HOLDER TIMEOUT [STALE]  take it, or exit 3 printing its holder
    deploy_lock.py release LOCK HOLDER HOME WHO ACTION RELEASE COMMIT OUTCOME [MIGRATIONS]
    deploy_lock.py break LOCK HELD HOME WHO NOTE     free the lock if it still is HELD (fab unlock)

release and break free the lock (break only if it still is HELD), then append a line to HOME/audit.log
(time, who, action, release, commit, outcome; the release defaults to HOME/current's; then
`migrated=ID,ID` when the run applied migrations there): a failing append (a full disk) never
leaves the lock held.
"""

import errno
import fcntl
import os
import pwd
import secrets
import socket
import stat
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

MACHINE_IDS = ('/etc/machine-id', '/var/lib/dbus/machine-id')
TAKEN_BY_ANOTHER = 3
CHANGED = 4


class Refused(Exception):
    """Why the lock cannot be used safely; the message is for the person running the deploy."""


def machine_id():
    for path in MACHINE_IDS:
        try:
            found = Path(path).read_text().strip()
        except OSError:
            continue
        if found:
            return found
    return '-'  # a lock from an unidentified machine is never judged stale


def ansible_playbook(pid):
    """Whether pid is a running ansible-playbook (not a zombie)."""
    try:
        status = Path(f'/proc/{pid}/stat').read_text()
        command = Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
    except (OSError, ValueError):
        return False
    # ansible-playbook itself or python running it, not a shell whose command line names it
    return status.rsplit(')', 1)[-1].split()[0] != 'Z' and any(
        os.path.basename(part) == b'ansible-playbook' for part in command[:2])


def parent(pid):
    return int(Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[-1].split()[1])


def run_pid():
    """The ansible-playbook that runs this one: up the parent chain from a lookup, past its worker (a
    fork of ansible-playbook, gone after the task) to the first process."""
    pid = os.getppid()
    for _ in range(16):
        if ansible_playbook(pid) and not ansible_playbook(parent(pid)):
            return pid
        if pid <= 1:
            break
        pid = parent(pid)
    return os.getppid()


def holder(action, user, host, pid, now=None):
    """The one line naming a run: user host machine-id pid epoch since action token."""
    now = time.time() if now is None else now
    since = datetime.fromtimestamp(now, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')
    return ' '.join(map(str, (user, host, machine_id(), pid, int(now), since, action, secrets.token_hex(8))))


def words(line):
    """The fields of a holder line, by name; None for a line that is not one."""
    parts = line.split()
    names = ('user', 'host', 'machine', 'pid', 'epoch', 'since', 'action', 'token')
    return dict(zip(names, parts, strict=True)) if len(parts) == len(names) and parts[3].isdigit() else None


def stale(held):
    """Whether the run named by `held` ran on this machine and is gone."""
    fields = words(held)
    return bool(fields and fields['machine'] != '-' and fields['machine'] == machine_id()
                and not ansible_playbook(int(fields['pid'])))


def root_only(folder):
    """Make sure only root can change `folder` and its parent (so no one else can make or replace
    it), nor any folder above them (a sticky one, as /tmp, lets no one replace root's entries)."""
    for depth, path in enumerate([folder, *folder.parents]):
        info = os.lstat(path)
        writable = info.st_mode & 0o022 and (depth < 2 or not info.st_mode & stat.S_ISVTX)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or writable:
            raise Refused(f'{path} is not a folder only root can change (owner uid {info.st_uid}, mode '
                          f'{stat.filemode(info.st_mode)}): the deploy lock cannot live under it')


def opened(lock):
    """The lock file, created 0600 in its root-only folder (made 0700 if missing), never through a link."""
    lock = Path(lock)
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    root_only(lock.parent)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        os.close(fd)
        raise Refused(f'{lock} is not a file only root can open: the deploy lock cannot be it')
    return fd


def flocked(fd, deadline):
    """Hold the file's flock, waiting at most until `deadline` (time.monotonic()); False if it passed."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES) or time.monotonic() >= deadline:
                return False
        time.sleep(0.05)


def content(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors='replace').strip()


def write(fd, line):
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    if line:
        os.write(fd, (line + '\n').encode())
    os.fsync(fd)


def take(lock, me, timeout, stale_line='', clock=time.monotonic, pause=time.sleep):
    """Take the lock for `me`, free or held by `stale_line`, within `timeout` seconds: (True, what it
    held before) or (False, its holder)."""
    deadline = clock() + timeout
    fd = opened(lock)
    try:
        while True:
            held = None
            if flocked(fd, deadline):
                held = content(fd)
                if held in ('', me) or (stale_line and held == stale_line):
                    write(fd, me)
                    return True, held
                fcntl.flock(fd, fcntl.LOCK_UN)
            if clock() >= deadline:
                return False, held if held is not None else content(fd)
            pause(min(1, max(0, deadline - clock())))
    finally:
        os.close(fd)


def free(lock, expected, deadline):
    """Empty the lock if it holds `expected`; whether it did."""
    fd = opened(lock)
    try:
        if not flocked(fd, deadline):
            return False
        if content(fd) != expected:
            return False
        write(fd, '')
        return True
    finally:
        os.close(fd)


def audit(home, who, action, release, commit, outcome, migrations=''):
    """Append one line to HOME/audit.log, root's file in root's folder: never through a link.
    `migrations`: the ids of those the run applied, comma-separated, on the host that applied them."""
    home = Path(home)
    if not release:
        release = os.path.basename(os.readlink(home / 'current')) if (home / 'current').is_symlink() else '-'
    line = ' '.join((datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ'), who, action, release,
                     commit or '-', outcome) + ((f'migrated={migrations}',) if migrations else ()))
    fd = os.open(home / 'audit.log', os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, (line + '\n').encode())
    finally:
        os.close(fd)


def main(argv):
    action, *args = argv
    if action == 'holder':
        print(holder(args[0], pwd.getpwuid(os.getuid()).pw_name, socket.gethostname(), run_pid()))
    elif action == 'stale':
        if stale(args[0]):
            print(args[0])
    elif action == 'read':
        fd = opened(args[0])
        try:
            print(content(fd))
        finally:
            os.close(fd)
    elif action == 'take':
        lock, me, timeout, *rest = args
        taken, held = take(lock, me, float(timeout), rest[0] if rest else '')
        print(held)
        return 0 if taken else TAKEN_BY_ANOTHER
    elif action in ('release', 'break'):
        # A run's lock is freed (if still its own) and audited; a broken one audited only if freed.
        if action == 'release':
            lock, expected, home, *entry = args
        else:
            lock, expected, home, who, note = args
            entry = (who, 'unlock', '', '-', note)
        if not free(lock, expected, time.monotonic() + 30) and action == 'break':
            print(f'the deploy lock no longer is {expected!r}: taken or released meanwhile', file=sys.stderr)
            return CHANGED
        try:
            if home:  # none for a run that changes nothing (--check)
                audit(home, *entry)
        except OSError as error:
            print(f'cannot append to {home}/audit.log: {error.strerror}; the deploy lock is free', file=sys.stderr)
            return 1
    else:
        raise Refused(f'unknown action {action!r}')
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except Refused as refusal:
        print(refusal, file=sys.stderr)
        sys.exit(2)
