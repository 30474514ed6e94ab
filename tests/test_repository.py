"""What the repository itself must never hold: secrets, and deploy code that imports the framework."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRETS = re.compile(rb'-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}|ghp_[0-9A-Za-z]{36}'
                     rb'|xox[bp]-[0-9A-Za-z-]{20,}|(?i:password|secret|token)\s*[:=]\s*["\'][^"\'\s]{8,}')


def tracked_files():
    listed = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name.decode() for name in listed.split(b'\0') if name]


def test_no_secret_is_committed():
    found = [str(path.relative_to(ROOT)) for path in tracked_files()
             if path.is_file() and SECRETS.search(path.read_bytes())]
    assert found == []


def test_the_deploy_half_never_imports_the_framework():
    """deploy/, playbooks/ and the Vagrantfile must move to their own repository as they are."""
    deploy_files = [path for path in tracked_files()
                    if path.parts[len(ROOT.parts)] in ('deploy', 'playbooks') and path.suffix == '.py']
    imports = [str(path.relative_to(ROOT)) for path in deploy_files
               if re.search(r'^\s*(from|import)\s+apiphant\b', path.read_text(), re.M)]
    assert deploy_files and imports == []
