"""Log lines on stderr: `text` for people, `json` (one object a line) for log collectors.

Access lines are written straight to the stream, not through `logging` (a record per request would
cost more than the rest of a small request); application lines go through `logging`, with the
request ID put on them by apiphant.requestid's filter. Both formats hold the same fields.
"""

import logging
import sys
import time

import ujson

from apiphant.requestid import NONE, RequestIdFilter

FORMATS = ('text', 'json')
TEXT_FORMAT = '%(asctime)s %(name)s %(levelname)s %(request_id)s %(message)s'


def setup(log_format='text', stream=None):
    """Log records of level INFO and up to stderr in `log_format`, each with its request ID."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == 'json' else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # a warning is a record too, so a JSON log stays JSON


def _iso(seconds):
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds)) + f'.{int(seconds % 1 * 1000):03d}Z'


def _dumps(fields):
    return ujson.dumps(fields, escape_forward_slashes=False, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object a record; a traceback is the `exc` field, so it stays one line."""

    def format(self, record):
        fields = {'time': _iso(record.created), 'level': record.levelname, 'logger': record.name,
                  'message': record.getMessage(), 'request_id': getattr(record, 'request_id', NONE)}
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
