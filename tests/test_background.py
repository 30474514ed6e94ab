"""`apiphant-background`: tasks run one at a time, shortest period first, failures logged, SIGTERM."""

import itertools
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from apiphant.background import seconds

from support import make_product, wait_for

COMMAND = str(Path(sys.executable).parent / 'apiphant-background')

# Every task module below starts with this: its tasks write start and end lines to journal.txt.
PREAMBLE = '''
    import time
    from pathlib import Path

    from apiphant.background import seconds

    JOURNAL = Path(__file__).parent.parent.parent / 'journal.txt'


    def note(text):
        with JOURNAL.open('a') as journal:
            journal.write(f'{text} {time.monotonic()}\\n')


'''

TASKS = PREAMBLE + '''
    @seconds(0.5)
    def slow():
        note('slow-start')
        time.sleep(0.3)
        note('slow-end')


    @seconds(0.2)
    def fast():
        note('fast-start')
        note('fast-end')


    @seconds(0.3)
    def boom():
        note('boom-start')
        note('boom-end')
        1 / 0


    def on_error(text):
        note('on_error ' + text.splitlines()[0].replace(' ', '_'))
        {on_error_extra}
'''


class Background:
    def __init__(self, folder, *args):
        self.process = subprocess.Popen([COMMAND, str(folder), *args], stderr=subprocess.PIPE, text=True)
        self.log = []
        self.reader = threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.reader.join(5)
        return code, ''.join(self.log)


@pytest.fixture
def background():
    """Start `apiphant-background` runners; any still running when the test ends (failed) is killed."""
    runners = []

    def start(folder, *args):
        runners.append(Background(folder, *args))
        return runners[-1]

    yield start
    for runner in runners:
        if runner.process.poll() is None:
            runner.process.kill()
            runner.process.wait()


def journal(tmp_path):
    path = tmp_path / 'journal.txt'
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def product(tmp_path, on_error_extra='pass'):
    return make_product(tmp_path, 'tasks', {'api/background.py':
                                            TASKS.replace('{on_error_extra}', on_error_extra)})


def test_tasks_run_one_at_a_time_shortest_period_first(tmp_path, background):
    runner = background(product(tmp_path))
    wait_for(lambda: sum(entry[0] == 'slow-end' for entry in journal(tmp_path)) >= 3)
    code, log = runner.stop()
    assert code == 0
    entries = journal(tmp_path)
    starts = [entry[0] for entry in entries if entry[0].endswith('-start')]
    assert starts[:3] == ['fast-start', 'boom-start', 'slow-start']
    running = None
    for name, *_ in entries:
        if name.endswith('-start'):
            assert running is None, f'{name} started while {running} was running'
            running = name[:-len('-start')]
        elif name.endswith('-end'):
            assert running == name[:-len('-end')]
            running = None
    assert 'Task fast: OK.' in log and 'Task slow: OK.' in log
    assert 'Task boom: Traceback (most recent call last)' in log and 'ZeroDivisionError' in log
    assert 'background: stopped' in log
    assert any(entry[0] == 'on_error' and entry[1].startswith('Task_boom:') for entry in entries)


def test_a_failing_on_error_is_logged_and_the_loop_goes_on(tmp_path, background):
    runner = background(product(tmp_path, on_error_extra="raise OSError('mail server down')"))
    wait_for(lambda: sum(entry[0] == 'on_error' for entry in journal(tmp_path)) >= 2)
    code, log = runner.stop()
    assert code == 0
    assert 'on_error failed for task boom' in log and 'OSError: mail server down' in log


def test_sigterm_during_a_hung_task_stops_cleanly(tmp_path, background):
    folder = make_product(tmp_path, 'hang', {'api/background/__init__.py': '''
        import logging
        import time

        from apiphant.background import seconds


        @seconds(1)
        def hang():
            logging.getLogger('hang').warning('hanging')
            time.sleep(600)
        '''})
    runner = background(folder, '--stop-timeout', '0.5')
    wait_for(lambda: any('hanging' in line for line in runner.log))
    code, log = runner.stop()
    assert code == 0
    assert 'Task hang: stopped unfinished on SIGTERM.' in log


OVERRUN = PREAMBLE + '''
    @seconds(0.1)
    def hog():
        note('hog-start')
        time.sleep(0.3)
        note('hog-end')


    @seconds(0.5)
    def rare():
        note('rare-start')
        note('rare-end')
'''


def test_a_task_that_overruns_its_period_neither_overlaps_nor_starves_the_others(tmp_path, background):
    runner = background(make_product(tmp_path, 'overrun', {'api/background.py': OVERRUN}))
    wait_for(lambda: sum(entry[0] == 'rare-end' for entry in journal(tmp_path)) >= 3)
    code, _ = runner.stop()
    assert code == 0
    entries = journal(tmp_path)
    assert sum(entry[0] == 'hog-end' for entry in entries) >= 2  # (it overran each time: 0.3 s a 0.1 s period)
    for before, after in itertools.pairwise(entries):
        if before[0].endswith('-start'):
            assert after[0] == before[0].replace('-start', '-end'), 'tasks overlapped'


HELD = PREAMBLE + '''
    @seconds(0.1)
    def hog():
        """Runs until the test creates the file `gate` (60 s at most): the test decides when it ends."""
        note('hog-start')
        deadline = time.monotonic() + 60
        while not JOURNAL.with_name('gate').exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        note('hog-end')
'''


def test_sigterm_lets_a_running_task_finish_within_the_stop_timeout(tmp_path, background):
    runner = background(make_product(tmp_path, 'finish', {'api/background.py': HELD}), '--stop-timeout', '60')
    wait_for(lambda: [entry for entry in journal(tmp_path) if entry[0] == 'hog-start'])
    runner.process.send_signal(signal.SIGTERM)
    wait_for(lambda: any('background: stopping, waiting 60 s for hog' in line for line in runner.log))
    (tmp_path / 'gate').touch()  # the task ends only now, after the SIGTERM was taken
    code, log = runner.stop()
    assert code == 0
    assert journal(tmp_path)[-1][0] == 'hog-end'
    assert 'Task hog: OK.' in log and 'background: stopped' in log


@pytest.mark.parametrize('files, message', [
    ({'api/v0/x.py': ''}, 'has no background tasks'),
    ({'api/background.py': 'X = 1\n'}, 'defines no @seconds task'),
    ({'api/background.py': 'import nonexistent_module\n'}, "No module named 'nonexistent_module'"),
])
def test_products_without_runnable_tasks_fail_clearly(tmp_path, files, message):
    folder = make_product(tmp_path, 'none', files)
    result = subprocess.run([COMMAND, str(folder)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert message in result.stderr and 'Traceback' not in result.stderr


def test_seconds_refuses_a_bad_period():
    for period in (0, -1, '60', True):
        with pytest.raises(ValueError):
            seconds(period)
