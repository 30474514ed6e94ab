"""The Vagrantfile: valid for Vagrant, its generated inventory puts the VM where site.yml looks,
and `vagrant up` boots a VM (QEMU under libvirt, see vagrantlab.py) that serves the example."""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import vagrantlab

ROOT = Path(__file__).resolve().parents[2]
ECHO = {'hello': 'world'}


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


@pytest.fixture
def vagrant_lab():
    lab = vagrantlab.Lab(ROOT)
    yield lab
    lab.stop()


def timed(step, *args, **options):
    """Run step(*args), print its wall time (the README quotes them) and return its result."""
    start = time.monotonic()
    result = step(*args, **options)
    print(f'{args[0]}: {time.monotonic() - start:.0f} s')
    return result


@pytest.mark.skipif(os.environ.get('APIPHANT_TEST_VAGRANT') != '1',
                    reason='boots a VM under software emulation, longer than the suite\'s budget on the '
                           '2-core machine (see README); APIPHANT_TEST_VAGRANT=1 runs it')
def test_vagrant_up_serves_the_example_and_provisions_idempotently(vagrant_lab):
    """The first real boot a user meets: `vagrant up` with the libvirt provider, site.yml through
    Vagrant's ansible provisioner, the example answering on the forwarded port."""
    lab = vagrant_lab
    up = timed(lab.vagrant, 'up', '--provider=libvirt', timeout=3600)
    assert up.returncode == 0, up.output + lab.log('*.log')
    assert up.recap()['default']['failed'] == 0

    answer = lab.curl('--data-binary', json.dumps(ECHO), '-H', 'Content-Type: application/json',
                      'http://127.0.0.1:8080/api/v0/echo/read')
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == {**ECHO, 'server': 'myproduct'}

    again = timed(lab.vagrant, 'provision', timeout=3000)
    assert again.returncode == 0, again.output
    assert again.recap()['default']['changed'] == 0, again.output

    destroy = timed(lab.vagrant, 'destroy', '--force', timeout=600)
    assert destroy.returncode == 0, destroy.output
    assert 'not created' in lab.vagrant('status', timeout=300).output

    lab.stop()
    assert vagrantlab.NAMESPACE not in subprocess.run(['ip', 'netns', 'list'], capture_output=True,
                                                      text=True).stdout
    assert not lab.workdir.exists()
    assert not processes_mentioning(str(lab.workdir))


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
