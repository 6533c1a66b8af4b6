"""A run's report: plots as PNG files, an offline HTML page and a Markdown summary.

    python -m loadtests.report reports/loadtest-20261129-101500

Reads ``loadtest.json`` (written by the locustfile next to Locust's CSV files) and writes
``report.html`` and ``*.png`` into the same folder; prints the summary as Markdown.
Latencies are the client's (Locust's clock) unless a column says "server" (the
``Server-Timing`` header); figures come from histograms at three significant digits, so
they differ slightly from Locust's own tables, which round to whole milliseconds.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from . import RESULTS_FILE  # noqa: E402
from .recorder import OUTSIDE, SERVER, Histogram, Recorder  # noqa: E402
from .slo import Slo, Step, knee  # noqa: E402

PLOTS = {
    "latency.png": "Latency percentiles over time",
    "throughput.png": "Requests per second against users",
    "stages.png": "Client and server latency per stage",
    "breakdown.png": "Where the time goes",
    "errors.png": "Error ratio over time",
}


@dataclass
class Results:
    raw: dict
    recorder: Recorder
    slo: Slo
    steps: list[Step] | None

    @classmethod
    def load(cls, folder: Path) -> Results:
        path = folder / RESULTS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: was the run started with --csv {folder}/<prefix>?")
        raw = json.loads(path.read_text())
        steps = None if raw["steps"] is None else [Step(**step) for step in raw["steps"]]
        return cls(raw, Recorder.from_state(raw["recorder"]), Slo(**raw["slo"]), steps)

    @property
    def passed(self) -> bool:
        return self.raw["passed"]

    def timeline(self) -> tuple[list[int], list]:
        """Seconds since the first request, and that second's record (every second, gaps included)."""
        first, last = self.recorder.span()
        seconds = list(range(first, last + 1)) if last else []
        return [s - first for s in seconds], [self.recorder.seconds.get(s) for s in seconds]


# Tables ------------------------------------------------------------------------------------------

def _ms(value: float) -> str:
    return f"{value:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def summary_rows(results: Results) -> list[list[str]]:
    rec = results.recorder
    servers = {name: stages[SERVER] for name, stages in rec.stages.items()}
    everything = Histogram()
    for hist in servers.values():
        everything.merge(hist)
    servers["all requests"] = everything
    rows = []
    for name, fig in [*rec.per_request().items(), ("all requests", rec.total())]:
        server = servers.get(name) if servers.get(name, everything).count else None
        rows.append([
            name, str(fig.requests), f"{fig.failures} ({fig.failure_ratio:.1%})", f"{fig.rps:.1f}",
            _ms(fig.p50), _ms(fig.p95), _ms(fig.p99), _ms(fig.max),
            _ms(server.percentile(0.5)) if server else "-", _ms(server.percentile(0.95)) if server else "-",
        ])
    return rows


SUMMARY_HEADER = ["request", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
                  "server p50 ms", "server p95 ms"]


def stage_rows(results: Results) -> list[list[str]]:
    rows = []
    for name, stages in sorted(results.recorder.stages.items()):
        client = results.recorder.client[name]
        for stage, hist in [("client", client), *_ordered(stages)]:
            share = hist.mean / client.mean if client.mean else 0.0
            rows.append([name, stage, _ms(hist.percentile(0.5)), _ms(hist.percentile(0.95)), _ms(hist.mean),
                         f"{share:.0%}"])
    return rows


STAGE_HEADER = ["request", "stage", "p50 ms", "p95 ms", "mean ms", "share of client mean"]


def _ordered(stages: dict[str, Histogram]) -> list[tuple[str, Histogram]]:
    """The server total, its stages in the order the server sent them, then what lies outside them."""
    inner = [(stage, h) for stage, h in stages.items() if stage not in (SERVER, OUTSIDE)]
    return [(SERVER, stages[SERVER]), *inner, (OUTSIDE, stages[OUTSIDE])]


