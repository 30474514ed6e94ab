"""One request's answer: the app called, its status and headers made into a head, its body buffered
or streamed, a failure turned into a 500, the access line written.

An Exchange is made per request (as uvicorn's RequestResponseCycle is), so nothing of one answer
(its status, headers, whether the head went out, what PEP 3333's `write` was given) can leak into
the next one on the same connection. The connection (apiphant.connection) parses and owns the
socket; an Exchange only appends to the connection's `output` and asks it to `send` when a
streamed body must go out before the app has finished.

- Every request answered by the app has an ID (apiphant.requestid): the client's X-Request-ID when
  well-formed, else a new one; it is in the environ, in the answer's X-Request-ID header, in the
  access-log line, and on every log record written while the app runs.
- The server's own paths (the health check, the metrics) are answered before the product's app.
- A header value holding a line break is refused (a 500, never a split answer): an app echoing a
  client's input into a header cannot be made to inject headers.
"""

import logging
import time
from email.utils import formatdate

from apiphant import requestid
from apiphant.errors import ApiError, encode, has_body

log = logging.getLogger('apiphant')

FILE_BLOCK = 65536


def closing_response(status_code):
    """A complete JSON error answer for a request refused before (or instead of) the app."""
    error = ApiError(status_code)
    body = encode(error.body)
    return (b'HTTP/1.1 %s\r\nContent-Type: application/json\r\nConnection: close\r\n'
            b'Content-Length: %d\r\n\r\n%s' % (error.status.encode(), len(body), body))


REFUSALS = {status: closing_response(status) for status in (400, 414, 500)}


class Clock:
    """Date header and log timestamp, formatted once a second instead of once a request."""

    second = 0
    date_line = b''  # the Date header's line
    log_time = ''

    @classmethod
    def tick(cls):
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.date_line = b'Date: %s\r\n' % formatdate(now, usegmt=True).encode()
            cls.log_time = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))
        return cls


class FileWrapper:
    """`wsgi.file_wrapper`: an action may answer with a file, sent in FILE_BLOCK pieces."""

    def __init__(self, file, block_size=FILE_BLOCK):
        self.file = file
        self.block_size = block_size
        if hasattr(file, 'close'):
            self.close = file.close

    def __iter__(self):
        read, size = self.file.read, self.block_size
        while True:
            block = read(size)
            if not block:
                return
            yield block


_BLOCKS = {}  # (status, *headers) -> _block's answer: the same few heads, checked and encoded once
_BLOCKS_MAX = 4096  # (bounded: an app may put anything in its headers)


def _block(status, headers):
    """The status line and the app's header lines as bytes, checked for line breaks, with the
    status code, whether they hold a Content-Length and a Date, and whether they ask for a close."""
    code = int(status[:3])
    lines = []
    has_length = has_date = closing = False
    for name, value in headers:
        lower = name.lower()
        if lower == 'content-length':
            has_length = True
            if code == 205:
                continue  # (written as 0: a 205 has no content)
        elif lower == 'date':
            has_date = True
        elif lower == 'connection' and 'close' in value.lower():
            closing = True
            continue
        lines.append(f'{name}: {value}\r\n')
    text = ''.join(lines)
    if text.count('\n') != len(lines) or text.count('\r') != len(lines) or '\n' in status or '\r' in status:
        raise ValueError(f'a response header holds a line break: {status!r} {headers!r}')
    block = (f'HTTP/1.1 {status}\r\n{text}'.encode('latin-1'), code, has_length, has_date, closing)
    if len(_BLOCKS) < _BLOCKS_MAX:
        try:
            _BLOCKS[status, *headers] = block
        except TypeError:
            pass  # (a header given as a list: built again each time)
    return block


