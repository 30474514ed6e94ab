"""Hardening against bad input: every hostile body or malformed request gets a JSON error or a clean
close, never a crash, never a traceback; afterwards the server still answers a normal echo."""

import itertools
import json
import select
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiphant.test import serve, test

from support import EXAMPLE, Connection, exchange, http_request, wait_for

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
    answer = exchange(server.port, http_request('POST', ECHO, body))
    expected = strict_json_object(body)
    if answer.status == 400:
        assert answer.json() == NOT_AN_OBJECT
    else:
        assert answer.status == 200, answer
        assert expected is not None, f'accepted a body a strict parser refuses: {body[:200]!r}'
        assert answer.json() == {**expected, 'server': 'myproduct'}
    return answer.status


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


def echo(body=b'', headers=(), framing=None, **parts):
    """A POST to the echo, framed only by the headers given unless `framing` says otherwise."""
    return http_request('POST', ECHO, body, headers, framing, **parts)


CHUNKED = [('Transfer-Encoding', 'chunked')]
TWO_BYTES = b'2\r\n{}\r\n0\r\n\r\n'  # a chunked {}

# (name, request, the status the server must answer with, a JSON error, and then close)
ABUSE = [
    ('garbage request line', b'GARBAGE\r\n\r\n', 400),
    ('binary request line', b'\x00\x01\x02\xff\r\n\r\n', 400),
    ('unknown HTTP version', echo(version='HTTP/9.9', host=None), 400),
    ('extra request-line word', echo(version='HTTP/1.1 x', host=None), 400),
    ('HTTP/0.9', http_request('GET', ECHO, framing=None, version=None, host=None), 400),
    ('request line over 8 KiB', http_request('POST', '/' + 'a' * 20_000, framing=None, host=None), 414),
    ('1 MB header', echo(headers=[('X-Big', 'a' * 1_000_000)]), 400),
    ('1,000 headers', echo(headers=[(f'X-H{number}', 'v') for number in range(1000)]), 400),
    ('header without colon', echo(b'{}', ['Bogus', ('Content-Length', 2)]), 400),
    ('space before colon', echo(b'{}', [('Content-Length ', 2)]), 400),
    ('Content-Length not a number', echo(b'{}', [('Content-Length', 'abc')]), 400),
    ('negative Content-Length', echo(b'{}', [('Content-Length', -1)]), 400),
    ('Content-Length list', echo(b'{}', [('Content-Length', '2, 2')]), 400),
    ('conflicting Content-Lengths', echo(b'{}', [('Content-Length', 2), ('Content-Length', 5)]), 400),
    ('chunk size not hex', echo(b'zz\r\n{}\r\n0\r\n\r\n', CHUNKED), 400),
    ('negative chunk size', echo(b'-2\r\n{}\r\n0\r\n\r\n', CHUNKED), 400),
    ('chunks over the limit', echo([b' ' * 0x40000] * 5, framing='chunked'), 413),
    ('Content-Length and chunked', echo(TWO_BYTES, [('Content-Length', 4), *CHUNKED]), 400),
    ('chunked and Content-Length', echo(TWO_BYTES + echo(host=None), [*CHUNKED, ('Content-Length', 40)]), 400),
    ('unknown transfer coding', echo(TWO_BYTES, [('Transfer-Encoding', 'gzip, chunked')]), 400),
    ('two Transfer-Encodings', echo(TWO_BYTES, [*CHUNKED, ('Transfer-Encoding', 'identity')]), 400),
    ('Transfer-Encoding with space', echo(TWO_BYTES, [('Transfer-Encoding ', 'chunked')]), 400),
    ('HTTP/1.1 without Host', echo(b'{}', framing='content-length', host=None), 400),
    ('two Host fields', echo(b'{}', [('Host', 'other')], 'content-length'), 400),
    ('two equal Host fields', echo(b'{}', [('Host', 'test')], 'content-length'), 400),
    ('two Host fields in HTTP/1.0', echo(b'{}', [('Host', 'other')], 'content-length', version='HTTP/1.0'), 400),
    *[(f'Host {host!r}', echo(b'{}', framing='content-length', host=host), 400) for host in (
        'a b', 'a/b', 'user@a', 'a?b', 'a#b', '[::1', '::1', '[zz::1]', '[1:2:3]', 'a:80x', 'a:b:c',
        '%zz.example', 'é.example', '"a"', '<a>', 'a\\b')],
    ('invalid Host in HTTP/1.0', echo(b'{}', framing='content-length', version='HTTP/1.0', host='a b'), 400),
    ('CONNECT', http_request('CONNECT', 'test:443', framing=None, host='test:443'), 400),
    ('trailer section over 64 KiB', echo(b'2\r\n{}\r\n0\r\nX-Big: ' + b'a' * 200_000 + b'\r\n\r\n', CHUNKED), 400),
    ('more than 100 trailer fields', echo(b'2\r\n{}\r\n0\r\n' + b''.join(b'X-T%d: 1\r\n' % n for n in range(101))
                                         + b'\r\n', CHUNKED), 400),
]

