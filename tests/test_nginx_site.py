"""The deploy's nginx site, rendered by Ansible and run by a real nginx on loopback in front of real
apiphant processes: request IDs passed and logged, /up for a load balancer, /metrics not public."""

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from apiphant.test import serve

from support import ROOT, listening_ports, make_product, wait_for

TEMPLATE = ROOT / 'playbooks' / 'roles' / 'nginx' / 'templates' / 'site.conf.j2'
ANSIBLE = Path(sys.executable).with_name('ansible')
NGINX = shutil.which('nginx') or '/usr/sbin/nginx'

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason='nginx is not installed (tests/run installs it)')

CHECKED = {'api/health.py': '''
    from pathlib import Path


    def check():
        if (Path(__file__).parent / 'down').exists():
            raise RuntimeError('secret database address 10.1.2.3')
''', 'api/v0/echo.py': '''
    import apiphant


    def read(request):
        return {'request_id': apiphant.request_id()}
''', 'api/v0/forwarded.py': '''
    from apiphant.server import raw_environ


    @raw_environ
    def read(environ):
        return {name: environ.get(f'HTTP_X_{name.upper()}') for name in ('forwarded_for', 'forwarded_proto', 'real_ip')}
'''}


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def render(folder, api_ports, nginx_port, trusted_proxies=()):
    """The role's template, rendered by Ansible with the role's defaults and these ports."""
    variables = {'nginx_trusted_proxies': list(trusted_proxies), 'product_name': 'shop', 'product_home': str(folder),
                 'api_ports': api_ports,
                 'product_behind_lb': False, 'api_host': '127.0.0.1', 'server_name': '_', 'api_max_body': '1m',
                 'nginx_port': nginx_port, 'nginx_upstream_keepalive': 4, 'nginx_upstream_keepalive_timeout': '1s',
                 'nginx_proxy_read_timeout': '10s', 'nginx_tls': 'off', 'nginx_tls_serving': False}
    site = folder / 'site.conf'
    subprocess.run([str(ANSIBLE), 'localhost', '-c', 'local', '-m', 'ansible.builtin.template',
                    '-a', f'src={TEMPLATE} dest={site}', '-e', json.dumps(variables)],
                   check=True, capture_output=True, timeout=120, cwd=folder)
    text = re.sub(rf'listen \[::\]:{nginx_port} default_server[^;]*;', '', site.read_text())  # loopback only
    site.write_text(text.replace(f'listen {nginx_port} default_server', f'listen 127.0.0.1:{nginx_port}'))
    (folder / 'nginx.conf').write_text(
        f'daemon off;\nmaster_process off;\npid {folder}/nginx.pid;\nerror_log {folder}/log/nginx-main.log;\n'
        f'events {{ worker_connections 64; }}\n'
        f'http {{\n  client_body_temp_path {folder}/tmp; proxy_temp_path {folder}/tmp;\n'
        f'  fastcgi_temp_path {folder}/tmp; uwsgi_temp_path {folder}/tmp; scgi_temp_path {folder}/tmp;\n'
        f'  access_log off;\n  include {site};\n}}\n')
    return folder / 'nginx.conf'


@pytest.fixture(params=[()], ids=['edge'])
def site(tmp_path, request):
    """nginx on a free loopback port in front of two apiphant ports (one of them never started); the
    test's parameter, if any, is nginx_trusted_proxies."""
    for name in ('log', 'tmp'):
        (tmp_path / name).mkdir()
    product = make_product(tmp_path, 'shop', CHECKED)
    # The port that never answers stays bound, never listened on, for the test: connections to it
    # are refused, and no other process can take it meanwhile.
    with serve(product, '--no-access-log') as api, socket.socket() as refusing:
        refusing.bind(('127.0.0.1', 0))
        for _ in range(5):  # nginx cannot listen on port 0: a port chosen free, again if taken meanwhile
            nginx_port = free_port()
            config = render(tmp_path, [refusing.getsockname()[1], api.port], nginx_port, request.param)
            nginx = start_nginx(config, tmp_path, nginx_port)
            if nginx is not None:
                break
        else:
            raise RuntimeError('5 ports chosen free were all taken before nginx bound them')
        try:
            yield f'http://127.0.0.1:{nginx_port}', tmp_path, product
        finally:
            nginx.terminate()
            nginx.wait(30)