def verdict_lines(results: Results) -> list[str]:
    slo = results.slo
    if results.steps is None:
        return [f"SLO {verdict}" for verdict in slo.check(results.recorder.total())]
    best = knee(results.steps)
    if not results.steps:
        return ["Step load: no step completed; give the run more time (-t / --duration)."]
    if best is None:
        return [f"Step load: even {results.steps[0].users} users broke the SLO (p95 <= {slo.p95_ms:g} ms, "
                f"failures <= {slo.max_failure_ratio:.1%}); no knee."]
    held = "; the SLO never broke (raise --step-max-users)" if all(s.within_slo for s in results.steps) else ""
    return [f"Capacity knee: {best.rps:.0f} req/s at {best.users} users "
            f"(p95 {_ms(best.p95)} ms <= {slo.p95_ms:g} ms target){held}."]


def step_rows(steps: list[Step]) -> list[list[str]]:
    return [[str(s.users), f"{s.rps:.0f}", _ms(s.p95), _ms(s.p99), f"{s.failure_ratio:.2%}",
             "yes" if s.within_slo else "no"] for s in steps]


STEP_HEADER = ["users", "req/s", "p95 ms", "p99 ms", "failures", "within SLO"]


def markdown(results: Results) -> str:
    raw = results.raw
    parts = [
        f"## Load test of {raw['host']}: {'PASS' if results.passed else 'FAIL'}",
        f"{raw['started']} to {raw['finished']}, task mix `{raw['options']['task_mix']}`, "
        f"think time {raw['options']['think_min']:g}-{raw['options']['think_max']:g} s",
        _table(SUMMARY_HEADER, summary_rows(results)),
        "\n".join(f"- {line}" for line in verdict_lines(results)),
    ]
    if results.steps:
        parts.append(_table(STEP_HEADER, step_rows(results.steps)))
    if results.recorder.stages:
        parts.append(_table(STAGE_HEADER, stage_rows(results)))
    return "\n\n".join(parts) + "\n"


# Plots -------------------------------------------------------------------------------------------

def _users_axis(ax, t: list[int], seconds: list) -> None:
    """The user count on a second y axis, and one legend for both axes under the plot."""
    users = ax.twinx()
    users.step(t, [s.users if s else 0 for s in seconds], where="post", color="grey", alpha=0.5, label="users")
    users.set_ylabel("users")
    users.set_ylim(bottom=0, top=max(1, users.get_ylim()[1] * 1.1))
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = users.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper center", bbox_to_anchor=(0.5, -0.18),
              ncol=6, fontsize=8, frameon=False)


def plot_latency(results: Results, path: Path) -> None:
    t, seconds = results.timeline()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for q, label in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")]:
        ax.plot(t, [s.latency.percentile(q) if s and s.latency.count else float("nan") for s in seconds],
                label=label, marker=".")
    ax.axhline(results.slo.p95_ms, color="C1", linestyle="--", linewidth=1, label="p95 SLO")
    ax.axhline(results.slo.p99_ms, color="C2", linestyle="--", linewidth=1, label="p99 SLO")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("client latency per second (ms)")
    _users_axis(ax, t, seconds)
    _save(fig, path, PLOTS["latency.png"])


def plot_throughput(results: Results, path: Path) -> None:
    t, seconds = results.timeline()
    fig, (over_time, by_users) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[3, 2])
    over_time.plot(t, [s.latency.count if s else 0 for s in seconds], color="C0", marker=".", label="req/s")
    over_time.set_xlabel("seconds since the first request")
    over_time.set_ylabel("requests per second")
    over_time.set_ylim(bottom=0)
    _users_axis(over_time, t, seconds)
    busy = [s for s in seconds if s and s.users]
    by_users.scatter([s.users for s in busy], [s.latency.count for s in busy], s=12, alpha=0.4, label="one second")
    if results.steps:
        by_users.plot([s.users for s in results.steps], [s.rps for s in results.steps], marker="o", color="C1",
                      label="step (settled)")
        best = knee(results.steps)
        if best is not None:
            by_users.scatter([best.users], [best.rps], s=160, facecolors="none", edgecolors="red", linewidths=2,
                             label=f"knee: {best.rps:.0f} req/s at {best.users} users", zorder=3)
    by_users.set_xlabel("users")
    by_users.set_ylabel("requests per second")
    by_users.set_xlim(left=0)
    by_users.set_ylim(bottom=0)
    by_users.legend(loc="lower right", fontsize=8)
    _save(fig, path, PLOTS["throughput.png"])


