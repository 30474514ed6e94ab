"""`--metrics`: GET /metrics in Prometheus's text format, by prometheus_client (`apiphant[metrics]`).

What it exposes:
- apiphant_requests_total{route, status}: answers; `route` is the API path, the health or metrics
  path, or "other" for any path that is none of these (clients choose paths: a label per path
  would let them grow the series without bound);
- apiphant_request_duration_seconds{route}: a histogram of the time from a request's first byte
  to its answer;
- apiphant_requests_in_flight, apiphant_open_connections, apiphant_draining (1 from the moment a
  drain starts);
- apiphant_database_pool_size, _in_use, _waiting: while apiphant.database has a pool open, its
  connections, those lent to actions, and the requests waiting for one;
- process_*: CPU seconds, resident and virtual memory, open file descriptors against their limit
  (process_max_fds), start time; and, with one worker, whatever the product registers in
  prometheus_client's default registry.

A request is counted in plain Python (a dict, a list, a bisect: about a microsecond); the
prometheus_client families are built from those counts only when scraped. Its own Counter and
Histogram take a lock per update, which gevent's patched locks make cost several microseconds a
request (see benchmarks/RESULTS.md, "Metrics").

Under `--workers N` every scrape sees all the workers: the master makes a directory they share
(Workers); each worker writes its counts there once a SAMPLE_PERIOD and when it stops, and the
worker that answers a scrape adds up every file with its own live counts. Counts of a worker that
has died stay in the totals (a counter never goes back); its gauges are zeroed by the master. So
another worker's figures are at most SAMPLE_PERIOD old, and a worker killed outright (SIGKILL)
loses its last SAMPLE_PERIOD of counts. The process_* figures are read from /proc for each live
worker: CPU and memory summed, open descriptors the most any worker has open (the one nearest its
limit), the limit the lowest.
"""

import json
import os
import shutil
import sys
import tempfile
from bisect import bisect_left
from pathlib import Path

import gevent
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Metric,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

PATH = '/metrics'
OTHER = 'other'
SAMPLE_PERIOD = 1.0
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LE = [*map(str, BOUNDS), '+Inf']
_GAUGES = {'in_flight': ('apiphant_requests_in_flight', 'Requests being answered.'),
           'connections': ('apiphant_open_connections', 'Client connections open.'),
           'draining': ('apiphant_draining', '1 from the moment a drain (SIGTERM) starts; under workers, '
                                             'how many drain.')}
_POOL_GAUGES = {'size': ('apiphant_database_pool_size', 'Database connections open in the pool.'),
                'in_use': ('apiphant_database_pool_in_use', 'Database connections lent to actions.'),
                'waiting': ('apiphant_database_pool_waiting', 'Requests waiting for a database connection.')}
_PIDS = 'worker-pids'  # the live workers, one pid a line, kept by the master
# How the workers' process_* samples add up (see the module docstring); anything else: summed.
_MERGE = {'process_open_fds': max, 'process_max_fds': min, 'process_start_time_seconds': min}