def start_nginx(config, folder, port):
    """nginx, once it listens on `port` itself; None if another process took the port first."""
    checked = subprocess.run([NGINX, '-t', '-c', str(config), '-p', str(folder)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    nginx = subprocess.Popen([NGINX, '-c', str(config), '-p', str(folder)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: nginx.poll() is not None or port in listening_ports([nginx.pid]), timeout=30)
    except AssertionError:
        nginx.kill()
        nginx.wait()
        raise
    if nginx.poll() is None:
        return nginx
    error = nginx.stderr.read()
    assert 'Address already in use' in error, error
    return None


def test_request_ids_pass_through_nginx_and_are_logged(site):
    url, folder, _ = site
    reply = requests.post(f'{url}/api/v0/echo/read', json={}, headers={'X-Request-ID': 'client-7.a'}, timeout=10)
    assert reply.json() == {'request_id': 'client-7.a'} and reply.headers['X-Request-ID'] == 'client-7.a'
    for bad in ('bad id', 'x' * 129):
        reply = requests.post(f'{url}/api/v0/echo/read', json={}, headers={'X-Request-ID': bad}, timeout=10)
        made = reply.json()['request_id']
        assert re.fullmatch('[0-9a-f]{32}', made) and reply.headers['X-Request-ID'] == made  # nginx's $request_id
    wait_for(lambda: re.search(r'"POST /api/v0/echo/read HTTP/1.1" 200 .* client-7\.a$',
                               (folder / 'log' / 'nginx-access.log').read_text(), re.M))
    missing = requests.post(f'{url}/nowhere', timeout=10, headers={'X-Request-ID': 'lost-2'})
    assert missing.status_code == 404 and missing.headers['X-Request-ID'] == 'lost-2'


def test_up_answers_for_the_balancer_without_details_and_metrics_stay_private(site):
    url, _, product = site
    reply = requests.get(f'{url}/up', timeout=10)  # one port refuses: the other answers
    assert reply.status_code == 200 and reply.json() == {'status': 'up'}
    (product / 'api' / 'down').touch()
    deadline = time.monotonic() + 30  # (the check runs at most once a second)
    while (reply := requests.get(f'{url}/up', timeout=10)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert reply.status_code == 503 and reply.json() == {'status': 'down'}  # never the check's error
    assert requests.get(f'{url}/metrics', timeout=10).status_code == 404
    assert requests.post(f'{url}/up', timeout=10).status_code == 403


FORGED = {'X-Forwarded-For': '203.0.113.7', 'X-Forwarded-Proto': 'https', 'X-Real-IP': '203.0.113.8'}


def test_at_the_edge_the_api_sees_the_connections_address_and_scheme_not_the_clients_claims(site):
    url, _, _ = site
    reply = requests.get(f'{url}/api/v0/forwarded/read', headers=FORGED, timeout=10)
    assert reply.json() == {'forwarded_for': '127.0.0.1', 'forwarded_proto': 'http', 'real_ip': '127.0.0.1'}


@pytest.mark.parametrize('site', [['127.0.0.0/8']], ids=['behind a trusted proxy'], indirect=True)
def test_behind_a_trusted_proxy_the_api_sees_the_address_and_scheme_it_forwarded(site):
    url, _, _ = site
    reply = requests.get(f'{url}/api/v0/forwarded/read', timeout=10,
                         headers={**FORGED, 'X-Forwarded-For': '198.51.100.1, 203.0.113.7'})
    # The last address the proxy added is the client's; the client's own claims before it are not.
    assert reply.json() == {'forwarded_for': '203.0.113.7', 'forwarded_proto': 'https', 'real_ip': '203.0.113.7'}
