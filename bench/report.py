"""The benchmark report: results.json, report.md, report.html and bench.png in one folder."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

from app.settings import available_cpus

from .loadgen import Measurement
from .systems import SYSTEMS as SERVER_SYSTEMS

SYSTEMS = {"raw": "ONNX Runtime in process, no HTTP (the limit): app.inference called directly", **SERVER_SYSTEMS}


@dataclass(frozen=True)
class Target:
    """A ratio the issue sets: ``numerator / denominator`` (workload, system) per round, at least ``goal``."""

    name: str
    numerator: tuple[str, str]
    denominator: tuple[str, str]
    goal: float | None  # None: shown for context


TARGETS = (
    Target("image upload: stack / gunicorn+Flask", ("digits-image", "stack"), ("digits-image", "gunicorn"), 1.2),
    Target("image upload: stack / uvicorn+FastAPI", ("digits-image", "stack"), ("digits-image", "uvicorn"), 1.0),
    Target("image upload: stack / uWSGI alone", ("digits-image", "stack"), ("digits-image", "uwsgi"), None),
    Target("stack: image upload / its own /healthz", ("digits-image", "stack"), ("healthz", "stack"), 0.5),
    Target("compute-bound, binary tensors: stack / in-process ORT", ("compute-binary", "stack"), ("compute-binary", "raw"), 0.9),
    Target("compute-bound, JPEG uploads: stack / in-process ORT", ("compute-image", "stack"), ("compute-image", "raw"), 0.9),
)
# p99 / p50 at about 70% of the peak, at most this.
TAIL_GOAL = 3.0


@dataclass
class Results:
    settings: dict
    machine: dict
    load: dict  # load averages before and after: how busy the shared machine was
    workloads: dict[str, str]  # name -> description
    systems: list[str]
    answers: dict[str, str]
    measurements: list[Measurement] = field(default_factory=list)


@dataclass
class Summary:
    """One system on one workload over the rounds: medians, and the spread of throughput."""

    rate: float
    rate_min: float
    rate_max: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float  # the server's CPU per answer: steadier than req/s on a busy machine
    server_cores: float
    client_cores: float
    errors: int
    rounds: int


def machine() -> dict:
    """What the figures were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    memory = next((int(line.split()[1]) // 1024 for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal")), 0)
    os_name = next((line.split("=", 1)[1].strip('"') for line in _read("/etc/os-release").splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.system())
    versions = {name: _version(name) for name in
                ("onnxruntime", "numpy", "Flask", "uWSGI", "gunicorn", "uvicorn", "fastapi", "uvloop", "httptools")}
    return {
        "cpu": model, "cpus": os.cpu_count(), "cpus_usable": available_cpus(), "memory_mb": memory,
        "os": os_name, "kernel": platform.release(), "python": platform.python_version(),
        "nginx": _command_version(["nginx", "-v"]), "wrk": _command_version(["wrk", "-v"]).split(" [")[0],
        "packages": versions,
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _command_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    return (done.stderr or done.stdout).strip().splitlines()[0] if (done.stderr or done.stdout).strip() else "unknown"


# -- figures -----------------------------------------------------------------------


def summarise(results: Results) -> dict[tuple[str, str], Summary]:
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in results.measurements:
        if m.mode == "peak":
            groups.setdefault((m.workload, m.system), []).append(m)
    summaries = {}
    for key, runs in groups.items():
        rates = [m.rate for m in runs]
        summaries[key] = Summary(
            rate=statistics.median(rates), rate_min=min(rates), rate_max=max(rates),
            p50_ms=statistics.median(m.p50_ms for m in runs), p99_ms=statistics.median(m.p99_ms for m in runs),
            cpu_ms_per_request=statistics.median(1000 * m.server_cpu_s / max(m.requests, 1) for m in runs),
            server_cores=statistics.median(m.server_cpu_s / m.seconds for m in runs),
            client_cores=statistics.median(m.client_cpu_s / m.seconds for m in runs),
            errors=sum(m.errors for m in runs), rounds=len(runs),
        )
    return summaries


def ratios(results: Results) -> list[tuple[Target, list[float], list[float]]]:
    """Each target's ratio per round (both sides from the same round), from throughput and from CPU.

    The second estimate divides CPU seconds per request (server and wrk: they share the
    cores) the other way round: on a busy machine it moves far less than requests/s.
    """
    runs = {(m.workload, m.system, m.round): m for m in results.measurements if m.mode == "peak"}
    found = []
    for target in TARGETS:
        pairs = [
            (runs[(*target.numerator, r)], runs[(*target.denominator, r)])
            for r in sorted({m.round for m in results.measurements})
            if (*target.numerator, r) in runs and (*target.denominator, r) in runs
        ]
        pairs = [(a, b) for a, b in pairs if a.requests and b.requests]
        if pairs:
            found.append((target, [a.rate / b.rate for a, b in pairs], [_cpu(b) / _cpu(a) for a, b in pairs]))
    return found


def _cpu(m: Measurement) -> float:
    return (m.server_cpu_s + m.client_cpu_s) / m.requests


def _verdict(value: float, goal: float | None, at_most: bool = False) -> str:
    if goal is None:
        return "(context)"
    met = value <= goal if at_most else value >= goal
    if met:
        return "met"
    short = (value / goal - 1) if at_most else (1 - value / goal)
    return f"missed by {abs(short):.0%}"


def markdown(results: Results) -> str:
    s, m, summaries = results.settings, results.machine, summarise(results)
    lines = [
        f"# modelstack benchmark, {results.load['started']}",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['memory_mb']:,} MB; {m['os']}, "
        f"Linux {m['kernel']}; Python {m['python']}; {m['nginx']}; {m['wrk']}.",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        "",
        f"Load average (1, 5, 15 min) before: {results.load['before']}, after: {results.load['after']}. "
        "Anything near or above the CPU count means other work shared the cores: treat the figures as provisional.",
        "",
        f"Each system: {s['workers']} worker processes, ONNX Runtime intra-op threads: {s['ort_intra_op_threads']}, "
        f"nginx workers: {s['nginx_workers']}. wrk: 1 thread, {s['connections']} connections, "
        f"{s['rounds']} rounds of {s['seconds']} s per system and workload in rotating order, after {s['warmup']} s of warm-up; "
        "medians over the rounds, spread is min-max. Loopback only; all systems and wrk share the same cores.",
        "",
        "The compute-bound model is MobileNetV2's architecture with random, untrained weights "
        "(bench/model.py): realistic cost, meaningless predictions.",
        "",
        "## Targets (issue 7)",
        "",
        "Throughput ratios are medians of per-round ratios; \"from CPU\" is the same ratio estimated from CPU "
        "seconds per request (server + wrk), which a busy machine disturbs far less.",
        "",
        "| ratio | median | spread over rounds | from CPU | goal | verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for target, values, from_cpu in ratios(results):
        median = statistics.median(values)
        goal = f">= {target.goal:.2f}" if target.goal is not None else "-"
        lines.append(f"| {target.name} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | "
                     f"{statistics.median(from_cpu):.2f} | {goal} | {_verdict(median, target.goal)} |")
    for p in (m for m in results.measurements if m.mode == "paced"):
        peak = summaries[(p.workload, p.system)].rate
        tail = p.p99_ms / p.p50_ms if p.p50_ms else float("inf")
        lines.append(f"| {p.workload}: p99 / p50 at {p.rate / peak:.0%} of peak ({p.rate:,.0f} req/s) | {tail:.2f} | "
                     f"p50 {p.p50_ms:.2f} ms, p99 {p.p99_ms:.2f} ms | - | <= {TAIL_GOAL:.2f} | "
                     f"{_verdict(tail, TAIL_GOAL, True)} |")
    for workload, description in results.workloads.items():
        lines += [
            "",
            f"## {workload}",
            "",
            f"{description}. Every system answered `{results.answers.get(workload, '?')}`.",
            "",
            "| system | req/s | spread | p50 ms | p99 ms | server CPU ms/req | server cores | wrk cores | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for system in results.systems:
            x = summaries.get((workload, system))
            if x is None:
                continue
            lines.append(
                f"| {system} | {x.rate:,.0f} | {x.rate_min:,.0f}-{x.rate_max:,.0f} | {x.p50_ms:.2f} | {x.p99_ms:.2f} | "
                f"{x.cpu_ms_per_request:.2f} | {x.server_cores:.2f} | {x.client_cores:.2f} | {x.errors} |"
            )
    lines += ["", "## Systems", ""]
    lines += [f"- **{name}**: {SYSTEMS[name]}" for name in results.systems]
    lines += [
        "",
        "raw latencies are per call with nothing queued; the others are wrk's, from sending a request to its "
        "whole answer, with all connections busy. uWSGI alone uses `--http-socket`, which closes every "
        "connection, so wrk sends HTTP/1.0 to it and reconnects for every request. uvicorn uses uvloop and "
        "httptools only when they are installed (see Packages). The FastAPI app has the stack's endpoints and "
        "inference code but none of the Flask app's per-request request ids, Server-Timing, metrics and log line.",
        "",
        "![throughput and latency per system](bench.png)",
        "",
    ]
    return "\n".join(lines)


def html(markdown_text: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>modelstack benchmark</title>\n"
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.25rem .6rem}"
        "th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}img{max-width:100%}</style>\n"
        f"</head><body>\n{body}</body></html>\n"
    )


def plot(results: Results, path: Path) -> None:
    """Per workload (columns): throughput with its spread, p50/p99 latency, and server CPU per request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = summarise(results)
    workloads = list(results.workloads)
    figure, axes = plt.subplots(3, len(workloads), figsize=(3.2 * len(workloads), 9), squeeze=False)
    for column, workload in enumerate(workloads):
        systems = [s for s in results.systems if (workload, s) in summaries]
        rows = [summaries[(workload, s)] for s in systems]
        x = list(range(len(systems)))
        rate, latency, cpu = (axes[row][column] for row in range(3))
        rate.bar(x, [r.rate for r in rows], color="#4c72b0",
                 yerr=[[r.rate - r.rate_min for r in rows], [r.rate_max - r.rate for r in rows]], capsize=3)
        rate.set_title(workload, fontsize=10)
        if max(r.rate for r in rows) > 20 * min(r.rate for r in rows):
            rate.set_yscale("log")  # the in-process pool can be 50x faster than any server
        latency.bar([i - 0.2 for i in x], [r.p50_ms for r in rows], 0.4, label="p50", color="#55a868")
        latency.bar([i + 0.2 for i in x], [r.p99_ms for r in rows], 0.4, label="p99", color="#c44e52")
        cpu.bar(x, [r.cpu_ms_per_request for r in rows], color="#8172b2")
        for axis in (rate, latency, cpu):
            axis.set_xticks(x, systems, rotation=45, ha="right", fontsize=8)
            axis.tick_params(axis="y", labelsize=8)
        if column == 0:
            rate.set_ylabel("requests/s (median, min-max)")
            latency.set_ylabel("latency ms")
            latency.legend(fontsize=8)
            cpu.set_ylabel("server CPU ms per request")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(folder: Path, results: Results) -> Path:
    """Write every file of the report into ``folder``; returns the Markdown file."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {**results.__dict__, "measurements": [m.as_dict() for m in results.measurements],
            "summaries": [{"workload": w, "system": s, **vars(x)} for (w, s), x in summarise(results).items()],
            "written": datetime.now().isoformat(timespec="seconds")}
    (folder / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    text = markdown(results)
    (folder / "report.md").write_text(text)
    (folder / "report.html").write_text(html(text))
    plot(results, folder / "bench.png")
    return folder / "report.md"
