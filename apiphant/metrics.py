"""`--metrics`: GET /metrics in Prometheus's text format, by prometheus_client (`apiphant[metrics]`).

What it exposes:
- apiphant_requests_total{route, status}: answers; `route` is the API path, the health or metrics
  path, or "other" for any path that is none of these (clients choose paths: a label per path
  would let them grow the series without bound);
- apiphant_request_duration_seconds{route}: a histogram of the time from a request's first byte
  to its answer;
- apiphant_requests_in_flight, apiphant_open_connections, apiphant_draining (1 from the moment a
  drain starts);
- process_*: CPU seconds, resident and virtual memory, open file descriptors against their limit
  (process_max_fds), start time.

Under `--workers N` every scrape sees all the workers: the master makes a directory for
prometheus_client's multiprocess mode and points PROMETHEUS_MULTIPROC_DIR at it before importing
this module (prometheus_client reads it once, when imported), then removes it at exit (Workers). Counters
and histograms are then summed over every worker that has lived; the gauges over the live ones
(draining: 1 when any drains); the process_* figures are read from /proc for each live worker:
CPU and memory summed, open descriptors the most any worker has open (the one nearest its limit).

The cost per request is one counter and one histogram observation on children looked up once; the
gauges are set once a SAMPLE_PERIOD (and at each scrape), not per request.
"""

import os
import shutil

import gevent
from prometheus_client import (
    CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Metric, ProcessCollector,
    generate_latest, multiprocess,
)

PATH = '/metrics'
OTHER = 'other'
SAMPLE_PERIOD = 1.0
_ENVIRONMENT = 'PROMETHEUS_MULTIPROC_DIR'
_PIDS = 'worker-pids'  # the live workers, one pid a line, kept by the master (not a *.db file)
# How the workers' process_* samples add up (see the module docstring); anything else: summed.
_MERGE = {'process_open_fds': max, 'process_max_fds': min, 'process_start_time_seconds': min}


class Workers:
    """The master's side of multiprocess mode: which workers live, and the cleaning up."""

    def __init__(self, path):
        self.path = path
        self.pids = set()

    def started(self, pid):
        self.pids.add(pid)
        self._write()

    def died(self, pid):
        """A dead worker's counts stay in the totals; its gauges leave them."""
        self.pids.discard(pid)
        multiprocess.mark_process_dead(pid, self.path)
        self._write()

    def _write(self):
        temporary = os.path.join(self.path, _PIDS + '.new')
        with open(temporary, 'w') as file:
            file.write(''.join(f'{pid}\n' for pid in sorted(self.pids)))
        os.replace(temporary, os.path.join(self.path, _PIDS))

    def close(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Metrics:
    """One server's metrics, and the WSGI app of the metrics path."""

    path = PATH

    def __init__(self, server, routes):
        self.server = server
        self.routes = frozenset(routes)
        self.shared = os.environ.get(_ENVIRONMENT)  # multiprocess mode's directory, or None
        registry = None if self.shared else REGISTRY  # (multiprocess mode reads the files instead)
        self.requests = Counter('apiphant_requests', 'Answers, by route and status.', ['route', 'status'],
                                registry=registry)
        self.duration = Histogram('apiphant_request_duration_seconds',
                                  'Time from the first byte of a request to its answer, by route.',
                                  ['route'], registry=registry)
        self.in_flight = Gauge('apiphant_requests_in_flight', 'Requests being answered.',
                               registry=registry, multiprocess_mode='livesum')
        self.connections = Gauge('apiphant_open_connections', 'Client connections open.',
                                 registry=registry, multiprocess_mode='livesum')
        self.draining = Gauge('apiphant_draining', '1 from the moment a drain (SIGTERM) starts.',
                              registry=registry, multiprocess_mode='livemax')
        self.counted = {}  # (route, status) -> its counter child
        self.timed = {}  # route -> its histogram child
        self._sampler = None

    def start(self):
        self.sample()
        self._sampler = gevent.spawn(self._sample_forever)

    def stop(self):
        if self._sampler is not None:
            self._sampler.kill(block=False)
        self.sample()

    def observe(self, path, status, seconds):
        route = path if path in self.routes else OTHER
        counter = self.counted.get((route, status))
        if counter is None:
            counter = self.counted[route, status] = self.requests.labels(route, status)
        counter.inc()
        histogram = self.timed.get(route)
        if histogram is None:
            histogram = self.timed[route] = self.duration.labels(route)
        histogram.observe(seconds)

    def sample(self):
        server = self.server
        self.in_flight.set(server.in_flight)
        self.connections.set(len(server.connections))
        self.draining.set(int(server.draining))

    def _sample_forever(self):
        while True:
            gevent.sleep(SAMPLE_PERIOD)
            self.sample()

    def __call__(self, environ, start_response):
        self.sample()
        if self.shared:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.shared)
            registry.register(WorkersProcessCollector(self.shared))
        else:
            registry = REGISTRY
        data = generate_latest(registry)
        start_response('200 OK', [('Content-Type', CONTENT_TYPE_LATEST), ('Content-Length', str(len(data)))])
        return [data]


class WorkersProcessCollector:
    """process_* over every live worker (multiprocess mode cannot merge per-process collectors)."""

    def __init__(self, path):
        self.path = path

    def collect(self):
        try:
            with open(os.path.join(self.path, _PIDS)) as file:
                pids = [int(line) for line in file if line.strip()]
        except OSError:
            pids = []
        merged = {}
        for pid in pids:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                for sample in family.samples:
                    merged.setdefault(sample.name, (family, []))[1].append(sample.value)
        for name, (family, values) in merged.items():
            metric = Metric(family.name, family.documentation, family.type)
            metric.add_sample(name, {}, _MERGE.get(name, sum)(values))
            yield metric
