"""Load: wrk at a fixed concurrency against a server, or the in-process pool, as one Measurement."""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from .inprocess import InProcess
from .systems import Server
from .workloads import Workload

LUA = Path(__file__).resolve().parent / "request.lua"
# Longer than any sane answer: a request wrk gives up on is an error, not a slow sample.
TIMEOUT = "10s"


@dataclass
class Measurement:
    system: str
    workload: str
    round: int
    mode: str  # "peak": as fast as answers come; "paced": a fixed offered load below it
    seconds: float
    requests: int
    errors: int  # connect, read, write, timeout and non-2xx answers, together
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    server_cpu_s: float  # every process of the system, reaped workers included
    client_cpu_s: float  # wrk's own (0 for the in-process pool: it has no client)
    mean_gap_ms: float = 0.0  # paced mode: each connection's mean wait between requests

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rate": self.rate}


def fetch(url: str, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send the exact bytes wrk will send; return status, lower-cased headers and body."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def run_wrk(server: Server, request_file: Path, workload: str, seconds: int, connections: int,
            round_: int = 0, mean_gap_ms: float | None = None) -> Measurement:
    """One wrk run of ``seconds`` with ``connections`` open connections and one thread."""
    env = {**os.environ, "BENCH_REQUEST": str(request_file)}
    if mean_gap_ms is not None:
        env["BENCH_MEAN_GAP_MS"] = f"{mean_gap_ms:.3f}"
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", TIMEOUT, "-s", str(LUA), server.url + "/"]
    server_before = server.cpu_seconds()
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = server.cpu_seconds() - server_before
    summary = next((line for line in done.stdout.splitlines() if line.startswith("BENCH ")), None)
    if done.returncode or summary is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    data = json.loads(summary[len("BENCH "):])
    latency = data["latency_us"]
    client_cpu = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    return Measurement(
        system=server.name, workload=workload, round=round_, mode="paced" if mean_gap_ms is not None else "peak",
        seconds=data["duration_us"] / 1e6, requests=data["requests"], errors=sum(data["errors"].values()),
        p50_ms=latency["p50"] / 1000, p90_ms=latency["p90"] / 1000, p99_ms=latency["p99"] / 1000,
        mean_ms=latency["mean"] / 1000, server_cpu_s=server_cpu, client_cpu_s=client_cpu,
        mean_gap_ms=mean_gap_ms or 0.0,
    )


def run_inprocess(pool: InProcess, workload: Workload, seconds: float, round_: int = 0) -> Measurement:
    """All pool processes call the model back to back; req/s is items per second over all of them."""
    before = pool.cpu_seconds()
    batches = pool.run(workload, seconds)
    cpu = pool.cpu_seconds() - before
    latencies = np.concatenate([batch.latencies for batch in batches]) * 1000
    rate = sum(len(batch.latencies) / batch.seconds for batch in batches)
    elapsed = max(batch.seconds for batch in batches)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return Measurement(
        system=pool.name, workload=workload.name, round=round_, mode="peak",
        seconds=elapsed, requests=round(rate * elapsed), errors=0,
        p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=float(latencies.mean()),
        server_cpu_s=cpu, client_cpu_s=0.0,
    )
