"""Run the benchmark: every system and workload, alternating, then write the report.

    python -m bench              the full run (about 8 minutes on 2 cores)
    python -m bench --quick      a rough one in about a minute (the workloads the targets need)
    python -m bench --help       systems, workloads, rounds, concurrency, ...

All systems run at once on the same cores, each idle while another is measured;
each round visits them in a rotated order, so slow drifts on a shared machine
spread over all of them instead of favouring one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from app.settings import available_cpus

from . import model, report
from .inprocess import InProcess
from .loadgen import Measurement, fetch, run_inprocess, run_wrk
from .systems import ROOT, STARTERS, Server
from .workloads import Workload, build_workloads

SYSTEMS = ["raw", *STARTERS]
# Workloads whose tail latency is measured again at a share of the stack's peak.
PACED = ("digits-image", "compute-binary")
# --quick: enough for the headline ratios.
QUICK_WORKLOADS = "healthz,digits-image,compute-binary"
START_TIMEOUT = 180


def parse_args(argv: list[str] | None, workloads: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"2 rounds of 1 s, workloads {QUICK_WORKLOADS} unless given: a rough figure, quickly")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {','.join(SYSTEMS)}")
    parser.add_argument("--workloads", help=f"comma-separated, from {','.join(workloads)} (default: all)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3; quick: 2)")
    parser.add_argument("--seconds", type=int, help="seconds per measurement, whole (default 4; quick: 1)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per system and workload (default 2; quick: 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk's open connections (default 16)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or available_cpus()),
                        help="worker processes of every system and of the in-process pool (default: $WORKERS or the CPUs)")
    parser.add_argument("--nginx-workers", default=os.environ.get("NGINX_WORKERS") or "auto",
                        help="nginx worker_processes (default: $NGINX_WORKERS or auto, as the stack)")
    parser.add_argument("--paced-share", type=float, default=0.7,
                        help="share of the stack's peak for the tail-latency runs (default 0.7; 0 skips them)")
    parser.add_argument("--out", type=Path, help="report folder (default reports/bench-<timestamp>)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.seconds = args.seconds or (1 if args.quick else 4)
    args.warmup = (1 if args.quick else 2) if args.warmup is None else args.warmup
    args.systems = _choose(parser, "--systems", args.systems, SYSTEMS)
    default_workloads = QUICK_WORKLOADS if args.quick else ",".join(workloads)
    args.workloads = _choose(parser, "--workloads", args.workloads or default_workloads, workloads)
    args.out = args.out or ROOT / "reports" / f"bench-{datetime.now():%Y%m%d-%H%M%S}"
    return args


def _choose(parser: argparse.ArgumentParser, option: str, value: str, known: list[str]) -> list[str]:
    chosen = [item for item in value.replace(" ", "").split(",") if item]
    unknown = sorted(set(chosen) - set(known))
    if unknown or not chosen:
        parser.error(f"{option}: unknown {', '.join(unknown) or '(empty)'}; choose from {','.join(known)}")
    return [item for item in known if item in chosen]  # a fixed order, whatever the command line's


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    """The running systems, the request files, and the measurements so far."""

    def __init__(self, args: argparse.Namespace, workloads: dict[str, Workload], servers: dict[str, Server],
                 pool: InProcess | None, requests_dir: Path):
        self.args = args
        self.workloads = workloads
        self.servers = servers
        self.pool = pool
        self.requests_dir = requests_dir
        self.measurements: list[Measurement] = []
        for workload in workloads.values():
            for http10 in (False, True):
                self.request_file(workload, http10).write_bytes(workload.http_request(http10))

    def request_file(self, workload: Workload, http10: bool) -> Path:
        return self.requests_dir / f"{workload.name}-http1{'0' if http10 else '1'}.req"

    def systems_for(self, workload: Workload) -> list[str]:
        """The in-process pool has no HTTP, so no /healthz."""
        return [name for name in self.args.systems if name in self.servers or (name == "raw" and workload.model)]

    def check_answers(self) -> dict[str, str]:
        """Every system answers 200 with the same result, from the very bytes wrk will send."""
        answers = {}
        for workload in self.workloads.values():
            seen = {}
            for name in self.systems_for(workload):
                if name == "raw":
                    seen[name] = self.pool.run(workload, 0)[0].answer
                    continue
                server = self.servers[name]
                status, headers, body = fetch(server.url, workload.http_request(server.http10))
                if status != 200:
                    raise SystemExit(f"{name} answered {workload.name} with {status}: {body[:300]!r}")
                seen[name] = workload.answer(headers, body)
            if len(set(seen.values())) > 1:
                raise SystemExit(f"the systems disagree on {workload.name}: {seen}")
            answers[workload.name] = next(iter(seen.values()))
        return answers

    def measure(self, name: str, workload: Workload, seconds: int, round_: int,
                mean_gap_ms: float | None = None) -> Measurement:
        if name == "raw":
            return run_inprocess(self.pool, workload, seconds, round_)
        server = self.servers[name]
        return run_wrk(server, self.request_file(workload, server.http10), workload.name, seconds,
                       self.args.connections, round_, mean_gap_ms)

    def warm_up(self) -> None:
        if not self.args.warmup:
            return
        for workload in self.workloads.values():
            for name in self.systems_for(workload):
                self.measure(name, workload, self.args.warmup, -1)

    def rounds(self) -> None:
        for round_ in range(self.args.rounds):
            for workload in self.workloads.values():
                names = self.systems_for(workload)
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    result = self.measure(name, workload, self.args.seconds, round_)
                    self.measurements.append(result)
                    say(f"round {round_ + 1}/{self.args.rounds} {workload.name:15} {name:9} {result.rate:9,.0f} req/s"
                        f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}")

    def paced(self) -> None:
        """Tail latency at a share of the stack's peak: wrk waits a random time between requests.

        A first run at the gap that would give the target rate with instant answers
        tells the latency at that load; the second, recorded run subtracts it.
        """
        share, connections = self.args.paced_share, self.args.connections
        for name in PACED:
            if name not in self.workloads or "stack" not in self.servers:
                continue
            workload = self.workloads[name]
            peak = statistics.median(m.rate for m in self.measurements if m.system == "stack" and m.workload == name)
            period_ms = connections * 1000 / (share * peak)  # per connection, request to request
            trial = self.measure("stack", workload, self.args.seconds, -1, period_ms)
            result = self.measure("stack", workload, self.args.seconds, 0, max(0.1, period_ms - trial.mean_ms))
            self.measurements.append(result)
            say(f"paced {name}: {result.rate:,.0f} req/s ({result.rate / peak:.0%} of peak)  "
                f"p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms")


def build_repository(folder: Path, workloads: list[Workload]) -> Path:
    """The digits model, and the compute-bound one if a workload needs it."""
    folder.mkdir()
    (folder / "digits").symlink_to(ROOT / "models" / "digits", target_is_directory=True)
    if any(w.compute_bound for w in workloads):
        model.write_model(folder)
    return folder


def start_servers(names: list[str], tmp: Path, env: dict[str, str], stack: ExitStack) -> dict[str, Server]:
    """Start every server (stopped when ``stack`` closes); they load their models meanwhile."""
    servers = {}
    for name in names:
        (tmp / name).mkdir()
        servers[name] = STARTERS[name](tmp / name, env)
        stack.callback(servers[name].stop)
    return servers


def wait_ready(servers: dict[str, Server]) -> None:
    with ThreadPoolExecutor(len(servers) or 1) as waiting:
        for future in [waiting.submit(server.wait_ready, START_TIMEOUT) for server in servers.values()]:
            future.result()


def main(argv: list[str] | None = None) -> int:
    all_workloads = build_workloads()
    args = parse_args(argv, list(all_workloads))
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: run scripts/setup.sh --dev (or apt-get install wrk)")
    # A stop request (Ctrl-C, SIGTERM) unwinds through the ExitStack, which stops every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workloads = {name: all_workloads[name] for name in args.workloads}
    load = {"started": datetime.now().isoformat(timespec="seconds"), "before": report.load_average()}
    with tempfile.TemporaryDirectory(prefix="modelstack-bench-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        repository = build_repository(tmp / "models", list(workloads.values()))
        env = {"MODEL_REPOSITORY": str(repository), "WORKERS": str(args.workers), "NGINX_WORKERS": args.nginx_workers}
        say(f"starting {', '.join(args.systems)} with {args.workers} workers each")
        servers = start_servers([n for n in args.systems if n in STARTERS], tmp, env, stack)
        pool = None
        if "raw" in args.systems and any(w.model for w in workloads.values()):
            pool = InProcess(repository, args.workers)
            stack.callback(pool.close)
        wait_ready(servers)
        (tmp / "requests").mkdir()
        bench = Bench(args, workloads, servers, pool, tmp / "requests")
        answers = bench.check_answers()
        say(f"all systems give the same answers; warming up for {args.warmup} s each")
        bench.warm_up()
        bench.rounds()
        if args.paced_share:
            bench.paced()
    load["after"] = report.load_average()
    threads = os.environ.get("ORT_INTRA_OP_THREADS") or f"CPUs / workers = {max(1, available_cpus() // args.workers)}"
    results = report.Results(
        settings={
            "workers": args.workers, "nginx_workers": args.nginx_workers, "connections": args.connections,
            "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup, "paced_share": args.paced_share,
            "ort_intra_op_threads": threads,
        },
        machine=report.machine(),
        load=load,
        workloads={w.name: w.description for w in workloads.values()},
        systems=[name for name in SYSTEMS if name in args.systems],
        answers=answers,
        measurements=bench.measurements,
    )
    written = report.write(args.out, results)
    say(f"report: {written}")
    return 0
