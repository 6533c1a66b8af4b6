"""Reading the stack's metrics and timings, and sending it real inference requests (observability tests)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import requests
from prometheus_client.parser import text_string_to_metric_families

from .digits import digit_png, held_out_digits

PREDICT = "/api/v1/models/digits/predict"
INFER = "/v2/models/digits/infer"
DIGITS = held_out_digits()


def infer_body(index: int = 0, batch: int = 1) -> bytes:
    """An Open Inference Protocol request: ``batch`` held-out digits as FP32 [batch, 64]."""
    rows = [DIGITS[(index + i) % len(DIGITS)][0] / 16 for i in range(batch)]
    return json.dumps({"inputs": [{
        "name": "input", "shape": [batch, 64], "datatype": "FP32",
        "data": [float(v) for row in rows for v in row],
    }]}).encode()


def png(index: int = 0, size: int = 64) -> bytes:
    return digit_png(DIGITS[index % len(DIGITS)][0], size=size)


Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def server_timing(header: str) -> dict[str, float]:
    """``Server-Timing`` as seconds per stage."""
    stages = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, duration = part.partition(";dur=")
        stages[name] = float(duration) / 1000
    return stages


def in_parallel(url: str, calls: list[Callable[[requests.Session, str], requests.Response]],
                threads: int) -> list[requests.Response]:
    """Run ``calls`` from ``threads`` clients, each with its own keep-alive connection."""
    local = threading.local()

    def run(call):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return call(local.session, url)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, calls))


def predict(index: int) -> Callable[[requests.Session, str], requests.Response]:
    return lambda session, url: session.post(url + PREDICT, files={"file": ("d.png", png(index))}, timeout=30)


def infer(index: int, batch: int = 1) -> Callable[[requests.Session, str], requests.Response]:
    body = infer_body(index, batch)
    return lambda session, url: session.post(
        url + INFER, data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
