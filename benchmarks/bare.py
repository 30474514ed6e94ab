"""The echo with no framework: a WSGI callable on gevent's pywsgi with ujson (the baseline).

`python bare.py PORT [--nodelay]`: --nodelay sets TCP_NODELAY on accepted sockets, as apiphant does.
"""

import socket
import sys

from gevent import monkey

monkey.patch_all()

import ujson  # noqa: E402
from gevent import pywsgi  # noqa: E402


def echo(environ, start_response):
    length = int(environ.get('CONTENT_LENGTH') or 0)
    request = ujson.loads(environ['wsgi.input'].read(length) or b'{}')
    request['server'] = 'myproduct'
    body = ujson.dumps(request).encode()
    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))])
    return [body]


class NoDelayServer(pywsgi.WSGIServer):
    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def main():
    port = int(sys.argv[1])
    server_class = NoDelayServer if '--nodelay' in sys.argv else pywsgi.WSGIServer
    listener = socket.create_server(('127.0.0.1', port), backlog=65535)
    server_class(listener, echo, log=None).serve_forever()


if __name__ == '__main__':
    main()
