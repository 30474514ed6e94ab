"""The documentation: docs/ builds with MkDocs without a single warning (so a broken link, a missing
anchor or a page the nav leaves out fails), each page says whom it is for, and README.md stays a
short front door whose commands come first and whose links all lead to a file."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs'
README = ROOT / 'README.md'
# Material prints a notice about its successor unless told not to; it is no warning of the build's.
QUIET = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)[^)]*\)')


def build(root, site):
    """`mkdocs build --strict` of the project at `root` into `site`; (exit code, all it printed)."""
    result = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(site)],
                            cwd=root, capture_output=True, text=True, timeout=300, env=QUIET)
    return result.returncode, result.stdout + result.stderr


def test_the_docs_build_strictly_without_a_warning(tmp_path):
    status, output = build(ROOT, tmp_path / 'site')
    assert status == 0, output
    assert not re.search(r'^WARNING\b', output, re.M), output
    assert (tmp_path / 'site' / 'deploy' / 'https' / 'index.html').is_file()


@pytest.mark.parametrize('breakage, file, text, named', [
    ('a link to a page that does not exist', 'index.md', '\n[gone](no-such-page.md)\n', 'no-such-page.md'),
    ('a link to a heading that does not exist', 'index.md', '\n[gone](product/actions.md#no-such-heading)\n',
     'no-such-heading'),
    ('a page the nav does not list', 'orphan.md', '# Orphan\n\nFor nobody.\n', 'orphan.md'),
])
def test_a_broken_link_or_a_page_outside_the_nav_fails_the_build(tmp_path, breakage, file, text, named):
    """mkdocs.yml's validation settings make these warnings (MkDocs' defaults only log some as info)."""
    shutil.copytree(DOCS, tmp_path / 'docs')
    shutil.copy(ROOT / 'mkdocs.yml', tmp_path)
    with open(tmp_path / 'docs' / file, 'a') as page:
        page.write(text)
    status, output = build(tmp_path, tmp_path / 'site')
    assert status != 0, breakage
    assert re.search(rf'^WARNING\b.*{re.escape(named)}', output, re.M | re.S), output  # a warning may span lines


def test_every_page_says_whom_it_is_for():
    for page in sorted(DOCS.rglob('*.md')):
        blocks = page.read_text().split('\n\n')
        assert blocks[0].startswith('# ') and blocks[1].startswith('For '), page.relative_to(ROOT)


def test_the_readme_is_a_short_front_door():
    assert len(README.read_text().splitlines()) <= 200


def test_the_readme_begins_with_the_two_commands_a_newcomer_runs():
    """Serve the example, run the whole suite: the first two code blocks, as .ci/run relies on."""
    blocks = re.findall(r'^```\w*\n(.*?)^```', README.read_text(), re.M | re.S)
    assert blocks[:2] == [
        'python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/apiphant example/myproduct\n',
        'tests/run\n',
    ]


def test_every_relative_link_in_the_readme_points_at_a_file():
    targets = [target for target in LINK.findall(README.read_text())
               if not re.match(r'[a-z][a-z0-9+.-]*:|#', target)]
    assert targets, 'the README links to the docs'
    missing = [target for target in targets if not (ROOT / target.split('#')[0]).exists()]
    assert missing == []
