"""The server layer and the framework meet only in apiphant.errors; the public names are in `apiphant`."""

import json
import subprocess
import sys

import apiphant

SERVER_LAYER = {'apiphant', 'apiphant.errors', 'apiphant.requestid', 'apiphant.connection', 'apiphant.exchange',
                'apiphant.server', 'apiphant.health', 'apiphant.logs'}
PUBLIC = ('ApiError', 'NotJson', 'field', 'Invalid', 'Missing', 'raw_environ', 'raw_response', 'request_id')


def test_the_server_layer_imports_nothing_of_the_framework():
    probe = ('import json, sys, apiphant.server, apiphant.connection, apiphant.exchange\n'
             'print(json.dumps([name for name in sys.modules if name.split(".")[0] == "apiphant"]))')
    loaded = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True).stdout
    assert set(json.loads(loaded)) <= SERVER_LAYER, loaded


def test_the_public_names_come_from_apiphant_itself():
    from apiphant import routes, validation
    from apiphant.errors import ApiError, NotJson
    assert (apiphant.ApiError, apiphant.NotJson) == (ApiError, NotJson)
    public = (apiphant.field, apiphant.Invalid, apiphant.Missing)
    assert public == (validation.field, validation.Invalid, validation.Missing)
    assert (apiphant.raw_environ, apiphant.raw_response) == (routes.raw_environ, routes.raw_response)
    assert set(PUBLIC) <= set(dir(apiphant)) and set(PUBLIC) <= set(apiphant.__all__)


def test_the_server_still_hands_out_the_raw_decorators_as_0_3_documented():
    from apiphant import routes
    from apiphant.server import raw_environ, raw_response
    assert (raw_environ, raw_response) == (routes.raw_environ, routes.raw_response)
