"""The escape hatches, alone and together."""

from apiphant import raw_environ, raw_response


@raw_environ
def read(environ):
    # (no docstring: tests/test_openapi.py shows a route without one)
    answer = {'method': environ['REQUEST_METHOD'], 'length': len(environ['wsgi.input'].read())}
    if 'HTTP_X_TAG' in environ:
        answer['tag'] = environ['HTTP_X_TAG']
    return answer


@raw_response
def create(request, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'plain ' + request.get('x', '').encode()]


@raw_environ
@raw_response
def update(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/csv')])
    return [b'method,', environ['REQUEST_METHOD'].encode()]
