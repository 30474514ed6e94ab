from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = next(
    line.split("'")[1]
    for line in (HERE / 'apiphant' / '__init__.py').read_text().splitlines()
    if line.startswith('__version__')
)

setup(
    name='apiphant',
    version=VERSION,
    description='Simple Python web API framework: gevent, JSON, CRUD.',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.10',
    # The framework, and the deploy half's Fabric tasks (apiphant_deploy, which never imports
    # apiphant and needs the deploy extra): the README's "Deploying" says why they share a wheel.
    packages=find_packages(include=['apiphant', 'apiphant.*']) + ['apiphant_deploy'],
    package_dir={'apiphant_deploy': 'deploy/apiphant_deploy'},
    package_data={'apiphant': ['skeleton/*.tmpl', 'skeleton/**/*.tmpl']},  # `apiphant new`'s files
    # The ranges the test suite runs on: gevent's public socket, Event and signal API; httptools'
    # HttpRequestParser (llhttp, strict by default).
    install_requires=['gevent>=23.9,<27', 'ujson>=5.8', 'httptools>=0.6,<0.10'],
    extras_require={
        # cryptography (Fabric's SSH needs it): not_valid_after_utc, for fab status's certificate expiry
        'deploy': ['fabric>=3.2', 'ansible-core>=2.15', 'virtualenv>=20', 'cryptography>=42'],
        # `--metrics`: GET /metrics in Prometheus's text format, summed over `--workers`
        'metrics': ['prometheus_client>=0.17,<1'],
        'test': ['pytest>=7.4', 'hypothesis>=6.80', 'ansible-lint>=6.20', 'openapi-spec-validator>=0.7',
                 'schemathesis>=4.0',
                 # real clients, and the same App under other WSGI servers (tests/test_clients.py,
                 # tests/test_wsgi_servers.py)
                 'requests>=2.31', 'gunicorn>=23,<28', 'granian>=2.0,<3',
                 'prometheus_client>=0.17,<1'],
    },
    entry_points={
        'console_scripts': [
            'apiphant = apiphant.cli:main',
            'apiphant-background = apiphant.cli:background_main',
        ],
    },
    classifiers=[
        'Framework :: Gevent',
        'Programming Language :: Python :: 3',
        'Topic :: Internet :: WWW/HTTP :: WSGI :: Application',
    ],
)
