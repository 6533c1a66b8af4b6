"""The stack's life and failure modes with real nginx and real uWSGI workers on loopback.

Rolling reloads, killed and hung workers, graceful stops and the background
commands. Each test starts the stack it breaks; the figures a person would want
(reload and respawn times) are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
import requests

from .onnx_models import linear_classifier
from .slow_model import SLOW_INFER
from .stackrunner import ROOT, STACK, RunningStack, free_port, start_stack

DIGITS = ROOT / "models" / "digits"
PREDICT = "/api/v1/models/digits/predict"
# -- stacks and load -------------------------------------------------------------


@pytest.fixture
def stacks(tmp_path):
    """Start stacks with ``stacks(**env)``; whatever a test leaves running is stopped after it."""
    started: list[RunningStack] = []

    def start(**env: str) -> RunningStack:
        running = start_stack(tmp_path / f"run{len(started)}", **env)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


class Load:
    """Threads posting a digit to the image endpoint back to back, recording every answer."""

    def __init__(self, stack: RunningStack, png: bytes, threads: int = 3):
        self.stack, self.png = stack, png
        self.answers: list[tuple[float, float, int | str, dict]] = []  # start, end, status or error, body
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stopping.is_set():
                start = time.monotonic()
                try:
                    response = session.post(self.stack.url + PREDICT, files={"file": ("3.png", self.png)}, timeout=30)
                    outcome, body = response.status_code, response.json()
                except (requests.RequestException, ValueError) as exc:
                    outcome, body = type(exc).__name__, {}
                with self.lock:
                    self.answers.append((start, time.monotonic(), outcome, body))

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        self.wait_for(10)
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(35)

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Until ``count`` more requests were answered."""
        target = len(self.answers) + count
        deadline = time.monotonic() + timeout
        while len(self.answers) < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.answers) >= target, f"only {len(self.answers)} answers within {timeout} s"

    def failures(self) -> list[tuple]:
        return [answer for answer in self.answers if answer[2] != 200]


def stack_processes(stack: RunningStack) -> list[psutil.Process]:
    """The uWSGI master and workers, the nginx master and workers."""
    masters = [psutil.Process(stack.master_pid()), psutil.Process(int((stack.run_dir / "nginx.pid").read_text()))]
    return masters + [child for master in masters for child in master.children()]


def assert_all_gone(processes: list[psutil.Process], stack: RunningStack) -> None:
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, f"still running: {[p.pid for p in alive]}"
    for leftover in ("uwsgi.sock", "uwsgi-stats.sock", "uwsgi.pid", "nginx.pid"):
        assert not (stack.run_dir / leftover).exists(), leftover
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.url + "/healthz", timeout=5)


def worker(stack: RunningStack, worker_id: int) -> dict:
    return next(w for w in stack.uwsgi_stats()["workers"] if w["id"] == worker_id)


# -- reload and respawn --------------------------------------------------------------


def test_rolling_reload_under_load_fails_no_request_and_serves_a_new_model_version(stacks, tmp_path, three_png):
    repository = tmp_path / "repository"
    shutil.copytree(DIGITS, repository / "digits")
    stack = stacks(MODEL_REPOSITORY=str(repository))
    before = set(stack.worker_pids())

    # Version 2 answers "7" whatever the image, so every answer tells which version served it.
    bias = np.zeros(10)
    bias[7] = 4.0
    version_2 = linear_classifier([None, 64], np.zeros((64, 10)), bias, output_name="probabilities", softmax=True)
    (repository / "digits" / "2").mkdir()
    onnx.save(version_2, repository / "digits" / "2" / "model.onnx")

    with Load(stack, three_png) as load:
        start = time.monotonic()
        result = stack.command("reload", timeout=120)
        reload_seconds = time.monotonic() - start
        load.wait_for(30)
    assert result.returncode == 0, result.stdout + result.stderr

    answered = len(load.answers)
    assert load.failures() == [], f"{len(load.failures())} of {answered} requests failed during the reload"
    assert set(stack.worker_pids()).isdisjoint(before), "every worker was replaced"
    during = [a for a in load.answers if start <= a[0] <= start + reload_seconds]
    assert during, "requests kept arriving throughout the reload"

    metadata = stack.get("/v2/models/digits").json()
    assert metadata["versions"] == ["1", "2"]
    latest = stack.post(PREDICT, files={"file": ("3.png", three_png)}).json()
    assert latest["version"] == "2" and latest["predictions"][0]["label"] == "7"
    pinned = stack.post("/api/v1/models/digits/versions/1/predict", files={"file": ("3.png", three_png)}).json()
    assert pinned["predictions"][0]["label"] == "3"
    served_by = {a[3]["version"] for a in load.answers}
    assert served_by == {"1", "2"}
    print(f"\nrolling reload of 2 workers under 3 busy clients: {reload_seconds:.2f} s "
          f"({result.stdout.strip()}); {answered} requests, {len(during)} during the reload, 0 failed")


