def read(request):
    return {'version': 1, **request}
