"""The benchmark runs end to end (quick mode); it measures, it never passes or fails on timings."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import wait_for

BENCHMARK = Path(__file__).resolve().parents[1] / 'benchmarks' / 'run.py'
CONTENDERS = ('apiphant', 'apiphant, access log', 'bare gevent', 'bare gevent, TCP_NODELAY', 'falcon',
              'httptools core', 'uvicorn+httptools', 'granian, apiphant App')

pytestmark = pytest.mark.skipif(not shutil.which('wrk'), reason='wrk is not installed (tests/run installs it)')


QUIETNESS = (r"load average \d+\.\d\d at the start, \d+\.\d\d at the end \(the run's own processes included\); "
             r'other work used \d+\.\d\d cores during the run: (quiet|\*\*loaded) machine')


def benchmark(*arguments):
    result = subprocess.run([sys.executable, str(BENCHMARK), *arguments], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    # Every run says how loaded the machine was, and whether its ratios can claim anything.
    assert re.search(QUIETNESS, result.stdout), result.stdout[:2000]
    return [line.split(' | ') for line in result.stdout.splitlines() if line.startswith('| ')]


def test_quick_benchmark_prints_every_contender_and_the_ratios():
    rows = benchmark('--quick')
    for contender in CONTENDERS:
        for connections in ('64', '256'):
            row = next(row for row in rows if row[0] == f'| {contender}' and row[1] == connections)
            assert float(row[2].replace(',', '')) > 0, row
    ratios = [row[0] for row in rows if row[0].startswith('| apiphant / ')]
    assert ratios == [f'| apiphant / {baseline}' for baseline in CONTENDERS[2:]]


def test_concurrency_mode_counts_connections_from_the_server_side():
    rows = benchmark('--connections', '200', '--seconds', '2')
    held = {row[0]: int(row[2]) for row in rows if row[1] == '200'}
    assert set(held) == {'| apiphant', '| bare gevent, TCP_NODELAY', '| httptools core'}
    assert all(count > 0 for count in held.values()), held


def test_workers_mode_compares_two_workers_with_one():
    rows = benchmark('--workers', '--quick')
    rates = {row[0]: float(row[2].replace(',', '')) for row in rows if row[1] == '256'}
    assert set(rates) == {'| apiphant, 1 worker', '| apiphant, 2 workers'}
    assert all(rate > 0 for rate in rates.values()), rates
    assert any(row[0] == '| apiphant, 2 workers / apiphant, 1 worker' for row in rows)


def test_metrics_mode_compares_apiphant_with_metrics_and_without():
    rows = benchmark('--metrics', '--quick')
    rates = {(row[0], row[1]): float(row[2].replace(',', '')) for row in rows if row[1] in ('64', '256')}
    assert set(rates) == {(name, connections) for name in ('| apiphant', '| apiphant, metrics')
                          for connections in ('64', '256')}
    assert all(rate > 0 for rate in rates.values()), rates
    assert any(row[0] == '| apiphant, metrics / apiphant' for row in rows)


def test_database_benchmark_runs_every_test_for_every_contender():
    """benchmarks/database.py --quick: TechEmpower's database tests and the echo, each contender
    answering every request with a 2xx (req/s above 0; wrk's timeouts, which a loaded machine
    may cause, are not checked)."""
    result = subprocess.run([sys.executable, str(BENCHMARK.parent / 'database.py'), '--quick'], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(QUIETNESS, result.stdout), result.stdout[:2000]
    sections = re.split(r'^### ', result.stdout, flags=re.M)[1:]
    assert [section.split('\n')[0] for section in sections] == ['JSON echo', 'single query', '20 queries', '20 updates']
    for section in sections:
        rows = {row.split(' | ')[0]: row.split(' | ') for row in section.splitlines() if row.startswith('| ')}
        for contender in ('apiphant, psycopg 3', 'falcon, gunicorn gevent, psycopg 3', 'fastapi, uvicorn, asyncpg'):
            row = rows[f'| {contender}']
            assert float(row[2].replace(',', '')) > 0 and row[7] == '0', (section.split('\n')[0], row)


def test_cpu_that_other_processes_use_during_a_run_marks_it_loaded():
    """A busy loop the run did not start (orphaned at once, so never reaped by this process) is
    other work; the verdict must say the ratios claim nothing."""
    sys.path.insert(0, str(BENCHMARK.parent))
    import report

    machine = report.Machine()
    marker = f'apiphant-busy-{os.getpid()}'
    subprocess.run(['sh', '-c', f'(timeout 1 sh -c "while :; do :; done; : {marker}") >/dev/null 2>&1 &'],
                   check=True)
    wait_for(lambda: subprocess.run(['pgrep', '-f', marker], capture_output=True).returncode == 1, timeout=10)
    assert 'loaded machine' in machine.verdict()
