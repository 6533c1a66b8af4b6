"""The JSON API through nginx: accuracy on real digits, tritonclient, raw binary tensors, health and OpenAPI.

Every answer is checked against ONNX Runtime run here on the same model file.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from app.inference.config import load_config
from app.inference.preprocess import decode, to_array
from app.settings import PROJECT_ROOT

from .digits import digit_png

MODEL_DIR = PROJECT_ROOT / "models" / "digits"
PREDICT = "/api/v1/models/digits/predict"
INFER = "/v2/models/digits/infer"
BATCH = 64  # the digits model's max_batch_size


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def batch(digits) -> np.ndarray:
    """Five held-out digits as the model takes them: FP32 [5, 64], values 0..1."""
    return np.stack([image for image, _ in digits[:5]]).astype(np.float32) / 16


@pytest.fixture(scope="module")
def expected(session, batch) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": batch})))


@pytest.fixture(scope="module")
def client(stack) -> httpclient.InferenceServerClient:
    client = httpclient.InferenceServerClient(stack.url.removeprefix("http://"), network_timeout=30)
    yield client
    client.close()


def chunks(items: list, size: int = BATCH):
    return [items[start : start + size] for start in range(0, len(items), size)]


# -- accuracy on held-out digits, through both endpoints -------------------------------------

# Picture variants: (side in pixels, dark ink on light paper?)
VARIANTS = [(20, True), (48, False), (120, True), (32, False), (64, True), (200, False)]


def test_accuracy_through_the_image_endpoint(stack, digits):
    pictures = [(digit_png(image, *VARIANTS[i % len(VARIANTS)]), label, VARIANTS[i % len(VARIANTS)])
                for i, (image, label) in enumerate(digits)]
    hits: dict[tuple, list[bool]] = defaultdict(list)
    for chunk in chunks(pictures):
        files = [("file", (f"{n}.png", png, "image/png")) for n, (png, _, _) in enumerate(chunk)]
        response = stack.post(PREDICT, files=files)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(chunk)
        for result, (_, label, variant) in zip(results, chunk):
            hits[variant].append(result["predictions"][0]["label"] == str(label))
    for (side, dark_on_light), marks in sorted(hits.items()):
        print(f"{side:4d} px {'dark on light' if dark_on_light else 'light on dark'}: "
              f"{np.mean(marks):.3f} of {len(marks)}")
    accuracy = np.mean([mark for marks in hits.values() for mark in marks])
    print(f"{PREDICT}: accuracy {accuracy:.4f} on {len(digits)} held-out digits")
    assert accuracy >= 0.95


def test_accuracy_through_the_open_inference_protocol(stack, digits):
    """The server applies no preprocessing here: the client sends the 8x8 values scaled to 0..1."""
    correct = 0
    for chunk in chunks(digits):
        tensor = np.stack([image for image, _ in chunk]).astype(np.float32) / 16
        request = {"inputs": [{"name": "input", "shape": list(tensor.shape), "datatype": "FP32",
                               "data": tensor.ravel().tolist()}],
                   "outputs": [{"name": "probabilities"}]}
        response = stack.post(INFER, json=request)
        assert response.status_code == 200, response.text
        [output] = response.json()["outputs"]
        scores = np.reshape(output["data"], output["shape"])
        correct += int((scores.argmax(axis=1) == [label for _, label in chunk]).sum())
    accuracy = correct / len(digits)
    print(f"{INFER}: accuracy {accuracy:.4f} on {len(digits)} held-out digits")
    assert accuracy >= 0.95


def test_image_endpoint_scores_equal_onnx_runtime_on_the_same_preprocessing(stack, digits, session):
    pre = load_config(MODEL_DIR).preprocess
    png = digit_png(digits[7][0], size=90, dark_on_light=True)
    features = to_array(decode(png, 10**6, pre), pre).reshape(1, 64)
    [probabilities] = session.run(["probabilities"], {"input": features})[0]

    response = stack.post(PREDICT + "?top_k=3", data=png, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "digits" and body["version"] == "1"
    top = np.argsort(-probabilities)[:3]
    assert [p["label"] for p in body["predictions"]] == [str(i) for i in top]
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], probabilities[top], rtol=1e-6)


# -- tritonclient.http, unchanged ----------------------------------------------------------------


def test_tritonclient_server_and_model_metadata(client, session):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2") and not client.is_model_ready("no-such-model")
    assert {"binary_tensor_data", "classification"} <= set(client.get_server_metadata()["extensions"])

    metadata = client.get_model_metadata("digits")
    assert metadata["name"] == "digits" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    local = {o.name: o.shape for o in session.get_outputs()}
    assert {o["name"]: len(o["shape"]) for o in metadata["outputs"]} == {n: len(s) for n, s in local.items()}
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]} in metadata["outputs"]

    config = client.get_model_config("digits", "1")
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "labels.txt"} \
        in config["output"]

    assert {"name": "digits", "version": "1", "state": "READY"} in client.get_model_repository_index()

    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no-such-model")
    assert str(caught.value.status()) == "404" and "unknown model 'no-such-model'" in caught.value.message()


def test_tritonclient_inference_statistics(client, batch):
    inputs = [httpclient.InferInput("input", list(batch.shape), "FP32")]
    inputs[0].set_data_from_numpy(batch)
    client.infer("digits", inputs)
    [stats] = client.get_inference_statistics("digits")["model_stats"]
    assert stats["name"] == "digits" and stats["version"] == "1"
    # Each worker keeps its own numbers; whichever answered has counted consistently.
    assert stats["inference_count"] >= stats["execution_count"] >= 0
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(stats["inference_stats"][key]) == {"count", "ns"}


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
def test_tritonclient_infer_equals_onnx_runtime(client, batch, expected, binary_in, binary_out):
    inputs = [httpclient.InferInput("input", list(batch.shape), "FP32")]
    inputs[0].set_data_from_numpy(batch, binary_data=binary_in)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_out) for name in ("probabilities", "label")]
    result = client.infer("digits", inputs, outputs=outputs, request_id="tc-1")

    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    response = result.get_response()
    assert response["id"] == "tc-1" and response["model_name"] == "digits" and response["model_version"] == "1"
    for output in response["outputs"]:
        assert ("binary_data_size" in output.get("parameters", {})) == binary_out
        assert ("data" in output) != binary_out


def test_tritonclient_classification(client, batch, expected):
    inputs = [httpclient.InferInput("input", list(batch.shape), "FP32")]
    inputs[0].set_data_from_numpy(batch)
    for binary in (True, False):
        outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]
        result = client.infer("digits", inputs, model_version="1", outputs=outputs)
        rows = result.as_numpy("probabilities")
        assert rows.shape == (len(batch), 3)
        for row, probabilities in zip(rows, expected["probabilities"]):
            entries = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row]
            top = np.argsort(-probabilities)[:3]
            assert [(int(index), label) for _, index, label in entries] == [(int(i), str(i)) for i in top]
            np.testing.assert_allclose([float(score) for score, _, _ in entries], probabilities[top], atol=1e-6)


# -- the binary tensor extension and JSON without a client library ------------------------------------


def test_raw_binary_request_and_mixed_response(stack, batch, expected):
    header = json.dumps({
        "id": "raw-1",
        "inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                    {"name": "label", "parameters": {"binary_data": False}}],
    }).encode()
    response = stack.post(INFER, data=header + batch.astype("<f4").tobytes(),
                          headers={"Inference-Header-Content-Length": str(len(header)),
                                   "Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/octet-stream"
    length = int(response.headers["Inference-Header-Content-Length"])
    doc = json.loads(response.content[:length])
    assert doc["id"] == "raw-1"
    probabilities, label = doc["outputs"]
    assert probabilities["name"] == "probabilities" and probabilities["shape"] == [5, 10]
    assert probabilities["parameters"]["binary_data_size"] == len(response.content) - length == 5 * 10 * 4
    values = np.frombuffer(response.content[length:], dtype="<f4").reshape(5, 10)
    np.testing.assert_allclose(values, expected["probabilities"], rtol=1e-6, atol=1e-9)
    assert label == {"name": "label", "datatype": "INT64", "shape": [5], "data": expected["label"].tolist()}


@pytest.mark.parametrize("content_type", [
    None, "application/json", "application/octet-stream", "application/x-www-form-urlencoded", "text/plain",
])
def test_json_request_is_read_whatever_the_content_type(stack, batch, expected, content_type):
    body = json.dumps({"inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP32",
                                   "data": batch.tolist()}]}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    response = stack.post(INFER, data=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (5, 10)), expected["probabilities"],
                               rtol=1e-6, atol=1e-9)


# -- health, server metadata, OpenAPI ---------------------------------------------------------


def test_health_and_readiness(stack):
    assert stack.get("/healthz").json() == {"status": "ok"}
    ready = stack.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"]["digits"] == "1"
    assert stack.get("/v2/health/live").status_code == 200
    assert stack.get("/v2/health/ready").status_code == 200
    assert stack.get("/v2/models/digits/versions/1/ready").status_code == 200
    assert stack.get("/v2").json()["name"] == "modelstack"


def test_openapi_document_lists_the_endpoints(stack):
    spec = stack.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
                 "/api/v1/models/{name}/predict", "/healthz", "/readyz", "/v2/repository/index"):
        assert path in spec["paths"], path
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
