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
    with serve(KITCHEN, '--cors', ORIGIN, '--cors', 'https://App.Example.com:443', '--cors', 'https://*.shop.example',
               '--max-body', '100') as server:
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
    assert answer.headers['access-control-expose-headers'] == 'X-Request-ID'  # so a page can read it
    assert 'access-control-allow-credentials' not in answer.headers  # not without --cors-credentials


@pytest.mark.parametrize('origin, allowed', [
    ('https://app.example.com', True),  # given as https://App.Example.com:443, which no browser sends
    ('https://a.shop.example', True),
    ('https://a.b.shop.example', True),
    ('https://shop.example', False),
    ('https://badshop.example', False),
    ('https://a.shop.example.evil.net', False),
    ('http://a.shop.example', False),
    ('https://a.shop.example:8443', False),
    ('https://app.example.com.evil.net', False),
])
def test_origins_match_as_browsers_send_them(cors_kitchen, origin, allowed):
    answer = exchange(cors_kitchen.port, http_request('OPTIONS', '/api/v0/things/create', headers=[
        ('Origin', origin), ('Access-Control-Request-Method', 'POST')]))
    assert answer.status == (204 if allowed else 405)
    assert answer.headers.get('access-control-allow-origin') == (origin if allowed else None)
    assert 'access-control-expose-headers' not in answer.headers  # (a preflight's answer is not read)


def test_credentials_and_more_exposed_headers_when_asked():
    with serve(EXAMPLE, '--cors', ORIGIN, '--cors-credentials', '--cors-expose-header', 'X-Total',
               '--cors-expose-header', 'x-request-id') as server:
        preflight = exchange(server.port, http_request('OPTIONS', '/api/v0/echo/read', headers=[
            ('Origin', ORIGIN), ('Access-Control-Request-Method', 'POST')]))
        answer = exchange(server.port, http_request('POST', '/api/v0/echo/read', headers=[('Origin', ORIGIN)]))
        other = exchange(server.port, http_request('POST', '/api/v0/echo/read', headers=[('Origin', 'http://x.test')]))
    assert preflight.status == 204 and preflight.headers['access-control-allow-credentials'] == 'true'
    assert answer.headers['access-control-allow-credentials'] == 'true'
    assert answer.headers['access-control-allow-origin'] == ORIGIN
    assert answer.headers['access-control-expose-headers'] == 'X-Request-ID, X-Total'
    assert not any(name.startswith('access-control') for name in other.headers)
    assert log_has(server, f'cors {ORIGIN} with credentials')


@pytest.mark.parametrize('args, message', [
    (['--cors', '*', '--cors-credentials'], '--cors-credentials cannot go with --cors *'),
    (['--cors-credentials'], '--cors-credentials and --cors-expose-header need --cors ORIGIN'),
    (['--cors', ORIGIN, '--cors-expose-header', 'X Total'],
     "argument --cors-expose-header: 'X Total' is not a header name"),
])
def test_cors_options_that_cannot_work_are_refused(args, message):
    result = run_cli(str(EXAMPLE), *args)
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]


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


@pytest.mark.parametrize('value', ['example.com', 'https://example.com/', 'https://example.com/path', 'ftp://x',
                                   'https://user@example.com', 'null'])
def test_a_bad_origin_is_refused_at_start_up(value):
    result = run_cli(str(EXAMPLE), '--cors', value)
    assert result.returncode == 2
    assert f"argument --cors: {value!r} is not an origin like https://app.example.com" in result.stderr


@pytest.mark.parametrize('value, message', [
    ('https://app.*.example.com', 'can never match: * stands only for the subdomains of a domain'),
    ('https://*example.com', 'can never match: * stands only for the subdomains of a domain'),
    ('https://*', 'can never match: * stands only for the subdomains of a domain'),
    ('https://*.com', 'would let every site under .com in'),
    ('https://bücher.example',
     "a browser sends an international name in punycode: write 'https://xn--bcher-kva.example'"),
    ('https://example.com:70000', 'the port should be a number from 1 to 65535'),
    ('https://exa mple.com', "'exa mple.com' is not a host name or address"),
])
def test_an_origin_that_could_never_match_is_refused_at_start_up(value, message):
    result = run_cli(str(EXAMPLE), '--cors', value)
    assert result.returncode == 2
    line = result.stderr.splitlines()[-1]
    assert line.startswith(f'apiphant: error: argument --cors: {value!r}') and message in line


PAGE = '''<!doctype html>
<pre id="out">pending</pre>
<script>
// ?credentials=include sends the request as a signed-in page would (cookies, HTTP authentication).
fetch('%s/api/v0/echo/read', {method: 'POST', headers: {'Content-Type': 'application/json'},
                              credentials: new URLSearchParams(location.search).get('credentials') || 'same-origin',
                              body: JSON.stringify({hello: 'browser'})})
  .then(reply => reply.json().then(body => {
    const id = reply.headers.get('X-Request-ID');
    out.textContent = reply.status + ' ' + JSON.stringify(body) + (id ? ' with X-Request-ID' : ' without X-Request-ID');
  }))
  .catch(error => { out.textContent = 'refused: ' + error; });
</script>
'''
ALLOWED = '200 {"hello":"browser","server":"myproduct"} with X-Request-ID'
REFUSED = 'refused: TypeError: Failed to fetch'


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
        self.port = self.server.server_port
        self.origin = f'http://127.0.0.1:{self.port}'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def shown_by_browser(self, api, profile, host='127.0.0.1', credentials=None):
        """What the page, loaded from http://HOST:port (every name resolves to this machine), shows
        once its script is done, as headless Chromium renders it."""
        self.api_url = api.url
        query = f'?credentials={credentials}' if credentials else ''
        result = subprocess.run(
            [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
             '--host-resolver-rules=MAP * 127.0.0.1', f'--user-data-dir={profile}',
             '--virtual-time-budget=10000', '--dump-dom', f'http://{host}:{self.port}/{query}'],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.split('<pre id="out">')[1].split('</pre>')[0]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (tests/apt-packages.txt installs it)")
def test_a_browser_calls_the_api_from_another_origin_only_when_allowed(tmp_path):
    """The browser sends the preflight and enforces the answer: the real test of the headers."""
    with Page() as page:
        with serve(EXAMPLE, '--cors', page.origin) as api:
            assert page.shown_by_browser(api, tmp_path / 'allowed') == ALLOWED  # the request ID readable
            assert log_has(api, 'OPTIONS /api/v0/echo/read 204')
            assert page.shown_by_browser(api, tmp_path / 'no-credentials', credentials='include') == REFUSED
        with serve(EXAMPLE, '--cors', page.origin, '--cors-credentials') as api:
            assert page.shown_by_browser(api, tmp_path / 'credentials', credentials='include') == ALLOWED
        with serve(EXAMPLE, '--cors', f'http://*.shop.test:{page.port}') as api:
            assert page.shown_by_browser(api, tmp_path / 'subdomain', host='app.shop.test') == ALLOWED
            assert page.shown_by_browser(api, tmp_path / 'lookalike', host='app.shop.test.evil.test') == REFUSED
        with serve(EXAMPLE, '--cors', 'http://127.0.0.1:1') as api:
            assert page.shown_by_browser(api, tmp_path / 'other') == REFUSED
        with serve(EXAMPLE) as api:
            assert page.shown_by_browser(api, tmp_path / 'none') == REFUSED
