"""`--cors ORIGIN`: preflights answered, CORS headers on every answer, and a real browser agrees."""

import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apiphant.test import serve
from support import EXAMPLE, KITCHEN, exchange, http_request, log_has, run_cli

ORIGIN = 'http://127.0.0.1:3000'
CHROMIUM = shutil.which('chromium')


@pytest.fixture(scope='module')
def cors_kitchen():
    with serve(KITCHEN, '--cors', ORIGIN, '--cors', 'https://app.example.com', '--max-body', '100') as server:
        yield server


def test_a_preflight_from_an_allowed_origin_is_answered(cors_kitchen):
    answer = exchange(cors_kitchen.port, http_request('OPTIONS', '/api/v0/things/create', headers=[
        ('Origin', ORIGIN), ('Access-Control-Request-Method', 'POST'),
        ('Access-Control-Request-Headers', 'content-type, authorization')]))
    headers = answer.headers
    assert (answer.status, answer.body) == (204, b'')
    assert headers['access-control-allow-origin'] == ORIGIN
    assert headers['access-control-allow-methods'] == 'POST'
    assert headers['access-control-allow-headers'] == 'content-type, authorization'
    assert headers['access-control-max-age'] == '600'
    assert headers['vary'] == 'Origin'


@pytest.mark.parametrize('path, body, status', [
    ('/api/v0/things/create', b'{"id": 1}', 200),
    ('/api/v0/things/create', b'{"id": "x"}', 400),
    ('/api/v0/things/create', b'[1]', 400),
    ('/api/v0/nothing/read', b'{}', 404),
    ('/api/v0/things/delete', b'{"mode": "crash"}', 500),
    ('/api/v0/things/create', b'{"id": 1, "name": "' + b'x' * 200 + b'"}', 413),
])
def test_every_answer_to_an_allowed_origin_carries_the_headers(cors_kitchen, path, body, status):
    answer = exchange(cors_kitchen.port, http_request('POST', path, body, [('Origin', 'https://app.example.com')]))
    assert answer.status == status
    assert answer.headers['access-control-allow-origin'] == 'https://app.example.com'
    assert answer.headers['vary'] == 'Origin'


def test_other_origins_get_no_cors_headers(cors_kitchen):
    answer = exchange(cors_kitchen.port, http_request('OPTIONS', '/api/v0/things/create', headers=[
        ('Origin', 'https://evil.example.com'), ('Access-Control-Request-Method', 'POST')]))
    assert answer.status == 405 and answer.headers['allow'] == 'POST'
    assert 'access-control-allow-origin' not in answer.headers
    answer = exchange(cors_kitchen.port, http_request('POST', '/api/v0/things/create', b'{"id": 1}',
                                                      [('Origin', 'https://evil.example.com')]))
    assert answer.status == 200
    assert 'access-control-allow-origin' not in answer.headers and answer.headers['vary'] == 'Origin'


def test_any_origin_with_a_star():
    with serve(EXAMPLE, '--cors', '*') as server:
        answer = exchange(server.port, http_request('POST', '/api/v0/echo/read', headers=[('Origin', 'https://a.example')]))
    assert answer.status == 200
    assert answer.headers['access-control-allow-origin'] == '*'
    assert 'vary' not in answer.headers


def test_without_the_option_nothing_changes(example):
    answer = exchange(example.port, http_request('OPTIONS', '/api/v0/echo/read', headers=[
        ('Origin', ORIGIN), ('Access-Control-Request-Method', 'POST')]))
    assert answer.status == 405
    assert not any(name.startswith('access-control') for name in answer.headers)


@pytest.mark.parametrize('value', ['example.com', 'https://example.com/', 'https://example.com/path', 'ftp://x'])
def test_a_bad_origin_is_refused_at_start_up(value):
    result = run_cli(str(EXAMPLE), '--cors', value)
    assert result.returncode == 2
    assert f"argument --cors: {value!r} is not an origin like https://app.example.com" in result.stderr


PAGE = '''<!doctype html>
<pre id="out">pending</pre>
<script>
fetch('%s/api/v0/echo/read', {method: 'POST', headers: {'Content-Type': 'application/json'},
                              body: JSON.stringify({hello: 'browser'})})
  .then(reply => reply.json().then(body => { out.textContent = reply.status + ' ' + JSON.stringify(body); }))
  .catch(error => { out.textContent = 'refused: ' + error; });
</script>
'''


class Page:
    """A web page on a loopback port of its own (another origin than the API's) calling `api_url`."""

    def __init__(self):
        self.api_url = None
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                html = (PAGE % page.api_url).encode()
                self.send_response(200)
                self.send_header('Content-Type', 'text/html')
                self.send_header('Content-Length', str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.origin = f'http://127.0.0.1:{self.server.server_port}'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def shown_by_browser(self, api, profile):
        """What the page shows once its script is done, as headless Chromium renders it."""
        self.api_url = api.url
        result = subprocess.run(
            [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
             f'--user-data-dir={profile}', '--virtual-time-budget=10000', '--dump-dom', self.origin],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.split('<pre id="out">')[1].split('</pre>')[0]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (tests/apt-packages.txt installs it)")
def test_a_browser_calls_the_api_from_another_origin_only_when_allowed(tmp_path):
    """The browser sends the preflight and enforces the answer: the real test of the headers."""
    with Page() as page:
        with serve(EXAMPLE, '--cors', page.origin) as api:
            assert page.shown_by_browser(api, tmp_path / 'allowed') == \
                '200 {"hello":"browser","server":"myproduct"}'
            assert log_has(api, 'OPTIONS /api/v0/echo/read 204')
        with serve(EXAMPLE, '--cors', 'http://127.0.0.1:1') as api:
            assert page.shown_by_browser(api, tmp_path / 'other') == 'refused: TypeError: Failed to fetch'
        with serve(EXAMPLE) as api:
            assert page.shown_by_browser(api, tmp_path / 'none') == 'refused: TypeError: Failed to fetch'
