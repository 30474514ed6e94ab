"""`apiphant.wsgi:application`: a product's App for another WSGI server, named by APIPHANT_PRODUCT.

    APIPHANT_PRODUCT=example/myproduct gunicorn -k gevent apiphant.wsgi:application
    APIPHANT_PRODUCT=example/myproduct granian --interface wsgi apiphant.wsgi:application

The App is the same plain WSGI callable `apiphant PRODUCT` serves; the server in front then owns
timeouts, keep-alive and workers, and the App still refuses a body over its 1 MiB limit with 413.
"""

import os

from apiphant.app import load
from apiphant.routes import ProductError

PRODUCT = os.environ.get('APIPHANT_PRODUCT', '')
if not PRODUCT:
    raise ProductError('set APIPHANT_PRODUCT to the product folder or import name, e.g. '
                       'APIPHANT_PRODUCT=example/myproduct')
application = load(PRODUCT)
