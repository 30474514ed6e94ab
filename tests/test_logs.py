"""`--log-format json`: every line a run writes, access and application, is one JSON object."""

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests

from apiphant.test import serve

from support import exchange, http_request, make_product, run_cli, wait_for

PRODUCT = {'api/v0/loud.py': '''
    import logging

    log = logging.getLogger('loud')


    def read(request):
        log.warning('careful: %s', request.get('what', 'nothing'))
        return {}


    def update(request):
        raise ValueError('no good\\nat all')


    def create(request):
        log.debug('debug line')
        log.info('info line')
        log.warning('with extras', extra={'order': 7, 'user': {'id': 1, 'tags': ['a']}, 'when': object(),
                                          'ratio': float('nan'), 'level': 'mine', 'ok': None})
        return {}
'''}
COMMON = {'time', 'level', 'logger', 'message', 'request_id'}
ACCESS = COMMON | {'method', 'path', 'status', 'bytes', 'duration_ms', 'client'}


def test_every_line_of_a_run_is_one_json_object(tmp_path):
    product = make_product(tmp_path, 'loud', PRODUCT)
    with serve(product, '--log-format', 'json', '--workers', '2') as server:
        base = f'http://127.0.0.1:{server.port}'
        assert requests.post(f'{base}/api/v0/loud/read', json={'what': 'line\nbreak'}, timeout=10,
                             headers={'X-Request-ID': 'json-1'}).status_code == 200
        assert requests.post(f'{base}/api/v0/loud/update', timeout=10,
                             headers={'X-Request-ID': 'json-2'}).status_code == 500
        assert requests.get(f'{base}/up', timeout=10).status_code == 200
        assert exchange(server.port, http_request('GET', '/', headers=['Bad Header'], framing=None)).status == 400
        server.process.terminate()
        assert server.process.wait(30) == 0
    records = [json.loads(line) for line in server.log]  # each line, parsed whole
    assert len(records) == len(server.log) >= 8
    for record in records:
        assert COMMON <= set(record), record
        if record['logger'] == 'apiphant.access':
            assert set(record) == ACCESS, record
    access = {record['request_id']: record for record in records if record['logger'] == 'apiphant.access'}
    assert access['json-1']['method'] == 'POST' and access['json-1']['path'] == '/api/v0/loud/read'
    assert access['json-1']['status'] == 200 and access['json-1']['bytes'] == 2
    assert access['json-1']['client'] == '127.0.0.1' and access['json-1']['duration_ms'] >= 0
    assert access['json-2']['status'] == 500
    warning = next(record for record in records if record['logger'] == 'loud')
    assert warning['level'] == 'WARNING' and warning['message'] == 'careful: line\nbreak'
    assert warning['request_id'] == 'json-1'
    failure = next(record for record in records if record['level'] == 'ERROR')
    assert failure['request_id'] == 'json-2' and failure['message'] == '500 on /api/v0/loud/update'
    assert failure['exc'].startswith('Traceback') and 'ValueError: no good\nat all' in failure['exc']
    assert any(record['logger'] == 'apiphant.access' and record['status'] == 400 for record in records)
    assert any('stopped' in record['message'] and record['request_id'] == '-' for record in records)


def test_an_unknown_log_format_is_refused(tmp_path):
    product = make_product(tmp_path, 'loud', PRODUCT)
    result = run_cli(str(product), '--log-format', 'xml')
    assert result.returncode == 2 and "invalid choice: 'xml'" in result.stderr


def test_extra_fields_are_kept_in_json_lines(tmp_path):
    product = make_product(tmp_path, 'loud', PRODUCT)
    with serve(product, '--log-format', 'json', '--no-access-log') as server:
        assert requests.post(f'http://127.0.0.1:{server.port}/api/v0/loud/create', timeout=10).status_code == 200
        wait_for(lambda: any('with extras' in line for line in server.log))
    record = next(json.loads(line) for line in server.log if 'with extras' in line)
    assert record['order'] == 7 and record['user'] == {'id': 1, 'tags': ['a']} and record['ok'] is None
    assert record['when'].startswith('<object object at ')  # what JSON has no form for: its repr
    assert record['level'] == 'WARNING'  # the standard fields win over an extra of the same name
    assert record['ratio'] == 'nan'  # NaN is no JSON: then every value JSON cannot hold is its repr


def test_log_level_hides_what_is_less_severe(tmp_path):
    product = make_product(tmp_path, 'loud', PRODUCT)
    for level, shown in (('warning', ['with extras']), ('DEBUG', ['debug line', 'info line', 'with extras'])):
        with serve(product, '--log-level', level, '--no-access-log') as server:
            assert requests.post(f'http://127.0.0.1:{server.port}/api/v0/loud/create', timeout=10).status_code == 200
            wait_for(lambda: any('with extras' in line for line in server.log))
        logged = ''.join(server.log)
        assert [text for text in ('debug line', 'info line', 'with extras') if text in logged] == shown
        assert 'serving loud' in logged  # the start-up line is always there


BACKGROUND = {'api/background.py': '''
    import logging

    from apiphant.background import seconds

    log = logging.getLogger('loud.tasks')


    @seconds(60)
    def tick():
        log.info('tick info')
        log.warning('tick warning', extra={'batch': 3})
'''}


def test_the_background_runner_takes_the_same_log_options(tmp_path):
    product = make_product(tmp_path, 'loud', BACKGROUND)
    process = subprocess.Popen([Path(sys.executable).parent / 'apiphant-background', product, '--log-format', 'json',
                                '--log-level', 'warning'], stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any('tick warning' in line for line in lines))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        reader.join(5)
    records = [json.loads(line) for line in lines]
    assert [(record['logger'], record['message']) for record in records] == [('loud.tasks', 'tick warning')]
    assert records[0]['batch'] == 3
