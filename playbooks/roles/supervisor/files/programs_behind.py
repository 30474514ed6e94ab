"""Which of a product's Supervisor programs do not run as configured, in the order a rolling restart
takes them: the API ports by port, then the background process. Run by the supervisor role as root.

    programs_behind.py HOME PRODUCT API_HOST [--all]

A program is behind, and gets restarted, when Supervisor's configuration of it changed or is new
(`supervisorctl reread` says so; `supervisorctl update NAME` applies it to that program alone), when
it does not run (but one stopped on purpose, STOPPED, stays stopped), when it runs another release
than HOME/current (its working folder, as Kamal compares the running version), when it started
before the product's settings (HOME/environment, HOME/with-environment) last changed, when it may
open fewer descriptors than Supervisor now gives (it started before the role raised Supervisor's
limit), or when an API port does not answer GET /up. So a run that failed halfway through a rolling restart, or before
it, leaves ports that the next run finds and restarts. With --all every program is taken.

Prints one JSON object: {"programs": [{"program", "port", "how": "update" or "restart", "why"}, ...],
"retired": [the group PRODUCT of the programs' earlier layout, to drop first: it holds every port],
"removed": [programs no longer configured, to drop once the others run]}, each dropped by
`supervisorctl update NAME`.
"""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

SETTINGS = ('environment', 'with-environment')


def supervisorctl(*args):
    return subprocess.run(['supervisorctl', *args], capture_output=True, text=True).stdout


def reread():
    """{program: 'changed' | 'available' | 'disappeared'} of Supervisor's configuration against what runs."""
    return dict(re.findall(r'^(\S+): (changed|available|disappeared)$', supervisorctl('reread'), re.M))


def states():
    """{program: (state, pid)} of the configured programs that Supervisor runs."""
    found = {}
    for line in supervisorctl('status').splitlines():
        parts = line.split()
        if len(parts) >= 2:
            pid = re.search(r'\bpid (\d+),', line)
            found[parts[0].split(':')[-1]] = (parts[1], int(pid.group(1)) if pid else 0)
    return found


def started(pid):
    """When the process started, in seconds since the epoch."""
    since_boot = int(Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[-1].split()[19])
    boot = int(re.search(r'^btime (\d+)$', Path('/proc/stat').read_text(), re.M).group(1))
    return boot + since_boot / os.sysconf('SC_CLK_TCK')


def descriptor_limit(pid):
    """The most descriptors the process may open (its hard limit, to which apiphant raises its own)."""
    line = next(line for line in Path(f'/proc/{pid}/limits').read_text().splitlines()
                if line.startswith('Max open files'))
    return int(line.split()[4])


def answers(host, port):
    url = f'http://{f"[{host}]" if ":" in host else host}:{port}/up'
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    try:
        with direct.open(url, timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def why_behind(home, pid, state, settings_changed, host, port, descriptors):
    """Why a configured program must restart, '' if it runs as configured."""
    if state == 'STOPPED':
        return ''
    if not pid:
        return f'not running ({state})'
    try:
        running = os.path.realpath(os.readlink(f'/proc/{pid}/cwd'))
    except OSError:
        return f'not running ({state})'
    current = os.path.realpath(home / 'current')
    if running != current:
        return f'runs release {os.path.basename(running)}, current is {os.path.basename(current)}'
    if started(pid) < settings_changed:
        return 'started before the product\'s settings changed'
    if descriptor_limit(pid) < descriptors:
        return f'may open {descriptor_limit(pid)} descriptors, fewer than Supervisor now gives ({descriptors})'
    if port is not None and not answers(host, port):
        return 'does not answer GET /up'
    return ''


def plan(home, product, host, everything):
    changes = reread()
    running = states()
    ours = re.compile(rf'{re.escape(product)}-(?:api-(\d+)|background)$')
    configured = [name for name in {*running, *changes} if ours.match(name) and changes.get(name) != 'disappeared']
    configured.sort(key=lambda name: (ours.match(name).group(1) is None, int(ours.match(name).group(1) or 0)))
    settings = [home / name for name in SETTINGS if (home / name).exists()]
    settings_changed = max((path.stat().st_mtime for path in settings), default=0)
    descriptors = descriptor_limit(int(supervisorctl('pid')))
    programs = []
    for name in configured:
        port = ours.match(name).group(1)
        port = int(port) if port else None
        state, pid = running.get(name, ('', 0))
        if changes.get(name) == 'changed':
            how, why = 'update', 'its Supervisor settings changed'
        elif changes.get(name) == 'available':
            how, why = 'update', 'new'
        else:
            how, why = 'restart', 'asked for' if everything and state != 'STOPPED' else why_behind(
                home, pid, state, settings_changed, host, port, descriptors)
        if why:
            programs.append({'program': name, 'port': port, 'how': how, 'why': why})
    removed = sorted(name for name, change in changes.items() if change == 'disappeared' and ours.match(name))
    retired = [product] if changes.get(product) == 'disappeared' else []
    return {'programs': programs, 'retired': retired, 'removed': removed}


def main(argv):
    home, product, host, *flags = argv
    print(json.dumps(plan(Path(home), product, host, '--all' in flags)))


if __name__ == '__main__':
    main(sys.argv[1:])
