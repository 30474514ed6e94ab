"""The Vagrantfile: valid for Vagrant, and its generated inventory puts the VM where site.yml looks."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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
