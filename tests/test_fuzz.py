"""The API fuzzed through the real stack (nginx, uWSGI, ONNX Runtime) with hypothesis and schemathesis.

Random bodies, headers, shapes, datatypes, images, model names, versions and methods go to every
endpoint. Every answer must come within ``TIMEOUT`` seconds, never be a 5xx (nginx's 502 or 504
would mean a worker died or hung), never carry a traceback, and on API paths explain itself as
JSON ``{"error": "..."}`` (``fuzzing.fault``). Answers of the inference operations must be
documented in /openapi.json. Around each test the uWSGI workers must be the same processes, none
respawned, and the uWSGI log must gain no harakiri, fatal signal or traceback.

The stack runs with an API key, as on a VM: requests carry it unless the fuzzer sends its own.
Examples are derandomized, so CI replays the same requests. ``FUZZ_EXAMPLES`` (default 500) sets
each hypothesis test's examples and a tenth of it schemathesis' per operation: ``FUZZ_EXAMPLES=5000``
fuzzes for about six minutes (more may need ``--timeout=0``). ``pytest -s`` prints the answers by status.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from . import fuzzing as fuzz
from .stackrunner import ROOT, RunningStack, start_stack

TIMEOUT = 10
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # One stack serves every example: the worker check runs around the whole test, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
API_KEY = "fuzz-key-0123456789abcdef"
# What the logs say when a uWSGI worker is cut (harakiri) or killed (signal 9, 11), the app
# raised, or an nginx worker crashed.
DEATH_SIGNS = {
    "uwsgi.log": ("HARAKIRI", "killed by signal", "DAMN", "Traceback", "unhandled error"),
    "nginx-error.log": ("exited on signal",),
}


@dataclass
class Tally:
    """One test's answers, for the figures printed after it."""

    statuses: Counter = field(default_factory=Counter)
    slowest: float = 0.0


tally = Tally()


@dataclass
class Answer:
    method: str
    path: str
    sent: bytes | None
    headers: dict[str, str]
    status: int
    content_type: str
    body: bytes

    def __repr__(self) -> str:
        return (f"{self.method} {self.path[:300]} headers={self.headers} body={(self.sent or b'')[:300]!r}"
                f"\n-> {self.status} {self.content_type}: {self.body[:300]!r}")


