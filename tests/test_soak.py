"""Soak: minutes of steady, mixed traffic while uWSGI recycles its workers; nothing leaks, nothing fails.

The stack recycles each worker after a few hundred requests (production: 20,000) while
a few client threads send image uploads, Open Inference Protocol JSON and binary
tensors, pages and some bad requests at a moderate, steady rate, and a scraper reads
``/metrics`` every couple of seconds as Prometheus would. Afterwards:

- every request got the status it should: no failures, no connection errors;
- ``/metrics`` counted every request exactly once, across all the workers that came and went;
- the Prometheus multiprocess folder stayed bounded (scrapes fold dead workers' files away);
- memory is flat: within each worker generation, resident memory does not rise with the
  requests served once warmed up; from one generation to the next, what a worker holds at
  the same age does not rise; the master's memory does not rise either.

CI runs it for 90 s. ``SOAK_SECONDS=1800`` soaks for half an hour (the timeout follows);
``SOAK_RATE`` (requests per second) and ``SOAK_MAX_REQUESTS`` (per worker generation; more
than a worker serves in the run means no recycling, one long generation each) tune it.
``pytest -s`` prints the figures: memory slopes, recycles, folder size and scrape times.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import requests

from loadtests.payloads import bodies

from .scrape import INFER, PREDICT, infer_body, parse, png, server_timing
from .stackrunner import RunningStack, start_stack

SECONDS = int(os.environ.get("SOAK_SECONDS", "90"))
RATE = int(os.environ.get("SOAK_RATE", "80"))
MAX_REQUESTS = int(os.environ.get("SOAK_MAX_REQUESTS", "500"))
# Worker n recycles after MAX_REQUESTS + (n - 1) * 100 requests: seconds apart, so one
# loads the app while the other serves. (uWSGI also keeps a worker for min-worker-lifetime,
# 10 s, whatever it served: at this rate a generation lasts longer anyway.)
MAX_REQUESTS_DELTA = 100
WORKERS = 2
CLIENTS = 4
SCRAPE_EVERY = 2.0  # seconds; Prometheus's default is 15: more scrapes, more chances to go wrong
SAMPLE_EVERY = 0.25
# Requests a fresh worker serves before its memory counts: lazy imports, first templates, re's
# cache (two patterns per multipart boundary), allocator arenas. It still steps up by about
# 1 MB now and then for a few thousand requests, then stays flat (0.1 KB a request measured).
WARMUP = 300

# Generous for a noisy 2-core machine (5-8 KB a request measured over a generation's
# requests 300-600, the tail of the warm-up), tight enough for a real leak: 100 KB a request.
MAX_KB_PER_REQUEST = 20
MAX_GROWTH_MB = 5  # between generations at the same age, and for the master over the run
# Files a live worker keeps: counter, histogram and two kinds of gauge.
FILES_PER_WORKER = 4
MB = 2**20

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SECONDS + 240)]


# -- traffic ---------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One kind of request, the status it must get, and where ``/metrics`` files it."""

    name: str
    method: str
    path: str
    rule: str  # the URL rule in the HTTP metrics' labels
    status: int
    kwargs: Callable[[int], dict]  # the n-th request's body and headers
    inference: bool  # counted as an inference request of the digits model


def payload(kind: str) -> Callable[[int], dict]:
    """Prebuilt bodies of one kind (see loadtests/payloads.py), a different digit each time."""
    def kwargs(n: int) -> dict:
        body = bodies()[kind][n % len(bodies()[kind])]
        return {"data": body.data, "headers": body.headers}
    return kwargs


def fixed(**kwargs) -> Callable[[int], dict]:
    return lambda n: kwargs


def form(n: int) -> dict:
    return {"data": {"model": "digits"}, "files": {"file": ("digit.png", FORM_PNGS[n % len(FORM_PNGS)])}}


FORM_PNGS = [png(i) for i in range(20)]
PREDICT_RULE = "/api/v1/models/<name>/predict"
INFER_RULE = "/v2/models/<name>/infer"
JSON = {"Content-Type": "application/json"}
WRONG_SHAPE = json.dumps({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0] * 63}]})

