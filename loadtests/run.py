"""Run a headless load test into a fresh report folder, then write the report.

    python -m loadtests.run --host http://127.0.0.1:8080 --users 20 --duration 60s
    python -m loadtests.run --host https://models.example.com --step --users 200 --slo-p95-ms 100

Options this script does not know go to Locust unchanged: --task-mix, --think-min,
--think-max, --slo-p95-ms, --slo-p99-ms, --slo-max-failure-ratio, --max-requests,
--step-users, --step-time, or any of Locust's own. The exit code is Locust's, which is the
SLO gate: 0 met, 1 missed, 2 refused before starting (bad options, host down or not ready),
3 killed because it overran its time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from . import RESULTS_FILE, report

HERE = Path(__file__).resolve().parent
GRACE = 60  # seconds on top of --duration for start-up and shutdown before the run is killed


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--host", default=f"http://127.0.0.1:{os.environ.get('PORT') or 8080}",
                        help="Base URL of the deployment (default: the local stack on $PORT or 8080)")
    parser.add_argument("--users", type=int, default=10,
                        help="Concurrent users (with --step: the most users to step up to)")
    parser.add_argument("--spawn-rate", type=float, help="Users started per second (default: all at once)")
    parser.add_argument("--duration", help="How long to run: 30s, 5m, 1h30m (default 30s; 5m with --step)")
    parser.add_argument("--step", action="store_true", help="Step the users up until the SLO breaks: find the knee")
    parser.add_argument("--reports", type=Path, default=HERE.parent / "reports",
                        help="Where the report folders go (default: reports/ in the repository, git-ignored)")
    return parser.parse_known_args(argv)


def parse_duration(text: str) -> int:
    """Seconds in Locust's --run-time format: 90, 90s, 5m, 1h30m. (Importing Locust here would
    monkey-patch this process with gevent for one small function.)"""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or match is None:
        raise ValueError("use a time like 90, 90s, 5m or 1h30m")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def normalise_host(host: str) -> str:
    return (host if "://" in host else f"http://{host}").rstrip("/")


def new_folder(root: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, n = root / f"loadtest-{stamp}", 1
    while folder.exists():
        n += 1
        folder = root / f"loadtest-{stamp}-{n}"
    folder.mkdir(parents=True)
    return folder


def locust_command(args: argparse.Namespace, duration: str, folder: Path, extra: list[str]) -> list[str]:
    files = [HERE / "locustfile.py", *([HERE / "stepload.py"] if args.step else [])]
    load = (["--step-max-users", str(args.users)] if args.step
            else ["--users", str(args.users), "--spawn-rate", str(args.spawn_rate or args.users)])
    return [
        sys.executable, "-m", "locust", "-f", ",".join(map(str, files)), "--headless",
        "--host", normalise_host(args.host), "--run-time", duration, *load,
        "--csv", str(folder / "locust"), "--html", str(folder / "locust.html"), "--json-file", str(folder / "locust"),
        *extra,
    ]


def run_locust(command: list[str], limit: float) -> int | None:
    """Locust's exit code, or None when it overran ``limit`` seconds and was killed."""
    locust = subprocess.Popen(command)
    try:
        return locust.wait(timeout=limit)
    except KeyboardInterrupt:
        # Ctrl-C reached Locust too: let it stop its users and write its files, then report.
        try:
            return locust.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            pass
    except subprocess.TimeoutExpired:
        pass
    locust.kill()
    locust.wait()
    return None


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    duration = args.duration or ("5m" if args.step else "30s")
    try:
        limit = parse_duration(duration) + GRACE
    except ValueError as exc:
        print(f"error: --duration {duration!r}: {exc}", file=sys.stderr)
        return 2
    folder = new_folder(args.reports)
    command = locust_command(args, duration, folder, extra)
    print(f"load test of {normalise_host(args.host)} for {duration}; report folder {folder}", flush=True)
    code = run_locust(command, limit)
    if code is None:
        print(f"error: the run overran {duration} by {GRACE} s and was killed", file=sys.stderr)
        return 3
    if not (folder / RESULTS_FILE).exists():
        if not (folder / "locust.html").exists():
            shutil.rmtree(folder)  # refused before it started (Locust said why): nothing worth keeping
        return code or 2
    print(report.build(folder))
    print(f"report: {folder / 'report.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
