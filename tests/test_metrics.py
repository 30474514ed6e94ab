"""`--metrics`: Prometheus's text format (promtool accepts it), a real Prometheus server scrapes it,
and under `--workers` every scrape sees the totals of all workers."""

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from apiphant.test import serve

from support import KITCHEN, Connection, held_request, http_request, log_has, wait_for

READ = '/api/v0/process/read'


def send(server, path=READ, body=None, count=1):
    """`count` requests, each on a new connection (so workers share them); the pids that answered."""
    pids = set()
    for _ in range(count):
        reply = requests.post(f'http://127.0.0.1:{server.port}{path}', json=body or {}, timeout=10)
        if path == READ:
            pids.add(reply.json()['pid'])
    return pids


def scrape(server):
    reply = requests.get(f'http://127.0.0.1:{server.port}/metrics', timeout=10)
    assert reply.status_code == 200 and reply.headers['Content-Type'].startswith('text/plain; version=')
    return reply.text


def samples(text):
    """{(name, frozenset(labels)): value} of a scrape."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def requests_of(text, route=READ):
    return sum(value for (name, labels), value in samples(text).items()
               if name == 'apiphant_requests_total' and ('route', route) in labels)


def assert_promtool_accepts(text):
    checked = subprocess.run(['promtool', 'check', 'metrics'], input=text, capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_the_output_and_it_counts_by_route_and_status():
    with serve(KITCHEN, '--metrics', '--no-access-log') as server:
        send(server, count=3)
        send(server, '/api/v0/things/delete', {'mode': 'crash'})
        send(server, '/no/such/path/1')
        send(server, '/no/such/path/2')
        text = scrape(server)
        assert_promtool_accepts(text)
        found = samples(text)
        assert found['apiphant_requests_total', frozenset({('route', READ), ('status', '200')})] == 3
        assert found['apiphant_requests_total',
                     frozenset({('route', '/api/v0/things/delete'), ('status', '500')})] == 1
        assert found['apiphant_requests_total', frozenset({('route', 'other'), ('status', '404')})] == 2
        assert found['apiphant_request_duration_seconds_count', frozenset({('route', READ)})] == 3
        assert found['apiphant_requests_in_flight', frozenset()] == 1  # the scrape itself
        assert found['apiphant_open_connections', frozenset()] >= 1
        assert found['apiphant_draining', frozenset()] == 0
        assert 0 < found['process_open_fds', frozenset()] < found['process_max_fds', frozenset()]
        assert found['process_resident_memory_bytes', frozenset()] > 0
        assert ('process_cpu_seconds_total', frozenset()) in found


def test_without_metrics_there_is_no_metrics_path():
    with serve(KITCHEN, '--no-access-log') as server:
        assert requests.get(f'http://127.0.0.1:{server.port}/metrics', timeout=10).status_code == 404


def test_the_drain_shows_in_the_metrics(tmp_path):
    """A scrape pipelined behind a held request is answered once the drain has begun."""
    gate = tmp_path / 'gate'
    with serve(KITCHEN, '--metrics', '--drain-timeout', '60') as server:
        with Connection(server.port, timeout=30) as connection:
            connection.send(held_request(gate, 'scraped'), http_request('GET', '/metrics'))
            wait_for(lambda: log_has(server, 'in flight: scraped'))
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: log_has(server, 'draining'))
            gate.touch()
            first, scraped = connection.answer(), connection.answer()
        assert first.status == 200 and scraped.status == 200
        assert samples(scraped.body.decode())['apiphant_draining', frozenset()] == 1
        assert server.process.wait(30) == 0


def test_under_workers_every_scrape_sees_the_total_of_all_workers(tmp_path):
    env = {**os.environ, 'TMPDIR': str(tmp_path)}
    with serve(KITCHEN, '--metrics', '--workers', '2', '--no-access-log', env=env) as server:
        sent, pids = 0, set()
        while len(pids) < 2 and sent < 400:  # until both workers have answered some
            pids |= send(server, count=10)
            sent += 10
        assert len(pids) == 2
        # A worker answering a scrape adds its live counts to the other's file, written once a
        # SAMPLE_PERIOD: once both files were written after the last answer, every scrape is whole.
        answered = time.time()  # (each count is taken before its answer is sent)
        shares = list(tmp_path.glob('apiphant-metrics-*/*.json'))
        wait_for(lambda: len(shares) == 2 and all(share.stat().st_mtime > answered for share in shares),
                 timeout=30, interval=0.2)
        for _ in range(6):  # whichever worker answers the scrape
            assert requests_of(scrape(server)) == sent
        text = scrape(server)
        assert_promtool_accepts(text)
        found = samples(text)
        assert found['apiphant_request_duration_seconds_count', frozenset({('route', READ)})] == sent
        assert found['apiphant_open_connections', frozenset()] >= 1
        assert found['process_open_fds', frozenset()] < found['process_max_fds', frozenset()]
        assert list(tmp_path.glob('apiphant-metrics-*'))
        server.process.terminate()
        assert server.process.wait(30) == 0
    assert not list(tmp_path.glob('apiphant-metrics-*'))  # the master removed the workers' files


def test_a_real_prometheus_scrapes_the_request_counter():
    with tempfile.TemporaryDirectory() as folder, serve(KITCHEN, '--metrics', '--no-access-log') as server:
        folder = Path(folder)
        (folder / 'prometheus.yml').write_text(
            'global: {scrape_interval: 1s, scrape_timeout: 1s}\n'
            'scrape_configs:\n'
            f"  - {{job_name: apiphant, static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]}}\n")
        log = folder / 'prometheus.log'
        with log.open('w') as stderr:  # (Popen keeps its own copy of the descriptor)
            prometheus = subprocess.Popen(
                ['prometheus', f'--config.file={folder / "prometheus.yml"}', f'--storage.tsdb.path={folder / "data"}',
                 '--web.listen-address=127.0.0.1:0'], stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            # Port 0: the kernel's choice, which Prometheus logs once it listens (no port taken meanwhile).
            listening = wait_for(lambda: re.search(r'msg="Listening on" address=(127\.0\.0\.1:\d+)', log.read_text()),
                                 timeout=60, interval=0.2)
            api = f'http://{listening.group(1)}'
            wait_for(lambda: _get(f'{api}/-/ready') == 200, timeout=60, interval=0.2)
            send(server, count=25)

            def counted():
                reply = requests.get(f'{api}/api/v1/query', timeout=10, params={
                    'query': f'sum(apiphant_requests_total{{job="apiphant",route="{READ}"}})'})
                result = reply.json()['data']['result']
                return result and float(result[0]['value'][1]) == 25

            wait_for(counted, timeout=60, interval=0.5)
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(30)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()


def _get(url):
    try:
        return requests.get(url, timeout=5).status_code
    except requests.ConnectionError:
        return None
