"""Server behaviour over real sockets: concurrency, timeouts, SIGTERM drain, workers."""

import json
import os
import signal
import socket
import threading

import pytest

from apiphant.test import call, serve, test

from support import EXAMPLE, KITCHEN, Connection, exchange, held_request, http_request, log_has, wait_for


def slow_request(port, seconds, tag):
    """Open a connection and send a slow request; return the connection to read the answer from."""
    connection = Connection(port, timeout=30)
    connection.send(http_request('POST', '/api/v0/process/update', json.dumps({'seconds': seconds, 'tag': tag})))
    return connection


def test_a_slow_action_does_not_block_others(tmp_path):
    gate = tmp_path / 'gate'
    with serve(KITCHEN) as server:
        with Connection(server.port, timeout=30) as slow:
            slow.send(held_request(gate, 'slow'))
            wait_for(lambda: log_has(server, 'in flight: slow'))
            test('process', 'read', {}, 200)  # answered while the held action runs
            slow.sock.settimeout(0.01)
            with pytest.raises(socket.timeout):
                slow.sock.recv(1)  # (it is held until the gate opens)
            slow.sock.settimeout(30)
            gate.touch()
            assert slow.answer().json() == {'released': True}


def test_sigterm_drains_in_flight_and_closes_idle(tmp_path):
    gate = tmp_path / 'gate'
    with serve(KITCHEN, '--drain-timeout', '60') as server, Connection(server.port, timeout=30) as idle:
        idle.send(http_request('POST', '/api/v0/process/read'))
        assert 'pid' in idle.answer().json()
        with Connection(server.port, timeout=30) as busy:
            busy.send(held_request(gate, 'drain'))
            wait_for(lambda: log_has(server, 'in flight: drain'))
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: log_has(server, 'draining'))
            assert idle.closes()  # the idle keep-alive connection is closed once idle DRAIN_IDLE s
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(('127.0.0.1', server.port), timeout=5)
            gate.touch()  # the action ends only now, well inside the drain
            answer = busy.answer()
            assert (answer.status, answer.headers['connection']) == (200, 'close')
            assert answer.json() == {'released': True}
        assert server.process.wait(30) == 0


def test_connections_queued_when_sigterm_arrives_are_answered_not_reset():
    """Closing a listening socket resets the connections in its queue, whose requests are often
    sent already: nginx never retries such a POST, so a restart would cost a 502 each."""
    with serve(KITCHEN, '--no-access-log') as server:
        server.process.send_signal(signal.SIGSTOP)  # the kernel queues connections meanwhile
        try:
            queued = [Connection(server.port) for _ in range(5)]
            for connection in queued:
                connection.send(http_request('POST', '/api/v0/process/read'))
            server.process.send_signal(signal.SIGTERM)
        finally:
            server.process.send_signal(signal.SIGCONT)
        answers = [connection.answer() for connection in queued]
        assert all(answer.status == 200 and 'pid' in answer.json() for answer in answers), answers
        assert server.process.wait(30) == 0
        for connection in queued:
            connection.close()

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
        with Connection(server.port) as connection:
            connection.send(http_request('POST', '/api/v0/echo/read', b'{}'))
            assert connection.answer().status == 200
            assert connection.closes()  # closed by the server, well before the 10 s socket timeout


def test_a_request_must_arrive_within_the_request_timeout():
    with serve(EXAMPLE, '--request-timeout', '0.5', '--idle-timeout', '30') as server:
        request = http_request('POST', '/api/v0/echo/read', b'{"a": 1234}')
        slow_header, slow_body, never_spoke = (Connection(server.port) for _ in range(3))
        slow_header.send(request[:request.index(b'\r\n') + 2])
        slow_body.send(request[:-5])
        for connection in (slow_header, slow_body, never_spoke):
            assert connection.closes()  # a new connection gets the request timeout, not the idle one
            connection.close()
        test('echo', 'read', {}, 200)  # others are served all the while


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
        assert not [thread for thread in threads if thread.is_alive()]  # (a hung client reports no error)
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
        # `second` answers all the while: only a pid outside both shows that a replacement serves.
        wait_for(lambda: call('process', 'read', {})[1]['pid'] not in (first, second), timeout=30, interval=0.01)
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
    for data in (b'\x00\x01\x02\r\n\r\n', b'GET\r\n\r\n', http_request('POST', '/', version='HTTP/9.9')):
        assert exchange(example.port, data).status == 400
    test('echo', 'read', {}, 200)
