"""The echo in Falcon on gevent's pywsgi (TCP_NODELAY), for comparison: `python falcon_echo.py PORT`."""

import socket
import sys

from gevent import monkey

monkey.patch_all()

import falcon  # noqa: E402
from bare import NoDelayServer  # noqa: E402


class Echo:
    def on_post(self, request, response):
        body = request.get_media(default_when_empty={})
        body['server'] = 'myproduct'
        response.media = body


def main():
    app = falcon.App()
    app.add_route('/api/v0/echo/read', Echo())
    listener = socket.create_server(('127.0.0.1', int(sys.argv[1])), backlog=65535)
    NoDelayServer(listener, app, log=None).serve_forever()


if __name__ == '__main__':
    main()
