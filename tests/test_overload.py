"""Overload fails fast: the real stack flooded on loopback far beyond what it can hold.

One uWSGI worker with a listen queue of four serves a test model that computes for a
chosen time per request; many more clients than that post to it back to back. Once the
worker is busy and the queue is full, connect() on the unix socket fails at once and
nginx answers a JSON 503 with Retry-After, so answered requests wait at most a queue's
worth of work and none waits out a timeout. A worker that dies mid-request still gets a
502 without Retry-After: retrying that request would not help. The flood's p99 and the
recovery time are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import requests

from .stackrunner import RunningStack, start_stack
from .slow_model import SLOW_INFER

WORKERS = 1
BACKLOG = 4
SERVICE = 0.2  # seconds of model compute per flood request
HARAKIRI = 5
TIMEOUT = HARAKIRI + 10  # nginx's read timeout: the longest any request may wait for an answer
CLIENTS = 16  # far more than the WORKERS + BACKLOG + 1 requests the stack holds
FLOOD_SECONDS = 6
STREAK = 3  # consecutive 200s that count as recovered


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory, slow_model) -> RunningStack:
    running = start_stack(
        tmp_path_factory.mktemp("overload") / "run", WORKERS=WORKERS, LISTEN_BACKLOG=BACKLOG,
        HARAKIRI=HARAKIRI, MODEL_REPOSITORY=slow_model.repository,
    )
    yield running
    running.stop()


class Answer:
    """One request as the client saw it."""

    def __init__(self, start: float, response: requests.Response | None, error: str = ""):
        self.start, self.end = start, time.monotonic()
        self.response, self.error = response, error

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def status(self) -> int | str:
        return self.response.status_code if self.response is not None else self.error

    def worker_seconds(self) -> float:
        """The worker's own time (Server-Timing's stages but the wait in the queue)."""
        stages = dict(part.strip().split(";dur=") for part in self.response.headers["Server-Timing"].split(","))
        return sum(float(ms) for name, ms in stages.items() if name != "queue") / 1000


def post(session: requests.Session, url: str, **kwargs) -> Answer:
    start = time.monotonic()
    try:
        # Well past nginx's timeout: a request that hangs shows up as an error, not a wait.
        return Answer(start, session.post(url, timeout=TIMEOUT + 15, **kwargs))
    except requests.RequestException as exc:
        return Answer(start, None, type(exc).__name__)


def flood(stack: RunningStack, body: bytes, stopping: threading.Event, answers: list[Answer]) -> None:
    """Post back to back, retrying at once after a 503, until ``stopping`` is set."""
    with requests.Session() as session:
        while not stopping.is_set():
            answers.append(post(session, stack.url + SLOW_INFER, data=body,
                                headers={"Content-Type": "application/json"}))


def wait_idle(stack: RunningStack, timeout: float = 30) -> dict[int, tuple[int, int]]:
    """Until every worker is up (respawned, app loaded) and idle; then each one's respawns and harakiris."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = stack.uwsgi_stats()["workers"]
        if all(w["accepting"] and w["status"] == "idle" for w in workers):
            return {w["id"]: (w["respawn_count"], w["harakiri_count"]) for w in workers}
        time.sleep(0.05)
    raise TimeoutError(f"workers not idle after {timeout} s: {workers}")


