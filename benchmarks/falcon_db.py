"""TechEmpower's database tests in Falcon with psycopg 3 and its pool, for gunicorn's gevent worker:

    DATABASE_URL=... DATABASE_POOL_SIZE=20 gunicorn -k gevent -w 1 --chdir benchmarks falcon_db:app

gunicorn imports this module in the worker, after the fork and gevent's patching, so the pool is the
worker's own. The queries are the apiphant product's (world/__init__.py), on the same driver.
"""

import os

import falcon
from psycopg_pool import ConnectionPool
from world import query_count, read_rows, update_rows

pool = ConnectionPool(os.environ['DATABASE_URL'], min_size=int(os.environ['DATABASE_POOL_SIZE']),
                      max_size=int(os.environ['DATABASE_POOL_SIZE']), open=True)


class Echo:
    def on_post(self, request, response):
        body = request.get_media(default_when_empty={})
        body['server'] = 'world'
        response.media = body


class Single:
    def on_post(self, request, response):
        with pool.connection() as db:
            response.media = read_rows(db, 1)[0]


class Queries:
    def on_post(self, request, response):
        count = query_count(request.get_media(default_when_empty={}))
        with pool.connection() as db:
            response.media = {'worlds': read_rows(db, count)}


class Updates:
    def on_post(self, request, response):
        count = query_count(request.get_media(default_when_empty={}))
        with pool.connection() as db:
            response.media = {'worlds': update_rows(db, count)}


app = falcon.App()
app.add_route('/api/v0/echo/read', Echo())
app.add_route('/api/v0/db/read', Single())
app.add_route('/api/v0/queries/read', Queries())
app.add_route('/api/v0/updates/update', Updates())