VALID_HOSTS = ['example.com', 'example.com:8001', '127.0.0.1:8001', '[::1]:8001', '[::ffff:10.0.0.1]', '',
               'under_score.example', 'example.com:', '%41.example', 'xn--bcher-kva.example', '[v1.fe80::a]']

PATHS = [b'/api/v0/../../echo/read', b'/api/v0/%2e%2e/echo/read', b'/api/%2e%2e/v0/echo/read',
         b'/api/v0/echo%00/read', b'/api/v0/echo\x00/read', '/api/v0/échø/read'.encode(),
         b'/api/v0/\xff\xfe/read', b'/api/v0/os/read', b'/api/v0/__init__/read', b'/api/v0/echo/__doc__',
         b'/api/v0/echo/read/', b'//api/v0/echo/read',
         b'http://evil/api/v0/echo', b'*']


@pytest.mark.parametrize('name, data, status', ABUSE, ids=[case[0] for case in ABUSE])
def test_http_abuse_gets_a_json_error_and_a_close(server, name, data, status):
    with Connection(server.port) as connection:
        connection.send(data)
        answer = connection.answer()
        assert answer.status == status, answer
        assert answer.headers['content-type'] == 'application/json'
        assert answer.headers['connection'] == 'close'
        assert 'error' in answer.json()
        assert connection.closes()


@pytest.mark.parametrize('host', VALID_HOSTS)
def test_any_rfc_3986_host_and_port_is_served(server, host):
    answer = exchange(server.port, echo(b'{}', framing='content-length', host=host))
    assert (answer.status, answer.json()) == (200, {'server': 'myproduct'})


def test_http_1_0_needs_no_host(server):
    answer = exchange(server.port, echo(b'{}', framing='content-length', version='HTTP/1.0', host=None))
    assert (answer.status, answer.json()) == (200, {'server': 'myproduct'})


def test_trailer_fields_are_read_and_dropped(server):
    with Connection(server.port) as connection:
        connection.send(echo(b'2\r\n{}\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n', CHUNKED),
                        echo(b'{"n": 2}', framing='content-length'))
        assert connection.answer().json() == {'server': 'myproduct'}
        assert connection.answer().json() == {'n': 2, 'server': 'myproduct'}


def test_a_trailer_section_may_arrive_a_piece_at_a_time(server):
    """The 64 KiB are counted from the last chunk: a trailer after a body of a full read is fine."""
    with Connection(server.port) as connection:
        body = b'{"a": "' + b'x' * 100_000 + b'"}'
        connection.send(echo(b'%x\r\n%s\r\n0\r\n' % (len(body), body), CHUNKED))
        for number in range(20):
            connection.send(b'X-T%d: %s\r\n' % (number, b'y' * 1000))
        connection.send(b'\r\n')
        assert connection.answer().status == 200


def test_a_large_trailer_is_refused_and_never_held(server):
    """16 MiB of one trailer field: refused when the trailer passes the head's limit, the rest
    read and dropped; the server's peak memory does not grow by the trailer's size."""
    peak_before = peak_memory(server.process.pid)
    with Connection(server.port) as connection:
        connection.send(echo(b'2\r\n{}\r\n0\r\nX-Big: ', CHUNKED))
        piece = b'a' * 65536
        try:
            for _ in range(16 * 16):
                if select.select([connection.sock], [], [], 0)[0]:
                    break  # the answer came
                connection.sock.sendall(piece)
            else:
                connection.sock.sendall(b'\r\n\r\n')
        except OSError:
            pass  # the server closed: its answer is still there to read
        answer = connection.answer()
        assert (answer.status, answer.headers['connection']) == (400, 'close')
        assert connection.closes()
    assert peak_memory(server.process.pid) - peak_before < 4 * 1024 * 1024


