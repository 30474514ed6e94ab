"""Fixtures shared by the framework tests: real servers on free loopback ports."""

import pytest

from apiphant.test import client, serve
from support import EXAMPLE, KITCHEN


@pytest.fixture(scope='module')
def kitchen_server():
    with serve(KITCHEN) as running:
        yield running


@pytest.fixture(scope='module')
def example_server():
    with serve(EXAMPLE) as running:
        yield running


@pytest.fixture
def kitchen(kitchen_server):
    """The kitchen-sink test product (served once a module), with `config` pointing at it."""
    with kitchen_server.use():
        yield kitchen_server


@pytest.fixture
def example(example_server):
    """The example product (served once a module), with `config` pointing at it."""
    with example_server.use():
        yield example_server


@pytest.fixture(params=['in process', 'live'])
def kitchen_either(request):
    """The kitchen product through the in-process client, then through a real server; an action's
    exception is the 500 in both."""
    if request.param == 'in process':
        with client(KITCHEN, raise_server_exceptions=False):
            yield request.param
    else:
        yield request.getfixturevalue('kitchen')
