"""nginx in front of the workers: what reaches them, what nginx answers itself, and to whom.

Real nginx and uWSGI on loopback. 127.0.0.2 plays an outside client: it is
another loopback address, and these stacks allow only 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
import warnings

import psutil
import pytest
import requests
import urllib3

from app.settings import Settings

from .digits import digit_png
from .stackrunner import ROOT, STACK, RunningStack, free_port, start_stack

PREDICT = "/api/v1/models/digits/predict"
INFER = "/v2/models/digits/infer"
ZEROS = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def served_by_workers(stack: RunningStack) -> int:
    """Requests the uWSGI workers have handled so far.

    A worker counts a request after the client has its answer: read until the count settles.
    """
    count = -1
    for _ in range(50):
        settled, count = count, sum(w["requests"] for w in stack.uwsgi_stats()["workers"])
        if count == settled:
            return count
        time.sleep(0.2)
    raise AssertionError("the workers' request counts never settled")


def log_line(lines, request_id: str, timeout: float = 5) -> dict:
    """The one line ``lines()`` returns for ``request_id``, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in lines() if line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} log lines for request {request_id}"
            return found[0]
        time.sleep(0.05)


def app_log(stack: RunningStack) -> list[dict]:
    """The app's JSON request lines, among uWSGI's own (some of which start with "{address space")."""
    return [json.loads(line) for line in stack.uwsgi_log().splitlines() if line.startswith('{"')]


def assert_nginx_json_error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert fragment in response.json()["error"]
    assert GENERATED_ID.fullmatch(response.headers["X-Request-ID"])


