"""The product's settings: the deploy puts the inventory's product_env and product_secrets into
every process's os.environ, so a product reads them as it would read any environment variable."""

import os


def read(request):
    """The greeting this host is set up with, and whether the database password reached the
    process: a secret is used, never sent back."""
    return {
        'greeting': os.environ.get('GREETING', 'Hello'),
        'database_password': 'set' if os.environ.get('DATABASE_PASSWORD') else 'missing',
    }
