"""Actions that exercise every rule of the request path."""

import time

from apiphant import ApiError, field


def create(request):
    """Validate fields and answer with them."""
    return {
        'id': field(request, 'id', is_required=True, valid_type=int),
        'name': field(request, 'name', default_value='anonymous', valid_type=str, max_length=5),
        'city': field(request, 'user.city', default_value=None),
    }


def read(request):
    """Reach nested objects as attributes."""
    return {'city': request.user.address.city, 'first_tag': request.things[0].tag,
            'type': type(request.copy()).__name__}


def update(request):
    """Raise the ApiError the request asks for."""
    raise ApiError(request.code, request.get('error'))


def delete(request):
    """Misbehave as asked: return None or a list, crash, or sleep."""
    if request.mode == 'none':
        return None
    if request.mode == 'list':
        return [1]
    if request.mode == 'sleep':
        time.sleep(request.seconds)
        return {'slept': request.seconds}
    if request.mode == 'nan':
        return {'value': float('nan')}
    raise RuntimeError('secret detail')
