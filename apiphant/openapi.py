"""The route table as an OpenAPI 3.1 document, for API explorers, client generators and fuzzers.

It says only what apiphant knows for certain: every route takes and returns a JSON object, and
the framework's own errors (400, 404, 405, 413, 500) carry the error object. What fields an
action reads is in its code, not declared, so request and response schemas are `type: object`.
"""

from apiphant.app import NOT_AN_OBJECT

ERROR_SCHEMA = {
    'type': 'object',
    'required': ['error'],
    'properties': {
        'error': {'type': 'string'},
        'field': {'type': 'string', 'description': 'The request field a validation error is about.'},
        'state': {'type': 'string', 'description': '"missing" or "invalid", for a validation error.'},
    },
}
ERRORS = {
    '400': f'Not a JSON object ("{NOT_AN_OBJECT}"), or a field the action refused.',
    '404': 'No such version, target or action.',
    '405': 'Not a POST.',
    '413': 'The body is larger than the server allows.',
    '500': 'The action failed; the details are in the server log only.',
    'default': 'Any other status an action raises as an ApiError.',
}
_JSON_OBJECT = {'application/json': {'schema': {'type': 'object'}}}


def document(title, version, routes):
    """The OpenAPI document for a route table ({path: Route}) as a dict, ready for JSON."""
    return {
        'openapi': '3.1.0',
        'info': {'title': title, 'version': version},
        'paths': {path: {'post': _operation(route)} for path, route in sorted(routes.items())},
        'components': {
            'schemas': {'Error': ERROR_SCHEMA},
            'responses': {code: {'description': text, 'content': {
                'application/json': {'schema': {'$ref': '#/components/schemas/Error'}}}}
                for code, text in ERRORS.items()},
        },
    }


def _operation(route):
    """A route's POST: a raw action (server.raw_environ/raw_response) says less, as it may do more."""
    _, version, *target, action = route.path.strip('/').split('/')
    operation = {'operationId': '.'.join([version, *target, action]), 'tags': [version]}
    if route.summary:
        operation['summary'] = route.summary
    if route.doc != route.summary:
        operation['description'] = route.doc
    if route.raw_environ:
        operation['requestBody'] = {'description': 'Read by the action from the WSGI environ as it is.',
                                    'content': {'*/*': {}}}
    else:
        operation['requestBody'] = {'required': False, 'content': _JSON_OBJECT,
                                    'description': 'A JSON object; an empty body is read as {}.'}
    ok = {'description': 'The action\'s answer.'}
    if not route.raw_response:
        ok['content'] = _JSON_OBJECT
    operation['responses'] = {'200': ok, **{code: {'$ref': f'#/components/responses/{code}'}
                                            for code in ERRORS}}
    return operation
