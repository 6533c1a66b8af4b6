#!/usr/bin/env python3
"""Run modelstack: nginx in front of uWSGI workers, the same files on every machine.

    stack.py run       nginx + uWSGI in the foreground; Ctrl-C stops both gracefully
    stack.py start     the same in the background (pid file in the run directory)
    stack.py stop      stop a background stack
    stack.py status    is it up, and what are the workers doing
    stack.py reload    zero-downtime rolling reload (new code, configs, model versions)
    stack.py uwsgi     exec uWSGI alone (systemd units and containers use this)
    stack.py render    write the nginx config for this environment

Every knob is an environment variable with a default (see ``StackConfig``);
on a VM they live in /etc/modelstack/env, in containers in docker-compose.yml.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import Settings, available_cpus, env_int, env_list, env_str  # noqa: E402

DEPLOY = ROOT / "deploy"
UWSGI_INI = DEPLOY / "uwsgi" / "uwsgi.ini"
PRIVATE_NETWORKS = "127.0.0.0/8 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"
# Requests uWSGI's listen queue holds per worker. A queued request waits at most about this many
# requests' time (0.7 ms each for the digits model, ~45 ms; 20 ms for a MobileNet-size one, ~1.3 s);
# beyond it nginx answers 503 at once. Sized per worker, so the wait is the same on any machine.
QUEUE_PER_WORKER = 64


def default_run_dir() -> Path:
    return Path(env_str("RUN_DIR", str(ROOT / "run"))).resolve()


def _somaxconn() -> int:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 128


@dataclass
class StackConfig:
    """The stack's settings, from the environment; the app's own come from ``app.settings``."""

    run_dir: Path = field(default_factory=lambda: default_run_dir())
    host: str = field(default_factory=lambda: env_str("HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: env_int("PORT", 8080, minimum=1))
    workers: int = field(default_factory=lambda: env_int("WORKERS", available_cpus(), minimum=1))
    harakiri: int = field(default_factory=lambda: env_int("HARAKIRI", 30, minimum=1))
    max_requests: int = field(default_factory=lambda: env_int("MAX_REQUESTS", 100000, minimum=1))
    max_requests_delta: int = field(default_factory=lambda: env_int("MAX_REQUESTS_DELTA", 5000))
    max_worker_lifetime: int = field(default_factory=lambda: env_int("MAX_WORKER_LIFETIME", 86400, minimum=1))
    reload_on_rss_mb: int = field(default_factory=lambda: env_int("RELOAD_ON_RSS_MB", 1024, minimum=1))
    worker_reload_mercy: int = field(default_factory=lambda: env_int("WORKER_RELOAD_MERCY", 30, minimum=1))
    rate_limit: int = field(default_factory=lambda: env_int("RATE_LIMIT", 20))
    rate_burst: int = field(default_factory=lambda: env_int("RATE_BURST", 40))
    rate_limit_exempt: list[str] = field(default_factory=lambda: env_list("RATE_LIMIT_EXEMPT") or ["127.0.0.0/8", "::1"])
    metrics_allow: list[str] = field(default_factory=lambda: env_list("METRICS_ALLOW") or PRIVATE_NETWORKS.split())
    trusted_proxies: list[str] = field(default_factory=lambda: env_list("TRUSTED_PROXIES"))
    server_name: str = field(default_factory=lambda: env_str("SERVER_NAME", "_"))
    tls_certificate: str = field(default_factory=lambda: env_str("TLS_CERTIFICATE", ""))
    tls_certificate_key: str = field(default_factory=lambda: env_str("TLS_CERTIFICATE_KEY", ""))
    # Addresses of the HTTPS server block; plain HTTP redirects to the first one's port.
    tls_listen: list[str] = field(default_factory=lambda: env_list("TLS_LISTEN") or ["443"])
    nginx_workers: str = field(default_factory=lambda: env_str("NGINX_WORKERS", "auto"))
    # How nginx talks to the app server on APP_SOCKET: "uwsgi" (uWSGI) or "http" (gunicorn, uvicorn, ...).
    app_protocol: str = field(default_factory=lambda: env_str("APP_PROTOCOL", "uwsgi"))
    run_as: str = field(default_factory=lambda: env_str("RUN_AS", ""))

    # Paths that differ per environment; the defaults keep everything under the run directory.
    @property
    def uwsgi_socket(self) -> Path:
        return Path(env_str("APP_SOCKET", str(self.run_dir / "uwsgi.sock")))

    @property
    def metrics_dir(self) -> Path:
        return Path(env_str("PROMETHEUS_MULTIPROC_DIR", str(self.run_dir / "metrics")))

    @property
    def listen(self) -> list[str]:
        return env_list("LISTEN") or [f"{self.host}:{self.port}"]

    @property
    def listen_backlog(self) -> int:
        """uWSGI's listen queue: when every worker is busy and it is full, nginx answers 503 at once."""
        return min(env_int("LISTEN_BACKLOG", QUEUE_PER_WORKER * self.workers, minimum=1), _somaxconn())

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        return bool(self.tls_certificate and self.tls_certificate_key)

    @property
    def https_port(self) -> int:
        return int(self.tls_listen[0].rsplit(":", 1)[-1])

    def path(self, name: str) -> Path:
        return self.run_dir / name