def send(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    """One request as given (no URL normalisation, unlike requests and urllib3) on its own connection."""
    headers = {"X-API-Key": API_KEY, **(headers or {})}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    started = time.monotonic()
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        answer = Answer(method, path, body, headers, response.status, response.getheader("Content-Type", ""),
                        response.read())
    except TimeoutError:
        pytest.fail(f"no answer within {TIMEOUT} s: {method} {path[:300]} headers={headers}")
    except (OSError, http.client.HTTPException) as exc:
        pytest.fail(f"no answer ({exc!r}): {method} {path[:300]} headers={headers}")
    finally:
        connection.close()
    elapsed = time.monotonic() - started
    tally.slowest = max(tally.slowest, elapsed)
    assert elapsed < TIMEOUT, f"{elapsed:.1f} s: {answer}"
    return answer


def check(answer: Answer) -> Answer:
    tally.statuses[answer.status] += 1
    accept = next((value for name, value in answer.headers.items() if name.lower() == "accept"), "")
    problem = fuzz.fault(answer.method, answer.path, answer.status, answer.content_type, answer.body, accept)
    assert problem is None, f"{problem}: {answer}"
    return answer


def worker_states(stack: RunningStack) -> dict[int, tuple[int, int, int]]:
    return {w["id"]: (w["pid"], w["respawn_count"], w["harakiri_count"]) for w in stack.uwsgi_stats()["workers"]}


def log_sizes(stack: RunningStack) -> dict[str, int]:
    return {name: (stack.run_dir / "logs" / name).stat().st_size for name in DEATH_SIGNS}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> RunningStack:
    """A stack of its own with an API key, that never recycles workers: a new worker pid means a death."""
    running = start_stack(tmp_path_factory.mktemp("fuzz") / "run", API_KEYS=API_KEY,
                          MAX_REQUESTS="1000000000", MAX_WORKER_LIFETIME="1000000000")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def port(fuzzed) -> int:
    """What the tests take: hypothesis prints a failing test's arguments, and a port prints short."""
    return fuzzed.port


@pytest.fixture(scope="module")
def documented(fuzzed):
    spec = fuzzed.get("/openapi.json").json()

    def check_documented(template: str, answer: Answer) -> None:
        """The answer's status, and its content type when it has a body, are in /openapi.json.

        Except 414: a URL over nginx's 8 KB is a failure of HTTP itself, no operation's answer.
        """
        if answer.status == 414:
            return
        responses = spec["paths"][template][answer.method.lower()]["responses"]
        assert str(answer.status) in responses, f"undocumented status for {template}: {answer}"
        content = responses[str(answer.status)].get("content")
        if content and answer.body:
            media = answer.content_type.split(";")[0].strip()
            assert media in content, f"undocumented content type for {template}: {answer}"

    return check_documented


@pytest.fixture(autouse=True)
def workers_survive(fuzzed, request):
    before, sizes = worker_states(fuzzed), log_sizes(fuzzed)
    tally.statuses.clear()
    tally.slowest = 0.0
    yield
    if tally.statuses:
        print(f"\n{request.node.name}: {tally.statuses.total()} answers, slowest {tally.slowest * 1000:.0f} ms, "
              f"by status {dict(sorted(tally.statuses.items()))}")
    assert worker_states(fuzzed) == before, "a uWSGI worker died, was respawned or hit harakiri"
    for name, start in sizes.items():
        with open(fuzzed.run_dir / "logs" / name, "rb") as log:
            log.seek(start)
            added = log.read().decode(errors="replace")
        found = [sign for sign in DEATH_SIGNS[name] if sign in added]
        assert not found, f"{name} says {found}:\n{added[-3000:]}"


# -- Open Inference Protocol ---------------------------------------------------------------

INFER = "/v2/models/{name}/infer"
INFER_VERSION = "/v2/models/{name}/versions/{version}/infer"


@FUZZ
@given(
    body=st.one_of(fuzz.infer_documents().map(fuzz.to_json), fuzz.infer_documents().map(fuzz.to_json),
                   st.binary(max_size=300)),
    headers=fuzz.body_headers("application/json"),
    template=st.sampled_from([INFER, INFER_VERSION]),
)
def test_infer_json(port, documented, body, headers, template):
    path = template.format(name=fuzz.MODEL, version=1)
    documented(template, check(send(port, "POST", path, body, headers)))


@FUZZ
@given(message=fuzz.binary_infer_bodies(), headers=fuzz.body_headers("application/octet-stream"))
def test_infer_binary(port, documented, message, headers):
    body, length = message
    documented(INFER, check(send(port, "POST", INFER.format(name=fuzz.MODEL), body, {**headers, **length})))


# -- the image endpoint and the upload form ------------------------------------------------

PREDICT = "/api/v1/models/{name}/predict"
PREDICT_VERSION = "/api/v1/models/{name}/versions/{version}/predict"


def replaying(uploads: list[tuple[bytes, str]], **arguments):
    """Replay what fuzzing found on every run, before the generated examples."""
    def decorate(test):
        for upload in uploads:
            test = example(upload=upload, **arguments)(test)
        return test
    return decorate


@FUZZ
@replaying(fuzz.found_uploads(), extra={}, query="", version="")
@given(
    upload=st.one_of(fuzz.multipart_bodies(), st.tuples(fuzz.image_bodies, fuzz.image_types | fuzz.content_types)),
    extra=fuzz.random_headers,
    query=fuzz.top_k_queries,
    version=st.one_of(st.just(""), st.just(""), st.just("/versions/1"), fuzz.versions.map(lambda v: f"/versions/{v}")),
)
def test_predict(port, documented, upload, extra, query, version):
    body, content_type = upload
    path = f"/api/v1/models/{fuzz.MODEL}{version}/predict{query}"
    answer = check(send(port, "POST", path, body, {**extra, "Content-Type": content_type}))
    documented(PREDICT_VERSION if version else PREDICT, answer)


# The form's own fields: usually the model alone or with a version, sometimes anything.
form_fields = st.one_of(
    st.just([("model", fuzz.MODEL)]),
    st.just([("model", fuzz.MODEL), ("version", "1")]),
    st.lists(st.tuples(st.sampled_from(["model", "version"]), fuzz.names | fuzz.versions), max_size=3),
)


@FUZZ
@replaying(fuzz.found_uploads(("model", fuzz.MODEL)))
@given(upload=fuzz.multipart_bodies(form_fields, counts=st.just(1) | st.integers(0, 2)))
def test_upload_form(port, upload):
    body, content_type = upload
    check(send(port, "POST", "/predict", body, {"Content-Type": content_type}))


# -- reads and methods ---------------------------------------------------------------------


@FUZZ
@given(path=fuzz.read_paths(), method=st.sampled_from(["GET", "GET", "HEAD"]), headers=fuzz.random_headers)
def test_reads(port, path, method, headers):
    check(send(port, method, path, headers=headers))


known_paths = st.sampled_from([
    "/", "/predict", "/healthz", "/readyz", "/openapi.json", "/metrics", "/v2", "/v2/health/live",
    "/v2/health/ready", "/v2/repository/index", "/v2/models/stats", "/v2/models/digits", "/v2/models/digits/ready",
    "/v2/models/digits/config", "/v2/models/digits/versions/1/stats", "/v2/models/digits/infer",
    "/api/v1/models/digits/predict", "/models/digits", "/static/style.css", "/nope",
])


@FUZZ
@given(method=fuzz.methods, path=known_paths | fuzz.read_paths(), body=st.none() | st.binary(max_size=200),
       headers=fuzz.random_headers)
def test_any_method(port, method, path, body, headers):
    check(send(port, method, path, body, headers))


# -- schemathesis against /openapi.json ----------------------------------------------------

SCHEMATHESIS_CONFIG = """
request-timeout = {timeout}
workers = 1

[generation]
max-examples = {examples}
deterministic = true

[auth.openapi.apiKey]
api_key = "{key}"
"""


def test_schemathesis(fuzzed, tmp_path):
    """schemathesis' own phases (examples, coverage, fuzzing, stateful) and all its checks but one,
    ignored_auth among them, plus ``fuzzing.fault`` (tests/schemathesis_hooks.py).

    Left out: positive_data_acceptance. A schema cannot say "a decodable image" or "the model's
    own input names and shape", so requests it allows are rightly refused with 400, 415 or 422.
    Its CLI, not its pytest plugin: the plugin's lazy loading does not run under pytest 9.
    """
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG.format(timeout=TIMEOUT, examples=max(1, EXAMPLES // 10), key=API_KEY))
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
         fuzzed.url + "/openapi.json", "--checks", "all", "--exclude-checks", "positive_data_acceptance"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"},
        capture_output=True, encoding="utf-8", errors="replace", timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    print("\nschemathesis:", *re.findall(r"\d+ generated, .*", output))
