"""The seed's example: answer with what was asked, signed by the server."""


def read(request):
    """Echo the request back, adding which product answered."""
    response = request.copy()
    response.server = 'myproduct'
    return response
