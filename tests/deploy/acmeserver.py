"""A real ACME server for the tls=acme tests, and HTTPS to a test host by a DNS name it serves.

Debian's pebble (Let's Encrypt's test server) and its DNS, pebble-challtestsrv, listen on the lab's
bridge address only; a test tells the DNS which test host a name resolves to, so pebble's HTTP-01
validation reaches that host's nginx.
"""

import http.client
import json
import os
import socket
import ssl
import subprocess
import urllib.request

from test_tls import make_certificate

import testhost


class Pebble:
    """pebble and pebble-challtestsrv on the lab's bridge address; `resolve` names the test hosts."""

    def __init__(self, folder):
        gateway = testhost.GATEWAY
        # pebble's own HTTPS certificate, from a CA of the test's that certbot is told to trust.
        self.ca, certificate, key = make_certificate(folder, gateway)
        config = folder / 'pebble.json'
        config.write_text(json.dumps({'pebble': {
            'listenAddress': f'{gateway}:14000', 'managementListenAddress': f'{gateway}:15000',
            'certificate': str(certificate), 'privateKey': str(key), 'httpPort': 80, 'tlsPort': 443,
            'ocspResponderURL': '', 'externalAccountBindingRequired': False}}))
        self.log_path = folder / 'pebble.log'
        self.log = self.log_path.open('w')
        self.processes = []
        try:
            # No default address: a name no test resolved is no host's.
            self.processes.append(subprocess.Popen(
                ['pebble-challtestsrv', '-defaultIPv4', '', '-defaultIPv6', '', '-dns01', f'{gateway}:8053',
                 '-http01', '', '-https01', '', '-tlsalpn01', '', '-management', f'{gateway}:8055'],
                stdout=self.log, stderr=subprocess.STDOUT))
            # Validations at once, and no nonce refused at random: what would make certbot retry or wait.
            self.processes.append(subprocess.Popen(
                ['pebble', '-config', str(config), '-dnsserver', f'{gateway}:8053'], stdout=self.log,
                stderr=subprocess.STDOUT, env={**os.environ, 'PEBBLE_VA_NOSLEEP': '1', 'PEBBLE_WFE_NONCEREJECT': '0'}))
            for process, port in ((self.processes[0], 8055), (self.processes[1], 14000), (self.processes[1], 15000)):
                testhost.wait_for_port(gateway, port, 30, process)
        except BaseException:
            self.stop()
            raise
        self.directory = f'https://{gateway}:14000/dir'
        self.management = f'https://{gateway}:15000'
        self.dns_management = f'http://{gateway}:8055'

    def resolve(self, name, host):
        """Make `name` resolve to the test host, for pebble's validations."""
        request = urllib.request.Request(f'{self.dns_management}/add-a', json.dumps(
            {'host': name, 'addresses': [host.address]}).encode(), method='POST')
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 200, reply.read()

    def root(self):
        """The root certificate pebble issues under (a new one each time pebble starts)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(f'{self.management}/roots/0', context=context, timeout=30) as reply:
            return reply.read().decode()

    def output(self):
        return self.log_path.read_text()[-3000:]

    def stop(self):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)
        self.log.close()


class DomainConnection(http.client.HTTPSConnection):
    """HTTPS to a test host for `name` (in the handshake and the Host header: nginx answers no other
    name), its certificate verified against pebble's root; one request per connection, as nginx
    closes a keep-alive connection idle at a reload (which HTTP clients retry), so every request
    sent must be answered."""

    def __init__(self, host, root, name):
        self.tls = ssl.create_default_context(cafile=str(root))
        super().__init__(host.address, 443, timeout=30, context=self.tls)
        self.name = name

    def connect(self):
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.name)

    def request(self, method, url, body=None, headers=None, **options):
        super().request(method, url, body, {**(headers or {}), 'Host': self.name, 'Connection': 'close'}, **options)


def served_certificate(host, root, name):
    """The certificate nginx serves for `name` (DER), verified against pebble's root."""
    connection = DomainConnection(host, root, name)
    try:
        connection.connect()
        return connection.sock.getpeercert(binary_form=True)
    finally:
        connection.close()
