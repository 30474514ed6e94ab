def read(request):
    """The JSON echo: the baseline without the database."""
    request.server = 'world'
    return request
