"""What the report needs and Locust does not keep: exact percentiles per second and per step,
and the server's own stage timings (its ``Server-Timing`` header) next to the client's latency.

Locust rounds response times to whole milliseconds below 100 ms; a digit is served in about
one, so we keep our own histograms at three significant digits. A recorder's state is plain
lists and numbers, so workers can ship it to the master and the run can save it as JSON.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

SIGNIFICANT_DIGITS = 3
SERVER = "server"  # the sum of the server's stages for one request
OUTSIDE = "outside stages"  # client latency the server's stages do not explain: network, nginx, uWSGI


def parse_server_timing(value: str) -> dict[str, float]:
    """``decode;dur=0.12, inference;dur=0.05`` as ``{"decode": 0.12, "inference": 0.05}`` (ms).

    Metrics without a ``dur`` (``cache;desc=hit``) and malformed ones are skipped: a load test
    reports what the server says, it does not fail on it.
    """
    stages: dict[str, float] = {}
    for metric in value.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, raw = param.partition("=")
            if name and key.strip().lower() == "dur":
                try:
                    stages[name] = stages.get(name, 0.0) + float(raw.strip().strip('"'))
                except ValueError:
                    pass
    return stages


def _round(value: float) -> float:
    if value <= 0:
        return 0.0
    return round(value, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(value)))


class Histogram:
    """Counts of values rounded to three significant digits: small, mergeable, precise enough."""

    __slots__ = ("counts",)

    def __init__(self, pairs: list[list[float]] | None = None) -> None:
        self.counts: Counter[float] = Counter()
        for value, count in pairs or ():
            self.counts[value] += int(count)

    def add(self, value: float) -> None:
        self.counts[_round(value)] += 1

    def merge(self, other: Histogram) -> None:
        self.counts.update(other.counts)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def mean(self) -> float:
        count = self.count
        return sum(v * c for v, c in self.counts.items()) / count if count else 0.0

    @property
    def max(self) -> float:
        return max(self.counts, default=0.0)

    def percentile(self, q: float) -> float:
        """The nearest-rank percentile (``q`` in 0..1); 0 when empty."""
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            if seen >= rank:
                return value
        return 0.0

    def pairs(self) -> list[list[float]]:
        return [[value, count] for value, count in sorted(self.counts.items())]


@dataclass
class Figures:
    """Latency (ms) and throughput of a set of requests."""

    requests: int
    failures: int
    seconds: float
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, latency: Histogram, failures: int, seconds: float) -> Figures:
        return cls(latency.count, failures, seconds, latency.percentile(0.5), latency.percentile(0.95),
                   latency.percentile(0.99), latency.max, latency.mean)


@dataclass
class Second:
    """One wall-clock second of the run."""

    latency: Histogram = field(default_factory=Histogram)
    failures: int = 0
    users: int = 0


class Recorder:
    """Client latency per second and per request, and server stage timings per request."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.seconds: dict[int, Second] = defaultdict(Second)
        self.client: dict[str, Histogram] = defaultdict(Histogram)
        self.failures: Counter[str] = Counter()
        self.stages: dict[str, dict[str, Histogram]] = defaultdict(lambda: defaultdict(Histogram))

    def record(self, now: float, name: str, response_ms: float, failed: bool, server_timing: str | None) -> None:
        second = self.seconds[int(now)]
        second.latency.add(response_ms)
        self.client[name].add(response_ms)
        if failed:
            second.failures += 1
            self.failures[name] += 1
        elif server_timing:
            stages = parse_server_timing(server_timing)
            if stages:
                server = sum(stages.values())
                for stage, ms in [*stages.items(), (SERVER, server), (OUTSIDE, max(0.0, response_ms - server))]:
                    self.stages[name][stage].add(ms)

    def set_users(self, now: float, users: int) -> None:
        self.seconds[int(now)].users = users

    # Figures ---------------------------------------------------------------------------------

    def span(self) -> tuple[int, int]:
        """First and last second that saw a request (0, 0 before any)."""
        busy = [s for s, second in self.seconds.items() if second.latency.count]
        return (min(busy), max(busy)) if busy else (0, 0)

    def window(self, start: int, end: int) -> Figures:
        """Figures of the whole seconds ``start`` .. ``end - 1``."""
        latency = Histogram()
        failures = 0
        for s in range(start, end):
            second = self.seconds.get(s)
            if second is not None:
                latency.merge(second.latency)
                failures += second.failures
        return Figures.of(latency, failures, max(0, end - start))

    def total(self) -> Figures:
        first, last = self.span()
        return self.window(first, last + 1) if last else self.window(0, 0)

    def per_request(self) -> dict[str, Figures]:
        first, last = self.span()
        seconds = last - first + 1 if last else 0
        return {name: Figures.of(h, self.failures[name], seconds) for name, h in sorted(self.client.items())}

    # Transport: workers to master, and the run's JSON file ------------------------------------

    def state(self) -> dict:
        return {
            "seconds": [[s, second.latency.pairs(), second.failures, second.users]
                        for s, second in sorted(self.seconds.items())],
            "client": {name: h.pairs() for name, h in self.client.items()},
            "failures": dict(self.failures),
            "stages": {name: {stage: h.pairs() for stage, h in stages.items()} for name, stages in self.stages.items()},
        }

    def drain(self) -> dict:
        """The state gathered since the last drain, then forget it (a worker's report to the master)."""
        state = self.state()
        self.clear()
        return state

    def merge(self, state: dict) -> None:
        for s, pairs, failures, users in state["seconds"]:
            second = self.seconds[s]
            second.latency.merge(Histogram(pairs))
            second.failures += failures
            second.users = max(second.users, users)
        for name, pairs in state["client"].items():
            self.client[name].merge(Histogram(pairs))
        self.failures.update(state["failures"])
        for name, stages in state["stages"].items():
            for stage, pairs in stages.items():
                self.stages[name][stage].merge(Histogram(pairs))

    @classmethod
    def from_state(cls, state: dict) -> Recorder:
        recorder = cls()
        recorder.merge(state)
        return recorder


# One per Locust process: the users, the step shape and the SLO gate share it.
RECORDER = Recorder()
