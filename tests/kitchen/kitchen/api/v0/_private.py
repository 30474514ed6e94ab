def read(request):
    return {'private': True}