# -- rendering ------------------------------------------------------------------


def render(config: StackConfig, out: Path, site_only: bool = False) -> Path:
    """Write the nginx site (and, unless ``site_only``, a main nginx.conf) into ``out``."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    if config.app_protocol not in ("uwsgi", "http"):
        raise SystemExit(f"APP_PROTOCOL must be uwsgi or http, not {config.app_protocol!r}")
    env = Environment(loader=FileSystemLoader(DEPLOY / "nginx"), undefined=StrictUndefined, keep_trailing_newline=True)
    settings = Settings()
    out.mkdir(parents=True, exist_ok=True)
    site = out / "modelstack.conf"
    site.write_text(env.get_template("modelstack.conf.j2").render(
        listen=config.listen,
        server_name=config.server_name,
        uwsgi_socket=config.uwsgi_socket,
        app_protocol=config.app_protocol,
        static_dir=env_str("STATIC_DIR", str(ROOT / "app" / "web" / "static")),
        access_log=env_str("ACCESS_LOG", str(config.path("logs/access.log"))),
        certbot_webroot=env_str("CERTBOT_WEBROOT", str(config.path("acme"))),
        max_upload_mb=settings.max_upload_mb,
        harakiri=config.harakiri,
        rate_limit=config.rate_limit,
        rate_burst=config.rate_burst,
        rate_limit_exempt=config.rate_limit_exempt,
        metrics_allow=config.metrics_allow,
        trusted_proxies=config.trusted_proxies,
        tls=config.tls,
        tls_certificate=config.tls_certificate,
        tls_certificate_key=config.tls_certificate_key,
        tls_listen=config.tls_listen,
        https_port=config.https_port,
    ))
    if site_only:
        return site
    main = out / "nginx.conf"
    main.write_text(env.get_template("nginx.conf.j2").render(
        run_dir=config.run_dir,
        site_conf=site,
        error_log=env_str("NGINX_ERROR_LOG", str(config.path("logs/nginx-error.log"))),
        nginx_workers=config.nginx_workers,
        nginx_user=_nginx_user(config),
    ))
    return main


def _nginx_user(config: StackConfig) -> str:
    """nginx workers drop to this user when the master runs as root; else the directive is moot."""
    if os.geteuid() != 0:
        return ""
    user = config.run_as or "root"
    group = _group_name(pwd.getpwnam(user).pw_gid)
    return f"{user} {group}"


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


def nginx_binary() -> str:
    # /usr/sbin is not on an ordinary user's PATH on Debian.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        sys.exit("nginx is not installed: run scripts/setup.sh (or apt-get install nginx)")
    return found


# -- uWSGI -----------------------------------------------------------------------


def uwsgi_env(config: StackConfig) -> dict[str, str]:
    """The environment uwsgi.ini expects; the app reads its own settings from it too."""
    env = dict(os.environ)
    env.update(
        PROJECT_ROOT=str(ROOT),
        VIRTUAL_ENV=sys.prefix,
        WORKERS=str(config.workers),
        APP_SOCKET=str(config.uwsgi_socket),
        APP_SOCKET_MODE=env_str("APP_SOCKET_MODE", "660"),
        MASTER_PIDFILE=str(config.path("uwsgi.pid")),
        STATS_SOCKET=str(config.path("uwsgi-stats.sock")),
        RELOAD_TRIGGER=str(config.path("reload.trigger")),
        HARAKIRI=str(config.harakiri),
        MAX_REQUESTS=str(config.max_requests),
        MAX_REQUESTS_DELTA=str(config.max_requests_delta),
        MAX_WORKER_LIFETIME=str(config.max_worker_lifetime),
        RELOAD_ON_RSS_MB=str(config.reload_on_rss_mb),
        WORKER_RELOAD_MERCY=str(config.worker_reload_mercy),
        PROMETHEUS_MULTIPROC_DIR=str(config.metrics_dir),
    )
    if os.geteuid() == 0 and config.run_as and config.run_as != "root":
        user = pwd.getpwnam(config.run_as)
        env.update(RUN_AS_UID=str(user.pw_uid), RUN_AS_GID=str(user.pw_gid))
    return env


def prepare_run_dir(config: StackConfig) -> None:
    for sub in ("logs", "acme", "nginx/client_body", "nginx/proxy", "nginx/fastcgi", "nginx/uwsgi", "nginx/scgi"):
        config.path(sub).mkdir(parents=True, exist_ok=True)
    config.path("reload.trigger").touch()
    # Stale per-process files from an earlier run would be summed into /metrics and slow scrapes.
    shutil.rmtree(config.metrics_dir, ignore_errors=True)
    config.metrics_dir.mkdir(parents=True)
    config.uwsgi_socket.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and config.run_as and config.run_as != "root":
        user = pwd.getpwnam(config.run_as)
        for path in [config.metrics_dir, config.path("reload.trigger")]:
            os.chown(path, user.pw_uid, user.pw_gid)


def uwsgi_command(config: StackConfig) -> list[str]:
    """uWSGI's command line. The listen queue is set here, not in the ini: uWSGI applies
    ``listen`` before it expands $(VARIABLES), so ``listen = $(LISTEN_BACKLOG)`` meant 0."""
    binary = Path(sys.executable).parent / "uwsgi"
    return [str(binary), "--ini", str(UWSGI_INI), "--listen", str(config.listen_backlog)]


def exec_uwsgi(config: StackConfig) -> None:
    prepare_run_dir(config)
    command = uwsgi_command(config)
    os.execve(command[0], command, uwsgi_env(config))


def uwsgi_stats(config: StackConfig) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(config.path("uwsgi-stats.sock")))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


# -- the stack ---------------------------------------------------------------------


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Stack:
    """nginx and uWSGI as child processes, started and stopped in the right order."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.uwsgi: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.stopping: list[int] = []  # signals that asked us to stop

    def _on_signal(self, signum, frame) -> None:
        self.stopping.append(signum)

    def nginx_command(self, *extra: str) -> list[str]:
        return [nginx_binary(), "-p", str(self.config.run_dir), "-c", str(self.config.path("nginx.conf")), *extra]

    def start(self, timeout: float = 120) -> None:
        config = self.config
        # From here on, Ctrl-C and SIGTERM stop whatever has been started, even before it is ready.
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        prepare_run_dir(config)
        render(config, config.run_dir)
        check = subprocess.run(self.nginx_command("-t", "-q"), capture_output=True, text=True)
        if check.returncode:
            raise SystemExit(f"nginx rejected its config:\n{check.stderr}")
        log = open(config.path("logs/uwsgi.log"), "ab")
        # Own sessions: a terminal's Ctrl-C reaches only us, and we stop the children gracefully.
        self.uwsgi = subprocess.Popen(
            [sys.executable, __file__, "uwsgi"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.nginx = subprocess.Popen(self.nginx_command("-g", "daemon off;"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while not http_ok(f"{config.url}/readyz"):
            if self.uwsgi.poll() is not None or self.nginx.poll() is not None:
                self.stop()
                raise SystemExit(f"the stack failed to start; see {config.path('logs')}/uwsgi.log:\n{_tail(config.path('logs/uwsgi.log'))}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the stack was not ready within {timeout:.0f} s")
            if self.stopping:
                self.stop()
                raise SystemExit("stopped before the stack was ready")
            time.sleep(0.2)

    def stop(self) -> None:
        """nginx first (finishes in-flight requests, accepts no more), then uWSGI, gracefully."""
        for process, sig in ((self.nginx, signal.SIGQUIT), (self.uwsgi, signal.SIGTERM)):
            if process and process.poll() is None:
                process.send_signal(sig)
                deadline = time.monotonic() + self.config.worker_reload_mercy + 5
                while process.poll() is None and time.monotonic() < deadline:
                    try:
                        process.wait(1)
                    except subprocess.TimeoutExpired:
                        if process is self.uwsgi:
                            _repeat_graceful_stop(process.pid)
                if process.poll() is None:
                    # Each runs in its own session: the group is the master and its workers.
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def wait(self) -> int:
        """Block until a signal asks us to stop or a child dies; return the exit status."""
        while not self.stopping:
            for name, process in (("uwsgi", self.uwsgi), ("nginx", self.nginx)):
                if process.poll() is not None:
                    print(f"{name} exited with status {process.returncode}; stopping", file=sys.stderr)
                    self.stop()
                    return 1
            time.sleep(0.2)
        self.stop()
        return 0


def _repeat_graceful_stop(master: int) -> None:
    """Send uWSGI's workers again what the stopping master sent them (SIGHUP: finish, then exit).

    uWSGI 2.0.31 loses that signal on a worker still loading the app (at start-up, or just
    respawned after harakiri or a recycle): the worker serves on and the master waits for ever.
    """
    try:
        workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return
    for pid in workers:
        try:
            os.kill(int(pid), signal.SIGHUP)
        except ProcessLookupError:
            pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


SETTINGS_FILE = "settings.json"


def save_settings(config: StackConfig) -> None:
    """Record the settings this stack started with, for `stop`, `status` and `reload` to reuse.

    `PORT=9000 make start` then `make reload` must keep port 9000. Every variable
    deploy/env.example mentions counts; API keys are secrets and never written.
    """
    names = set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", (DEPLOY / "env.example").read_text())) | {"HOST", "PORT"}
    settings = {name: os.environ[name] for name in sorted(names - {"API_KEYS"}) if name in os.environ}
    config.run_dir.mkdir(parents=True, exist_ok=True)
    path = config.path(SETTINGS_FILE)
    path.touch(mode=0o600)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def restore_settings(run_dir: Path) -> None:
    """Take the running stack's settings for every variable this command was not given."""
    try:
        saved = json.loads((run_dir / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return
    for name, value in saved.items():
        os.environ.setdefault(name, value)


def cmd_run(config: StackConfig) -> int:
    save_settings(config)
    stack = Stack(config)
    stack.start()
    print(f"modelstack is serving {config.url}  (workers: {config.workers}; Ctrl-C stops)", flush=True)
    return stack.wait()


def cmd_start(config: StackConfig) -> int:
    pid_file = config.path("stack.pid")
    if _read_pid(pid_file):
        print(f"already running (pid {_read_pid(pid_file)}) at {config.url}")
        return 0
    config.path("logs").mkdir(parents=True, exist_ok=True)
    with open(config.path("logs/stack.log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, "run"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + 180
    while not http_ok(f"{config.url}/readyz"):
        if process.poll() is not None or time.monotonic() > deadline:
            print(_tail(config.path("logs/stack.log")), file=sys.stderr)
            pid_file.unlink(missing_ok=True)
            return 1
        time.sleep(0.2)
    print(f"modelstack is serving {config.url} (pid {process.pid}; `make stop` stops it)")
    return 0


def cmd_stop(config: StackConfig) -> int:
    pid_file = config.path("stack.pid")
    pid = _read_pid(pid_file)
    if not pid:
        print("not running")
        pid_file.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + config.worker_reload_mercy * 2 + 15
    while _read_pid(pid_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _read_pid(pid_file):
        print(f"pid {pid} did not stop in time", file=sys.stderr)
        return 1
    pid_file.unlink(missing_ok=True)
    print("stopped")
    return 0


def cmd_status(config: StackConfig) -> int:
    ready = http_ok(f"{config.url}/readyz")
    print(f"{config.url}: {'ready' if ready else 'not answering'}")
    try:
        stats = uwsgi_stats(config)
    except OSError:
        return 0 if ready else 1
    print(f"uWSGI {stats.get('version')}, listen queue {stats.get('listen_queue')}/{config.listen_backlog}")
    for worker in stats["workers"]:
        print(f"  worker {worker['id']}: pid {worker['pid']} {worker['status']}, {worker['requests']} requests, "
              f"rss {worker['rss'] // 2**20} MB, respawned {worker['respawn_count'] - 1} times")
    return 0 if ready else 1


def cmd_reload(config: StackConfig, timeout: float = 300) -> int:
    """Re-render nginx (reloading it if that changed anything), then chain-reload the workers one at a time."""
    try:
        before = {w["id"]: w["pid"] for w in uwsgi_stats(config)["workers"]}
    except OSError:
        print(f"no stack is running from {config.run_dir}", file=sys.stderr)
        return 1
    start = time.monotonic()
    rendered = [config.path("nginx.conf"), config.path("modelstack.conf")]
    before_render = [path.read_bytes() if path.exists() else b"" for path in rendered]
    render(config, config.run_dir)
    nginx_pid = _read_pid(config.path("nginx.pid"))
    # Only when its config changed: a reload retires nginx's workers, and a client that reuses
    # a keep-alive connection just as its worker closes it sees the connection reset.
    if nginx_pid and before_render != [path.read_bytes() for path in rendered]:
        os.kill(nginx_pid, signal.SIGHUP)
    os.utime(config.path("reload.trigger"))
    while time.monotonic() - start < timeout:
        try:
            workers = uwsgi_stats(config)["workers"]
        except OSError:
            workers = []
        replaced = [w for w in workers if w["pid"] not in before.values() and w["pid"] > 0]
        # A replaced worker accepts requests once it has loaded the app (lazy-apps).
        if len(replaced) == len(before) and all(w["accepting"] for w in replaced):
            print(f"reloaded {len(before)} workers in {time.monotonic() - start:.1f} s")
            return 0
        time.sleep(0.2)
    print("the rolling reload did not finish in time", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "start", "stop", "status", "reload", "uwsgi"):
        sub.add_parser(name)
    render_parser = sub.add_parser("render", help="write nginx configs (nginx.conf and modelstack.conf)")
    render_parser.add_argument("--out", type=Path, help="folder to write into (default: the run directory)")
    render_parser.add_argument("--site-only", action="store_true", help="only the server config, for a system nginx")
    args = parser.parse_args(argv)
    if args.command in ("stop", "status", "reload"):
        restore_settings(default_run_dir())
    config = StackConfig()
    if args.command == "render":
        print(render(config, args.out or config.run_dir, args.site_only))
        return 0
    if args.command == "uwsgi":
        exec_uwsgi(config)
    commands = {"run": cmd_run, "start": cmd_start, "stop": cmd_stop, "status": cmd_status, "reload": cmd_reload}
    return commands[args.command](config)


if __name__ == "__main__":
    sys.exit(main())
