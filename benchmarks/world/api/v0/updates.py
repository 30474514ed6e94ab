from apiphant import database
from world import query_count, update_rows


def update(request):
    """Updates: {"queries": N} random rows read, each given a new random number, written back."""
    with database.connection() as db:
        return {'worlds': update_rows(db, query_count(request))}
