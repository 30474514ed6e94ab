"""Hardening against bad input: every hostile body or malformed request gets a JSON error or a clean
close, never a crash, never a traceback; afterwards the server still answers a normal echo."""

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiphant.test import serve, test
from support import EXAMPLE, post, raw_exchange

ECHO = '/api/v0/echo/read'
NOT_AN_OBJECT = {'error': 'Request content should be JSON Object'}
MAX_BODY = 1024 * 1024  # the default


@pytest.fixture(scope='module')
def server():
    """The example product with the default limits."""
    with serve(EXAMPLE) as running:
        yield running


@pytest.fixture(autouse=True)
def still_serving(server):
    """After every case: no traceback in the log and a normal request still works."""
    with server.use():
        yield
        assert not [line for line in server.log if 'Traceback' in line]
        test('echo', 'read', {'hello': 'world'}, 200, {'hello': 'world', 'server': 'myproduct'})


def exchange(server, body):
    """POST `body` as it is; return (status, decoded JSON body)."""
    reply = raw_exchange(server.port, post(ECHO, body))
    head, _, payload = reply.partition(b'\r\n\r\n')
    return int(head.split()[1]), json.loads(payload)


def strict_json_object(body):
    """The oracle: what a strict JSON parser makes of the body (None unless a sound JSON object)."""
    if not body:
        return {}

    def refuse(token):
        raise ValueError(token)

    try:
        value = json.loads(body.decode('utf-8'), parse_constant=refuse, strict=False)
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode('utf-8')
    except (ValueError, UnicodeError, RecursionError):
        return None
    return value if type(value) is dict else None


def check_echo(server, body):
    status, reply = exchange(server, body)
    expected = strict_json_object(body)
    if status == 400:
        assert reply == NOT_AN_OBJECT
    else:
        assert status == 200, reply
        assert expected is not None, f'accepted a body a strict parser refuses: {body[:200]!r}'
        assert reply == {**expected, 'server': 'myproduct'}
    return status


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def mangled(data):
    """A valid JSON object, then cut, byte-flipped, or spliced: the near misses parsers get wrong."""
    text = json.dumps(data.draw(st.dictionaries(st.text(), json_values, max_size=5)),
                      ensure_ascii=data.draw(st.booleans())).encode()
    how = data.draw(st.sampled_from(['cut', 'flip', 'splice', 'as is']))
    if how == 'cut' and text:
        return text[:data.draw(st.integers(0, len(text) - 1))]
    if how == 'flip' and text:
        at = data.draw(st.integers(0, len(text) - 1))
        return text[:at] + bytes([data.draw(st.integers(0, 255))]) + text[at + 1:]
    if how == 'splice':
        at = data.draw(st.integers(0, len(text)))
        return text[:at] + data.draw(st.binary(max_size=8)) + text[at:]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bodies_get_200_only_when_sound_and_400_otherwise(server, data):
    kind = data.draw(st.sampled_from(['bytes', 'mangled', 'value']))
    if kind == 'bytes':
        body = data.draw(st.binary(min_size=1, max_size=200))
    elif kind == 'mangled':
        body = mangled(data)
    else:
        body = json.dumps(data.draw(json_values)).encode()
    check_echo(server, body)


