"""Answers with a value of the kind asked for, to show each kind's JSON form (or its refusal)."""

import datetime
import decimal
import enum
import uuid


class Size(enum.Enum):
    LARGE = 'large'


class Level(enum.IntEnum):
    HIGH = 3


VALUES = {
    'datetime': datetime.datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=datetime.timezone.utc),
    'naive datetime': datetime.datetime(2026, 12, 6, 1, 2, 3),
    'date': datetime.date(2026, 12, 6),
    'time': datetime.time(1, 2, 3),
    'uuid': uuid.UUID('12345678-1234-5678-1234-567812345678'),
    'decimal': decimal.Decimal('12345678901234567890.123456789'),
    'set': {7},
    'frozenset': frozenset(['a']),
    'enum': Size.LARGE,
    'int enum': Level.HIGH,
    'tuple': (1, 'two'),
    'big int': 2 ** 70,
    'bytes': b'plain ascii',
    'object': object(),
    'nan': float('nan'),
    'infinity': float('inf'),
    'decimal nan': decimal.Decimal('NaN'),
    'deep bytes': {'items': [{}, {}, {}, {'price': b'9.99'}]},
}


def read(request):
    """{"value": the value of `kind`, "sent": what the request's "sent" was}."""
    return {'value': VALUES[request.kind], 'sent': request.get('sent')}