# (call, how many of every 40 requests): mostly inference, some pages, one in ten bad.
MIX = [
    (Call("upload", "POST", PREDICT, PREDICT_RULE, 200, payload("upload"), True), 12),
    (Call("oip-json", "POST", INFER, INFER_RULE, 200, payload("oip-json"), True), 8),
    (Call("oip-binary", "POST", INFER, INFER_RULE, 200, payload("oip-binary"), True), 8),
    (Call("form", "POST", "/predict", "/predict", 200, form, True), 2),
    (Call("index", "GET", "/", "/", 200, fixed(), False), 1),
    (Call("model-page", "GET", "/models/digits", "/models/<name>", 200, fixed(), False), 1),
    (Call("metadata", "GET", "/v2/models/digits", "/v2/models/<name>", 200, fixed(), False), 1),
    (Call("healthz", "GET", "/healthz", "/healthz", 200, fixed(), False), 3),
    (Call("not-an-image", "POST", PREDICT, PREDICT_RULE, 415,
          fixed(data=b"not an image", headers={"Content-Type": "image/png"}), True), 1),
    (Call("broken-json", "POST", INFER, INFER_RULE, 400, fixed(data=b"{", headers=JSON), True), 1),
    (Call("wrong-shape", "POST", INFER, INFER_RULE, 422, fixed(data=WRONG_SHAPE, headers=JSON), True), 1),
    (Call("unknown-model", "POST", "/v2/models/no-such-model/infer", INFER_RULE, 404,
          fixed(data=infer_body(), headers=JSON), False), 1),
]
# Interleaved, the same order every run.
SCHEDULE = [call for call, share in MIX for _ in range(share)]
random.Random(0).shuffle(SCHEDULE)


@dataclass
class Sample:
    """One worker process at one moment, from uWSGI's stats (it updates ``rss`` after every request)."""

    at: float  # seconds into the soak
    worker: int
    pid: int
    requests: int  # served by this process: its age
    rss: int


@dataclass
class Scrape:
    at: float
    seconds: float  # as the scraper saw it
    queue: float  # waiting for a worker (Server-Timing)
    worker: float  # the worker's own time: folding dead workers' files, merging the rest
    files: int
    bytes: int


@dataclass
class Soak:
    """Steady load on ``stack`` from a few client threads, with a scraper and a sampler alongside."""

    stack: RunningStack
    answered: Counter = field(default_factory=Counter)  # (call, status)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    master_rss: list[int] = field(default_factory=list)
    scrapes: list[Scrape] = field(default_factory=list)
    tickets: itertools.count = field(default_factory=itertools.count)  # request numbers, shared by the clients
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    start: float = 0.0

    def run(self, seconds: float, rate: float) -> None:
        self.start = time.monotonic()
        watchers = [threading.Thread(target=self.scrape), threading.Thread(target=self.sample)]
        clients = [threading.Thread(target=self.client, args=(seconds, rate)) for _ in range(CLIENTS)]
        for thread in watchers + clients:
            thread.start()
        for thread in clients:
            thread.join()
        self.done.set()
        for thread in watchers:
            thread.join()

    def now(self) -> float:
        return time.monotonic() - self.start

    def client(self, seconds: float, rate: float) -> None:
        """Send request n at ``n / rate`` seconds: a steady rate, not a flood."""
        session = requests.Session()
        for n in self.tickets:
            due = n / rate
            if due >= seconds:
                return
            time.sleep(max(0.0, due - self.now()))
            call = SCHEDULE[n % len(SCHEDULE)]
            started = time.perf_counter()
            try:
                response = session.request(call.method, self.stack.url + call.path, timeout=30, **call.kwargs(n))
            except requests.RequestException as error:
                with self.lock:
                    self.failures.append(f"{call.name}: {error!r}")
                continue
            with self.lock:
                self.latencies.append(time.perf_counter() - started)
                self.answered[call, response.status_code] += 1
                if response.status_code != call.status:
                    self.failures.append(f"{call.name}: {response.status_code} {response.text[:200]}")

    def scrape(self) -> None:
        folder = self.stack.run_dir / "metrics"
        while not self.done.wait(SCRAPE_EVERY):
            started = time.perf_counter()
            try:
                response = self.stack.get("/metrics")
            except requests.RequestException as error:
                with self.lock:
                    self.failures.append(f"/metrics: {error!r}")
                continue
            took = time.perf_counter() - started
            if response.status_code != 200:
                with self.lock:
                    self.failures.append(f"/metrics: {response.status_code} {response.text[:200]}")
            stages = server_timing(response.headers.get("Server-Timing", ""))
            files = [path for path in folder.iterdir() if path.is_file()]
            self.scrapes.append(Scrape(self.now(), took, stages.get("queue", 0.0), stages.get("other", 0.0),
                                       len(files), sum(_size(path) for path in files)))

    def sample(self) -> None:
        master = self.stack.master_pid()
        while not self.done.wait(SAMPLE_EVERY):
            at = self.now()
            for w in self.stack.uwsgi_stats()["workers"]:
                if w["pid"] > 0 and w["rss"]:
                    self.samples.append(Sample(at, w["id"], w["pid"], w["delta_requests"], w["rss"]))
            self.master_rss.append(_vm_rss(master))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # folded away by a scrape since we listed it
        return 0