class Exchange:
    """The answer to one parsed request (apiphant.connection's Request) on `connection`."""

    __slots__ = ('request', 'connection', 'status', 'headers', 'head_sent', 'written')

    def __init__(self, request, connection):
        self.request = request
        self.connection = connection
        self.status = None  # as start_response gave it: '200 OK'
        self.headers = None
        self.head_sent = False  # part of a streamed answer is out: a failure can only close
        self.written = []  # what the app gave PEP 3333's `write` before returning its body

    def run(self, last):
        """Answer under the request's ID; False: close the connection after this answer.
        `last`: no other request of the read waits, so a drain that began while the action ran
        closes after this answer."""
        state = self.connection.state
        request = self.request
        request_id = request.client_id
        if request_id is None or not requestid.is_well_formed(request_id):
            request_id = state.request_ids()
        request.id = request_id
        token = requestid.current.set(request_id)
        state.in_flight += 1
        try:
            return self._call(state.endpoints.get(request.path), last)
        finally:
            state.in_flight -= 1
            requestid.current.reset(token)

    def _call(self, endpoint, last):
        """`endpoint`: the server's own app for this path, or None: the product's, called directly
        when it offers `serve_request` (see apiphant.connection.Request), else through WSGI."""
        request, state = self.request, self.connection.state
        try:
            if endpoint is not None:
                result = endpoint(request.environ, self.start_response)
            elif state.serve_request is not None:
                result = state.serve_request(request, self.start_response)
            else:
                result = state.app(request.environ, self.start_response)
        except Exception:
            log.exception('the application failed on %s', request.path)
            return self.fail()
        closing = not request.keep_alive or (last and state.draining)
        try:
            if type(result) is list or type(result) is tuple:
                if self.status is None:
                    raise RuntimeError('the application returned without calling start_response')
                return self._buffered(b''.join(self.written) + b''.join(result), closing)
            return self._streamed(result, closing)
        except Exception:
            log.exception('the application failed on %s', request.path)
            if self.head_sent:  # part of the answer is out: only a close can tell the client
                self.connection.output.clear()
                return False
            return self.fail()
        finally:
            close = getattr(result, 'close', None)
            if close is not None:
                close()

    def write(self, data):
        """PEP 3333's `write` callable, for the apps that still use it: data before the body."""
        self.written.append(data)

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None and self.head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        self.headers = headers
        return self.write

    def _head(self, length, closing):
        """The status line and headers; `length` None: the caller frames the body itself.
        Returns the head, whether the connection closes after it and whether the status allows
        a body."""
        try:
            block = _BLOCKS[self.status, *self.headers]
        except (KeyError, TypeError):  # (TypeError: a header given as a list, which cannot be a key)
            block = _block(self.status, self.headers)
        text, code, has_length, has_date, closing_asked = block
        if not has_date:
            text += Clock.tick().date_line
        text += b'X-Request-ID: %s\r\n' % self.request.id.encode()
        body_allowed = has_body(code)
        if code == 205:
            # Without a length a client reads a 205's (empty) content up to the close.
            text += b'Content-Length: 0\r\n'
        elif body_allowed and not has_length and length is not None:
            text += b'Content-Length: %d\r\n' % length
        closing = closing or closing_asked
        if closing:
            text += b'Connection: close\r\n\r\n'
        elif self.request.protocol == 'HTTP/1.0':
            text += b'Connection: keep-alive\r\n\r\n'
        else:
            text += b'\r\n'
        return text, closing, body_allowed

    def _buffered(self, body, closing):
        head, closing, body_allowed = self._head(len(body), closing)
        self.connection.output.append(head + body if body_allowed and self.request.method != 'HEAD' else head)
        self.log(len(body))
        return not closing

    def _streamed(self, result, closing):
        """An iterable of unknown length: sent as it comes, chunked (HTTP/1.1) or up to a close."""
        connection, request = self.connection, self.request
        chunks = iter(result)
        first = b''.join(self.written) + next(chunks, b'')
        if self.status is None:
            raise RuntimeError('the application returned without calling start_response')
        length = None if has_body(int(self.status[:3])) else 0
        framed = length == 0 or any(name.lower() == 'content-length' for name, _ in self.headers)
        if not framed and request.protocol == 'HTTP/1.0':
            closing = True  # no chunks in HTTP/1.0: the close ends the body
        head, closing, _ = self._head(length, closing)
        chunked = not framed and not closing
        if chunked:
            head = head[:-2] + b'Transfer-Encoding: chunked\r\n\r\n'
        if request.method == 'HEAD' or length == 0:
            connection.output.append(head)
            self.log(0)
            return not closing
        sent = 0
        piece = first
        connection.output.append(head)
        self.head_sent = True
        while True:
            if piece:
                sent += len(piece)
                connection.output.append(b'%x\r\n%s\r\n' % (len(piece), piece) if chunked else piece)
                if not connection.send():
                    return False
            piece = next(chunks, None)
            if piece is None:
                break
        if chunked:
            connection.output.append(b'0\r\n\r\n')
        self.log(sent)
        return not closing

    def fail(self):
        """The app raised (or answered nonsense) before its answer went out: a 500, then close."""
        self.connection.output.append(REFUSALS[500])
        self.status = '500 Internal Server Error'
        self.log(0)
        return False

    def refuse(self, status_code):
        """The server's own answer to a request it would not give the app: the status, then close."""
        self.connection.output.append(REFUSALS[status_code])
        self.status = str(status_code)
        self.log(0)

    def log(self, length):
        """The access log line (time, client, method, path, status, body bytes, duration, request
        ID) and the request's metrics."""
        state = self.connection.state
        stream = state.access_log
        metrics = state.metrics
        if stream is None and metrics is None:
            return
        request = self.request
        status = self.status[:3]
        duration = time.monotonic() - request.started
        if metrics is not None:
            metrics.observe(request.path, status, duration)
        if stream is None:
            return
        path = request.url.decode('latin-1') or '-'
        if not path.isprintable():
            path = ascii(path)
        stream.write(state.access_line(Clock.tick().log_time, self.connection.address[0], request.method or '-',
                                       path, status, length, duration * 1000, request.id))
