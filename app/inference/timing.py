"""Per-request stage timings, shown on result pages, in Server-Timing, logs and metrics."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


# nginx stamps X-Request-Start with $msec: epoch seconds truncated to the millisecond.
STAMP_RESOLUTION = 0.001


def queue_seconds(x_request_start: str | None, now: float) -> float | None:
    """Seconds from nginx handing the request on (``X-Request-Start: t=<epoch s>``) until ``now``.

    The true stamp lies anywhere in the millisecond nginx truncated it to, so the
    middle of that millisecond is the unbiased estimate. None without a plausible
    stamp: no nginx in front, or clocks more than a second apart.
    """
    if not x_request_start or not x_request_start.startswith("t="):
        return None
    try:
        waited = now - float(x_request_start[2:]) - STAMP_RESOLUTION / 2
    except ValueError:
        return None
    if not -1.0 < waited < 3600.0:  # also rejects nan and inf
        return None
    return max(waited, 0.0)


class Stages:
    """Seconds spent per named stage of one request, in the order first seen."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        # Inputs per model execution: one entry per ONNX Runtime call.
        self.batch_sizes: list[int] = []

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def complete(self, worker_seconds: float, queue: float | None) -> None:
        """Add the wait before the worker (``queue``) and the worker time no stage measured
        (``other``: routing, reading the body, building the response), so the stages add up
        to the request's whole time on the server."""
        measured = sum(self.seconds.values())
        if queue is not None:
            self.add("queue", queue)
        self.add("other", max(worker_seconds - measured, 0.0))

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value (durations in milliseconds)."""
        return ", ".join(f"{name};dur={value * 1000:.3f}" for name, value in self.seconds.items())