def _vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


# -- memory ----------------------------------------------------------------------


def pooled_slope(groups: list[list[tuple[float, float]]]) -> float:
    """The least-squares slope of y on x that all ``groups`` share, each with its own intercept."""
    xy = xx = 0.0
    for points in groups:
        mean_x = statistics.fmean(x for x, _ in points)
        mean_y = statistics.fmean(y for _, y in points)
        xy += sum((x - mean_x) * (y - mean_y) for x, y in points)
        xx += sum((x - mean_x) ** 2 for x, _ in points)
    return xy / xx if xx else 0.0


def generations(samples: list[Sample]) -> list[list[Sample]]:
    """Samples per worker process (one generation each), in the order they started."""
    by_pid: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_pid[sample.pid].append(sample)
    return sorted(by_pid.values(), key=lambda generation: generation[0].at)


@dataclass
class Memory:
    """Worker memory: how it rises within a generation, and what each generation holds at one age."""

    per_request: float  # bytes per request within a generation, after warm-up
    per_minute: float  # bytes per minute within a generation, after warm-up
    at_age: list[Sample]  # per generation that got that old: its last sample at or before the age

    @classmethod
    def of(cls, samples: list[Sample], age: int) -> Memory:
        warm = [[s for s in generation if s.requests >= WARMUP] for generation in generations(samples)]
        warm = [generation for generation in warm if len({s.requests for s in generation}) >= 3]
        return cls(
            per_request=pooled_slope([[(s.requests, s.rss) for s in generation] for generation in warm]),
            per_minute=pooled_slope([[(s.at / 60, s.rss) for s in generation] for generation in warm]),
            at_age=[[s for s in generation if s.requests <= age][-1]
                    for generation in generations(samples) if generation[-1].requests >= age],
        )

    def growth_at_age(self) -> float:
        """How much more the later generations hold at that age than the earlier ones (medians)."""
        rss = [sample.rss for sample in self.at_age]
        half = len(rss) // 2
        return statistics.median(rss[half:]) - statistics.median(rss[:half])


# -- the soak --------------------------------------------------------------------


@pytest.fixture
def soak(tmp_path):
    stack = start_stack(
        tmp_path / "run", WORKERS=str(WORKERS),
        MAX_REQUESTS=str(MAX_REQUESTS), MAX_REQUESTS_DELTA=str(MAX_REQUESTS_DELTA),
    )
    yield Soak(stack)
    stack.stop()


def http_counts(text: str) -> Counter:
    """Requests ``/metrics`` counted, per (method, status, URL rule)."""
    return Counter({
        (dict(labels)["method"], dict(labels)["status"], dict(labels)["url_rule"]): value
        for (name, labels), value in parse(text).items()
        if name == "modelstack_http_request_duration_seconds_count"
    })


def digits_inferences(text: str) -> float:
    return parse(text).get(
        ("modelstack_inference_requests_total", frozenset({"model": "digits", "version": "1"}.items())), 0.0)


