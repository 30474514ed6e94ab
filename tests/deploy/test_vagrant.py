"""The Vagrantfile: valid for Vagrant, its generated inventory puts the VM where site.yml looks,
and `vagrant up` boots a VM (QEMU under libvirt, see vagrantlab.py) that serves the example."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import vagrantlab

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not shutil.which('vagrant'), reason='vagrant is not installed (tests/run installs it)')
def test_vagrant_validates_the_vagrantfile():
    # No hypervisor here: provider options are left out of the check, everything else is checked.
    result = subprocess.run(['vagrant', 'validate', '--ignore-provider'], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Vagrantfile validated successfully' in result.stdout


def test_the_generated_inventory_names_the_group_site_yml_provisions():
    vagrantfile = (ROOT / 'Vagrantfile').read_text()
    groups = set(re.findall(r'"(\w+)" => \[', re.search(r'ansible\.groups = \{(.*?)\}', vagrantfile).group(1)))
    playbook = re.search(r'ansible\.playbook = "([^"]+)"', vagrantfile).group(1)
    plays = yaml.safe_load((ROOT / playbook).read_text())
    assert groups & {play['hosts'] for play in plays}
    for path in re.findall(r'File\.expand_path\("([^"]+)", __dir__\)', vagrantfile):
        assert (ROOT / path).exists(), path


# Started by conftest.py when the session collects this test, which then runs last: its VM boots
# and is provisioned while the other tests run.
SKIP = vagrantlab.skip_reason()


@pytest.mark.skipif(SKIP is not None, reason=str(SKIP))
def test_vagrant_up_serves_the_example_and_provisions_idempotently():
    """The first real boot a user meets: `vagrant up` with the libvirt provider, site.yml through
    Vagrant's ansible provisioner, the example answering on the forwarded port; then a second
    provision that changes nothing, and `vagrant destroy` leaving nothing behind."""
    run = vagrantlab.rehearsal(ROOT)
    run.join(timeout=2 * 3600)
    assert not run.is_alive(), 'the vagrant rehearsal is still running after two hours'
    print(', '.join(f'{step}: {seconds:.0f} s' for step, seconds in run.seconds.items()))  # for the test lab's Timings
    assert run.error is None or 'up' in run.results, run.error

    up = run.results['up']
    assert up.returncode == 0, up.output + run.logs
    assert up.recap()['default']['failed'] == 0
    assert run.error is None, run.error

    answer = run.results['curl']
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == {**vagrantlab.ECHO, 'server': 'myproduct'}

    again = run.results['provision']
    assert again.returncode == 0, again.output
    assert again.recap()['default']['changed'] == 0, again.output

    destroy = run.results['destroy']
    assert destroy.returncode == 0, destroy.output
    assert 'not created' in run.results['status'].output

    assert vagrantlab.NAMESPACE not in subprocess.run(['ip', 'netns', 'list'], capture_output=True,
                                                      text=True).stdout
    assert not run.lab.workdir.exists()
    assert not processes_mentioning(str(run.lab.workdir))


def processes_mentioning(text):
    """PIDs of the processes whose command line contains `text`."""
    pids = []
    for cmdline in Path('/proc').glob('[0-9]*/cmdline'):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(cmdline.parent.name)
        except OSError:
            pass  # ended while we looked
    return pids
