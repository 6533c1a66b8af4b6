"""Per-request stage timings, shown on result pages, in Server-Timing and in metrics."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Stages:
    """Seconds spent per named stage of one request, in the order first seen."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value (durations in milliseconds)."""
        return ", ".join(f"{name};dur={value * 1000:.3f}" for name, value in self.seconds.items())
