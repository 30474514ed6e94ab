"""TechEmpower's database tests as an apiphant product (benchmarks/database.py serves it).

The table: `world (id integer PRIMARY KEY, randomnumber integer)`, ROWS rows, ids 1 to ROWS.
"""

import random

ROWS = 10_000
SELECT = 'SELECT id, randomnumber FROM world WHERE id = %s'
UPDATE = 'UPDATE world SET randomnumber = %s WHERE id = %s'


def random_id():
    return random.randint(1, ROWS)


def query_count(request):
    """TechEmpower's `queries`: 1 to 500, anything else clamped or taken as 1."""
    count = request.get('queries') if isinstance(request, dict) else None
    if not isinstance(count, int) or isinstance(count, bool):
        return 1
    return min(max(count, 1), 500)


def read_rows(db, count):
    """`count` random rows, each by a query of its own (the test's rule: no IN list)."""
    rows = []
    for _ in range(count):
        id, number = db.execute(SELECT, (random_id(),)).fetchone()
        rows.append({'id': id, 'randomNumber': number})
    return rows


def update_rows(db, count):
    """Read `count` random rows one by one, give each a new random number, write them in one batch
    (in id order, so concurrent batches cannot deadlock)."""
    rows = read_rows(db, count)
    for row in rows:
        row['randomNumber'] = random_id()
    db.cursor().executemany(UPDATE, [(row['randomNumber'], row['id'])
                                     for row in sorted(rows, key=lambda row: row['id'])])
    return rows
