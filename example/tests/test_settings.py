"""The example product reads its settings from the environment, as the deploy gives them."""

import os
from pathlib import Path

from apiphant.test import serve, test

PRODUCT = Path(__file__).parent.parent / 'myproduct'


def test_settings_read_without_settings():
    with serve(PRODUCT, env={**os.environ, 'GREETING': '', 'DATABASE_PASSWORD': ''}):
        test('settings', 'read', {}, 200, {'greeting': '', 'database_password': 'missing'})


def test_settings_read_shows_the_setting_and_never_the_secret():
    with serve(PRODUCT, env={**os.environ, 'GREETING': 'Hi', 'DATABASE_PASSWORD': 's3cret'}) as running:
        test('settings', 'read', {}, 200, {'greeting': 'Hi', 'database_password': 'set'})
    assert 'settings/read 200' in ''.join(running.log)
    assert 's3cret' not in ''.join(running.log)
