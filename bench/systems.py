"""The HTTP systems under test, each in its own folder on a free loopback port.

All of them load the same model repository in the same number of worker
processes; the three fronted by nginx get the same config from the stack's
own template (``deploy/stack.py render``), switched to HTTP for gunicorn and
uvicorn with ``APP_PROTOCOL=http``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from deploy import stack as launcher
from tests.stackrunner import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Name -> what it is, for the report.
SYSTEMS = {
    "stack": "this stack: nginx -> uWSGI -> Flask (deploy/stack.py run)",
    "uwsgi": "uWSGI alone: --http-socket, Flask, no nginx",
    "gunicorn": "nginx -> gunicorn (sync workers) -> Flask",
    "uvicorn": "nginx -> uvicorn -> FastAPI (bench/fastapi_app.py)",
}


@dataclass
class Server:
    """One running system: the URL wrk loads and the processes to account and stop, in start order."""

    name: str
    url: str
    run_dir: Path
    processes: list[tuple[subprocess.Popen, signal.Signals]] = field(default_factory=list)
    # uWSGI's --http-socket closes the connection after every answer without saying so;
    # an HTTP/1.0 request makes the client expect that instead of counting read errors.
    http10: bool = False

    def cpu_seconds(self) -> float:
        """CPU used so far by every process of this system, including workers that exited."""
        total = 0.0
        for process, _ in self.processes:
            try:
                root = psutil.Process(process.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for member in tree:
                try:
                    # children_*: reaped children (recycled workers) are counted by their parent.
                    times = member.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += times.user + times.system + times.children_user + times.children_system
        return total

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for process, _ in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with status {process.returncode}; logs in {self.run_dir}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} was not ready within {timeout:.0f} s; logs in {self.run_dir}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30) -> None:
        """Gracefully, front to back: nginx first, then the app server."""
        for process, sig in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` with ``env`` over the harness's environment, output to ``log``."""
    with open(log, "ab") as out:
        # A session of its own: a Ctrl-C on the harness reaches only the harness, which stops us in order.
        return subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _config(run_dir: Path, env: dict[str, str], **overrides) -> launcher.StackConfig:
    return launcher.StackConfig(
        run_dir=run_dir, host="127.0.0.1", port=free_port(),
        workers=int(env["WORKERS"]), nginx_workers=env["NGINX_WORKERS"], **overrides,
    )


def start_stack(run_dir: Path, env: dict[str, str]) -> Server:
    """The stack exactly as ``make run`` starts it."""
    port = free_port()
    full_env = {**env, "RUN_DIR": str(run_dir), "HOST": "127.0.0.1", "PORT": str(port)}
    process = _spawn([sys.executable, str(ROOT / "deploy" / "stack.py"), "run"], run_dir / "stack.out", full_env)
    return Server("stack", f"http://127.0.0.1:{port}", run_dir, [(process, signal.SIGTERM)])


def start_uwsgi(run_dir: Path, env: dict[str, str]) -> Server:
    """The stack's uWSGI (same ini and environment) answering HTTP itself.

    ``--http-socket``, not ``--http11-socket``: the latter keeps a connection on its
    worker until the client leaves, so with more clients than workers most wait for
    seconds while a few are served back to back (high throughput, useless latencies).
    """
    config = _config(run_dir, env)
    launcher.prepare_run_dir(config)
    command = [*launcher.uwsgi_command(config), "--http-socket", f"127.0.0.1:{config.port}"]
    process = _spawn(command, run_dir / "uwsgi.out", {**launcher.uwsgi_env(config), **env})
    return Server("uwsgi", config.url, run_dir, [(process, signal.SIGTERM)], http10=True)


def _behind_nginx(name: str, run_dir: Path, env: dict[str, str], app_command: Callable[[Path], list[str]]) -> Server:
    """The stack's nginx config with ``APP_PROTOCOL=http``, in front of ``app_command(socket)``."""
    config = _config(run_dir, env, app_protocol="http")
    launcher.prepare_run_dir(config)
    launcher.render(config, run_dir)
    app_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(config.metrics_dir)}
    app = _spawn(app_command(config.uwsgi_socket), run_dir / f"{name}.out", app_env)
    nginx = _spawn(launcher.Stack(config).nginx_command("-g", "daemon off;"), run_dir / "nginx.out", env)
    return Server(name, config.url, run_dir, [(app, signal.SIGTERM), (nginx, signal.SIGQUIT)])


def start_gunicorn(run_dir: Path, env: dict[str, str]) -> Server:
    """gunicorn's default sync workers: the usual choice behind a buffering proxy like nginx."""
    return _behind_nginx("gunicorn", run_dir, env, lambda socket: [
        str(BIN / "gunicorn"), "--workers", env["WORKERS"], "--worker-class", "sync", "--bind", f"unix:{socket}",
        "app.wsgi:app",
    ])


def start_uvicorn(run_dir: Path, env: dict[str, str]) -> Server:
    """uvicorn's own worker processes; it uses uvloop and httptools when they are installed."""
    return _behind_nginx("uvicorn", run_dir, env, lambda socket: [
        str(BIN / "uvicorn"), "--workers", env["WORKERS"], "--uds", str(socket), "--no-access-log",
        "--log-level", "warning", "--app-dir", str(ROOT), "bench.fastapi_app:app",
    ])


STARTERS = {"stack": start_stack, "uwsgi": start_uwsgi, "gunicorn": start_gunicorn, "uvicorn": start_uvicorn}
