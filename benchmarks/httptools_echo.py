"""The echo on another server core: gevent's StreamServer with httptools (llhttp, C) parsing requests.

`python httptools_echo.py PORT`. No WSGI and no environ: it measures how fast a gevent server can go
when pywsgi's header parsing (the email package, in Python) and environ building are gone, which is
where apiphant's own time goes. Every response to one read goes out in one send, with TCP_NODELAY.
"""

import socket
import sys

from gevent import monkey

monkey.patch_all()

import httptools  # noqa: E402
import ujson  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

_HEAD = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n'
_CLOSE = b'HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'


class Connection:
    """httptools calls these methods back while it parses what one recv brought."""

    def __init__(self):
        self.body = []
        self.responses = []
        self.parser = httptools.HttpRequestParser(self)

    def on_body(self, chunk):
        self.body.append(chunk)

    def on_message_complete(self):
        request = ujson.loads(b''.join(self.body) or b'{}')
        self.body = []
        request['server'] = 'myproduct'
        body = ujson.dumps(request).encode()
        self.responses.append(_HEAD % len(body) + body)


def serve(sock, address):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection = Connection()
    while True:
        data = sock.recv(65536)
        if not data:
            return
        try:
            connection.parser.feed_data(data)
        except httptools.HttpParserError:  # also a bad JSON body: the callback's error is wrapped
            sock.sendall(_CLOSE)
            return
        if connection.responses:
            sock.sendall(b''.join(connection.responses))
            connection.responses = []
            if not connection.parser.should_keep_alive():
                return


def main():
    listener = socket.create_server(('127.0.0.1', int(sys.argv[1])), backlog=65535)
    StreamServer(listener, serve).serve_forever()


if __name__ == '__main__':
    main()