PIPELINE = [  # (request, the echo's answer): upgrades, chunks and trailers, sent in any pieces
    (echo(b'4\r\n{"n"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\nX-T: 1\r\n\r\n', CHUNKED), {'n': 1}),
    (echo(b'{"n": 2}', [('Connection', 'Upgrade'), ('Upgrade', 'h2c')], 'content-length'), {'n': 2}),
    (echo([b'{"n":', b' 3}'], [('Connection', 'Upgrade'), ('Upgrade', 'websocket')], 'chunked'), {'n': 3}),
    (echo(b'', [('Connection', 'Upgrade'), ('Upgrade', 'h2c')], 'content-length'), {}),
    (echo(b'{"n": 5}', framing='content-length'), {'n': 5}),
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, sum(len(request) for request, _ in PIPELINE) - 1), max_size=12))
def test_upgrades_chunks_and_trailers_read_the_same_whatever_the_reads(server, cuts):
    data = b''.join(request for request, _ in PIPELINE)
    bounds = [0, *sorted(set(cuts)), len(data)]
    with Connection(server.port) as connection:
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start, end in itertools.pairwise(bounds):
            connection.send(data[start:end])
        answers = [connection.answer() for _ in PIPELINE]
    assert [answer.json() for answer in answers] == [{**body, 'server': 'myproduct'} for _, body in PIPELINE]


def peak_memory(pid):
    """The process's peak resident size in bytes (VmHWM), from /proc."""
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
    raise AssertionError(f'no VmHWM for {pid}')


@pytest.mark.parametrize('path', PATHS, ids=[repr(path)[2:40] for path in PATHS])
def test_odd_paths_are_404_and_import_nothing(server, path):
    answer = exchange(server.port, http_request('POST', path))
    assert (answer.status, answer.json()) == (404, {'error': '404 Not Found'})


def test_content_length_longer_than_the_body_then_close(server):
    with Connection(server.port) as connection:
        connection.send(echo(b'{}', [('Content-Length', 100)]))
        connection.sock.shutdown(socket.SHUT_WR)
        answer = connection.answer()
        assert (answer.status, answer.headers['connection']) == (400, 'close')
        assert answer.headers['content-type'] == 'application/json'


def test_http_1_0_and_pipelining(server):
    with Connection(server.port) as connection:
        connection.send(echo(b'{}', framing='content-length', version='HTTP/1.0', host=None))
        answer = connection.answer()
        assert (answer.status, answer.headers['connection']) == (200, 'close')
        assert connection.closes()
    with Connection(server.port) as connection:
        connection.send(*(echo(b'{"n": %d}' % n, framing='content-length') for n in (1, 1, 1, 4)))
        assert [connection.answer().json()['n'] for _ in range(4)] == [1, 1, 1, 4]


def test_oversized_body_is_refused_before_it_is_sent(server):
    """413 arrives while the client is still holding most of its body."""
    with Connection(server.port) as connection:
        connection.send(echo(b'{"a": "', [('Content-Length', 50 * MAX_BODY)]))
        answer = connection.answer()
        assert (answer.status, answer.json()) == (413, {'error': '413 Request Entity Too Large'})


def test_bodies_never_reach_the_log(server):
    marker = 'password-7f3a9c'
    refused = f'POST {ECHO} 400'
    before = sum(refused in line for line in server.log)
    with server.use():
        test('echo', 'read', {'password': marker}, 200)
    exchange(server.port, echo(b'{"password": "' + marker.encode() + b'", broken', framing='content-length'))
    # the log is read by a thread: once the refusal's line is in, every earlier line is too
    wait_for(lambda: sum(refused in line for line in server.log) > before)
    assert not [line for line in server.log if marker in line]
    assert any(f'POST {ECHO} 200' in line for line in server.log)
