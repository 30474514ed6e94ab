"""Log lines on stderr: `text` for people, `json` (one object a line) for log collectors.

Access lines are written straight to the stream, not through `logging` (a record per request would
cost more than the rest of a small request); application lines go through `logging`, with the
request ID put on them by apiphant.requestid's filter. Both formats hold the same fields.
"""

import json
import logging
import math
import sys
import time

import ujson

from apiphant.requestid import NONE, RequestIdFilter

FORMATS = ('text', 'json')
LEVELS = ('debug', 'info', 'warning', 'error', 'critical')
TEXT_FORMAT = '%(asctime)s %(name)s %(levelname)s %(request_id)s %(message)s'
# The start-up line, which says what is served where and which `apiphant.test.serve` waits for, is
# logged whatever the level: a quieter log must not hide that the server runs.
start = logging.getLogger('apiphant.start')
# What every record has; anything else on one came from `extra=` and is kept in a JSON line.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord('', 0, '', 0, '', (), None))) | {'message', 'asctime', 'request_id'}


def setup(log_format='text', level='info', stream=None):
    """Log records of `level` and up to stderr in `log_format`, each with its request ID."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == 'json' else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    start.setLevel(logging.INFO)
    logging.captureWarnings(True)  # a warning is a record too, so a JSON log stays JSON


def _iso(seconds):
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds)) + f'.{int(seconds % 1 * 1000):03d}Z'


def _dumps(fields):
    """One line of JSON, whatever the fields hold: an object JSON has no form for is its repr.
    What ujson refuses (NaN, a lone surrogate) goes to Python's json, NaN and infinities as strings."""
    try:
        return ujson.dumps(fields, escape_forward_slashes=False, ensure_ascii=False, allow_nan=False,
                           default=repr)
    except (ValueError, OverflowError, UnicodeError):
        return json.dumps(_finite(fields), default=repr)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {name: _finite(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object a record; a traceback is the `exc` field, so it stays one line. The fields
    given with `extra=` are kept beside the standard ones (which win over an extra of the same name)."""

    def format(self, record):
        fields = {'time': _iso(record.created), 'level': record.levelname, 'logger': record.name,
                  'message': record.getMessage(), 'request_id': getattr(record, 'request_id', NONE)}
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS:
                fields.setdefault(name, value)
        if record.exc_info:
            fields['exc'] = self.formatException(record.exc_info)
        if record.stack_info:
            fields['stack'] = self.formatStack(record.stack_info)
        return _dumps(fields)


def text_access(log_time, client, method, path, status, length, duration, request_id):
    return f'{log_time} {client} {method} {path} {status} {length} {duration:.2f}ms {request_id}\n'


def json_access(log_time, client, method, path, status, length, duration, request_id):
    return _dumps({'time': _iso(time.time()), 'level': 'INFO', 'logger': 'apiphant.access',
                   'message': f'{method} {path} {status}', 'request_id': request_id,
                   'method': method, 'path': path, 'status': int(status), 'bytes': length,
                   'duration_ms': round(duration, 2), 'client': client}) + '\n'


ACCESS_LINES = {'text': text_access, 'json': json_access}