def test_a_flood_gets_quick_json_503s_bounded_latency_and_the_stack_recovers_at_once(
        small_stack, slow_model, three_png):
    stack = small_stack
    workers_before = wait_idle(stack)
    body = json.dumps(slow_model.request(SERVICE)).encode()
    answers: list[Answer] = []  # list.append is atomic: the threads share it without a lock
    stopping = threading.Event()
    clients = [threading.Thread(target=flood, args=(stack, body, stopping, answers)) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    # The upload form, posted during the flood, gets nginx's page rather than JSON.
    time.sleep(1)
    with requests.Session() as session:
        form = [post(session, stack.url + "/predict", files={"file": ("3.png", three_png)}) for _ in range(5)]
    time.sleep(FLOOD_SECONDS - 1)
    stopping.set()
    flood_end = time.monotonic()

    # Recovery: a client probes (a polite 50 ms apart after a 503) until STREAK answers in a row are 200.
    probes: list[Answer] = []
    with requests.Session() as session:
        while len(probes) < STREAK or any(a.status != 200 for a in probes[-STREAK:]):
            assert time.monotonic() - flood_end < TIMEOUT, f"not recovered: {[a.status for a in probes]}"
            probes.append(post(session, stack.url + SLOW_INFER, data=body,
                               headers={"Content-Type": "application/json"}))
            if probes[-1].status != 200:
                time.sleep(0.05)
    recovery = probes[-STREAK].end - flood_end
    for client in clients:
        client.join(TIMEOUT + 20)

    statuses = [a.status for a in answers]
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 503]
    # Nothing but answers and quick refusals: no 502/504, no client timeout, no reset.
    assert set(statuses) == {200, 503}, sorted(set(map(str, statuses)))
    assert len(ok) >= 5 and len(refused) > 10 * len(ok), f"{len(ok)} answered, {len(refused)} refused"
    assert max(a.seconds for a in answers) < TIMEOUT, "a request waited out nginx's timeout"
    for answer in refused:
        response = answer.response
        assert answer.seconds < 1, f"a 503 took {answer.seconds:.2f} s"
        assert response.headers["Content-Type"] == "application/json"
        assert "overloaded" in response.json()["error"]
        assert int(response.headers["Retry-After"]) >= 1
    assert all(a.response.json()["model_name"] == "slow" for a in ok)
    # They are nginx's: uWSGI's queue was full, so connect() failed at once.
    assert "(11: Resource temporarily unavailable) while connecting to upstream" in (
        stack.run_dir / "logs" / "nginx-error.log").read_text()
    refused_forms = [a.response for a in form if a.status == 503]
    assert refused_forms, f"the form got {[a.status for a in form]} during the flood"
    for response in refused_forms:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "overloaded" in response.text and int(response.headers["Retry-After"]) >= 1

    # An answered request waited behind at most the one in service and a full queue
    # (Linux lets a unix socket queue BACKLOG + 1), then took its own turn: bounded by
    # the configuration and the worker's time per request, however long the flood.
    latencies = np.array([a.seconds for a in ok])
    service = float(np.median([a.worker_seconds() for a in ok]))
    p99 = float(np.percentile(latencies, 99))
    bound = ((BACKLOG + 1) / WORKERS + 2) * service * 1.5
    assert p99 < bound, f"p99 {p99:.2f} s of answered requests; bound {bound:.2f} s"
    # Recovered once the queue drained: the first probe with room in it waited the same bound.
    assert recovery < bound, f"recovered {recovery:.1f} s after the flood; bound {bound:.2f} s"
    # Overload broke nothing: no worker was killed or respawned, the queue drained.
    assert wait_idle(stack) == workers_before
    assert stack.uwsgi_stats()["listen_queue"] == 0
    print(f"\nflood: {CLIENTS} clients for {FLOOD_SECONDS} s at {WORKERS} worker, backlog {BACKLOG}, "
          f"{service * 1000:.0f} ms per request: {len(ok)} answered (p50 {np.median(latencies):.2f} s, "
          f"p99 {p99:.2f} s, max {latencies.max():.2f} s; bound {bound:.2f} s), {len(refused)} refused with 503 "
          f"(max {max(a.seconds for a in refused) * 1000:.0f} ms); recovered (first of {STREAK} 200s in a row) "
          f"{recovery:.2f} s after the flood")


def test_a_worker_dying_mid_request_is_a_502_without_retry_after(small_stack, slow_model):
    stack = small_stack
    wait_idle(stack)
    answer: list[Answer] = []

    def send() -> None:
        with requests.Session() as session:
            # Well under harakiri: only the kill ends it.
            answer.append(post(session, stack.url + SLOW_INFER, json=slow_model.request(HARAKIRI - 2)))

    request = threading.Thread(target=send)
    request.start()
    deadline = time.monotonic() + 10
    while not (busy := [w["pid"] for w in stack.uwsgi_stats()["workers"] if w["status"] == "busy"]):
        assert time.monotonic() < deadline, "the request never reached a worker"
        time.sleep(0.02)
    os.kill(busy[0], signal.SIGKILL)
    request.join(TIMEOUT + 20)

    response = answer[0].response
    assert response.status_code == 502, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert "no answer" in response.json()["error"]
    assert "Retry-After" not in response.headers
    wait_idle(stack)
    assert stack.post(SLOW_INFER, json=slow_model.request(0.01)).status_code == 200
