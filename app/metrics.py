"""Prometheus metrics: HTTP requests per URL rule, inference per model version, worker processes.

Under uWSGI every worker writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
(the launcher empties it and sets it before Python starts) and the worker that
answers ``/metrics`` merges them, so one scrape covers all workers. Without that
variable (``flask run``, a single gunicorn worker) the same metrics live in memory.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import os
from pathlib import Path
from typing import Callable, Iterable

from flask import Flask, Request, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_flask_exporter import PrometheusMetrics

from .inference import ModelRegistry, ModelVersion, Stages

# From a small model's inference (50 µs) to a request stuck behind a slow one (10 s).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Why an inference request failed; other statuses count under their class.
FAILURE_REASONS = {
    400: "bad_request",
    413: "too_large",
    415: "unsupported_media_type",
    422: "rejected_input",
    500: "internal_error",
    503: "unavailable",
}
# Any other method a client invents would become a label value of its own.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def url_rule(request: Request) -> str:
    """The matched URL rule: every model shares one series per endpoint, unknown paths share one."""
    return request.url_rule.rule if request.url_rule else "unmatched"


class InferenceMetrics:
    """Per model version: requests, failures, batch sizes, stage and end-to-end latencies."""

    def __init__(self, registry: CollectorRegistry):
        labels = ("model", "version")
        self.requests = Counter(
            "modelstack_inference_requests_total", "Inference requests, whatever their outcome.",
            labels, registry=registry,
        )
        self.failures = Counter(
            "modelstack_inference_failures_total", "Inference requests answered with an error.",
            (*labels, "status_class", "reason"), registry=registry,
        )
        self.duration = Histogram(
            "modelstack_inference_request_duration_seconds",
            "From nginx handing the request on until the response is ready: the sum of the stages.",
            labels, buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.stage_duration = Histogram(
            "modelstack_inference_stage_duration_seconds",
            "Time per stage: queue, decode, preprocess, inference, postprocess and other (the rest in the worker).",
            (*labels, "stage"), buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "modelstack_inference_batch_size", "Inputs per model execution.",
            labels, buckets=BATCH_BUCKETS, registry=registry,
        )
        # livesum: across the live workers, so the value counts workers.
        self.loaded = Gauge(
            "modelstack_model_loaded", "Workers holding this model version in memory.",
            labels, multiprocess_mode="livesum", registry=registry,
        )
        self.ready = Gauge(
            "modelstack_model_ready", "Workers ready to serve this model version.",
            labels, multiprocess_mode="livesum", registry=registry,
        )
        self._children: dict[tuple[str, int], _ModelSeries] = {}

    def models_loaded(self, models: ModelRegistry) -> None:
        for model in models.all_versions():
            self.loaded.labels(model.name, str(model.version)).set(1)
            self.ready.labels(model.name, str(model.version)).set(1 if models.ready else 0)

    def observe(self, model: ModelVersion, stages: Stages, status: int) -> None:
        """Account one finished request for ``model``; ``stages`` must be complete."""
        series = self._series(model)
        series.requests.inc()
        if status >= 400:
            reason = FAILURE_REASONS.get(status, "client_error" if status < 500 else "server_error")
            self.failures.labels(model.name, str(model.version), f"{status // 100}xx", reason).inc()
        for stage, seconds in stages.seconds.items():
            series.stage(stage).observe(seconds)
        series.duration.observe(sum(stages.seconds.values()))
        for size in stages.batch_sizes:
            series.batch_size.observe(size)

    def _series(self, model: ModelVersion) -> "_ModelSeries":
        # Looking a labelled child up takes a lock and a dict per call: do it once per model version.
        key = (model.name, model.version)
        if key not in self._children:
            self._children[key] = _ModelSeries(self, model.name, str(model.version))
        return self._children[key]


class _ModelSeries:
    """One model version's labelled children of the inference metrics."""

    def __init__(self, metrics: InferenceMetrics, name: str, version: str):
        self.requests = metrics.requests.labels(name, version)
        self.duration = metrics.duration.labels(name, version)
        self.batch_size = metrics.batch_size.labels(name, version)
        self._stage_duration = metrics.stage_duration
        self._labels = (name, version)
        self._stages: dict[str, Histogram] = {}

    def stage(self, stage: str) -> Histogram:
        if stage not in self._stages:
            self._stages[stage] = self._stage_duration.labels(*self._labels, stage)
        return self._stages[stage]