class Workers:
    """The master's side under --workers: the shared directory, which workers live, the cleaning up."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix='apiphant-metrics-'))
        self.pids = set()

    def started(self, pid):
        self.pids.add(pid)
        self._write_pids()

    def died(self, pid):
        """Its counts stay in the totals; its gauges leave them."""
        self.pids.discard(pid)
        self._write_pids()
        for file in self.path.glob(f'{pid}-*.json'):
            counts = json.loads(file.read_text())
            counts['gauges'] = dict.fromkeys(counts['gauges'], 0)
            counts['pool'] = None  # (its connections closed with it)
            _write(file, counts)

    def _write_pids(self):
        _write(self.path / _PIDS, sorted(self.pids))

    def close(self):
        shutil.rmtree(self.path, ignore_errors=True)


def _write(file, value):
    """Whole or not at all: a reader never sees half a file."""
    temporary = file.with_name(file.name + '.new')
    temporary.write_text(json.dumps(value))
    os.replace(temporary, file)


class Metrics:
    """One server's metrics (a prometheus_client collector), and the WSGI app of the metrics path."""

    path = PATH

    def __init__(self, server, routes, workers=None):
        self.server = server
        self.routes = frozenset(routes)
        self.shared = workers.path if workers is not None else None
        self.counts = {}  # (route, status) -> answers
        self.buckets = {}  # route -> answers per duration bucket (not cumulative), +Inf last
        self.sums = {}  # route -> seconds
        self.file = None  # this worker's file in the shared directory
        self._sampler = None
        if self.shared is None:
            REGISTRY.register(self)  # beside the process collector and the product's own metrics
        else:
            self.registry = CollectorRegistry()
            self.registry.register(self)
            self.registry.register(WorkersProcessCollector(self.shared))

    def start(self):
        """In the serving process (after the fork): name this worker's file, write it regularly."""
        if self.shared is not None:
            self.file = self.shared / f'{os.getpid()}-{os.urandom(4).hex()}.json'
            self._sampler = gevent.spawn(self._write_forever)

    def stop(self):
        if self._sampler is not None:
            self._sampler.kill(block=False)
            _write(self.file, self.snapshot())

    def observe(self, path, status, seconds):
        route = path if path in self.routes else OTHER
        key = (route, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        buckets = self.buckets.get(route)
        if buckets is None:
            buckets = self.buckets[route] = [0] * len(_LE)
            self.sums[route] = 0.0
        buckets[bisect_left(BOUNDS, seconds)] += 1  # (the first bound >= seconds: Prometheus's `le`)
        self.sums[route] += seconds

    def snapshot(self):
        server = self.server
        database = sys.modules.get('apiphant.database')  # (only a product that uses it imports it)
        return {'counts': [[route, status, count] for (route, status), count in self.counts.items()],
                'buckets': self.buckets, 'sums': self.sums,
                'gauges': {'in_flight': server.in_flight, 'connections': len(server.connections),
                           'draining': int(server.draining)},
                'pool': database.stats() if database is not None else None}

    def _write_forever(self):
        while True:
            _write(self.file, self.snapshot())
            gevent.sleep(SAMPLE_PERIOD)

    def collect(self):
        """prometheus_client's collector protocol: the families, summed over the workers' files."""
        snapshots = [self.snapshot()]
        if self.shared is not None:
            for file in self.shared.glob('*.json'):
                if file != self.file:
                    try:
                        snapshots.append(json.loads(file.read_text()))
                    except (OSError, ValueError):
                        continue  # (its worker has just started: nothing counted yet)
        counts, buckets, sums, gauges, pool = {}, {}, {}, dict.fromkeys(_GAUGES, 0), None
        for snapshot in snapshots:
            for route, status, count in snapshot['counts']:
                counts[route, status] = counts.get((route, status), 0) + count
            for route, per_bucket in snapshot['buckets'].items():
                total = buckets.setdefault(route, [0] * len(_LE))
                for index, count in enumerate(per_bucket):
                    total[index] += count
                sums[route] = sums.get(route, 0.0) + snapshot['sums'][route]
            for name, value in snapshot['gauges'].items():
                gauges[name] += value
            if snapshot.get('pool'):
                pool = pool or dict.fromkeys(_POOL_GAUGES, 0)
                for name, value in snapshot['pool'].items():
                    pool[name] += value
        requests = CounterMetricFamily('apiphant_requests', 'Answers, by route and status.',
                                       labels=['route', 'status'])
        for (route, status), count in sorted(counts.items()):
            requests.add_metric([route, status], count)
        yield requests
        duration = HistogramMetricFamily('apiphant_request_duration_seconds',
                                         'Time from the first byte of a request to its answer, by route.',
                                         labels=['route'])
        for route, per_bucket in sorted(buckets.items()):
            cumulative, running = [], 0
            for le, count in zip(_LE, per_bucket, strict=True):
                running += count
                cumulative.append((le, running))
            duration.add_metric([route], cumulative, sums[route])
        yield duration
        for key, (name, documentation) in _GAUGES.items():
            yield GaugeMetricFamily(name, documentation, value=gauges[key])
        if pool is not None:
            for key, (name, documentation) in _POOL_GAUGES.items():
                yield GaugeMetricFamily(name, documentation, value=pool[key])

    def __call__(self, environ, start_response):
        data = generate_latest(REGISTRY if self.shared is None else self.registry)
        start_response('200 OK', [('Content-Type', CONTENT_TYPE_LATEST), ('Content-Length', str(len(data)))])
        return [data]


class WorkersProcessCollector:
    """process_* over every live worker (each worker's ProcessCollector sees itself only)."""

    def __init__(self, path):
        self.path = path

    def collect(self):
        try:
            pids = json.loads((self.path / _PIDS).read_text())
        except (OSError, ValueError):
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
