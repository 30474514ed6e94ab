from apiphant import database
from world import query_count, read_rows


def read(request):
    """Multiple queries: {"queries": N} random rows, a query each."""
    with database.connection() as db:
        return {'worlds': read_rows(db, query_count(request))}