NASTY_BODIES = [
    ('invalid utf-8', b'{"a": "\xff\xfe"}', 400),
    ('overlong utf-8', b'{"a": "\xc0\xaf"}', 400),
    ('raw utf-8 surrogate', b'{"a": "\xed\xa0\x80"}', 400),
    ('lone surrogate escape', b'{"a": "\\ud800"}', 400),
    ('reversed surrogate pair', b'{"a": "\\udc00\\ud800"}', 400),
    ('lone surrogate in a key', b'{"\\udfff": 1}', 400),
    ('astral escape pair', b'{"a": "\\ud83d\\ude00"}', 200),
    ('NaN', b'{"a": NaN}', 400),
    ('Infinity', b'{"a": [1, -Infinity]}', 400),
    ('number beyond float', b'{"a": 1e400}', 400),
    ('number with 5000 digits', b'{"a": ' + b'9' * 5000 + b'}', 400),
    ('big integer', b'{"a": 18446744073709551616}', 200),
    ('tiny float', b'{"a": 1e-400}', 200),
    ('lone minus', b'{"a": -}', 400),
    ('leading zero', b'{"a": [1, -01]}', 400),
    ('trailing dot', b'{"a": 1.}', 400),
    ('100,000 nested arrays', b'{"a": ' + b'[' * 100_000 + b']' * 100_000 + b'}', 400),
    ('100,000 nested objects', b'{"a": ' * 100_000 + b'1' + b'}' * 100_000, 400),
    ('100,000 unclosed arrays', b'[' * 100_000, 400),
    ('a long string', b'{"a": "' + b'x' * (MAX_BODY - 16) + b'"}', 200),
    ('duplicate keys', b'{"a": 1, "a": 2}', 200),
    ('array root', b'[1, 2]', 400),
    ('string root', b'"hello"', 400),
    ('null root', b'null', 400),
    ('number root', b'42', 400),
    ('trailing garbage', b'{"a": 1} {"b": 2}', 400),
    ('byte order mark', b'\xef\xbb\xbf{"a": 1}', 400),
    ('single quotes', b"{'a': 1}", 400),
    ('trailing comma', b'{"a": [1,]}', 400),
    ('raw control character', b'{"a": "\x01\t"}', 200),
    ('escaped NUL', b'{"\\u0000": "\\u0000"}', 200),
]


@pytest.mark.parametrize('body, status', [case[1:] for case in NASTY_BODIES],
                         ids=[case[0] for case in NASTY_BODIES])
def test_nasty_bodies(server, body, status):
    assert check_echo(server, body) == status


REQUEST = b'POST /api/v0/echo/read HTTP/1.1\r\nHost: test\r\n'
JSON_400 = b'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close'

# (name, raw bytes, how the server must answer: a status code, or None for "any JSON error or close")
ABUSE = [
    ('garbage request line', b'GARBAGE\r\n\r\n', 400),
    ('binary request line', b'\x00\x01\x02\xff\r\n\r\n', 400),
    ('unknown HTTP version', b'POST /api/v0/echo/read HTTP/9.9\r\n\r\n', 400),
    ('extra request-line word', b'POST /api/v0/echo/read HTTP/1.1 x\r\n\r\n', 400),
    ('HTTP/0.9', b'GET /api/v0/echo/read\r\n\r\n', 400),
    ('request line over 8 KiB', b'POST /' + b'a' * 20_000 + b' HTTP/1.1\r\n\r\n', 414),
    ('1 MB header', REQUEST + b'X-Big: ' + b'a' * 1_000_000 + b'\r\n\r\n', 400),
    ('1,000 headers', REQUEST + b''.join(b'X-H%d: v\r\n' % i for i in range(1000)) + b'\r\n', 400),
    ('header without colon', REQUEST + b'Bogus\r\nContent-Length: 2\r\n\r\n{}', 400),
    ('space before colon', REQUEST + b'Content-Length : 2\r\n\r\n{}', 400),
    ('Content-Length not a number', REQUEST + b'Content-Length: abc\r\n\r\n{}', 400),
    ('negative Content-Length', REQUEST + b'Content-Length: -1\r\n\r\n{}', 400),
    ('Content-Length list', REQUEST + b'Content-Length: 2, 2\r\n\r\n{}', 400),
    ('conflicting Content-Lengths', REQUEST + b'Content-Length: 2\r\nContent-Length: 5\r\n\r\n{}', 400),
    ('chunk size not hex', REQUEST + b'Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n', 400),
    ('negative chunk size', REQUEST + b'Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n', 400),
    ('chunks over the limit', REQUEST + b'Transfer-Encoding: chunked\r\n\r\n'
     + (b'40000\r\n' + b' ' * 0x40000 + b'\r\n') * 5 + b'0\r\n\r\n', 413),
    ('Content-Length and chunked', REQUEST + b'Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n'
     b'2\r\n{}\r\n0\r\n\r\n', 400),
    ('chunked and Content-Length', REQUEST + b'Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n'
     b'2\r\n{}\r\n0\r\n\r\nPOST /api/v0/echo/read HTTP/1.1\r\n\r\n', 400),
    ('unknown transfer coding', REQUEST + b'Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
     400),
    ('two Transfer-Encodings', REQUEST + b'Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n'
     b'\r\n2\r\n{}\r\n0\r\n\r\n', 400),
    ('Transfer-Encoding with space', REQUEST + b'Transfer-Encoding : chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
     400),
]