def settled_metrics(stack: RunningStack, before: Counter, sent: int) -> str:
    """The scrape once every request is counted: a worker counts one just after answering it."""
    deadline = time.monotonic() + 10
    while True:
        text = stack.get("/metrics").text
        if (http_counts(text) - before).total() >= sent or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_soak_with_worker_recycling_fails_nothing_counts_everything_and_leaks_nothing(soak):
    stack = soak.stack
    before_text = stack.get("/metrics").text
    before, inferences_before = http_counts(before_text), digits_inferences(before_text)

    soak.run(SECONDS, RATE)

    sent = soak.answered.total() + sum(not f.startswith("/metrics") for f in soak.failures)
    text = settled_metrics(stack, before, sent)
    recycles = sum(worker["respawn_count"] - 1 for worker in stack.uwsgi_stats()["workers"])
    memory = Memory.of(soak.samples, MAX_REQUESTS)
    print_summary(soak, sent, recycles, memory)

    assert not soak.failures, f"{len(soak.failures)} failed, e.g. {soak.failures[:5]}"
    assert "DAMN ! worker" not in stack.uwsgi_log(), "no worker died other than by recycling"
    assert soak.samples[-1].at > SECONDS - 5 and soak.scrapes[-1].at > SECONDS - 5, "watched to the end"
    recycling = sent > 4 * (MAX_REQUESTS + WORKERS * MAX_REQUESTS_DELTA)
    if recycling:  # the default; a long generation per worker otherwise
        assert recycles >= 2 * WORKERS, "every worker was recycled, more than once"

    # Exactly once, whichever of the many processes served a request.
    sent_per_series, counted = Counter(), http_counts(text) - before
    for (call, status), count in soak.answered.items():
        sent_per_series[call.method, str(status), call.rule] += count
    wrong = {series: (counted[series], sent_per_series[series])
             for series in counted | sent_per_series if counted[series] != sent_per_series[series]}
    assert not wrong, f"(method, status, URL rule): (counted, sent) {wrong}"
    assert digits_inferences(text) - inferences_before == sum(
        count for (call, _), count in soak.answered.items() if call.inference)

    # Bounded by the live workers, not by the recycles: a scrape folds the dead ones' files
    # into two archives (the lock file is the last one).
    assert max(scrape.files for scrape in soak.scrapes) <= FILES_PER_WORKER * (WORKERS + 2) + 3, (
        "dead workers' files pile up (two recycles between scrapes allowed)")
    third = len(soak.scrapes) // 3
    middle, last = soak.scrapes[third:2 * third], soak.scrapes[2 * third:]
    assert statistics.median(s.bytes for s in last) <= statistics.median(s.bytes for s in middle) + 64 * 1024, (
        "the folder keeps growing")

    assert memory.per_request < MAX_KB_PER_REQUEST * 1024, "worker memory rises with the requests served"
    if recycling:
        assert len(memory.at_age) >= 4
        assert memory.growth_at_age() < MAX_GROWTH_MB * MB, "later generations hold more at the same age"
    assert max(soak.master_rss) - soak.master_rss[0] < MAX_GROWTH_MB * MB, "the master's memory grows"


def print_summary(soak: Soak, sent: int, recycles: int, memory: Memory) -> None:
    kinds = Counter()
    for (call, status), count in soak.answered.items():
        kinds[f"{call.name} {status}"] += count
    latencies = sorted(soak.latencies)
    print(f"\nsoak: {sent} requests in {soak.now():.0f} s ({RATE}/s), {len(soak.failures)} failed; "
          f"{recycles} recycles (MAX_REQUESTS={MAX_REQUESTS}, delta {MAX_REQUESTS_DELTA}), "
          f"{len(generations(soak.samples))} worker generations sampled")
    print("  " + ", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items())))
    print(f"latency: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms")
    print(f"worker RSS slope after {WARMUP} requests (pooled within generations): "
          f"{memory.per_request / 1024:+.2f} KB/request = {memory.per_request * 1000 / MB:+.2f} MB "
          f"per 1000 requests, {memory.per_minute / MB:+.2f} MB/min")
    for worker in range(1, WORKERS + 1):
        if values := " ".join(f"{s.rss / MB:.1f}" for s in memory.at_age if s.worker == worker):
            print(f"worker {worker} RSS at {MAX_REQUESTS} requests, generation by generation: {values} MB")
    if len(memory.at_age) >= 2:
        print(f"later generations vs earlier ones at that age: {memory.growth_at_age() / MB:+.2f} MB")
    print(f"master RSS: {soak.master_rss[0] / MB:.1f} -> {soak.master_rss[-1] / MB:.1f} MB "
          f"(max {max(soak.master_rss) / MB:.1f})")
    print("metrics folder and scrapes (ms: median/max) over the run:")
    step = max(1, len(soak.scrapes) // 8)
    for index in range(0, len(soak.scrapes), step):
        window = soak.scrapes[index:index + step]
        print(f"  t={window[0].at:5.0f} s: {max(s.files for s in window):3d} files, "
              f"{max(s.bytes for s in window) / 1024:5.0f} KB; scrape {_ms(window, 'seconds')} "
              f"(queue {_ms(window, 'queue')}, in the worker {_ms(window, 'worker')})")


def _ms(scrapes: list[Scrape], name: str) -> str:
    values = [getattr(scrape, name) * 1000 for scrape in scrapes]
    return f"{statistics.median(values):.0f}/{max(values):.0f}"
