"""The requests every system serves: one fixed request per workload, and its in-process equivalent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import sklearn.datasets
from urllib3 import encode_multipart_formdata

from app.api.codec import HEADER_LENGTH
from tests.digits import digit_png, held_out_digits

from . import model

# A real photo (640x427 JPEG, 190 KB) shipped with scikit-learn: what a phone would upload.
PHOTO = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
HOST = "localhost"


@dataclass(frozen=True)
class Workload:
    """One request, repeated: how it is sent over HTTP and what the in-process baseline runs instead."""

    name: str
    description: str
    kind: str  # "health", "image", "json" or "binary": what the answer looks like
    path: str
    model: str | None = None  # None: no inference at all
    body: bytes = b""
    content_type: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    # The baseline's input: image bytes for ModelVersion.classify, or an array for session.run.
    raw_input: bytes | np.ndarray | None = None

    @property
    def method(self) -> str:
        return "POST" if self.body else "GET"

    @property
    def compute_bound(self) -> bool:
        return self.model == model.NAME

    def http_request(self, http10: bool = False) -> bytes:
        """The exact bytes wrk sends. HTTP/1.0 tells the client the server closes the connection."""
        lines = [f"{self.method} {self.path} HTTP/{'1.0' if http10 else '1.1'}", f"Host: {HOST}"]
        if self.body:
            lines += [f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return "\r\n".join(lines).encode() + b"\r\n\r\n" + self.body

    def answer(self, headers: dict[str, str], body: bytes) -> str:
        """What the response says (a label or class index), to check every system did the same work."""
        if self.kind == "health":
            return orjson.loads(body)["status"]
        if self.kind == "image":
            return orjson.loads(body)["predictions"][0]["label"]
        header, tail = body, b""
        if HEADER_LENGTH.lower() in headers:
            size = int(headers[HEADER_LENGTH.lower()])
            header, tail = body[:size], body[size:]
        output = orjson.loads(header)["outputs"][0]
        scores = np.frombuffer(tail, np.float32) if tail else np.asarray(output["data"])
        return str(int(np.argmax(scores)))


def _multipart(filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    return encode_multipart_formdata({"file": (filename, data, content_type)})


# Both models name their scores "probabilities"; asking for that output alone skips the digits model's labels.
OUTPUT = "probabilities"


def _oip_json(array: np.ndarray) -> bytes:
    return orjson.dumps({
        "inputs": [{"name": "input", "shape": list(array.shape), "datatype": "FP32", "data": array.reshape(-1).tolist()}],
        "outputs": [{"name": OUTPUT}],
    })


def _oip_binary(array: np.ndarray) -> tuple[bytes, int]:
    """The binary tensor extension: a JSON header, then raw little-endian bytes in and out."""
    blob = array.astype("<f4").tobytes()
    header = orjson.dumps({
        "inputs": [{"name": "input", "shape": list(array.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
    })
    return header + blob, len(header)


def _image(name: str, model_name: str, description: str, filename: str, data: bytes, mime: str) -> Workload:
    body, content_type = _multipart(filename, data, mime)
    return Workload(name, description, "image", f"/api/v1/models/{model_name}/predict", model_name, body, content_type,
                    raw_input=data)


def _tensors(name: str, model_name: str, description: str, array: np.ndarray, binary: bool) -> Workload:
    path = f"/v2/models/{model_name}/infer"
    if binary:
        body, header_length = _oip_binary(array)
        return Workload(name, description, "binary", path, model_name, body, "application/octet-stream",
                        ((HEADER_LENGTH, str(header_length)),), array)
    return Workload(name, description, "json", path, model_name, _oip_json(array), "application/json",
                    raw_input=array)


def build_workloads() -> dict[str, Workload]:
    """Every workload by name; the compute-bound ones need ``model.write_model`` in the repository."""
    digit, _ = held_out_digits()[0]
    digit_input = (digit.reshape(1, 64) / 16.0).astype(np.float32)
    photo_input = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    workloads = [
        Workload("healthz", "GET /healthz: HTTP and the framework, no model", "health", "/healthz"),
        _image("digits-image", "digits", "digits model, an 80x80 PNG uploaded as multipart/form-data",
               "digit.png", digit_png(digit), "image/png"),
        _tensors("digits-json", "digits", "digits model, one FP32[1,64] tensor as Open Inference Protocol JSON",
                 digit_input, binary=False),
        _tensors("digits-binary", "digits", "digits model, the same tensor with the binary tensor extension",
                 digit_input, binary=True),
        _image("compute-image", model.NAME, "MobileNetV2-like model, a 640x427 JPEG photo (190 KB) as multipart",
               "photo.jpg", PHOTO.read_bytes(), "image/jpeg"),
        _tensors("compute-binary", model.NAME, "MobileNetV2-like model, one FP32[1,3,224,224] binary tensor (600 KB)",
                 photo_input, binary=True),
    ]
    return {workload.name: workload for workload in workloads}
