"""Start the real stack (nginx + uWSGI via deploy/stack.py) for a test, on a free loopback port."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "deploy" / "stack.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningStack:
    run_dir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen
    log: Path
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.post(self.url + path, **kwargs)

    def command(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a `deploy/stack.py` subcommand (reload, status, ...) against this stack."""
        return subprocess.run(
            [sys.executable, str(STACK), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def uwsgi_stats(self) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.run_dir / "uwsgi-stats.sock"))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data)

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.uwsgi_stats()["workers"] if w["pid"] > 0]

    def master_pid(self) -> int:
        return int((self.run_dir / "uwsgi.pid").read_text())

    def access_log(self) -> list[dict]:
        path = self.run_dir / "logs" / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def uwsgi_log(self) -> str:
        path = self.run_dir / "logs" / "uwsgi.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"stack at {self.url} not ready after {timeout} s")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.session.close()
        return self.process.returncode


def start_stack(run_dir: Path, timeout: float = 120, **env: str) -> RunningStack:
    """Start `deploy/stack.py run` with ``env`` overrides; returns once /readyz answers 200."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = {
        **os.environ,
        "RUN_DIR": str(run_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "2",
        "NGINX_WORKERS": "1",
        **{key: str(value) for key, value in env.items()},
    }
    log = run_dir / "stack.out"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(STACK), "run"], env=full_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = RunningStack(run_dir, port, full_env, process, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"stack exited with {process.returncode}:\n{log.read_text()}\n{stack.uwsgi_log()[-3000:]}")
        if "modelstack is serving" in log.read_text():
            return stack
        if time.monotonic() > deadline:
            stack.stop()
            raise TimeoutError(f"stack not ready after {timeout} s:\n{log.read_text()}")
        time.sleep(0.2)


def load_stack():
    """deploy/stack.py as a module (it is a script, not a package)."""
    if "modelstack_stack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("modelstack_stack", ROOT / "deploy" / "stack.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules["modelstack_stack"]
