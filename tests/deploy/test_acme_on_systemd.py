"""tls=acme on a host booted by systemd: certbot's timer schedules the renewals, and a renewal run as
the timer runs it (certbot.service) trusts the ACME server by the CA bundle the nginx role gives the
service in a drop-in, gets a new certificate from pebble, and the deploy hook reloads nginx, which
serves it. (The same on a host without systemd, where cron runs the renewals: test_secrets.py.)"""

import ssl
import time

import pytest

from acmeserver import served_certificate

DOMAIN = 'renew.apiphant.test'
RENEWAL = '/etc/letsencrypt/renewal/myproduct.conf'
LIVE_CERTIFICATE = '/etc/letsencrypt/live/myproduct/cert.pem'
CA_BUNDLE = '/etc/letsencrypt/myproduct-acme-ca-bundle.pem'


@pytest.fixture(scope='module')
def host(lab):
    return lab.systemd_hosts[0]


@pytest.fixture(scope='module')
def deployed(playbook, host, pebble):
    pebble.resolve(DOMAIN, host)
    run = playbook('site.yml', hosts=[host], tls='acme', server_name=DOMAIN,
                   tls_acme_directory=pebble.directory, tls_acme_ca_bundle=pebble.ca)
    assert run.returncode == 0, run.output + pebble.output()
    return run


def show(host, lab, unit, *properties):
    """The unit's properties, as `systemctl show` says them: {name: value}."""
    shown = host.ssh('systemctl', 'show', unit, *(f'--property={name}' for name in properties), key=lab.key).stdout
    return dict(line.split('=', 1) for line in shown.splitlines() if line)


def test_certbots_timer_is_enabled_and_starts_its_renewal_service_with_the_ca_bundle(deployed, host, lab):
    timer = show(host, lab, 'certbot.timer', 'UnitFileState', 'ActiveState', 'Triggers', 'NextElapseUSecRealtime')
    assert timer['UnitFileState'] == 'enabled' and timer['ActiveState'] == 'active', timer
    assert timer['Triggers'] == 'certbot.service' and timer['NextElapseUSecRealtime'], timer
    service = show(host, lab, 'certbot.service', 'ExecStart', 'Environment', 'DropInPaths')
    assert 'argv[]=/usr/bin/certbot -q renew' in service['ExecStart'], service
    assert service['Environment'] == f'REQUESTS_CA_BUNDLE={CA_BUNDLE}', service
    assert service['DropInPaths'] == '/etc/systemd/system/certbot.service.d/acme-ca-bundle.conf', service


def wait_for_certificate(host, root, certificate, timeout=30):
    """Wait until nginx serves `certificate` (DER): its reload takes effect after `nginx -s reload`
    returns. Returns what is served at the end."""
    deadline = time.monotonic() + timeout
    while (served := served_certificate(host, root, DOMAIN)) != certificate and time.monotonic() < deadline:
        time.sleep(0.2)
    return served


def test_a_due_renewal_run_by_the_timers_service_is_served_after_nginx_reloads(deployed, host, lab, pebble_root):
    def live_certificate():
        return ssl.PEM_cert_to_DER_cert(host.ssh('cat', LIVE_CERTIFICATE, key=lab.key).stdout)

    before = live_certificate()
    assert served_certificate(host, pebble_root, DOMAIN) == before
    nginx = show(host, lab, 'nginx.service', 'MainPID')
    # Due as a certificate 30 days from its end is, by certbot's own setting in the certificate's
    # renewal configuration: no certificate pebble issues outlives 100 years.
    host.ssh('sed', '-i', "'s/^# renew_before_expiry = .*/renew_before_expiry = 36500 days/'", RENEWAL, key=lab.key)
    try:
        assert 'renew_before_expiry = 36500 days' in host.ssh('cat', RENEWAL, key=lab.key).stdout
        # The same command without the service's environment: certbot does not trust pebble.
        unaided = host.ssh('certbot', 'renew', '--no-random-sleep-on-renew', key=lab.key, check=False)
        assert unaided.returncode != 0 and 'CERTIFICATE_VERIFY_FAILED' in unaided.stdout + unaided.stderr, (
            unaided.stdout + unaided.stderr)
        assert live_certificate() == before
        # What the timer starts, as it starts it; a oneshot service: `start` returns once it has run.
        started = host.ssh('systemctl', 'start', 'certbot.service', key=lab.key, check=False)
        journal = host.ssh('journalctl', '-u', 'certbot.service', '--no-pager', key=lab.key, check=False).stdout
        assert started.returncode == 0, started.stderr + journal
    finally:
        host.ssh('sed', '-i', "'s/^renew_before_expiry = 36500 days$/# renew_before_expiry = 30 days/'", RENEWAL,
                 key=lab.key)
    assert show(host, lab, 'certbot.service', 'Result', 'ExecMainStatus') == {'Result': 'success',
                                                                             'ExecMainStatus': '0'}
    renewed = live_certificate()
    assert renewed != before
    assert wait_for_certificate(host, pebble_root, renewed) == renewed
    assert show(host, lab, 'nginx.service', 'MainPID') == nginx  # reloaded by the deploy hook, not restarted