PATHS = [b'/api/v0/../../echo/read', b'/api/v0/%2e%2e/echo/read', b'/api/%2e%2e/v0/echo/read',
         b'/api/v0/echo%00/read', b'/api/v0/echo\x00/read', '/api/v0/échø/read'.encode(),
         b'/api/v0/\xff\xfe/read', b'/api/v0/os/read', b'/api/v0/__init__/read', b'/api/v0/echo/__doc__',
         b'/api/v0/echo/read/', b'//api/v0/echo/read',
         b'http://evil/api/v0/echo', b'*']


def status_of(reply):
    return int(reply.split(b' ', 2)[1])


@pytest.mark.parametrize('name, data, status', ABUSE, ids=[case[0] for case in ABUSE])
def test_http_abuse_gets_a_json_error_and_a_close(server, name, data, status):
    reply = raw_exchange(server.port, data)
    assert status_of(reply) == status, reply[:300]
    head, _, body = reply.partition(b'\r\n\r\n')
    assert b'Content-Type: application/json' in head and b'Connection: close' in head
    assert 'error' in json.loads(body)


@pytest.mark.parametrize('path', PATHS, ids=[repr(path)[2:40] for path in PATHS])
def test_odd_paths_are_404_and_import_nothing(server, path):
    reply = raw_exchange(server.port, b'POST ' + path + b' HTTP/1.1\r\nConnection: close\r\n\r\n')
    assert status_of(reply) == 404, reply
    assert reply.endswith(b'{"error": "404 Not Found"}')


def test_content_length_longer_than_the_body_then_close(server):
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(REQUEST + b'Content-Length: 100\r\n\r\n{}')
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(65536)
    assert reply.startswith(JSON_400)


def test_http_1_0_and_pipelining(server):
    reply = raw_exchange(server.port, b'POST /api/v0/echo/read HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}')
    assert reply.startswith(b'HTTP/1.1 200 OK') and b'Connection: close' in reply
    pipelined = post(ECHO, b'{"n": 1}', ['Connection: keep-alive']).replace(b'Connection: close\r\n', b'')
    reply = raw_exchange(server.port, pipelined * 3 + post(ECHO, b'{"n": 4}'))
    assert reply.count(b'HTTP/1.1 200 OK') == 4
    assert [int(part[:1]) for part in reply.split(b'{"n": ')[1:]] == [1, 1, 1, 4]


def test_oversized_body_is_refused_before_it_is_sent(server):
    """413 arrives while the client is still holding most of its body."""
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(REQUEST + b'Content-Length: %d\r\n\r\n' % (50 * MAX_BODY) + b'{"a": "')
        reply = sock.recv(65536)
    assert status_of(reply) == 413
    assert reply.endswith(b'{"error": "413 Request Entity Too Large"}')


def test_bodies_never_reach_the_log(server):
    marker = 'password-7f3a9c'
    with server.use():
        test('echo', 'read', {'password': marker}, 200)
    exchange(server, b'{"password": "' + marker.encode() + b'", broken')
    assert not [line for line in server.log if marker in line]
    assert any(f'POST {ECHO} 200' in line for line in server.log)
