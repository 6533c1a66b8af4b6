"""API keys (app/auth.py) through the real stack: nginx, uWSGI workers, the app, the logs.

One stack runs with a key in API_KEYS and another in the file API_KEYS_FILE names, so both
sources are in force at once. The session ``stack`` (no keys) shows the default: open.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from app import auth
from app.auth import UNAUTHORIZED, accepts
from app.settings import env_keys

from .digits import digit_png
from .stackrunner import RunningStack, start_stack

INFER = "/v2/models/digits/infer"
PREDICT = "/api/v1/models/digits/predict"
ENV_KEY = secrets.token_urlsafe(32)
FILE_KEY = secrets.token_urlsafe(32)
# A well-formed key the server does not know: it must not show up in a log either.
WRONG_KEY = secrets.token_urlsafe(32)
OPEN_PATHS = ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/openapi.json"]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> RunningStack:
    base = tmp_path_factory.mktemp("auth")
    key_file = base / "api_keys"  # outside the run folder, whose files the log test reads
    key_file.write_text(f"# the operator's comment\n{FILE_KEY}\n")
    key_file.chmod(0o640)
    running = start_stack(base / "run", API_KEYS=ENV_KEY, API_KEYS_FILE=str(key_file))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def digit(digits) -> tuple[np.ndarray, int]:
    """A held-out 9 the model is sure of (0.9996): a right answer shows the request got through."""
    return digits[3]


def infer_body(image: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": (image.astype(np.float32) / 16).tolist()}]}


def protected_requests(keyed: RunningStack, digit, headers: dict[str, str]) -> dict[str, object]:
    """One request to each kind of protected endpoint, all with ``headers``."""
    image, _ = digit
    return {
        "infer": keyed.post(INFER, json=infer_body(image), headers=headers),
        "predict": keyed.post(PREDICT, files={"file": ("d.png", digit_png(image))}, headers=headers),
        "model metadata": keyed.get("/v2/models/digits", headers=headers),
        "server metadata": keyed.get("/v2", headers=headers),
        "statistics": keyed.get("/v2/models/digits/stats", headers=headers),
        "repository index": keyed.post("/v2/repository/index", headers=headers),
        # 401 before 404: without a key nobody learns which models exist.
        "unknown model": keyed.get("/v2/models/no-such-model", headers=headers),
    }


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": f"Bearer {WRONG_KEY}"},
    {"X-API-Key": WRONG_KEY},
    {"Authorization": "Bearer "},
    # A right key under another scheme, or with something appended, is still not a bearer token.
    {"Authorization": f"Basic {ENV_KEY}"},
    {"X-API-Key": ENV_KEY[:-1]},
    {"X-API-Key": ENV_KEY + "x"},
], ids=["none", "wrong-bearer", "wrong-x-api-key", "empty-bearer", "basic-scheme", "truncated", "extended"])
def test_without_a_valid_key_every_protected_endpoint_answers_a_bare_401(keyed, digit, headers):
    for name, response in protected_requests(keyed, digit, headers).items():
        assert response.status_code == 401, (name, response.status_code, response.text)
        assert response.headers["Content-Type"] == "application/json", name
        assert response.json() == {"error": UNAUTHORIZED}, name
        assert response.headers["WWW-Authenticate"] == "Bearer", name


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {ENV_KEY}"},
    {"X-API-Key": FILE_KEY},
    {"Authorization": f"bearer {FILE_KEY}"},
    # nginx auth_basic in front sends Basic credentials; the API key then travels in X-API-Key.
    {"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": ENV_KEY},
], ids=["bearer-env-key", "x-api-key-file-key", "lowercase-scheme", "basic-plus-x-api-key"])
def test_a_configured_key_in_either_header_gets_the_answer(keyed, digit, headers):
    image, label = digit
    answers = protected_requests(keyed, digit, headers)
    for name, response in answers.items():
        assert response.status_code == (404 if name == "unknown model" else 200), (name, response.text)
    [probabilities] = [o for o in answers["infer"].json()["outputs"] if o["name"] == "probabilities"]
    assert int(np.argmax(probabilities["data"])) == label
    assert answers["predict"].json()["predictions"][0]["label"] == str(label)
    assert answers["model metadata"].json()["name"] == "digits"


def test_probes_the_api_description_and_metrics_need_no_key(keyed):
    for path in OPEN_PATHS:
        assert keyed.get(path).status_code == 200, path
    # Private through nginx's allow-list (loopback is on it), not through the key: Prometheus scrapes it.
    metrics = keyed.get("/metrics")
    assert metrics.status_code == 200 and "modelstack_http_requests_in_flight" in metrics.text


def test_the_web_page_and_its_upload_form_need_no_key(keyed, digit):
    image, label = digit
    page = keyed.get("/")
    assert page.status_code == 200 and '<form id="classify"' in page.text
    answer = keyed.post("/predict", data={"model": "digits"}, files={"file": ("d.png", digit_png(image))})
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/html")
    assert re.search(r'<h1 id="answer">This image is an? (\w+)</h1>', answer.text).group(1) == str(label)


def test_openapi_declares_the_keys_only_where_the_server_enforces_them(keyed, stack):
    spec = keyed.get("/openapi.json").json()
    assert spec["security"] == [{"bearer": []}, {"apiKey": []}]
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if path in OPEN_PATHS:
                assert operation["security"] == [] and "401" not in operation["responses"], path
            else:
                assert "security" not in operation and "401" in operation["responses"], path
    # Without keys (the session stack) nothing asks a client or a fuzzer for one.
    assert "security" not in stack.get("/openapi.json").json()
    assert stack.get("/v2/models/digits").status_code == 200


def test_tritonclient_sends_the_key_in_its_headers(keyed, digit):
    image, label = digit
    client = httpclient.InferenceServerClient(keyed.url.removeprefix("http://"), network_timeout=30)
    try:
        assert client.is_server_live() and client.is_server_ready()
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_metadata("digits")
        assert str(caught.value.status()) == "401"
        headers = {"Authorization": f"Bearer {ENV_KEY}"}
        assert client.get_model_metadata("digits", headers=headers)["name"] == "digits"
        inputs = [httpclient.InferInput("input", [1, 64], "FP32")]
        inputs[0].set_data_from_numpy(image.reshape(1, 64).astype(np.float32) / 16)
        result = client.infer("digits", inputs, headers=headers)
        assert int(np.argmax(result.as_numpy("probabilities"))) == label
    finally:
        client.close()


def test_keys_never_reach_a_log(keyed, digit):
    request_ids = []
    for headers, status in [({"Authorization": f"Bearer {ENV_KEY}"}, 200), ({"X-API-Key": FILE_KEY}, 200),
                            ({"Authorization": f"Bearer {WRONG_KEY}"}, 401), ({"X-API-Key": WRONG_KEY}, 401)]:
        request_id = f"auth-log-{uuid.uuid4().hex}"
        request_ids.append(request_id)
        response = keyed.post(INFER, json=infer_body(digit[0]), headers={**headers, "X-Request-ID": request_id})
        assert response.status_code == status
    logs = sorted((keyed.run_dir / "logs").glob("*")) + [keyed.log]
    # The app writes its line after the answer; wait until every request is in both logs.
    deadline = time.monotonic() + 10
    while not all(rid in keyed.uwsgi_log() and rid in (keyed.run_dir / "logs" / "access.log").read_text()
                  for rid in request_ids):
        assert time.monotonic() < deadline, "the requests never reached the app's and nginx's logs"
        time.sleep(0.1)
    text = "\n".join(path.read_text(errors="replace") for path in logs if path.is_file())
    for key in (ENV_KEY, FILE_KEY, WRONG_KEY):
        assert key not in text and key[:12] not in text
    assert "Bearer " not in text


@pytest.mark.parametrize("problem", ["world-readable", "missing"])
def test_a_key_file_others_can_read_or_that_is_missing_stops_the_start(tmp_path, problem):
    key_file = tmp_path / "api_keys"
    if problem == "world-readable":
        key_file.write_text(FILE_KEY + "\n")
        key_file.chmod(0o644)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as caught:
        stack = start_stack(tmp_path / "run", timeout=60, API_KEYS_FILE=str(key_file))
        stack.stop()
    message = str(caught.value)
    expected = "is readable by every user: chmod o-rwx" if problem == "world-readable" else "No such file or directory"
    assert f"API_KEYS_FILE={key_file}" in message and expected in message
    assert FILE_KEY not in message
    print(f"refused in {time.monotonic() - started:.1f} s")


# -- unit level: reading keys, comparing them -----------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    ("", "holds no keys"),
    ("# only a comment\n\n", "holds no keys"),
    ("short-key\n", "every key needs 16 or more printable ASCII characters"),
])
def test_an_empty_or_weak_key_file_is_refused_without_naming_the_key(tmp_path, monkeypatch, content, expected):
    key_file = tmp_path / "keys"
    key_file.write_text(content)
    key_file.chmod(0o600)
    monkeypatch.delenv("API_KEYS", raising=False)
    monkeypatch.setenv("API_KEYS_FILE", str(key_file))
    with pytest.raises(ValueError, match=expected) as caught:
        env_keys("API_KEYS", "API_KEYS_FILE")
    assert "short-key" not in str(caught.value)


def test_keys_come_from_the_variable_and_the_file_together(tmp_path, monkeypatch):
    key_file = tmp_path / "keys"
    key_file.write_text(f"# alice\n{FILE_KEY}  # until June\n{WRONG_KEY},{ENV_KEY}\n")
    key_file.chmod(0o640)
    monkeypatch.setenv("API_KEYS", f"{ENV_KEY}, {'k' * 16}")
    monkeypatch.setenv("API_KEYS_FILE", str(key_file))
    assert env_keys("API_KEYS", "API_KEYS_FILE") == {ENV_KEY, "k" * 16, FILE_KEY, WRONG_KEY}
    monkeypatch.delenv("API_KEYS")
    monkeypatch.delenv("API_KEYS_FILE")
    assert env_keys("API_KEYS", "API_KEYS_FILE") == frozenset()


def test_every_key_is_compared_in_full_whichever_matches(monkeypatch):
    """No early exit and equal lengths: the work done tells nothing about which key matched."""
    keys = [secrets.token_urlsafe(n) for n in (16, 24, 32, 48, 64)]
    calls = []

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return secrets.compare_digest(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented, expected in [(keys[0], True), (keys[-1], True), (keys[2], True),
                                (WRONG_KEY, False), ("", False), (keys[1][:-1], False)]:
        calls.clear()
        assert accepts(presented, keys) is expected
        assert len(calls) == len(keys), presented
        assert set(calls) == {(32, 32)}  # SHA-256 digests, whatever the keys' lengths