def test_a_killed_worker_is_respawned_while_the_service_keeps_answering(stacks, three_png):
    stack = stacks()
    with Load(stack, three_png) as load:
        victim = worker(stack, 1)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        respawned = ready = None
        deadline = killed_at + 30
        while ready is None and time.monotonic() < deadline:
            current = worker(stack, 1)
            if current["pid"] not in (0, victim["pid"]):
                respawned = respawned or time.monotonic() - killed_at
                if current["accepting"]:
                    ready = time.monotonic() - killed_at
            time.sleep(0.01)
        load.wait_for(50)
    assert respawned is not None and ready is not None, "the master respawned worker 1 within 30 s"
    replacement = worker(stack, 1)
    assert replacement["pid"] != victim["pid"] and replacement["respawn_count"] == victim["respawn_count"] + 1

    failures = load.failures()
    # At most the one request the killed worker was running; nginx answers it with a JSON 502.
    assert len(failures) <= 1, failures
    for _, _, status, body in failures:
        assert status == 502 and "error" in body
    after = [a for a in load.answers if a[0] > killed_at + ready]
    assert len(after) >= 40 and all(a[2] == 200 for a in after)
    assert replacement["requests"] > 0, "the new worker serves requests"
    print(f"\nSIGKILLed worker: new pid after {respawned * 1000:.0f} ms, accepting after {ready * 1000:.0f} ms; "
          f"{len(load.answers)} requests, {len(failures)} failed")


# -- hung models and graceful stops ------------------------------------------------------


