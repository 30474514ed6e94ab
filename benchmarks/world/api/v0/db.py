from apiphant import database
from world import read_rows


def read(request):
    """Single query: one random row."""
    with database.connection() as db:
        return read_rows(db, 1)[0]
