"""Hardening under slow, many and hostile clients, shutdown under load, and memory over a long run.

Every loop here is bounded in count and time, and all traffic goes to loopback. Short timeouts in the
server's configuration keep each case to seconds.
"""

import http.client
import json
import os
import resource
import selectors
import signal
import socket
import threading
import time

import pytest

from apiphant.test import serve, test
from support import EXAMPLE, KITCHEN, Connection, http_request, log_has, wait_for

ECHO = '/api/v0/echo/read'
KEEP_ALIVE_ECHO = http_request('POST', ECHO, b'{"hello": "world"}')


@pytest.fixture(autouse=True, scope='module')
def many_descriptors():
    """This test process opens thousands of sockets: lift its soft fd limit for the module."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds(pid):
    return len(os.listdir(f'/proc/{pid}/fd'))


def rss_kib(pid):
    with open(f'/proc/{pid}/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmRSS:'))


def connect(port):
    return socket.create_connection(('127.0.0.1', port), timeout=10)


def timed_echo():
    started = time.monotonic()
    test('echo', 'read', {'hello': 'world'}, 200, {'hello': 'world', 'server': 'myproduct'})
    return time.monotonic() - started


def close_all(sockets):
    for sock in sockets:
        sock.close()


def test_slowloris_connections_are_closed_and_others_keep_being_served():
    """2,000 clients sending a header byte a second are cut at the request timeout (3 s here);
    meanwhile a normal client is answered within 1 s every time (typically in milliseconds)."""
    timeout, count = 3.0, 2000
    header = http_request('POST', ECHO, b'{}')
    with serve(EXAMPLE, '--request-timeout', str(timeout), '--no-access-log') as server:
        slow = [connect(server.port) for _ in range(count)]
        started = time.monotonic()
        selector = selectors.DefaultSelector()
        for sock in slow:
            sock.sendall(header[:1])
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        closed_after, latencies, sent = [], [], 1
        next_drip = started + 1
        try:
            while selector.get_map() and time.monotonic() < started + timeout + 5:
                if time.monotonic() >= next_drip:
                    for key in list(selector.get_map().values()):
                        try:
                            key.fileobj.send(header[sent:sent + 1])
                        except OSError:
                            pass  # closed by the server: the read below sees it
                    sent, next_drip = sent + 1, next_drip + 1
                latencies.append(timed_echo())
                for key, _ in selector.select(timeout=0.05):
                    try:
                        data = key.fileobj.recv(1024)
                    except OSError:
                        data = b''
                    assert data == b'', 'a slow client got an answer to an unfinished request'
                    selector.unregister(key.fileobj)
                    closed_after.append(time.monotonic() - started)
        finally:
            selector.close()
            close_all(slow)
        assert len(closed_after) == count
        assert timeout - 0.5 <= min(closed_after) and max(closed_after) <= timeout + 2.5
        assert sent < len(header)  # no slow client could have finished its request
        assert len(latencies) > 20 and max(latencies) < 1.0
        timed_echo()


def test_idle_keep_alive_connections_are_closed_and_their_descriptors_freed():
    with serve(EXAMPLE, '--idle-timeout', '2', '--no-access-log') as server:
        pid = server.process.pid
        before = open_fds(pid)
        clients = [Connection(server.port) for _ in range(1000)]
        try:
            wait_for(lambda: open_fds(pid) >= 1000)  # (`before` may still count start-up's files)
            for client in clients:
                client.send(KEEP_ALIVE_ECHO)
            for client in clients:
                assert client.answer().status == 200
            for client in clients:
                assert client.closes()  # closed by the server after 2 idle seconds
            wait_for(lambda: open_fds(pid) <= before, timeout=10)
        finally:
            close_all(clients)
        timed_echo()


def test_more_connections_than_descriptors_are_queued_and_existing_ones_keep_working():
    """With its fd limit cut to 128, the server accepts what it can, logs EMFILE once, keeps serving
    the connections it has, and accepts the waiting ones when descriptors are free again."""
    with serve(EXAMPLE, '--no-access-log') as server:
        resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (128, 128))
        kept = [Connection(server.port) for _ in range(60)]
        extra = []
        try:
            for connection in kept:
                connection.send(KEEP_ALIVE_ECHO)
                assert connection.answer().status == 200
            extra = [connect(server.port) for _ in range(300)]
            wait_for(lambda: log_has(server, 'Too many open files'))
            for _ in range(3):
                for connection in kept:
                    connection.send(KEEP_ALIVE_ECHO)
                    assert connection.answer().status == 200
            close_all(extra)
            with Connection(server.port) as fresh:
                fresh.send(KEEP_ALIVE_ECHO)
                assert fresh.answer().status == 200
        finally:
            close_all(kept + extra)
        assert sum('Too many open files' in line for line in server.log) == 1
        assert server.process.poll() is None


class Client(threading.Thread):
    """A keep-alive client sending tagged slow requests until the server stops answering."""

    def __init__(self, port, number, stop_by):
        super().__init__(daemon=True)
        self.port, self.number, self.stop_by = port, number, stop_by
        self.answered, self.unsent, self.broken = set(), [], []

    def run(self):
        connection = None
        sequence = 0
        while time.monotonic() < self.stop_by:
            sequence += 1
            tag = f'{self.number}-{sequence}'
            body = json.dumps({'seconds': sequence % 4 * 0.05, 'tag': tag})
            connection = connection or http.client.HTTPConnection('127.0.0.1', self.port, timeout=20)
            try:
                connection.request('POST', '/api/v0/process/update', body)
                reply = connection.getresponse()
                payload = reply.read()
            except (ConnectionRefusedError, http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as error:
                self.unsent.append((tag, error))  # not taken by the server: checked against its log
                if isinstance(error, ConnectionRefusedError):
                    return
                connection.close()
                connection = None
                continue
            except Exception as error:  # anything else is a request half answered
                self.broken.append((tag, repr(error)))
                return
            if reply.status == 200 and json.loads(payload) == {'slept': sequence % 4 * 0.05}:
                self.answered.add(tag)
            else:
                self.broken.append((tag, reply.status))
            if reply.getheader('Connection') == 'close':
                connection.close()
                connection = None


def test_sigterm_under_load_answers_every_request_it_took():
    """50 keep-alive clients with requests in flight; SIGTERM: every request whose action started
    gets its whole answer, the rest were never taken, and the server exits 0 within the drain."""
    with serve(KITCHEN, '--drain-timeout', '5', '--no-access-log') as server:
        clients = [Client(server.port, number, time.monotonic() + 20) for number in range(50)]
        for client in clients:
            client.start()
        wait_for(lambda: sum(len(client.answered) for client in clients) >= 500, timeout=20)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert server.process.wait(10) == 0
        assert time.monotonic() - signalled < 5
        for client in clients:
            client.join(25)
    started = {line.split('in flight: ')[1].strip() for line in server.log if 'in flight: ' in line}
    answered = set().union(*(client.answered for client in clients))
    unsent = {tag for client in clients for tag, _ in client.unsent}
    assert [client.broken for client in clients if client.broken] == []
    assert started - answered == set(), 'taken but not answered'
    assert answered <= started and not unsent & started
    assert len(answered) >= 500


def pipelined(sock, request, count, reply_size, batch=500):
    """Send `count` requests, `batch` at a time, and read exactly their answers."""
    while count:
        now = min(batch, count)
        sock.sendall(request * now)
        expected, got = reply_size * now, 0
        while got < expected:
            chunk = sock.recv(min(1 << 20, expected - got))
            assert chunk, 'server closed the connection'
            got += len(chunk)
        count -= now


def test_memory_stays_flat_over_200000_requests():
    """RSS after 200,000 more requests is within 10% of RSS after a 20,000 request warm-up."""
    with serve(EXAMPLE, '--no-access-log') as server:
        with Connection(server.port) as connection:
            connection.send(KEEP_ALIVE_ECHO)
            reply_size = connection.answer().size
            pipelined(connection.sock, KEEP_ALIVE_ECHO, 20_000, reply_size)
            warm = rss_kib(server.process.pid)
            pipelined(connection.sock, KEEP_ALIVE_ECHO, 200_000, reply_size)
            after = rss_kib(server.process.pid)
        assert after <= warm * 1.10, f'RSS grew from {warm} KiB to {after} KiB'