def test_harakiri_cuts_a_hung_model_and_nginx_answers_json_while_the_other_worker_serves(stacks, slow_model, three_png):
    harakiri = 3
    stack = stacks(MODEL_REPOSITORY=str(slow_model.repository), HARAKIRI=str(harakiri))
    answer: dict = {}

    def hang() -> None:
        start = time.monotonic()
        # A minute of compute, far past harakiri and nginx's read timeout (harakiri + 10 s), in a
        # 1 MB body: uWSGI's post-buffering would add a harakiri period per chunk of body it read.
        body = json.dumps(slow_model.request(60)) + " " * 2**20
        response = requests.post(stack.url + SLOW_INFER, data=body, headers={"Content-Type": "application/json"},
                                 timeout=60)
        answer.update(seconds=time.monotonic() - start, response=response)

    hung = threading.Thread(target=hang)
    hung.start()
    others = []
    while hung.is_alive():
        others.append(stack.post(PREDICT, files={"file": ("3.png", three_png)}, timeout=10))
        time.sleep(0.05)
    hung.join()

    response = answer["response"]
    assert response.status_code == 502, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert f"{harakiri} s" in response.json()["error"]
    # Cut by harakiri (checked once a second), long before nginx's own timeout.
    assert answer["seconds"] < harakiri + 3
    assert len(others) > 10 and all(r.status_code == 200 and r.json()["predictions"][0]["label"] == "3" for r in others)
    assert "HARAKIRI ON WORKER" in stack.uwsgi_log()
    # The master replaces the killed worker.
    deadline = time.monotonic() + 30
    while not all(w["accepting"] for w in stack.uwsgi_stats()["workers"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = stack.uwsgi_stats()["workers"]
    assert all(w["accepting"] for w in workers) and sum(w["harakiri_count"] for w in workers) == 1
    assert stack.post(PREDICT, files={"file": ("3.png", three_png)}).status_code == 200
    print(f"\nhung model cut by harakiri={harakiri}: JSON 502 after {answer['seconds']:.1f} s; "
          f"{len(others)} digits requests answered meanwhile")


def test_sigterm_finishes_in_flight_requests_then_everything_exits(stacks, slow_model):
    stack = stacks(MODEL_REPOSITORY=str(slow_model.repository))
    processes = stack_processes(stack)
    results: list = []

    def slow_request() -> None:
        try:
            results.append(requests.post(stack.url + SLOW_INFER, json=slow_model.request(1.5), timeout=60).status_code)
        except requests.RequestException as exc:
            results.append(type(exc).__name__)

    # Four requests, two workers: two run while two wait in uWSGI's queue.
    clients = [threading.Thread(target=slow_request) for _ in range(4)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 10
    while sum(w["status"] == "busy" for w in stack.uwsgi_stats()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    start = time.monotonic()
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(60) == 0
    stopped = time.monotonic() - start
    for client in clients:
        client.join(10)

    assert results == [200] * 4
    assert_all_gone(processes, stack)
    print(f"\nSIGTERM with 4 slow requests in flight: all answered 200, stopped in {stopped:.1f} s")


def test_sigterm_just_after_a_worker_respawn_still_stops_promptly(stacks):
    # uWSGI 2.0.31 loses the graceful stop on a worker still loading the app, and its master then
    # waits for ever; the launcher repeats the stop to the workers until they are gone.
    stack = stacks()
    processes = stack_processes(stack)
    victim = worker(stack, 1)
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while worker(stack, 1)["pid"] in (0, victim["pid"]) and time.monotonic() < deadline:
        time.sleep(0.005)
    start = time.monotonic()
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(60) == 0
    stopped = time.monotonic() - start
    # Without the repeat: worker-reload-mercy (30 s) + 5 s, then SIGKILL.
    assert stopped < 15
    assert_all_gone(processes, stack)


def test_ctrl_c_stops_the_foreground_stack_cleanly(stacks):
    stack = stacks()
    processes = stack_processes(stack)
    # A terminal's Ctrl-C signals the whole foreground process group.
    os.killpg(stack.process.pid, signal.SIGINT)
    assert stack.process.wait(60) == 0
    assert_all_gone(processes, stack)


def test_start_status_stop_in_the_background(tmp_path):
    run_dir = tmp_path / "run"
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    env = {**os.environ, "RUN_DIR": str(run_dir), "PORT": str(free_port()), "WORKERS": "2", "NGINX_WORKERS": "1",
           # Above the kernel's limit, which would make uWSGI refuse to start: the launcher caps it.
           "LISTEN_BACKLOG": str(somaxconn * 10)}

    # Only `start` is told the settings; the other commands find them in the run directory,
    # as `PORT=9000 make start` then a plain `make reload` must.
    only_run_dir = {k: v for k, v in env.items() if k not in ("PORT", "WORKERS", "NGINX_WORKERS", "LISTEN_BACKLOG")}

    def stack_py(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(STACK), command], env=env if command == "start" else only_run_dir,
                              capture_output=True, text=True, timeout=180)

    started = stack_py("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int((run_dir / "stack.pid").read_text())
        assert psutil.pid_exists(pid)
        assert f"listen backlog is limited to {somaxconn} connections" in (run_dir / "logs" / "uwsgi.log").read_text()

        status = stack_py("status")
        assert status.returncode == 0 and "ready" in status.stdout
        assert re.findall(r"worker \d: pid \d+", status.stdout) and f"/{somaxconn}" in status.stdout
        again = stack_py("start")
        assert again.returncode == 0 and f"already running (pid {pid})" in again.stdout
        reloaded = stack_py("reload")
        assert reloaded.returncode == 0 and "reloaded 2 workers" in reloaded.stdout, reloaded.stdout + reloaded.stderr
        assert requests.get(f"http://127.0.0.1:{env['PORT']}/readyz", timeout=10).status_code == 200
    finally:
        stopped = stack_py("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not psutil.pid_exists(pid)
    assert not any((run_dir / name).exists() for name in ("stack.pid", "uwsgi.pid", "nginx.pid", "uwsgi.sock"))

    after = stack_py("status")
    assert after.returncode == 1 and "not answering" in after.stdout
    assert "not running" in stack_py("stop").stdout
