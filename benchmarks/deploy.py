"""How long `fab deploy HOST` takes on a throwaway test host with two API ports (tests/deploy's lab):

    first       from a bare Debian host: packages, virtualenv, every port started
    unchanged   the same product again: nothing to change
    one line    a one-line change of the product's code, released on both ports

    APIPHANT_TEST_LAB=d python benchmarks/deploy.py           (as root: the lab needs namespaces)
    APIPHANT_TEST_LAB=d python benchmarks/deploy.py --write   also write benchmarks/RESULTS.md
    APIPHANT_TEST_LAB=d python benchmarks/deploy.py --profile  also where each run's time went

Targets on a 2-core machine: unchanged at most 15 s, one line at most 30 s. The deploy runs as a
user runs it, through deploy/'s fabfile and this checkout's playbooks and ansible.cfg; the controller's
wheel and release caches are the lab's own, so the first run builds them as a new user's does.
"""

import argparse
import collections
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / 'tests' / 'deploy'))

import report  # noqa: E402

import conftest  # noqa: E402  the deploy tests' inventory and Ansible environment, one definition
import testhost  # noqa: E402

TARGETS = {'unchanged': 15, 'one line': 30}


def timed(command, cwd, env):
    started = time.monotonic()
    run = conftest.run_command(command, cwd, env)
    seconds = time.monotonic() - started
    if run.returncode:
        raise SystemExit(f'{" ".join(map(str, command))} failed:\n{run.output[-4000:]}')
    return seconds, run.recap()


def profile(times_file, seconds, slowest=15):
    """Where a run's seconds went, from benchmarks/ansible_callbacks/task_times.py's lines: the
    playbooks, fab's own time around them, and the slowest tasks (a task's runs added up)."""
    runs = [json.loads(line) for line in times_file.read_text().splitlines()]
    times_file.unlink()
    in_playbooks = sum(run['ended'] - run['started'] for run in runs)
    tasks = collections.Counter()
    for run in runs:
        for name, taken in run['tasks']:
            tasks[name] += taken
    lines = [f'    {len(runs)} playbook run(s) {in_playbooks:.1f} s, fab around them {seconds - in_playbooks:.1f} s, '
             f'{sum(len(run["tasks"]) for run in runs)} tasks; the slowest:']
    lines += [f'    {taken:6.2f}  {name}' for name, taken in tasks.most_common(slowest)]
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--write', metavar='LABEL', help='write the table to benchmarks/RESULTS.md as '
                        'the section "Deploy, LABEL" (e.g. before, after)')
    parser.add_argument('--profile', action='store_true', help="print each run's time in its playbooks, in "
                        'fab around them, and its slowest tasks')
    args = parser.parse_args()

    # Stopped by SIGTERM (or SIGINT, ignored in a background job), it still removes its lab.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit('stopped'))
    load = os.getloadavg()[0]
    lab = testhost.Lab(count=1)
    try:
        host = lab.hosts[0]
        product = lab.workdir / 'product'
        shutil.copytree(ROOT / 'example', product, ignore=shutil.ignore_patterns('__pycache__', 'tests'))
        inventory = conftest.write_inventory(lab, product, [host], api_ports='[8001, 8002]')
        env = {**conftest.lab_environment(lab), 'FABRIC_INVENTORY': str(inventory)}
        times_file = lab.workdir / 'task-times.jsonl'
        if args.profile:
            env.update(ANSIBLE_CALLBACK_PLUGINS=str(HERE / 'ansible_callbacks'), ANSIBLE_CALLBACKS_ENABLED='task_times',
                       APIPHANT_TASK_TIMES=str(times_file))
        command = [Path(sys.executable).parent / 'fab', 'deploy', host.address]
        echo = product / 'myproduct' / 'api' / 'v0' / 'echo.py'
        rows = []
        for name in ('first', 'unchanged', 'one line'):
            if name == 'one line':
                echo.write_text(echo.read_text().replace("'myproduct'", "'myproduct, one line later'"))
            seconds, recap = timed(command, ROOT / 'deploy', env)
            rows.append((name, seconds, recap.get(host.name, {}).get('changed', '?')))
            print(f'{name:<10} {seconds:6.1f} s  changed={rows[-1][2]}', file=sys.stderr)
            if args.profile:
                print(profile(times_file, seconds), file=sys.stderr)
    finally:
        lab.stop()

    table = ['| run | seconds | target | changed tasks |', '|---|---|---|---|']
    table += [f'| {name} | {seconds:.1f} | {f"≤ {TARGETS[name]}" if name in TARGETS else ""} | {changed} |'
              for name, seconds, changed in rows]
    commit = subprocess.run(['git', '-C', str(ROOT), 'describe', '--always', '--dirty'], capture_output=True,
                            text=True).stdout.strip()
    text = (f'{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs, '
            f'load average {load:.1f} as it started; commit {commit}\n\n'
            + '\n'.join(table) + '\n')
    print(text)
    if args.write:
        report.write(f'Deploy, {args.write}', f'python benchmarks/deploy.py --write {args.write}', text)


if __name__ == '__main__':
    main()
