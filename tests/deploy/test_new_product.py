"""A product made by `apiphant new` deploys with its own inventory, beside another product."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import testhost

ROOT = Path(__file__).resolve().parents[2]


def test_a_new_product_deploys_with_the_inventory_it_came_with(lab, ansible_env, tmp_path):
    host = lab.hosts[0]
    made = subprocess.run([sys.executable, '-m', 'apiphant', 'new', 'shop'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    inventory = tmp_path / 'shop' / 'deploy' / 'inventory.ini'
    ssh_args = ' '.join(testhost.ssh_options(lab.key)[2:])
    text = inventory.read_text()
    text = text.replace('staging.example.com ansible_user=root',
                        f'{host.name} ansible_host={host.address} ansible_user=root '
                        f"ansible_ssh_private_key_file={lab.key} ansible_ssh_common_args='{ssh_args}'")
    # The lab has no package index: apiphant from this checkout. Its own ports, as another product
    # (the example's, from the other tests) may be on the host already.
    text = text.replace('apiphant_package=apiphant==', f'apiphant_package={ROOT}\n# was: apiphant==')
    inventory.write_text(text + 'api_ports=[9001]\nnginx_port=8080\n')

    run = subprocess.run([str(Path(sys.executable).parent / 'fab'), 'deploy', host.name], cwd=ROOT / 'deploy',
                         env={**ansible_env, 'FABRIC_INVENTORY': str(inventory)},
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    request = urllib.request.Request(f'http://{host.address}:8080/api/v0/echo/update',
                                     data=json.dumps({'name': 'Ada'}).encode(), method='POST')
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert json.loads(reply.read()) == {'greeting': 'Hello, Ada!'}
    users = host.ssh('getent', 'passwd', 'shop', key=lab.key).stdout
    assert users.startswith('shop:') and users.rstrip().endswith(':/usr/sbin/nologin')
