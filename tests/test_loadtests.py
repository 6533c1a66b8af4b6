"""Load tests (loadtests/): real Locust runs against the real stack on loopback.

Every run goes through ``python -m loadtests.run``, the command ``make loadtest`` calls, and is
judged by what a user reads: the exit code, the printed summary and the report folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtests.options import TASK_NAMES, parse_mix
from loadtests.recorder import OUTSIDE, SERVER, Histogram, Recorder, parse_server_timing
from loadtests.slo import Slo, Step, knee

from .stackrunner import ROOT, free_port

PLOTS = ["latency.png", "throughput.png", "stages.png", "breakdown.png", "errors.png"]
GENEROUS = ["--slo-p95-ms", "5000", "--slo-p99-ms", "10000"]


def loadtest(reports: Path, *args: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--reports", str(reports), "--only-summary", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    return result, time.monotonic() - start


def only_folder(reports: Path) -> Path:
    folders = list(reports.iterdir())
    assert len(folders) == 1, folders
    return folders[0]


@pytest.mark.slow
def test_short_run_meets_a_generous_slo_with_zero_failures_and_writes_the_report(stack, tmp_path):
    result, _ = loadtest(tmp_path, "--host", stack.url, "--users", "8", "--duration", "12s",
                         *GENEROUS, "--slo-max-failure-ratio", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = only_folder(tmp_path)

    for name in ["locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "locust.html",
                 "report.html", *PLOTS]:
        assert (folder / name).stat().st_size > 0, name
    for plot in PLOTS:
        assert (folder / plot).read_bytes().startswith(b"\x89PNG"), plot
    page = (folder / "report.html").read_text()
    assert all(f"src='{plot}'" in page for plot in PLOTS)
    assert "http://" not in page.replace(stack.url, "") and "<script" not in page  # works offline

    results = json.loads((folder / "loadtest.json").read_text())
    recorder = Recorder.from_state(results["recorder"])
    per_request = recorder.per_request()
    # Every kind of user action ran, and none failed.
    assert set(per_request) == {
        "GET /", "GET /models/digits", "POST /api/v1/models/digits/predict",
        "POST /v2/models/digits/infer [JSON]", "POST /v2/models/digits/infer [binary]",
    }
    assert all(fig.requests > 0 and fig.failures == 0 for fig in per_request.values())
    # Our histograms saw exactly the requests Locust counted.
    locust_total = sum(entry["num_requests"] for entry in json.loads((folder / "locust.json").read_text()))
    assert recorder.total().requests == locust_total
    # The server's own stages came back for inference, and sit beside the client's latency.
    stages = recorder.stages["POST /v2/models/digits/infer [binary]"]
    assert {"decode", "inference", SERVER, OUTSIDE} <= set(stages)
    assert stages[SERVER].percentile(0.5) < recorder.client["POST /v2/models/digits/infer [binary]"].percentile(0.5)

    assert "## Load test of" in result.stdout and ": PASS" in result.stdout
    assert "| request | requests | failures | req/s | p50 ms | p95 ms |" in result.stdout
    assert "SLO p95" in result.stdout and "pass" in result.stdout


@pytest.mark.slow
def test_impossible_slo_fails_the_run(stack, tmp_path):
    result, _ = loadtest(tmp_path, "--host", stack.url, "--users", "2", "--duration", "4s", "--slo-p95-ms", "0.001")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SLO p95" in result.stdout and "FAIL" in result.stdout
    assert (only_folder(tmp_path) / "report.html").exists()  # a failed gate still leaves its report


def test_wrong_host_fails_fast_with_a_clear_message(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    result, seconds = loadtest(tmp_path, "--host", closed, "--users", "2", "--duration", "30s", timeout=60)
    assert result.returncode == 2
    assert f"pre-flight: cannot reach {closed}/readyz" in result.stderr
    assert seconds < 15, f"took {seconds:.1f} s to give up"
    assert not list(tmp_path.iterdir())  # no empty report folder left behind


def test_bad_task_mix_is_refused_before_any_request(tmp_path):
    result, _ = loadtest(tmp_path, "--host", f"http://127.0.0.1:{free_port()}", "--task-mix", "predict=2,upload=1")
    assert result.returncode == 2
    assert "--task-mix: unknown task 'upload'" in result.stderr


@pytest.mark.slow
def test_step_load_raises_users_and_reports_the_knee(stack, tmp_path):
    result, seconds = loadtest(tmp_path, "--host", stack.url, "--step", "--users", "12", "--duration", "60s",
                               "--step-users", "4", "--step-time", "3", "--think-min", "0", "--think-max", "0",
                               *GENEROUS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [Step(**s) for s in json.loads((only_folder(tmp_path) / "loadtest.json").read_text())["steps"]]
    # A generous SLO holds, so the shape climbs to --users and stops there by itself.
    assert [s.users for s in steps] == [4, 8, 12]
    assert all(s.within_slo and s.requests > 0 for s in steps)
    best = knee(steps)
    assert f"Capacity knee: {best.rps:.0f} req/s at {best.users} users" in result.stdout
    assert seconds < 40


@pytest.mark.slow
def test_step_load_without_any_step_within_the_slo_has_no_knee(stack, tmp_path):
    result, _ = loadtest(tmp_path, "--host", stack.url, "--step", "--users", "12", "--duration", "60s",
                         "--step-users", "4", "--step-time", "3", "--slo-p95-ms", "0.001")
    assert result.returncode == 1
    assert "even 4 users broke the SLO" in result.stdout


# The pieces the runs above rely on --------------------------------------------------------------

def test_server_timing_is_parsed_whatever_the_stage_names():
    assert parse_server_timing("queue;dur=0.7, decode;dur=0.12;desc=\"json\", cache;desc=hit, inference;dur=0.05") == {
        "queue": 0.7, "decode": 0.12, "inference": 0.05}
    assert parse_server_timing("broken;dur=abc, ;dur=1, total;dur=\"2.5\"") == {"total": 2.5}


def test_histogram_percentiles_keep_three_significant_digits():
    hist = Histogram()
    for value in [0.1234, 0.1236, 5.0, 12.34, 1000.4]:
        hist.add(value)
    assert hist.percentile(0.2) == 0.123
    assert hist.percentile(0.5) == 5.0
    assert hist.percentile(0.95) == 1000.0
    assert hist.count == 5


def test_recorder_state_survives_the_trip_from_worker_to_master():
    worker = Recorder()
    worker.record(100.2, "POST /infer", 2.0, False, "decode;dur=0.5, inference;dur=0.25")
    worker.record(100.7, "POST /infer", 9.0, True, None)
    master = Recorder()
    master.set_users(100.1, 4)
    master.merge(json.loads(json.dumps(worker.drain())))
    assert worker.total().requests == 0
    fig = master.window(100, 101)
    assert (fig.requests, fig.failures, master.seconds[100].users) == (2, 1, 4)
    assert master.stages["POST /infer"][SERVER].percentile(0.5) == 0.75
    assert master.stages["POST /infer"][OUTSIDE].percentile(0.5) == 1.25


def test_knee_is_the_busiest_step_within_the_slo():
    slo = Slo(p95_ms=10, p99_ms=1, max_failure_ratio=0.01)  # p99 is reported per step, not gated

    def step(users, rps, p95, failures=0.0):
        return Step(users, rps, p95, 50, failures, 100, p95 <= slo.p95_ms and failures <= slo.max_failure_ratio)

    assert knee([step(2, 300, 4), step(4, 520, 8), step(6, 510, 9), step(8, 530, 14)]).users == 4
    assert knee([step(2, 300, 4), step(4, 600, 5, failures=0.05)]).users == 2
    assert knee([step(2, 300, 12)]) is None


def test_task_mix_names_every_task_and_rejects_nonsense():
    assert parse_mix("predict=3, pages=0") == {"predict": 3, "pages": 0}
    assert set(parse_mix("predict=1,oip-json=1,oip-binary=1,pages=1")) == set(TASK_NAMES)
    for bad, message in [("predict=-1", "whole number"), ("pages=0", "at least one"), ("ping=1", "unknown task")]:
        with pytest.raises(ValueError, match=message):
            parse_mix(bad)
