"""The Python of the whole repository passes ruff as pyproject.toml configures it (pyflakes,
pycodestyle, isort, bugbear, pyupgrade), as the collection passes ansible-lint."""

import subprocess
import sys
from pathlib import Path

from support import ROOT


def test_ruff_passes_on_the_repository():
    ruff = Path(sys.executable).parent / 'ruff'
    result = subprocess.run([ruff, 'check', '--no-cache', '--output-format', 'concise', '.'], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
