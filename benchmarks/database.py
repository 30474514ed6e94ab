"""TechEmpower's database tests against one PostgreSQL on this machine, driven by wrk: apiphant with
psycopg 3 and its pool, Falcon on gunicorn's gevent worker with psycopg 3, FastAPI on uvicorn with
asyncpg; the JSON echo of each as the baseline.

    python benchmarks/database.py            3 interleaved rounds x 10 s at 256 and 1,000 connections
    python benchmarks/database.py --quick    1 round x 1 s at 16 connections: proves it works
    python benchmarks/database.py --write    also write the tables to benchmarks/RESULTS.md

The tests, each a POST as apiphant serves them: "single query" (one random row of the 10,000-row
`world` table by id), "20 queries" (20 random rows, a query each), "20 updates" (20 rows read one by
one, each given a new random number, written back in one batch), answered as {"worlds": [...]}
rather than TechEmpower's bare list, as an apiphant action answers a JSON object. Each server is one process pinned
to CPU 0, wrk is pinned to CPU 1, PostgreSQL (a throwaway cluster as the tests start it,
tests/postgres.py: fsync off) runs where the kernel puts it. Every contender has a pool of
POOL_SIZE connections; apiphant's gives up waiting after POOL_TIMEOUT s with a 503 (at 1,000
connections: non-2xx rather than wrk's timeouts), the others wait as their defaults say.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys

import contenders
import report
import run
from contenders import HERE, ROOT, Contender

sys.path.insert(0, str(ROOT / 'tests'))
from postgres import Cluster  # noqa: E402  (the tests' throwaway cluster)

TESTS = (('JSON echo', '/api/v0/echo/read', '{"hello": "world"}'),
         ('single query', '/api/v0/db/read', '{}'),
         ('20 queries', '/api/v0/queries/read', '{"queries": 20}'),
         ('20 updates', '/api/v0/updates/update', '{"queries": 20}'))
CONNECTION_COUNTS = (256, 1000)
QUICK_CONNECTIONS = (16,)  # under the pools' size: no request waits for a connection, none gets a 503
POOL_SIZE = 20
POOL_TIMEOUT = 1  # s: under wrk's 2 s timeout, so a request that finds no connection is a 503
ROWS = 10_000
APIPHANT = 'apiphant, psycopg 3'
BASELINES = ('falcon, gunicorn gevent, psycopg 3', 'fastapi, uvicorn, asyncpg')


def everyone():
    python = sys.executable
    return [
        Contender(APIPHANT, [python, '-m', 'apiphant', str(HERE / 'world'), '127.0.0.1:{port}', '--no-access-log']),
        Contender(BASELINES[0], [python, '-m', 'gunicorn', '--worker-class', 'gevent', '--workers', '1',
                                 '--worker-connections', '10000', '--backlog', '2048', '--log-level', 'warning',
                                 '--chdir', str(HERE), '--bind', '127.0.0.1:{port}', 'falcon_db:app']),
        Contender(BASELINES[1], [python, str(HERE / 'fastapi_db.py'), '{port}']),
    ]


def fill(cluster):
    """The `world` table of TechEmpower's tests: ids 1 to ROWS, a random number 1 to 10,000 each."""
    cluster.query('CREATE TABLE world (id integer PRIMARY KEY, randomnumber integer NOT NULL)')
    cluster.query('INSERT INTO world SELECT id, 1 + floor(random() * 10000)::integer '
                  'FROM generate_series(1, %s) AS id', ROWS)
    cluster.query('VACUUM ANALYZE world')


def versions():
    return subprocess.run([sys.executable, '-c', 'import fastapi, asyncpg, psycopg, psycopg_pool, gunicorn; '
                           'print(f"fastapi {fastapi.__version__}, asyncpg {asyncpg.__version__}, '
                           'psycopg {psycopg.__version__}, psycopg_pool {psycopg_pool.__version__}, '
                           'gunicorn {gunicorn.__version__}")'], capture_output=True, text=True).stdout.strip()


def measure(servers, args, connection_counts):
    """Every test in turn on the same running servers (their pools stay warm): a table per test."""
    tables = []
    try:
        for server in servers:
            contenders.start(server)
        for name, path, body in TESTS:
            for server in servers:
                server.results = {}
            print(f'{name}:', file=sys.stderr)
            run.throughput(servers, args.rounds, args.seconds, connection_counts, path=path, body=body)
            tables.append(f'### {name}\n\n{report.throughput(servers, connection_counts, APIPHANT, *BASELINES)}')
    finally:
        for server in servers:
            contenders.stop(server)
    return '\n\n'.join(tables)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='1 round of 1 s at 16 connections: proves it works')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--seconds', type=int, default=10, help='length of one wrk run (default 10)')
    parser.add_argument('--write', action='store_true', help='write the tables to benchmarks/RESULTS.md')
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 1
    return args


def main():
    args = parse_arguments()
    if not shutil.which('wrk'):
        raise SystemExit('wrk is not installed (Debian: apt-get install wrk)')
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops every server and the cluster
    contenders.lift_fd_limit()
    connection_counts = QUICK_CONNECTIONS if args.quick else CONNECTION_COUNTS
    with Cluster() as cluster:
        machine = report.Machine(own_pids=cluster.pids)
        fill(cluster)
        os.environ.update(DATABASE_URL=cluster.url, DATABASE_POOL_SIZE=str(POOL_SIZE),
                          DATABASE_POOL_TIMEOUT=str(POOL_TIMEOUT))
        tables = measure(everyone(), args, connection_counts)
    text = (f'{report.machine()}, {versions()}; {machine.verdict()}; '
            f'{run.PINNED}, PostgreSQL unpinned; pools of {POOL_SIZE}; {args.rounds} interleaved round(s) x '
            f'{args.seconds} s\n\n{tables}')
    report.publish('Database', text, args.write)


if __name__ == '__main__':
    main()
