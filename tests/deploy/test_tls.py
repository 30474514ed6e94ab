"""HTTPS on a test host: tls=selfsigned and tls=files, plain HTTP redirected, TLS 1.2 and 1.3 only."""

import json
import socket
import ssl
import subprocess

import pytest

ECHO = '{"hello": "world"}'
# The test speaks TLS 1.1 on purpose, to show it refused.
pytestmark = pytest.mark.filterwarnings('ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning')


@pytest.fixture(scope='module')
def host(lab):
    return lab.hosts[0]


def curl(*args):
    """curl's answer as (status code, body, error); the status is 000 when no answer came."""
    result = subprocess.run(['curl', '-sS', '--max-time', '30', '-o', '-', '-w', '\n%{http_code}', *args],
                            capture_output=True, text=True, timeout=60)
    body, _, status = result.stdout.rpartition('\n')
    return status, body, result.stderr


def post_https(host, ca_file):
    return curl('--cacert', str(ca_file), '--data', ECHO, f'https://{host.address}/api/v0/echo/read')


def handshake(host, version, ca_file):
    """Speak exactly one TLS version to the host; return the version agreed, or raise ssl.SSLError.
    The client allows what its OpenSSL would refuse by default, so a refusal is the server's."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = context.maximum_version = version
    context.set_ciphers('DEFAULT:@SECLEVEL=0')
    with socket.create_connection((host.address, 443), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=host.address) as secure:
            return secure.version()


def assert_https_only(host, ca_file):
    status, body, error = post_https(host, ca_file)
    assert (status, json.loads(body or '{}').get('hello')) == ('200', 'world'), body + error
    redirect = subprocess.run(['curl', '-sS', '-o', '/dev/null', '-w', '%{http_code} %{redirect_url}', '--data', ECHO,
                               f'http://{host.address}/api/v0/echo/read?x=1'], capture_output=True, text=True,
                              timeout=60).stdout
    assert redirect == f'308 https://{host.address}/api/v0/echo/read?x=1'
    followed = curl('-L', '--cacert', str(ca_file), '--data', ECHO, f'http://{host.address}/api/v0/echo/read')
    assert followed[0] == '200', followed  # a POST stays a POST through the redirect
    assert handshake(host, ssl.TLSVersion.TLSv1_2, ca_file) == 'TLSv1.2'
    assert handshake(host, ssl.TLSVersion.TLSv1_3, ca_file) == 'TLSv1.3'
    with pytest.raises(ssl.SSLError, match='(?i)protocol version|unsupported protocol|no protocols'):
        handshake(host, ssl.TLSVersion.TLSv1_1, ca_file)


def test_selfsigned_serves_https_only_and_refuses_tls_1_1(playbook, host, lab, tmp_path):
    run = playbook('site.yml', tls='selfsigned')
    assert run.returncode == 0, run.output
    certificate = tmp_path / 'selfsigned.crt'
    certificate.write_text(host.ssh('cat', '/etc/nginx/tls/myproduct-selfsigned.crt', key=lab.key).stdout)
    assert_https_only(host, certificate)
    # Without the certificate, curl refuses the host: the check above is its verification at work.
    assert curl('--data', ECHO, f'https://{host.address}/api/v0/echo/read')[0] == '000'
    again = playbook('site.yml', tls='selfsigned')
    assert again.returncode == 0 and again.recap()[host.name]['changed'] == 0, again.output


def make_certificate(folder, address):
    """A CA of the test's own and a certificate it signed for the host's address."""
    def openssl(*args):
        subprocess.run(['openssl', *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=apiphant test CA',
            '-keyout', 'ca.key', '-out', 'ca.crt')
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', f'/CN={address}', '-keyout', 'site.key',
            '-out', 'site.csr')
    (folder / 'san.ext').write_text(f'subjectAltName=IP:{address}\n')
    openssl('x509', '-req', '-in', 'site.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
            '-days', '2', '-extfile', 'san.ext', '-out', 'site.crt')
    return folder / 'ca.crt', folder / 'site.crt', folder / 'site.key'


def test_files_serves_the_users_certificate(playbook, host, lab, tmp_path):
    ca, certificate, key = make_certificate(tmp_path, host.address)
    run = playbook('site.yml', tls='files', tls_certificate=certificate, tls_certificate_key=key)
    assert run.returncode == 0, run.output
    assert key.read_text().strip().splitlines()[1] not in run.output
    assert_https_only(host, ca)
    mode = host.ssh('stat', '-c', "'%U %a'", '/etc/nginx/tls/myproduct.key', '/etc/nginx/tls', key=lab.key).stdout
    assert mode.split('\n')[:2] == ['root 600', 'root 700']


def test_tls_off_is_plain_http_again(playbook, host):
    run = playbook('site.yml', tls='off')
    assert run.returncode == 0, run.output
    assert curl('--data', ECHO, f'http://{host.address}/api/v0/echo/read')[0] == '200'
    assert curl('--max-time', '5', f'https://{host.address}/')[0] == '000'


@pytest.mark.parametrize('variables, message', [
    ({'tls': 'maybe'}, 'tls=maybe: needs off, files or selfsigned'),
    ({'tls': 'files'}, 'tls=files needs tls_certificate and tls_certificate_key'),
    ({'tls': 'files', 'tls_certificate': '/nonexistent.crt', 'tls_certificate_key': '/nonexistent.key'},
     'tls_certificate=/nonexistent.crt'),
])
def test_a_bad_tls_setting_fails_naming_it(playbook, variables, message):
    run = playbook('site.yml', **variables)
    assert run.returncode != 0
    assert message in ' '.join(run.output.split())
    assert 'TASK [nginx : Write the product' not in run.output
