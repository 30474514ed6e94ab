"""The example product's own functional tests: copy this file along with the product."""

from pathlib import Path

import pytest

from apiphant.test import serve, test

PRODUCT = Path(__file__).parent.parent / 'myproduct'


@pytest.fixture(scope='module', autouse=True)
def server():
    """A real server on a free loopback port, with apiphant.test.config pointing at it."""
    with serve(PRODUCT) as running:
        yield running


def test_echo_read():
    test('echo', 'read', {'hello': 'world'}, 200, {'hello': 'world', 'server': 'myproduct'})


def test_echo_needs_a_json_object():
    test('echo', 'read', '[1, 2]', 400, {'error': 'Request content should be JSON Object'})
