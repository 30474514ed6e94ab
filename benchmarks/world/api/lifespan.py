from apiphant import database


def lifespan():
    with database.pool():   # DATABASE_URL and DATABASE_POOL_SIZE, as benchmarks/database.py sets them
        yield
