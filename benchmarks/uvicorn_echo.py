"""The echo as a raw ASGI app on uvicorn with httptools and uvloop, one worker (no framework).

`python uvicorn_echo.py PORT`: what a user would pick instead of a gevent server, at its fastest.
"""

import sys

import ujson
import uvicorn


async def echo(scope, receive, send):
    body = b''
    more = True
    while more:
        message = await receive()
        body += message.get('body', b'')
        more = message.get('more_body', False)
    request = ujson.loads(body or b'{}')
    request['server'] = 'myproduct'
    payload = ujson.dumps(request).encode()
    await send({'type': 'http.response.start', 'status': 200,
                'headers': [(b'content-type', b'application/json'), (b'content-length', b'%d' % len(payload))]})
    await send({'type': 'http.response.body', 'body': payload})


def main():
    uvicorn.run(echo, host='127.0.0.1', port=int(sys.argv[1]), http='httptools', loop='uvloop', lifespan='off',
                access_log=False, log_level='warning', backlog=65535)


if __name__ == '__main__':
    main()