def get_from(stack: RunningStack, path: str, source: str, request_id: str) -> tuple[int, dict, bytes]:
    """GET ``path`` from the local address ``source`` (requests cannot choose one)."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", path, headers={"X-Request-ID": request_id})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# -- the default stack ------------------------------------------------------------


def test_requests_reach_the_model_through_nginx(stack, digits):
    image, label = digits[1]
    response = stack.post(PREDICT, files={"file": ("d.png", digit_png(image))}, headers={"X-Request-ID": "reach-1"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == str(label)
    assert response.headers["Server"] == "nginx"  # server_tokens off: no version
    for header in ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy", "Referrer-Policy"):
        assert header in response.headers
    line = log_line(stack.access_log, "reach-1")
    assert (line["method"], line["uri"], line["status"], line["upstream_status"]) == ("POST", PREDICT, 200, "200")
    # nginx rounds both to its millisecond clock, each from its own start: allow that one step.
    assert line["request_time"] + 0.001 >= float(line["upstream_response_time"]) > 0


def test_static_files_come_from_nginx_not_the_workers(stack):
    before = served_by_workers(stack)
    response = stack.get("/static/style.css")
    assert response.status_code == 200
    assert response.content == (ROOT / "app" / "web" / "static" / "style.css").read_bytes()
    assert response.headers["Content-Type"] == "text/css"
    assert "Last-Modified" in response.headers and response.headers["Cache-Control"] == "max-age=3600"
    again = stack.get("/static/style.css", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304
    assert stack.get("/static/no-such-file.css").status_code == 404
    assert served_by_workers(stack) == before


@pytest.mark.parametrize("supplied, kept", [
    ("client-id.42:retry-1", True),
    (None, False),
    ("two words", False),
    ("x" * 129, False),
    ("<script>", False),
])
def test_request_id_is_kept_or_generated_logged_and_passed_to_the_app(stack, supplied, kept):
    headers = {"X-Request-ID": supplied} if supplied is not None else {}
    response = stack.post(INFER, json=ZEROS, headers=headers)
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    assert "," not in request_id, "one id, not the app's and nginx's"
    if kept:
        assert request_id == supplied
    else:
        assert GENERATED_ID.fullmatch(request_id) and request_id != supplied
    assert log_line(stack.access_log, request_id)["status"] == 200
    assert log_line(lambda: app_log(stack), request_id)["path"] == INFER


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_over_the_limit_gets_json_413_from_nginx_before_any_worker(stack, chunked):
    limit_mb = Settings().max_upload_mb
    body = b"\0" * (20 * 2**20)
    before = served_by_workers(stack)
    # A generator has no length: requests sends it chunked, so nginx must count as it reads.
    data = (body[i:i + 2**20] for i in range(0, len(body), 2**20)) if chunked else body
    response = stack.post(PREDICT, data=data, headers={"Content-Type": "image/png"})
    assert_nginx_json_error(response, 413, f"{limit_mb} MB")
    assert served_by_workers(stack) == before
    line = log_line(stack.access_log, response.headers["X-Request-ID"])
    assert (line["method"], line["status"], line["upstream_status"]) == ("POST", 413, "")


def test_loopback_is_exempt_from_the_rate_limit_by_default(stack):
    site = (stack.run_dir / "modelstack.conf").read_text()
    rate = int(re.search(r"zone=inference:\S+ rate=(\d+)r/s", site).group(1))
    burst = int(re.search(r"limit_req zone=inference burst=(\d+)", site).group(1))
    # Well past rate + burst within a second: from another address most of these would get 429.
    with requests.Session() as session:
        statuses = [session.post(stack.url + INFER, json=ZEROS, timeout=10).status_code
                    for _ in range(3 * (rate + burst))]
    assert set(statuses) == {200}


def test_the_app_socket_is_a_private_unix_socket_and_uwsgi_opens_no_tcp_port(stack):
    mode = os.stat(stack.run_dir / "uwsgi.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    master = psutil.Process(stack.master_pid())
    processes = [master, *master.children()]
    assert len(processes) == 3
    for process in processes:
        assert process.net_connections(kind="inet") == [], f"uWSGI pid {process.pid} has a TCP/UDP socket"
    paths = {c.laddr for c in master.net_connections(kind="unix")}
    assert str(stack.run_dir / "uwsgi.sock") in paths


# -- a stack with tight limits -------------------------------------------------------


@pytest.fixture(scope="module")
def restricted(tmp_path_factory) -> RunningStack:
    """One request per second (burst 1) for everyone but 192.0.2.1; metrics only for 127.0.0.1."""
    running = start_stack(
        tmp_path_factory.mktemp("restricted") / "run",
        RATE_LIMIT="1", RATE_BURST="1", RATE_LIMIT_EXEMPT="192.0.2.1/32", METRICS_ALLOW="127.0.0.1",
    )
    yield running
    running.stop()


def test_rate_limit_answers_json_429_with_retry_after(restricted):
    time.sleep(1.1)  # a fresh second: no earlier test's requests count
    before = served_by_workers(restricted)
    responses = [restricted.post(INFER, json=ZEROS) for _ in range(6)]
    statuses = [r.status_code for r in responses]
    assert statuses[:2] == [200, 200] and 429 in statuses, statuses
    for response in responses:
        if response.status_code == 429:
            assert_nginx_json_error(response, 429, "too many requests")
            assert response.headers["Retry-After"] == "1"
    assert served_by_workers(restricted) == before + statuses.count(200)
    # The log keeps the client's method, although nginx answers its error pages as a GET.
    limited = next(r for r in responses if r.status_code == 429)
    assert log_line(restricted.access_log, limited.headers["X-Request-ID"])["method"] == "POST"
    # Only inference is limited: metadata and health answer however fast they are asked.
    assert {restricted.get("/v2/models/digits").status_code for _ in range(10)} == {200}


def assert_forbidden(status: int, headers: dict, body: bytes) -> None:
    assert status == 403 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": "forbidden"}


def test_metrics_reach_a_worker_only_from_allowed_addresses(restricted):
    assert_forbidden(*get_from(restricted, "/metrics", "127.0.0.2", "metrics-outside"))
    denied = log_line(restricted.access_log, "metrics-outside")
    assert denied["remote_addr"] == "127.0.0.2" and denied["upstream_status"] == ""

    status, _, _ = get_from(restricted, "/metrics", "127.0.0.1", "metrics-inside")
    # Whatever the app answers there, nginx handed the request to a worker.
    allowed = log_line(restricted.access_log, "metrics-inside")
    assert status != 403 and allowed["remote_addr"] == "127.0.0.1" and allowed["upstream_status"] == str(status)


def test_nginx_status_answers_only_allowed_addresses(restricted):
    assert_forbidden(*get_from(restricted, "/nginx_status", "127.0.0.2", "status-outside"))
    status, _, body = get_from(restricted, "/nginx_status", "127.0.0.1", "status-inside")
    assert status == 200 and body.startswith(b"Active connections:")


# -- rendering and TLS ----------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return str(cert), str(key)


def nginx_binary() -> str:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


@pytest.mark.parametrize("settings", [
    {},
    {"RATE_LIMIT": "0"},
    {"TRUSTED_PROXIES": "10.0.0.0/8 192.168.1.1", "LISTEN": "127.0.0.1:18080 [::1]:18080",
     "SERVER_NAME": "example.org"},
    {"TLS": "yes"},
], ids=["default", "no-rate-limit", "behind-a-proxy", "tls"])
def test_rendered_configs_pass_nginx_t(tmp_path, request, settings):
    env = {**os.environ, "RUN_DIR": str(tmp_path), **settings}
    if env.pop("TLS", None):
        cert, key = request.getfixturevalue("certificate")
        env.update(TLS_CERTIFICATE=cert, TLS_CERTIFICATE_KEY=key, TLS_LISTEN="127.0.0.1:18443")
    for folder in ("logs", "nginx"):  # what the launcher would have made
        (tmp_path / folder).mkdir()
    render = subprocess.run([sys.executable, str(STACK), "render"], env=env, capture_output=True, text=True, timeout=60)
    assert render.returncode == 0, render.stderr
    check = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    site = (tmp_path / "modelstack.conf").read_text()
    assert ("limit_req zone" in site) == (settings.get("RATE_LIMIT") != "0")
    assert ("listen 127.0.0.1:18443 ssl http2" in site) == ("TLS" in settings)


def test_tls_serves_https_and_redirects_plain_http(tmp_path, certificate):
    tls_port = free_port()
    stack = start_stack(tmp_path / "run", TLS_CERTIFICATE=certificate[0], TLS_CERTIFICATE_KEY=certificate[1],
                        TLS_LISTEN=f"127.0.0.1:{tls_port}")
    https = f"https://127.0.0.1:{tls_port}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            response = requests.post(https + INFER, json=ZEROS, verify=False, timeout=10)
        assert response.status_code == 200 and response.json()["model_name"] == "digits"
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")

        plain = stack.get("/v2/models/digits?x=1", allow_redirects=False)
        assert plain.status_code == 301 and plain.headers["Location"] == f"{https}/v2/models/digits?x=1"
        # Probes (the launcher, load balancers) and scrapes (a VM's own Prometheus and nginx
        # exporter, from allowed networks) still work over plain HTTP.
        assert stack.get("/readyz").status_code == 200
        assert "# TYPE" in stack.get("/metrics", allow_redirects=False).text
        assert "Active connections" in stack.get("/nginx_status", allow_redirects=False).text

        context = ssl.create_default_context(cafile=certificate[0])
        for maximum, expected in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.MAXIMUM_SUPPORTED, "TLSv1.3")):
            context.maximum_version = maximum
            connection = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
            with context.wrap_socket(connection, server_hostname="127.0.0.1") as tls:
                assert tls.version() == expected
    finally:
        stack.stop()
