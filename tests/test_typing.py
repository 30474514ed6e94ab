"""The public API is typed (the wheel ships py.typed): a product checked with `mypy --strict` sees
real signatures, so a wrong call is an error before it is a 500."""

import subprocess
import sys
import textwrap

from support import ROOT

PRODUCT = '''
from apiphant import ApiError, Invalid, Missing, field, raw_environ, request_id
from apiphant.background import seconds
from apiphant.test import call, client, serve, test
from apiphant.validation import nested_errors


@nested_errors
def read(request: dict[str, object]) -> dict[str, object]:
    count: int = field(request, 'count', is_required=True, valid_type=int, valid_value=range(10))
    if count == 3:
        raise Invalid('count', 'not 3')
    if count == 4:
        raise Missing('other')
    if count == 5:
        raise ApiError(409, 'taken')
    return {'count': count, 'id': request_id()}


@raw_environ
def create(environ: dict[str, object]) -> dict[str, object]:
    return {}


@seconds(60)
def tick() -> None:
    pass


def check() -> None:
    with client('shop') as app:
        status, body = call('echo', 'read', {'count': 1}, headers={'X-A': 'b'})
        reply = call('echo', 'read')
        print(reply.status + 1, reply.headers.get('content-type'), body, status, app)
        test('echo', 'read', {}, 200, None, response_headers={'A': 'b'})
    with serve('shop', '--workers', '2') as server:
        print(server.port + 1, server.host.upper())
'''


def mypy(tmp_path, source):
    (tmp_path / 'product.py').write_text(textwrap.dedent(source))
    # apiphant from this checkout (an editable install hides it from mypy), its own body not checked.
    return subprocess.run([sys.executable, '-m', 'mypy', '--strict', '--follow-imports=silent', '--no-incremental',
                           'product.py'], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={'MYPYPATH': str(ROOT), 'PATH': '/usr/bin:/bin'})


def test_a_product_using_the_public_api_passes_mypy_strict(tmp_path):
    result = mypy(tmp_path, PRODUCT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_call_is_a_type_error(tmp_path):
    result = mypy(tmp_path, '''
        from apiphant import ApiError, field

        def read(request: dict[str, object]) -> None:
            field(request, 42)
            raise ApiError('409')
    ''')
    assert result.returncode == 1
    assert 'Argument 2 to "field" has incompatible type "int"' in result.stdout
    assert 'Argument 1 to "ApiError" has incompatible type "str"' in result.stdout
