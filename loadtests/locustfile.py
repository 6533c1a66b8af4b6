"""Locust users for a modelstack deployment, with server stage timings and an SLO gate.

    locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8080 -u 20 -r 20 -t 30s \\
        --csv reports/manual/locust --html reports/manual/locust.html --slo-p95-ms 50
    python -m loadtests.report reports/manual       # plots, report.html, summary table

Each user repeats weighted tasks (``--task-mix``): an image upload to the simple predict
endpoint, Open Inference Protocol calls with JSON and with binary tensors, and page views.
Every answer's ``Server-Timing`` header is recorded, so the report puts the server's stages
next to the latency the client saw. The SLO (``--slo-*``) sets the exit code; the run stops
by itself (``-t``, default 5 minutes; ``--max-requests``); an unreachable or unready host
fails the pre-flight check within ``--preflight-timeout`` seconds. ``-f
loadtests/locustfile.py,loadtests/stepload.py`` adds the step-load shape that finds the knee.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

import gevent
import locust
import requests
from locust import FastHttpUser, events
from locust.runners import MasterRunner, WorkerRunner

# Locust imports this file by path; make the package importable wherever it was started from.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import RESULTS_FILE, payloads  # noqa: E402
from loadtests.options import DEFAULT_MIX, TASK_NAMES, add_options, parse_mix, slo_of  # noqa: E402
from loadtests.recorder import RECORDER  # noqa: E402
from loadtests.slo import Slo, knee  # noqa: E402

logger = logging.getLogger("loadtest")

DEFAULT_RUN_TIME = 300  # seconds, when no -t is given: a forgotten run still ends

events.init_command_line_parser.add_listener(add_options)


# Tasks -----------------------------------------------------------------------------------------

def predict(user: DigitsUser) -> None:
    """A person's photo of a digit, uploaded as a multipart form to the simple endpoint."""
    user.send(f"/api/v1/models/{user.model}/predict", "upload", lambda r: b'"predictions"' in r.content)


def oip_json(user: DigitsUser) -> None:
    """An Open Inference Protocol client sending JSON tensors."""
    user.send(f"/v2/models/{user.model}/infer", "oip-json", lambda r: b'"outputs"' in r.content, "JSON")


def oip_binary(user: DigitsUser) -> None:
    """A Triton-style client sending binary tensors (the binary_tensor_data extension)."""
    user.send(f"/v2/models/{user.model}/infer", "oip-binary",
              lambda r: payloads.HEADER_LENGTH in r.headers, "binary")


def pages(user: DigitsUser) -> None:
    """A visitor opening the home page, then the model's page."""
    user.client.get("/", name="/")
    user.client.get(f"/models/{user.model}", name=f"/models/{user.model}")


TASKS = dict(zip(TASK_NAMES, (predict, oip_json, oip_binary, pages)))


class DigitsUser(FastHttpUser):
    """Someone using the deployment: programs calling the APIs and people opening pages."""

    # Fail fast on a dead server instead of waiting out Locust's 60 s defaults.
    connection_timeout = 5.0
    network_timeout = 30.0
    insecure = False  # check TLS certificates as real clients (and the pre-flight check) do
    tasks = {TASKS[name]: weight for name, weight in parse_mix(DEFAULT_MIX).items()}

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        return random.uniform(options.think_min, max(options.think_min, options.think_max))

    @property
    def model(self) -> str:
        return self.environment.parsed_options.model

    def send(self, path: str, kind: str, looks_right, variant: str = "") -> None:
        body = payloads.pick(kind)
        name = f"{path} [{variant}]" if variant else path
        with self.client.post(path, data=body.data, headers=body.headers, name=name, catch_response=True) as response:
            if response.status_code == 200 and not looks_right(response):
                response.failure(f"200 without the expected answer: {response.content[:200]!r}")


# Run lifecycle -----------------------------------------------------------------------------------

@events.init.add_listener
def _on_init(environment, runner, **_) -> None:
    """Refuse a bad run at once (wrong options, a host that is down or not ready), then make the bodies."""
    options = environment.parsed_options
    if options is None:
        return
    if not isinstance(runner, WorkerRunner):  # workers take their options and host from the master
        try:
            parse_mix(options.task_mix)
        except ValueError as exc:
            _refuse(str(exc))
        if options.headless and not options.run_time:
            options.run_time = DEFAULT_RUN_TIME
            logger.info("no --run-time given: the run stops after %d s", DEFAULT_RUN_TIME)
        _preflight(environment.host, options.model, options.preflight_timeout)
    if not isinstance(runner, MasterRunner):
        payloads.bodies()  # a second or two of encoding, done before the clock of the run starts


