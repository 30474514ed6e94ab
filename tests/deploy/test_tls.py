"""HTTPS on a test host: tls=selfsigned and back to off; tls=files with server_name, HSTS and the
expiry in fab status, and a key that does not match its certificate; bad settings. (tls=acme:
test_secrets.py, which deploys a whole production host in one run; tls=files behind load balancers:
test_multi_host.py.)"""

import json
import re
import socket
import ssl
import subprocess
import warnings

import pytest

from support import wait_for

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
    status, body, error = wait_for(
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


def make_certificate(folder, address, name=None):
    """A CA of the test's own and a certificate it signed for the host's address (and `name`), valid
    for two days."""
    def openssl(*args):
        subprocess.run(['openssl', *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=apiphant test CA',
            '-keyout', 'ca.key', '-out', 'ca.crt')
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', f'/CN={address}', '-keyout', 'site.key',
            '-out', 'site.csr')
    (folder / 'san.ext').write_text(f'subjectAltName=IP:{address}' + (f',DNS:{name}' if name else '') + '\n')
    openssl('x509', '-req', '-in', 'site.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
            '-days', '2', '-extfile', 'san.ext', '-out', 'site.crt')
    return folder / 'ca.crt', folder / 'site.crt', folder / 'site.key'


def test_selfsigned_serves_https_only_and_off_turns_it_back_to_plain_http(playbook, host, tmp_path):
    run = playbook('site.yml', tls='selfsigned')
    assert run.returncode == 0, run.output
    certificate = tmp_path / 'selfsigned.crt'
    certificate.write_text(host.ssh('cat', '/etc/nginx/tls/myproduct-selfsigned.crt').stdout)
    assert_https_only(host, certificate)
    headers = subprocess.run(['curl', '-sS', '--cacert', str(certificate), '-o', '/dev/null', '-D', '-',
                              f'https://{host.address}/up'], capture_output=True, text=True, timeout=60).stdout
    assert headers.startswith('HTTP/1.1 200') and 'strict-transport-security' not in headers.lower(), headers
    # Without the certificate, curl refuses the host: the check above is its verification at work.
    assert curl('--data', ECHO, f'https://{host.address}/api/v0/echo/read')[0] == '000'
    run = playbook('site.yml', tls='off')
    assert run.returncode == 0, run.output
    wait_for(lambda: curl('--data', ECHO, f'http://{host.address}/api/v0/echo/read')[0] == '200')
    with pytest.raises(ConnectionRefusedError):  # nothing listens on 443 any more
        socket.create_connection((host.address, 443), timeout=30).close()


NAME = 'shop.test'


def on_host(host, command):
    return host.ssh(command).stdout


@pytest.fixture(scope='module')
def files_site(playbook, host, lab, tmp_path_factory):
    """The host serving tls=files for NAME, with a certificate of two days; back to tls=off after."""
    ca, certificate, key = make_certificate(tmp_path_factory.mktemp('files'), host.address, NAME)
    variables = {'tls': 'files', 'tls_certificate': certificate, 'tls_certificate_key': key, 'server_name': NAME}
    run = playbook('site.yml', **variables)
    assert run.returncode == 0, run.output
    yield ca, variables
    assert playbook('site.yml').returncode == 0


def test_files_serves_its_names_only_with_hsts(files_site, host):
    ca, _ = files_site
    assert_https_only(host, ca, NAME)
    resolve = ['--resolve', f'{NAME}:443:{host.address}']
    headers = subprocess.run(['curl', '-sS', *resolve, '--cacert', str(ca), '-o', '/dev/null', '-D', '-',
                              f'https://{NAME}/up'], capture_output=True, text=True, timeout=60).stdout
    assert 'strict-transport-security: max-age=63072000\n' in headers.lower(), headers
    # Another name, on either port: no answer at all; no TLS handshake for a name not the site's.
    for url in ('http://other.test/api/v0/echo/read', f'http://{host.address}/api/v0/echo/read'):
        status, _, error = curl('--resolve', f'other.test:80:{host.address}', '--data', ECHO, url)
        assert status == '000' and 'Empty reply from server' in error, (url, error)
    status, _, error = curl('--resolve', f'other.test:443:{host.address}', '-k', 'https://other.test/up')
    assert status == '000' and 'unrecognized name' in error, error
    # The site's name in the handshake, another in the Host header: no answer either.
    status, _, error = curl(*resolve, '--cacert', str(ca), '-H', 'Host: other.test', f'https://{NAME}/up')
    assert status == '000', error


def test_fab_status_shows_the_certificates_expiry_and_warns_under_14_days(files_site, fab, host):
    status = fab('status', host.address)
    assert status.returncode == 0, status.output
    expiry = re.search(r'certificate /etc/nginx/tls/myproduct.crt: expires (\S+) \S+ UTC, in ([01]) days',
                       status.output)
    assert expiry, status.output
    assert 'WARNING: the certificate expires in less than 14 days' in status.output


def test_a_key_that_does_not_match_its_certificate_fails_and_the_site_keeps_serving_the_previous_pair(
        files_site, playbook, host):
    ca, variables = files_site
    files = ('sha256sum /etc/nginx/tls/myproduct.crt /etc/nginx/tls/myproduct.key '
             '/etc/nginx/sites-available/myproduct.conf')
    served = on_host(host, files)
    key = variables['tls_certificate_key']
    kept = key.read_bytes()
    # Another key at the same path, as a key replaced in place: the stamps hash what the file holds.
    subprocess.run(['openssl', 'genrsa', '-out', str(key), '2048'], check=True, capture_output=True, timeout=60)
    try:
        for _ in range(2):  # a failed run is stamped as nothing: the next one checks again, and fails again
            run = playbook('site.yml', **variables)
            assert run.returncode != 0
            assert 'key values mismatch' in run.output and "The site's files are back as they were" in run.output, \
                run.output
            assert on_host(host, files) == served
            host.ssh('nginx', '-t')
            assert curl('--resolve', f'{NAME}:443:{host.address}', '--cacert', str(ca), '--data', ECHO,
                        f'https://{NAME}/api/v0/echo/read')[0] == '200'
    finally:
        key.write_bytes(kept)


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
