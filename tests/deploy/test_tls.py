"""HTTPS on a test host: tls=selfsigned and back to off; bad settings. (tls=acme: test_secrets.py,
which deploys a whole production host in one run; tls=files: test_multi_host.py, on the load
balancer.)"""

import json
import socket
import ssl
import subprocess
import warnings

import pytest

import testhost

ECHO = '{"hello": "world"}'


@pytest.fixture(scope='module')
def host(lab):
    return lab.hosts[0]


def curl(*args):
    """curl's answer as (status code, body, error); the status is 000 when no answer came."""
    result = subprocess.run(['curl', '-sS', '--max-time', '30', '-o', '-', '-w', '\n%{http_code}', *args],
                            capture_output=True, text=True, timeout=60)
    body, _, status = result.stdout.rpartition('\n')
    return status, body, result.stderr


def handshake(host, version, ca_file, name=None):
    """Speak exactly one TLS version to the host for `name` (its address unless told); return the
    version agreed, or raise ssl.SSLError. The client allows what its OpenSSL would refuse by
    default, so a refusal is the server's."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: spoken on purpose, to show it refused
        warnings.simplefilter('ignore', DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    context.set_ciphers('DEFAULT:@SECLEVEL=0')
    with socket.create_connection((host.address, 443), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=name or host.address) as secure:
            return secure.version()


def assert_https_only(host, ca_file, name=None):
    """The site answers HTTPS for `name` (the host's address unless told), its certificate verified
    against ca_file; plain HTTP only redirects; TLS 1.2 and 1.3 spoken, 1.1 refused."""
    name = name or host.address
    resolve = ['--resolve', f'{name}:443:{host.address}', '--resolve', f'{name}:80:{host.address}']
    # nginx's new workers serve HTTPS moments after the reload the deploy asked for.
    status, body, error = testhost.eventually(
        lambda: curl(*resolve, '--cacert', str(ca_file), '--data', ECHO, f'https://{name}/api/v0/echo/read'),
        until=lambda answer: answer[0] == '200')
    assert (status, json.loads(body or '{}').get('hello')) == ('200', 'world'), body + error
    redirect = subprocess.run(['curl', '-sS', *resolve, '-o', '/dev/null', '-w', '%{http_code} %{redirect_url}',
                               '--data', ECHO, f'http://{name}/api/v0/echo/read?x=1'], capture_output=True,
                              text=True, timeout=60).stdout
    assert redirect == f'308 https://{name}/api/v0/echo/read?x=1'
    followed = curl(*resolve, '-L', '--cacert', str(ca_file), '--data', ECHO, f'http://{name}/api/v0/echo/read')
    assert followed[0] == '200', followed  # a POST stays a POST through the redirect
    assert handshake(host, ssl.TLSVersion.TLSv1_2, ca_file, name) == 'TLSv1.2'
    assert handshake(host, ssl.TLSVersion.TLSv1_3, ca_file, name) == 'TLSv1.3'
    with pytest.raises(ssl.SSLError, match='(?i)protocol version|unsupported protocol|no protocols'):
        handshake(host, ssl.TLSVersion.TLSv1_1, ca_file, name)


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


def test_selfsigned_serves_https_only_and_off_turns_it_back_to_plain_http(playbook, host, lab, tmp_path):
    run = playbook('site.yml', tls='selfsigned')
    assert run.returncode == 0, run.output
    certificate = tmp_path / 'selfsigned.crt'
    certificate.write_text(host.ssh('cat', '/etc/nginx/tls/myproduct-selfsigned.crt', key=lab.key).stdout)
    assert_https_only(host, certificate)
    # Without the certificate, curl refuses the host: the check above is its verification at work.
    assert curl('--data', ECHO, f'https://{host.address}/api/v0/echo/read')[0] == '000'
    run = playbook('site.yml', tls='off')
    assert run.returncode == 0, run.output
    assert testhost.eventually(lambda: curl('--data', ECHO, f'http://{host.address}/api/v0/echo/read')[0] == '200')
    with pytest.raises(ConnectionRefusedError):  # nothing listens on 443 any more
        socket.create_connection((host.address, 443), timeout=30).close()


# Each stops the run before the deploy lock is taken: the host stays as it was.
@pytest.mark.parametrize('variables, message', [
    ({'tls': 'maybe'}, 'tls=maybe: needs off, files, selfsigned or acme'),
    ({'tls': 'files', 'tls_certificate': '/nonexistent.crt', 'tls_certificate_key': '/nonexistent.key'},
     'tls=files needs tls_certificate and tls_certificate_key, each a file on this machine '
     '(tls_certificate=/nonexistent.crt'),
    ({'tls': 'acme', 'server_name': '_'}, "tls=acme needs server_name to be the site's DNS names"),
    ({'tls': 'acme', 'server_name': 'shop.example.com 10.0.0.1'}, '(server_name=shop.example.com 10.0.0.1)'),
])
def test_a_bad_tls_setting_fails_naming_it(playbook, variables, message):
    run = playbook('site.yml', **variables)
    assert run.returncode != 0
    assert message in ' '.join(run.output.split())
    assert 'Take the deploy lock' not in run.output