def _refuse(message: str) -> NoReturn:
    logger.error(message)
    sys.exit(2)


def _preflight(host: str | None, model: str, timeout: float) -> None:
    if not host:
        _refuse("no host to test: pass --host (-H) URL, e.g. -H http://127.0.0.1:8080")
    url = host.rstrip("/") + "/readyz"
    try:
        response = requests.get(url, timeout=timeout)
    except requests.Timeout:
        _refuse(f"pre-flight: {url} did not answer within {timeout:g} s; is the host right and reachable?")
    except requests.RequestException as exc:
        _refuse(f"pre-flight: cannot reach {url} ({_root_cause(exc)}); is the server running and the host right?")
    if response.status_code == 503:
        _refuse(f"pre-flight: {url} answered 503: the server is up but not ready (models still loading?)")
    if response.status_code != 200:
        _refuse(f"pre-flight: {url} answered {response.status_code}; is {host} the root URL of a modelstack deployment?")
    try:
        served = response.json().get("models", {})
    except (ValueError, AttributeError):
        _refuse(f"pre-flight: {url} did not answer modelstack's JSON; is this a modelstack deployment?")
    if model not in served:
        _refuse(f"pre-flight: {host} does not serve model '{model}' (it serves: {', '.join(served) or 'nothing'})")
    logger.info("pre-flight: %s is ready and serves %s", host, model)


def _root_cause(exc: BaseException) -> str:
    """'Connection refused' rather than three layers of requests and urllib3 wrapping."""
    while True:
        reason = getattr(exc, "reason", None)
        inner = reason if isinstance(reason, BaseException) else exc.__cause__ or exc.__context__
        if inner is None:
            return getattr(exc, "strerror", None) or str(exc)
        exc = inner


@events.test_start.add_listener
def _on_test_start(environment, **_) -> None:
    options = environment.parsed_options
    # Applied here, not at init: workers receive the master's options just before this event.
    DigitsUser.tasks = [TASKS[name] for name, weight in parse_mix(options.task_mix).items() for _ in range(weight)]
    if not isinstance(environment.runner, WorkerRunner):
        environment.runner.greenlet.spawn(_watch, environment)


def _watch(environment) -> None:
    """Once a second: note the user count for the report, and stop at --max-requests."""
    runner = environment.runner
    limit = environment.parsed_options.max_requests
    while True:
        RECORDER.set_users(time.time(), runner.user_count)
        if runner.stats.total.num_requests >= limit:
            logger.info("--max-requests %d reached, stopping", limit)
            gevent.spawn(runner.quit)
            return
        gevent.sleep(1)


@events.request.add_listener
def _on_request(request_type, name, response_time, response=None, exception=None, **_) -> None:
    headers = getattr(response, "headers", None)
    RECORDER.record(time.time(), f"{request_type} {name}", response_time, exception is not None,
                    headers.get("Server-Timing") if headers else None)


@events.report_to_master.add_listener
def _on_report_to_master(data, **_) -> None:
    data["modelstack"] = RECORDER.drain()


@events.worker_report.add_listener
def _on_worker_report(data, **_) -> None:
    if "modelstack" in data:
        RECORDER.merge(data["modelstack"])


@events.quitting.add_listener
def _on_quitting(environment, **_) -> None:
    """The SLO gate: the exit code says whether the run met it; the results go next to the CSVs."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    slo = slo_of(options)
    steps = getattr(environment.shape_class, "steps", None)
    total = RECORDER.total()
    if total.requests == 0:
        logger.error("no request completed: nothing to judge")
    if steps is None:
        for verdict in slo.check(total):
            logger.info("SLO %s", verdict)
        passed = slo.met(total)
    else:
        passed = knee(steps) is not None
    environment.process_exit_code = 0 if passed else 1
    if options.csv_prefix:
        _save(Path(options.csv_prefix).parent, environment, slo, steps, passed)


def _save(folder: Path, environment, slo: Slo, steps, passed: bool) -> None:
    options = environment.parsed_options
    first, last = RECORDER.span()
    results = {
        "host": environment.host,
        "locust_version": locust.__version__,
        "distributed": isinstance(environment.runner, MasterRunner),
        "started": datetime.fromtimestamp(first, timezone.utc).isoformat() if first else None,
        "finished": datetime.fromtimestamp(last + 1, timezone.utc).isoformat() if last else None,
        "options": {key: getattr(options, key) for key in (
            "model", "task_mix", "think_min", "think_max", "num_users", "run_time", "max_requests")},
        "slo": asdict(slo),
        "steps": None if steps is None else [step.as_dict() for step in steps],
        "passed": passed,
        "recorder": RECORDER.state(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULTS_FILE).write_text(json.dumps(results))
