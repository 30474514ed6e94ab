def read(request):
    return {'who': 'admin'}
