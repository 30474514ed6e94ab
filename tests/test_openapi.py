"""`apiphant routes` and `apiphant openapi`: what a product offers, as text and as OpenAPI 3.1."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from apiphant.test import serve

from support import EXAMPLE, KITCHEN, make_product, run_cli

SCHEMATHESIS = Path(sys.executable).parent / 'schemathesis'


@pytest.fixture(scope='module')
def kitchen_document():
    result = run_cli('openapi', str(KITCHEN))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_routes_lists_every_route_with_its_summary():
    result = run_cli('routes', str(KITCHEN))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 'POST /api/v0/things/create     Validate fields and answer with them.' in lines
    assert 'POST /api/v0/things/delete     Misbehave as asked: return None or a list, crash, or sleep.' in lines
    assert 'ANY  /api/v0/raw/read' in lines  # a raw_environ action takes any method; no docstring
    assert 'POST /api/v0/users/admin/read' in lines
    assert not any('_private' in line for line in lines)
    assert lines == sorted(lines, key=lambda line: line.split()[1])


def test_routes_names_a_module_that_cannot_be_imported(tmp_path):
    broken = make_product(tmp_path, 'broken', {'api/v0/echo.py': 'def read(request):\n    return {\n'})
    result = run_cli('routes', str(broken))
    assert result.returncode == 1
    assert result.stderr.startswith('apiphant routes: cannot import broken.api.v0.echo: SyntaxError')
    assert result.stdout == ''


def test_openapi_is_a_valid_openapi_3_1_document(kitchen_document):
    validate(kitchen_document)  # raises on any violation of the OpenAPI 3.1 schema
    assert kitchen_document['openapi'] == '3.1.0'
    assert kitchen_document['info'] == {'title': 'kitchen', 'version': '0'}


def test_openapi_has_one_post_per_route_with_the_docstring(kitchen_document):
    routes = run_cli('routes', str(KITCHEN)).stdout.splitlines()
    assert sorted(kitchen_document['paths']) == sorted(line.split()[1] for line in routes)
    assert list(kitchen_document['paths']['/api/v0/process/update']) == ['post']
    operation = kitchen_document['paths']['/api/v0/process/update']['post']
    assert operation['summary'] == 'Log that the request is in flight, then take `seconds` ' \
                                   '(cooperatively: time is patched).'
    assert 'description' not in operation  # a one-line docstring is all summary
    assert operation['requestBody']['content']['application/json']['schema'] == {'type': 'object'}
    assert operation['responses']['200']['content']['application/json']['schema'] == {'type': 'object'}


def test_openapi_describes_the_error_responses(kitchen_document):
    responses = kitchen_document['paths']['/api/v1/echo/read']['post']['responses']
    assert set(responses) == {'200', '400', '404', '405', '413', '500', 'default'}
    error = kitchen_document['components']['responses']['413']['content']['application/json']['schema']
    assert error == {'$ref': '#/components/schemas/Error'}
    assert kitchen_document['components']['schemas']['Error']['required'] == ['error']


def test_openapi_of_the_example_holds_against_its_server(tmp_path):
    """Schemathesis sends requests generated from the document (bounded) and checks every answer
    against it: status codes, content type, schemas, and no 5xx."""
    document = tmp_path / 'openapi.json'
    result = run_cli('openapi', str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    document.write_text(result.stdout)
    with serve(EXAMPLE, '--no-access-log') as server:
        run = subprocess.run(
            [SCHEMATHESIS, 'run', str(document), '--url', f'http://127.0.0.1:{server.port}', '--checks', 'all',
             '--max-examples', '50', '--workers', '1', '--seed', '1', '--no-color'],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert 'No issues found' in run.stdout


def test_a_reader_that_stops_early_gets_no_traceback():
    result = subprocess.run(f'{sys.executable} -m apiphant openapi {KITCHEN} | head -c 10', shell=True,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == '{\n  "opena'
    assert result.stderr == ''


def test_a_longer_docstring_is_the_description(tmp_path):
    product = make_product(tmp_path, 'documented', {'api/v0/__init__.py': '', 'api/v0/notes.py': '''
        def create(request):
            """Store a note.

            The note is kept for a day.
            """
    '''})
    document = json.loads(run_cli('openapi', str(product)).stdout)
    operation = document['paths']['/api/v0/notes/create']['post']
    assert operation['summary'] == 'Store a note.'
    assert operation['description'] == 'Store a note.\n\nThe note is kept for a day.'
    assert operation['operationId'] == 'v0.notes.create'
