"""A seconds-long smoke of the benchmark harness (issue 7): it measures and reports, end to end.

Speed is never asserted here: benchmarks print figures. This checks that the harness
drives the real stack and the in-process baseline with wrk and writes a sane report.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .digits import held_out_digits
from .stackrunner import ROOT


@pytest.mark.slow
def test_bench_harness_measures_and_reports(tmp_path):
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--systems", "raw,stack", "--workloads", "healthz,digits-image",
         "--rounds", "1", "--seconds", "1", "--warmup", "0", "--paced-share", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    measured = {(m["workload"], m["system"]): m for m in results["measurements"]}
    assert set(measured) == {("healthz", "stack"), ("digits-image", "stack"), ("digits-image", "raw")}
    for (workload, system), m in measured.items():
        assert m["rate"] > 0 and m["requests"] > 0, (workload, system)
        assert m["errors"] == 0, f"{system} on {workload}: wrk counted {m['errors']} errors"
        assert 0 < m["p50_ms"] <= m["p99_ms"], (workload, system)
        assert m["server_cpu_s"] > 0, (workload, system)
    # wrk's own CPU is measured for HTTP systems; the in-process pool has no client.
    assert measured[("healthz", "stack")]["client_cpu_s"] > 0
    assert measured[("digits-image", "raw")]["client_cpu_s"] == 0
    # Both systems classified the uploaded digit, and correctly.
    assert results["answers"]["digits-image"] == str(held_out_digits()[0][1])

    report = (out / "report.md").read_text()
    assert "| stack: image upload / its own /healthz |" in report
    assert "| raw |" in report and "| stack |" in report
    assert "<table>" in (out / "report.html").read_text()
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