def plot_stages(results: Results, path: Path) -> None:
    names = sorted(results.recorder.stages)
    columns = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    for ax, name in zip(axes.flat, names):
        bars = [("client", results.recorder.client[name]), *_ordered(results.recorder.stages[name])]
        y = range(len(bars))
        ax.barh([i - 0.2 for i in y], [h.percentile(0.5) for _, h in bars], height=0.4, label="p50")
        ax.barh([i + 0.2 for i in y], [h.percentile(0.95) for _, h in bars], height=0.4, label="p95")
        ax.set_yticks(list(y), [stage for stage, _ in bars])
        ax.invert_yaxis()
        ax.set_xlabel("ms")
        ax.set_title(name, fontsize=9)
    if not names:
        axes[0][0].text(0.5, 0.5, "no Server-Timing headers received", ha="center", va="center")
    else:
        axes[0][0].legend(loc="upper right", fontsize=8)
    _save(fig, path, PLOTS["stages.png"])


def plot_breakdown(results: Results, path: Path) -> None:
    names = sorted(results.recorder.stages)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.7 * max(1, len(names))))
    colors: dict[str, str] = {}
    for row, name in enumerate(names):
        left = 0.0
        for stage, hist in _ordered(results.recorder.stages[name])[1:]:  # the parts, not the server total
            first = stage not in colors
            color = colors.setdefault(stage, f"C{len(colors)}")
            ax.barh(row, hist.mean, left=left, color=color, label=stage if first else None)
            left += hist.mean
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("mean ms per request (the bars add up to the client's mean latency)")
    if names:
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path, PLOTS["breakdown.png"])


def plot_errors(results: Results, path: Path) -> None:
    t, seconds = results.timeline()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(t, [100 * s.failures / s.latency.count if s and s.latency.count else 0 for s in seconds],
            color="C3", marker=".", label="failed requests")
    ax.axhline(100 * results.slo.max_failure_ratio, color="C3", linestyle="--", linewidth=1, label="SLO")
    ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("% of requests per second")
    _users_axis(ax, t, seconds)
    _save(fig, path, PLOTS["errors.png"])


def _save(fig, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The page ----------------------------------------------------------------------------------------

def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:75rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem}
td:not(:first-child),th:not(:first-child){text-align:right}.pass{color:#070}.fail{color:#b00}
img{max-width:100%;display:block;margin:1rem 0}"""


def write_html(results: Results, folder: Path) -> Path:
    raw = results.raw
    verdict = "PASS" if results.passed else "FAIL"
    files = sorted(p.name for p in folder.iterdir() if p.name.startswith("locust"))
    sections = [
        f"<h1>Load test of {html.escape(str(raw['host']))}: "
        f"<span class='{verdict.lower()}'>{verdict}</span></h1>",
        f"<p>{html.escape(str(raw['started']))} to {html.escape(str(raw['finished']))}; Locust "
        f"{html.escape(raw['locust_version'])}; options <code>{html.escape(json.dumps(raw['options']))}</code></p>",
        "<h2>Summary</h2>", _html_table(SUMMARY_HEADER, summary_rows(results)),
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in verdict_lines(results)) + "</ul>",
    ]
    if results.steps:
        sections += ["<h2>Steps</h2>", _html_table(STEP_HEADER, step_rows(results.steps))]
    for name, title in PLOTS.items():
        sections.append(f"<h2>{html.escape(title)}</h2><img src='{name}' alt='{html.escape(title)}'>")
    if results.recorder.stages:
        sections += ["<h2>Stages (from Server-Timing)</h2>", _html_table(STAGE_HEADER, stage_rows(results))]
    sections.append("<h2>Locust's own files</h2><ul>"
                    + "".join(f"<li><a href='{html.escape(f)}'>{html.escape(f)}</a></li>" for f in files) + "</ul>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Load test: {verdict}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    path = folder / "report.html"
    path.write_text(page)
    return path


def build(folder: Path) -> str:
    """Write the plots and report.html into ``folder``; return the Markdown summary."""
    results = Results.load(folder)
    for name, plot in [("latency.png", plot_latency), ("throughput.png", plot_throughput),
                       ("stages.png", plot_stages), ("breakdown.png", plot_breakdown), ("errors.png", plot_errors)]:
        plot(results, folder / name)
    write_html(results, folder)
    return markdown(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a run's report folder (holds loadtest.json)")
    args = parser.parse_args(argv)
    try:
        print(build(args.folder))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
