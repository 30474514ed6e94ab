"""The benchmark runs end to end (quick mode); it measures, it never passes or fails on timings."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / 'benchmarks' / 'run.py'


@pytest.mark.skipif(not shutil.which('wrk'), reason='wrk is not installed (tests/run installs it)')
def test_quick_benchmark_prints_every_contender_and_the_ratios():
    result = subprocess.run([sys.executable, str(BENCHMARK), '--quick'], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith('| ') and ' conns' not in line]
    for contender in ('apiphant', 'bare gevent', 'bare gevent, TCP_NODELAY', 'falcon'):
        for connections in (64, 256):
            row = next(row for row in rows if row.startswith(f'| {contender} | {connections} |'))
            assert float(row.split('|')[3].replace(',', '')) > 0, row
    for ratio in ('apiphant / bare gevent |', 'apiphant / falcon |'):
        assert any(line.startswith(f'| {ratio}') for line in rows), result.stdout
