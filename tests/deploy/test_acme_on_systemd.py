"""tls=acme on a host booted by systemd: certbot's timer schedules the renewals, and a renewal run as
the timer runs it (certbot.service) trusts the ACME server by the CA bundle the nginx role gives the
service in a drop-in, gets a new certificate from pebble, and the deploy hook reloads nginx, which
serves it; a CA bundle no longer set leaves the service. (The same on a host without systemd, where
cron runs the renewals: test_secrets.py.)"""

import shlex
import ssl

import pytest

from acmeserver import served_certificate
from support import wait_for

DOMAIN = 'renew.apiphant.test'
RENEWAL = '/etc/letsencrypt/renewal/myproduct.conf'
LIVE_CERTIFICATE = '/etc/letsencrypt/live/myproduct/cert.pem'
CA_BUNDLE = '/etc/letsencrypt/myproduct-acme-ca-bundle.pem'
DROP_IN = '/etc/systemd/system/certbot.service.d/acme-ca-bundle.conf'


@pytest.fixture(scope='module')
def host(lab):
    return lab.systemd_hosts[0]


def deploy(playbook, host, pebble, ca_bundle):
    """site.yml with tls=acme from pebble, certbot told to trust `ca_bundle` ('': the system's CAs)."""
    run = playbook('site.yml', hosts=[host], tls='acme', server_name=DOMAIN,
                   tls_acme_directory=pebble.directory, tls_acme_ca_bundle=ca_bundle)
    assert run.returncode == 0, run.output + pebble.output()
    return run


@pytest.fixture(scope='module')
def deployed(playbook, host, pebble):
    pebble.resolve(DOMAIN, host)
    return deploy(playbook, host, pebble, pebble.ca)


def show(host, unit, *properties):
    """The unit's properties, as `systemctl show` says them: {name: value}."""
    shown = host.ssh('systemctl', 'show', unit, *(f'--property={name}' for name in properties)).stdout
    return dict(line.split('=', 1) for line in shown.splitlines() if line)


def test_certbots_timer_is_enabled_and_starts_its_renewal_service_with_the_ca_bundle(deployed, host):
    timer = show(host, 'certbot.timer', 'UnitFileState', 'ActiveState', 'Triggers', 'NextElapseUSecRealtime')
    assert timer['UnitFileState'] == 'enabled' and timer['ActiveState'] == 'active', timer
    assert timer['Triggers'] == 'certbot.service' and timer['NextElapseUSecRealtime'], timer
    service = show(host, 'certbot.service', 'ExecStart', 'Environment', 'DropInPaths')
    assert 'argv[]=/usr/bin/certbot -q renew' in service['ExecStart'], service
    assert service['Environment'] == f'REQUESTS_CA_BUNDLE={CA_BUNDLE}', service
    assert service['DropInPaths'] == DROP_IN, service


def test_a_due_renewal_run_by_the_timers_service_is_served_after_nginx_reloads(deployed, host, pebble_root):
    def live_certificate():
        return ssl.PEM_cert_to_DER_cert(host.ssh('cat', LIVE_CERTIFICATE).stdout)

    before = live_certificate()
    assert served_certificate(host, pebble_root, DOMAIN) == before
    nginx = show(host, 'nginx.service', 'MainPID')
    # Due as a certificate 30 days from its end is, by certbot's own setting in the certificate's
    # renewal configuration: no certificate pebble issues outlives 100 years.
    host.ssh('sed', '-i', "'s/^# renew_before_expiry = .*/renew_before_expiry = 36500 days/'", RENEWAL)
    try:
        assert 'renew_before_expiry = 36500 days' in host.ssh('cat', RENEWAL).stdout
        # The same command without the service's environment: certbot does not trust pebble.
        unaided = host.ssh('certbot', 'renew', '--no-random-sleep-on-renew', check=False)
        assert unaided.returncode != 0 and 'CERTIFICATE_VERIFY_FAILED' in unaided.stdout + unaided.stderr, (
            unaided.stdout + unaided.stderr)
        assert live_certificate() == before
        # What the timer starts, as it starts it; a oneshot service: `start` returns once it has run.
        started = host.ssh('systemctl', 'start', 'certbot.service', check=False)
        journal = host.ssh('journalctl', '-u', 'certbot.service', '--no-pager', check=False).stdout
        assert started.returncode == 0, started.stderr + journal
    finally:
        host.ssh('sed', '-i', "'s/^renew_before_expiry = 36500 days$/# renew_before_expiry = 30 days/'", RENEWAL)
    assert show(host, 'certbot.service', 'Result', 'ExecMainStatus') == {'Result': 'success',
                                                                        'ExecMainStatus': '0'}
    renewed = live_certificate()
    assert renewed != before
    # nginx's new workers serve it moments after the reload.
    wait_for(lambda: served_certificate(host, pebble_root, DOMAIN), until=renewed.__eq__)
    assert show(host, 'nginx.service', 'MainPID') == nginx  # reloaded by the deploy hook, not restarted


def test_a_ca_bundle_no_longer_set_leaves_the_renewal_service(deployed, playbook, host, pebble):
    """Say the ACME server's CA is now one the host trusts itself: tls_acme_ca_bundle unset, the
    renewals must trust the system's CAs, which REQUESTS_CA_BUNDLE would replace."""
    store = '/usr/local/share/ca-certificates/apiphant-test-pebble.crt'
    host.ssh(f"printf '%s' {shlex.quote(pebble.ca.read_text())} > {store} && update-ca-certificates")
    try:
        deploy(playbook, host, pebble, '')
        assert show(host, 'certbot.service', 'Environment', 'DropInPaths') == {'Environment': '',
                                                                              'DropInPaths': ''}
    finally:
        host.ssh(f'rm -f {store} && update-ca-certificates --fresh')
        deploy(playbook, host, pebble, pebble.ca)  # the module's host as it was
    assert show(host, 'certbot.service', 'Environment', 'DropInPaths') == {
        'Environment': f'REQUESTS_CA_BUNDLE={CA_BUNDLE}', 'DropInPaths': DROP_IN}
