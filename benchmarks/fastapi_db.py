"""TechEmpower's database tests in FastAPI with asyncpg (the fastest Python driver in TechEmpower's
lists), on uvicorn with httptools and uvloop, one worker: `python fastapi_db.py PORT`, with
DATABASE_URL and DATABASE_POOL_SIZE as for the others. Written as its documentation suggests: a
pool opened in the lifespan, pydantic for the request body.
"""

import os
import random
import sys
from contextlib import asynccontextmanager

import asyncpg
import uvicorn
from fastapi import Body, FastAPI, Request
from pydantic import BaseModel

ROWS = 10_000
SELECT = 'SELECT id, randomnumber FROM world WHERE id = $1'
UPDATE = 'UPDATE world SET randomnumber = $1 WHERE id = $2'


class Queries(BaseModel):
    queries: int = 1


@asynccontextmanager
async def lifespan(app):
    size = int(os.environ['DATABASE_POOL_SIZE'])
    app.state.pool = await asyncpg.create_pool(os.environ['DATABASE_URL'], min_size=size, max_size=size)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def count(body):
    return min(max(body.queries, 1), 500)


async def read_rows(connection, number):
    rows = []
    for _ in range(number):
        id, value = await connection.fetchrow(SELECT, random.randint(1, ROWS))
        rows.append({'id': id, 'randomNumber': value})
    return rows


@app.post('/api/v0/echo/read')
async def echo(body: dict = Body(default={})):
    return {**body, 'server': 'world'}


@app.post('/api/v0/db/read')
async def single(request: Request):
    async with request.app.state.pool.acquire() as connection:
        return (await read_rows(connection, 1))[0]


@app.post('/api/v0/queries/read')
async def queries(request: Request, body: Queries = Queries()):
    async with request.app.state.pool.acquire() as connection:
        return {'worlds': await read_rows(connection, count(body))}


@app.post('/api/v0/updates/update')
async def updates(request: Request, body: Queries = Queries()):
    async with request.app.state.pool.acquire() as connection:
        rows = await read_rows(connection, count(body))
        for row in rows:
            row['randomNumber'] = random.randint(1, ROWS)
        await connection.executemany(UPDATE, [(row['randomNumber'], row['id'])
                                               for row in sorted(rows, key=lambda row: row['id'])])
        return {'worlds': rows}


def main():
    uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), http='httptools', loop='uvloop',
                access_log=False, log_level='warning', backlog=65535)


if __name__ == '__main__':
    main()