class MultiprocessFolder(MultiProcessCollector):
    """Every worker's metric files merged for a scrape, dead workers' files compacted first.

    Each worker process writes its own files; a recycled worker leaves them behind,
    and summing thousands of them would make every scrape slower. A scrape folds a
    dead worker's counters and histograms into one ``<type>_archive.db`` (totals
    must never go backwards) and drops its gauges (they described a process that is
    gone). Only scrapes, healthy requests, do this; a worker's exit path, where uWSGI
    may kill it at any moment, only drops its live gauges. A lock keeps concurrent
    scrapes from folding a file twice.
    """

    ARCHIVED_TYPES = ("counter", "histogram")

    def __init__(self, path: str, registry: CollectorRegistry):
        super().__init__(registry, path)
        self.path = path

    def collect(self):
        with open(os.path.join(self.path, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.retire({pid for pid in self.pids() if not _alive(pid)})
            return super().collect()

    def pids(self) -> set[int]:
        """Processes with files here: ``<type>_<pid>.db`` and ``gauge_<mode>_<pid>.db``."""
        names = (os.path.basename(path)[:-3] for path in glob.glob(os.path.join(self.path, "*.db")))
        return {int(tail) for name in names if (tail := name.rsplit("_", 1)[-1]).isdigit()}

    def retire(self, pids: set[int]) -> None:
        """Fold the counters and histograms of dead ``pids`` into the archive; delete all their files."""
        if not pids:
            return
        for kind in self.ARCHIVED_TYPES:
            files = [path for pid in pids if os.path.exists(path := os.path.join(self.path, f"{kind}_{pid}.db"))]
            if files:
                archive = os.path.join(self.path, f"{kind}_archive.db")
                self._write_archive(archive, files + ([archive] if os.path.exists(archive) else []))
                # Not atomic with the line above: killed in between, a scrape would count these
                # twice. Microseconds, inside a healthy request.
                for path in files:
                    os.remove(path)
        for pid in pids:
            # All its gauges: the live* ones its exit hook may have removed already, and the rest.
            for path in glob.glob(os.path.join(self.path, f"gauge_*_{pid}.db")):
                Path(path).unlink(missing_ok=True)

    def _write_archive(self, archive: str, files: list[str]) -> None:
        # accumulate=False keeps buckets per bucket, as the files store them.
        merged = self.merge(files, accumulate=False)
        partial = os.path.join(self.path, ".archive.partial")  # not *.db: a scrape never reads it
        if os.path.exists(partial):
            os.remove(partial)
        store = MmapedDict(partial)
        try:
            for metric in merged:
                for sample in metric.samples:
                    key = mmap_key(metric.name, sample.name, list(sample.labels), list(sample.labels.values()),
                                   metric.documentation)
                    store.write_value(key, sample.value, 0.0)
        finally:
            store.close()
        os.replace(partial, archive)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerProcesses:
    """CPU, memory and file descriptors (``process_*``) of every worker, with a ``worker`` label.

    Whichever worker answers the scrape reads its siblings' ``/proc`` entries; under
    uWSGI the label is the worker's number (stable across respawns), else its pid.
    """

    def __init__(self, pids: Callable[[], Iterable[int]], registry: CollectorRegistry):
        self.pids = pids
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        names = _uwsgi_worker_numbers()
        families: dict[str, Metric] = {}
        for pid in sorted(self.pids()):
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": names.get(pid, str(pid))}, sample.value)
        return families.values()


def _uwsgi_worker_numbers() -> dict[int, str]:
    try:
        import uwsgi
    except ImportError:
        return {}
    return {worker["pid"]: str(worker["id"]) for worker in uwsgi.workers() if worker["pid"] > 0}


def init_app(app: Flask, models: ModelRegistry) -> InferenceMetrics:
    """HTTP metrics for every request, inference metrics for the app to feed, and ``/metrics``."""
    definitions = CollectorRegistry()
    exporter = PrometheusMetrics(
        app, path=None, registry=definitions, defaults_prefix="modelstack",
        group_by=url_rule, buckets=LATENCY_BUCKETS,
    )
    folder_path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder_path:
        # Metric objects write to files; a scrape reads the files, never this process's objects.
        scrape = CollectorRegistry()
        folder = MultiprocessFolder(folder_path, scrape)
        WorkerProcesses(folder.pids, scrape)
        # A worker leaving gracefully stops counting in the live* gauges at once.
        atexit.register(lambda: mark_process_dead(os.getpid(), folder_path))
    else:
        scrape = definitions
        WorkerProcesses(lambda: [os.getpid()], scrape)

    inference = InferenceMetrics(definitions)
    inference.models_loaded(models)
    in_flight = Gauge(
        "modelstack_http_requests_in_flight", "Requests a worker is handling now.",
        multiprocess_mode="livesum", registry=definitions,
    )

    @exporter.do_not_track()
    def metrics():
        encode, content_type = choose_encoder(request.headers.get("Accept"))
        return Response(encode(scrape), content_type=content_type)

    def start_request() -> None:
        if request.method not in HTTP_METHODS:
            request.prom_do_not_track = True  # the exporter's own flag: no series for this method
        if request.endpoint != "metrics":  # a scrape would always count itself
            in_flight.inc()
            g.in_flight = True

    def end_request(exc: BaseException | None) -> None:
        if g.pop("in_flight", False):
            in_flight.dec()

    app.add_url_rule("/metrics", "metrics", metrics)
    app.before_request(start_request)
    app.teardown_request(end_request)
    return inference
