"""Server behaviour over real sockets: concurrency, timeouts, SIGTERM drain, workers."""

import json
import os
import signal
import socket
import threading

import pytest

from apiphant.test import call, serve, test
from support import EXAMPLE, KITCHEN, log_has, post, raw_exchange, wait_for


def slow_request(port, seconds, tag):
    """Open a connection and send a slow request; return the socket to read the answer from."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=30)
    sock.sendall(post('/api/v0/process/update', json.dumps({'seconds': seconds, 'tag': tag}).encode())
                 .replace(b'Connection: close\r\n', b''))
    return sock


def read_reply(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        data = b''.join(chunks)
        head, _, body = data.partition(b'\r\n\r\n')
        length = [int(line.split(b':')[1]) for line in head.split(b'\r\n')
                  if line.lower().startswith(b'content-length:')]
        if length and len(body) >= length[0]:
            return data
    return b''.join(chunks)


def test_a_slow_action_does_not_block_others():
    with serve(KITCHEN) as server:
        sock = slow_request(server.port, 3, 'slow')
        wait_for(lambda: log_has(server, 'in flight: slow'))
        test('process', 'read', {}, 200)
        sock.settimeout(0.01)
        with pytest.raises(socket.timeout):
            sock.recv(1)  # the slow one is still running while the other was answered
        sock.settimeout(30)
        assert b'"slept": 3' in read_reply(sock)
        sock.close()


def test_sigterm_drains_in_flight_and_closes_idle():
    with serve(KITCHEN, '--drain-timeout', '20') as server:
        idle = socket.create_connection(('127.0.0.1', server.port), timeout=10)
        idle.sendall(post('/api/v0/process/read').replace(b'Connection: close\r\n', b''))
        assert b'"pid"' in read_reply(idle)
        busy = slow_request(server.port, 1.5, 'drain')
        wait_for(lambda: log_has(server, 'in flight: drain'))
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: log_has(server, 'draining'))
        assert idle.recv(1) == b''  # the idle keep-alive connection is closed once idle DRAIN_IDLE s
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(('127.0.0.1', server.port), timeout=5)
        reply = read_reply(busy)
        assert reply.startswith(b'HTTP/1.1 200 ') and b'Connection: close' in reply
        assert reply.endswith(b'{"slept": 1.5}')
        assert server.process.wait(30) == 0
        idle.close()
        busy.close()


def test_connections_queued_when_sigterm_arrives_are_answered_not_reset():
    """Closing a listening socket resets the connections in its queue, whose requests are often
    sent already: nginx never retries such a POST, so a restart would cost a 502 each."""
    with serve(KITCHEN, '--no-access-log') as server:
        server.process.send_signal(signal.SIGSTOP)  # the kernel queues connections meanwhile
        try:
            queued = [socket.create_connection(('127.0.0.1', server.port), timeout=10) for _ in range(5)]
            for sock in queued:
                sock.sendall(post('/api/v0/process/read'))
            server.process.send_signal(signal.SIGTERM)
        finally:
            server.process.send_signal(signal.SIGCONT)
        replies = [read_reply(sock) for sock in queued]
        assert all(reply.startswith(b'HTTP/1.1 200 ') and b'"pid"' in reply for reply in replies), replies
        assert server.process.wait(30) == 0
        for sock in queued:
            sock.close()

def test_drain_timeout_ends_stuck_actions():
    with serve(KITCHEN, '--drain-timeout', '0.5') as server:
        stuck = slow_request(server.port, 60, 'stuck')
        wait_for(lambda: log_has(server, 'in flight: stuck'))
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 1
        assert log_has(server, 'drain: 1 connection(s) cut off')
        stuck.close()


def test_second_sigterm_ends_at_once():
    with serve(KITCHEN, '--drain-timeout', '60') as server:
        stuck = slow_request(server.port, 60, 'twice')
        wait_for(lambda: log_has(server, 'in flight: twice'))
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: log_has(server, 'draining'))
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 1
        stuck.close()


def test_idle_keep_alive_connections_are_closed_after_the_idle_timeout():
    with serve(EXAMPLE, '--idle-timeout', '0.3') as server:
        sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
        sock.sendall(post('/api/v0/echo/read', b'{}').replace(b'Connection: close\r\n', b''))
        assert read_reply(sock).startswith(b'HTTP/1.1 200 ')
        assert sock.recv(1) == b''  # closed by the server, well before the 10 s socket timeout
        sock.close()


def test_a_request_must_arrive_within_the_request_timeout():
    with serve(EXAMPLE, '--request-timeout', '0.5', '--idle-timeout', '30') as server:
        slow_header = socket.create_connection(('127.0.0.1', server.port), timeout=10)
        slow_header.sendall(b'POST /api/v0/echo/read HTTP/1.1\r\nHost: x\r\n')
        slow_body = socket.create_connection(('127.0.0.1', server.port), timeout=10)
        slow_body.sendall(b'POST /api/v0/echo/read HTTP/1.1\r\nContent-Length: 10\r\n\r\n{"a"')
        never_spoke = socket.create_connection(('127.0.0.1', server.port), timeout=10)
        assert slow_header.recv(1) == b''
        assert slow_body.recv(65536) == b''
        assert never_spoke.recv(1) == b''  # a new connection gets the request timeout, not the idle one
        test('echo', 'read', {}, 200)  # others are served all the while
        for sock in (slow_header, slow_body, never_spoke):
            sock.close()


def test_many_concurrent_clients():
    with serve(EXAMPLE, '--no-access-log') as server:
        errors = []

        def client(number):
            try:
                for request in range(20):
                    status, body = call('echo', 'read', {'n': number, 'r': request})
                    assert (status, body) == (200, {'n': number, 'r': request, 'server': 'myproduct'})
            except Exception as error:  # collected, asserted below
                errors.append(error)

        threads = [threading.Thread(target=client, args=(number,)) for number in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert server.process.poll() is None


def worker_pids(server):
    line = wait_for(lambda: next((line for line in server.log if 'workers [' in line), None))
    return json.loads(line[line.index('['):].strip())


def test_workers_share_the_port_and_a_dead_worker_is_replaced():
    with serve(KITCHEN, '--workers', '2') as server:
        first, second = worker_pids(server)
        answered = {call('process', 'read', {})[1]['pid'] for _ in range(200)}
        assert answered <= {first, second}
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: log_has(server, f'worker pid {first} died (signal SIGKILL); starting another'))
        wait_for(lambda: call('process', 'read', {})[1]['pid'] not in (first,))
        for _ in range(50):
            assert call('process', 'read', {})[0] == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
        assert not os.path.exists(f'/proc/{second}')


def test_workers_exit_when_the_master_is_killed():
    with serve(KITCHEN, '--workers', '2') as server:
        pids = worker_pids(server)
        server.process.kill()
        server.process.wait()
        wait_for(lambda: not any(os.path.exists(f'/proc/{pid}') for pid in pids), timeout=15)


def test_bad_request_does_not_disturb_the_server(example):
    for data in (b'\x00\x01\x02\r\n\r\n', b'GET\r\n\r\n', b'POST / HTTP/9.9\r\n\r\n'):
        assert raw_exchange(example.port, data).startswith(b'HTTP/1.1 400 ')
    test('echo', 'read', {}, 200)
