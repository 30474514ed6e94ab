"""What stalls the event loop: a driver that blocks the whole process, and `--warn-blocking MS`.

apiphant answers every request of a process on one thread, so code that holds it without yielding to
gevent (a CPU-bound loop, a C library gevent cannot patch) holds up every other request meanwhile.

- psycopg2 is such a library: a C extension that waits for the database inside libpq. Loaded without
  psycogreen's wait callback, it serves one query at a time, silently; `warn_blocking_drivers()`
  (run once start-up is done) says so and names the fix.
- `watch()` starts gevent's monitor thread, which checks every `max_blocking_time` whether the loop
  has switched greenlets since its last look; gevent then notifies EventLoopBlocked, and this logs
  the action (the route whose function is on the stack) and the stack, once per incident however
  long it lasts. As the check is periodic, a block longer than MS may go unseen if shorter than
  twice MS.
"""

import inspect
import logging
import sys
import traceback
import warnings

import gevent
from gevent.events import EventLoopBlocked, subscribers

log = logging.getLogger('apiphant')

PSYCOPG2_FIX = ('psycopg2 is loaded without a wait callback: under gevent each of its queries stops '
                'every request of the process. Use psycopg 3 (pip install "apiphant[postgresql]", '
                'apiphant.database), or install psycogreen and call psycogreen.gevent.patch_psycopg() '
                'at the top of api/lifespan.py')


def warn_blocking_drivers():
    """Warn about loaded database drivers that would block the event loop on every query."""
    psycopg2 = sys.modules.get('psycopg2')
    if psycopg2 is not None and psycopg2.extensions.get_wait_callback() is None:
        log.warning('%s', PSYCOPG2_FIX)


def watch(milliseconds, routes):
    """Log, once per incident, the action and the stack that held the event loop over `milliseconds`.

    `routes`: the route table, to name the action whose function is on the blocked stack."""
    actions = {inspect.unwrap(route.action).__code__: path for path, route in routes.items()}
    hub = gevent.get_hub()
    last = [None]

    def on_event(event):
        if not isinstance(event, EventLoopBlocked):
            return
        # Runs in the monitor thread. Every check that finds the loop still held notifies again;
        # an incident ends once the loop has run (its iteration count moved) or another greenlet holds it.
        incident = (event.greenlet, getattr(hub.loop, 'iteration', None))
        if incident == last[0]:
            return
        last[0] = incident
        frame = sys._current_frames().get(hub.thread_ident)
        if frame is None or event.greenlet.gr_frame is not None:
            return  # the greenlet has let go since gevent looked: that frame is someone else's
        action = next((actions[code] for code in _codes(frame) if code in actions), None)
        log.warning('the event loop was held over %g ms by %s; the stack:\n%s', milliseconds,
                    f'the action {action}' if action else 'code outside any action',
                    ''.join(traceback.format_stack(frame)).rstrip())

    subscribers.append(on_event)
    gevent.config.max_blocking_time = milliseconds / 1000
    gevent.config.print_blocking_reports = False  # (its report of every greenlet: this logs instead)
    gevent.config.monitor_thread = True
    with warnings.catch_warnings():  # (that it cannot watch memory without psutil: not asked of it)
        warnings.filterwarnings('ignore', 'Unable to monitor memory usage')
        hub.start_periodic_monitoring_thread()


def _codes(frame):
    while frame is not None:
        yield frame.f_code
        frame = frame.f_back
