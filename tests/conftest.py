"""Fixtures shared by the framework tests: real servers on free loopback ports."""

import pytest

from apiphant.test import serve

from support import EXAMPLE, IN_PROCESS_OR_LIVE, KITCHEN, in_process_or_live


@pytest.fixture(scope='session')
def postgres():
    """A throwaway PostgreSQL server for the session (tests/postgres.py), removed at its end."""
    from postgres import Cluster  # (psycopg: only the sessions that use the database import it)
    with Cluster() as cluster:
        yield cluster


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


@pytest.fixture(params=IN_PROCESS_OR_LIVE)
def kitchen_either(request):
    """The kitchen product through the in-process client, then through a real server; an action's
    exception is the 500 in both."""
    with in_process_or_live(request, KITCHEN, 'kitchen_server'):
        yield request.param
