"""Bad input through nginx: the right status, a JSON ``{"error": ...}`` body, no trace, and the stack keeps serving.

Each case is followed by a good request, and the uWSGI workers must be the
same processes as before (no crash, no respawn).
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from .digits import digit_png, held_out_digits, image_bytes
from .stackrunner import start_stack

PREDICT = "/api/v1/models/digits/predict"
INFER = "/v2/models/digits/infer"
GOOD_DIGIT, GOOD_LABEL = held_out_digits()[0]
GOOD_PNG = digit_png(GOOD_DIGIT)
GOOD_JPEG = image_bytes(Image.open(io.BytesIO(GOOD_PNG)).resize((300, 300)), "JPEG", quality=90)
ZEROS = np.zeros((1, 64), np.float32)


def png_claiming(width: int, height: int) -> bytes:
    """A 67-byte PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's calling card."""
    png = bytearray(image_bytes(Image.new("L", (1, 1))))
    png[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature, length and type
    png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))  # the chunk's CRC covers type and data
    return bytes(png)


def jpeg_claiming(width: int, height: int) -> bytes:
    jpeg = bytearray(image_bytes(Image.new("L", (8, 8)), "JPEG"))
    frame = jpeg.index(b"\xff\xc0")  # start of frame: marker, length, precision, height, width
    jpeg[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def raw_image(data: bytes, content_type: str = "image/png") -> dict:
    return {"data": data, "headers": {"Content-Type": content_type}}


def upload(*images: bytes, field: str = "file") -> dict:
    return {"files": [(field, (f"{n}.png", data, "image/png")) for n, data in enumerate(images)]}


def tensor(shape=(1, 64), datatype="FP32", **extra) -> dict:
    return {"name": "input", "shape": list(shape), "datatype": datatype, **extra}


def infer_json(doc) -> dict:
    return {"data": json.dumps(doc).encode(), "headers": {"Content-Type": "application/json"}}


def infer_binary(array: np.ndarray, size: int | None = None, header_length: str | None = None,
                 tail: bytes = b"") -> dict:
    """A binary-extension request carrying ``array``; ``size`` and ``header_length`` may lie."""
    size = array.nbytes if size is None else size
    header = json.dumps({"inputs": [tensor(array.shape, parameters={"binary_data_size": size})]}).encode()
    length = str(len(header)) if header_length is None else header_length
    return {"data": header + array.astype("<f4").tobytes() + tail,
            "headers": {"Inference-Header-Content-Length": length}}


def with_value(value: float) -> np.ndarray:
    array = ZEROS.copy()
    array[0, 17] = value
    return array


HUGE_NUMBER = "9" * 5000  # int() refuses strings over 4300 digits

CASES = [
    # -- the image endpoint ---------------------------------------------------------------
    pytest.param("POST", PREDICT, raw_image(b""), 400, "the image is empty", id="empty-body"),
    pytest.param("POST", PREDICT, upload(b""), 400, "image is empty", id="empty-file-field"),
    pytest.param("POST", PREDICT, upload(GOOD_PNG, field="image"), 400, "unknown form field 'image'",
                 id="unknown-form-field"),
    pytest.param("POST", PREDICT, raw_image(b"this is not an image at all"), 415, "not a supported image",
                 id="undecodable-image"),
    pytest.param("POST", PREDICT, raw_image(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"), 415,
                 "not a supported image", id="svg-image"),
    pytest.param("POST", PREDICT, upload(GOOD_PNG[: len(GOOD_PNG) // 2]), 400, "corrupt or truncated",
                 id="truncated-png"),
    pytest.param("POST", PREDICT, raw_image(GOOD_JPEG[: len(GOOD_JPEG) // 2], "image/jpeg"), 400,
                 "corrupt or truncated", id="truncated-jpeg"),
    pytest.param("POST", PREDICT, upload(png_claiming(8000, 6000)), 413,
                 "8000x6000 pixels; the limit is 40000000", id="bomb-png-over-max-image-pixels"),
    pytest.param("POST", PREDICT, upload(png_claiming(50000, 50000)), 413, "pixels", id="bomb-png-gigapixel"),
    pytest.param("POST", PREDICT, raw_image(jpeg_claiming(65000, 65000), "image/jpeg"), 413, "pixels",
                 id="bomb-jpeg-gigapixel"),
    pytest.param("POST", PREDICT, raw_image(GOOD_PNG, "text/plain"), 415, "unsupported Content-Type 'text/plain'",
                 id="unsupported-media-type"),
    pytest.param("POST", "/api/v1/models/nope/predict", upload(GOOD_PNG), 404, "unknown model 'nope'",
                 id="unknown-model"),
    pytest.param("POST", "/api/v1/models/digits/versions/7/predict", upload(GOOD_PNG), 404,
                 "has no version '7'", id="unknown-version"),
    pytest.param("POST", "/api/v1/models/digits/versions/latest/predict", upload(GOOD_PNG), 404,
                 "has no version 'latest'", id="version-not-a-number"),
    pytest.param("POST", "/api/v1/models/digits/versions/\u00b9/predict", upload(GOOD_PNG), 404,
                 "has no version", id="version-superscript-one"),
    pytest.param("POST", f"/api/v1/models/digits/versions/{HUGE_NUMBER}/predict", upload(GOOD_PNG), 404,
                 "has no version", id="version-5000-digits"),
    pytest.param("GET", PREDICT, {}, 405, "method GET is not allowed", id="get-on-predict"),
    pytest.param("POST", PREDICT + "?top_k=0", upload(GOOD_PNG), 400, "top_k must be an integer from 1 to 10",
                 id="top-k-zero"),
    pytest.param("POST", PREDICT + "?top_k=11", upload(GOOD_PNG), 400, "top_k", id="top-k-too-big"),
    pytest.param("POST", PREDICT + "?top_k=-1", upload(GOOD_PNG), 400, "top_k", id="top-k-negative"),
    pytest.param("POST", PREDICT + "?top_k=three", upload(GOOD_PNG), 400, "top_k", id="top-k-word"),
    pytest.param("POST", PREDICT + "?top_k=\u00b2", upload(GOOD_PNG), 400, "top_k", id="top-k-superscript-two"),
    pytest.param("POST", PREDICT + f"?top_k={HUGE_NUMBER}", upload(GOOD_PNG), 400, "top_k", id="top-k-5000-digits"),
    pytest.param("POST", PREDICT, upload(*[GOOD_PNG] * 65), 400, "65 images in one request; the limit is 64",
                 id="too-many-files"),
    pytest.param("POST", PREDICT, raw_image(bytes(9 * 1024 * 1024)), 413, "the limit is 8 MB",
                 id="body-over-max-upload-mb"),
    # -- the Open Inference Protocol ------------------------------------------------------
    pytest.param("POST", INFER, {"data": b""}, 400, "the request body is empty", id="infer-empty-body"),
    pytest.param("POST", INFER, {"data": b"inputs=1"}, 400, "not valid JSON", id="infer-not-json"),
    pytest.param("POST", INFER, {"data": b"\xff\xfe{}"}, 400, "not valid JSON", id="infer-not-utf8"),
    pytest.param("POST", INFER, infer_json([1, 2]), 400, "must be a JSON object", id="infer-top-level-array"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor(data=[0] * 64)], "priority": 1}), 400,
                 "unknown field 'priority'", id="infer-unknown-field"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor(data=[0] * 64, content=1)]}), 400,
                 "inputs[0] has unknown field 'content'", id="infer-unknown-input-field"),
    pytest.param("POST", INFER, infer_json({"inputs": [{**tensor(data=[0] * 64), "name": "x"}]}), 400,
                 "'x' is not an input of digits", id="infer-unknown-input"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor(data=[0] * 64)], "outputs": [{"name": "x"}]}), 400,
                 "'x' is not an output of digits", id="infer-unknown-output"),
    pytest.param("POST", INFER, infer_json({"inputs": []}), 400, "inputs must be a non-empty list",
                 id="infer-no-inputs"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor()]}), 400, "has no data", id="infer-input-without-data"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor((1, 63), data=[0] * 63)]}), 422,
                 "must have shape [-1, 64]", id="infer-wrong-shape"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor((64,), data=[0] * 64)]}), 422,
                 "must have shape [-1, 64]", id="infer-missing-batch-axis"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor(datatype="FP64", data=[0] * 64)]}), 422,
                 "must have datatype FP32, got 'FP64'", id="infer-wrong-datatype"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor((65, 64), data=[0] * 65 * 64)]}), 422,
                 "batch size 65 is outside 1..64", id="infer-batch-over-limit"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor(data=[0] * 60)]}), 400,
                 "has 60 values; its shape needs 64", id="infer-data-length-mismatch"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor(data=["0"] * 64)]}), 400, "data must be numbers",
                 id="infer-data-strings"),
    pytest.param("POST", INFER, infer_json({"inputs": [tensor(data=[1e300] + [0] * 63)]}), 400,
                 "out of range for its datatype", id="infer-data-overflows-fp32"),
    pytest.param("POST", INFER, {"data": b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[NaN'
                                 + b",0" * 63 + b"]}]}"}, 400, "not valid JSON", id="infer-json-nan-literal"),
    pytest.param("POST", INFER, infer_binary(with_value(np.nan)), 400, "contains NaN or infinity", id="binary-nan"),
    pytest.param("POST", INFER, infer_binary(with_value(np.inf)), 400, "contains NaN or infinity", id="binary-inf"),
    pytest.param("POST", INFER, infer_binary(with_value(-np.inf)), 400, "contains NaN or infinity",
                 id="binary-minus-inf"),
    pytest.param("POST", INFER, infer_binary(ZEROS[:, :50]), 422, "must have shape [-1, 64]", id="binary-wrong-shape"),
    pytest.param("POST", INFER, infer_binary(ZEROS, size=200), 400, "needs 256 bytes for its shape, got 200",
                 id="binary-data-length-mismatch"),
    pytest.param("POST", INFER, infer_binary(ZEROS, size=4096), 400, "does not fit the 256 binary bytes",
                 id="binary-data-size-beyond-body"),
    pytest.param("POST", INFER, infer_binary(ZEROS, tail=b"\0" * 8), 400, "8 binary bytes after the header",
                 id="binary-bytes-left-over"),
    pytest.param("POST", INFER, infer_binary(ZEROS, header_length="100000"), 400,
                 "Inference-Header-Content-Length must be an integer", id="header-length-beyond-body"),
    pytest.param("POST", INFER, infer_binary(ZEROS, header_length="ten"), 400,
                 "Inference-Header-Content-Length must be an integer", id="header-length-word"),
    pytest.param("POST", INFER, infer_binary(ZEROS, header_length="\u00b2"), 400,
                 "Inference-Header-Content-Length must be an integer", id="header-length-superscript-two"),
    pytest.param("POST", INFER, infer_binary(ZEROS, header_length=HUGE_NUMBER), 400,
                 "Inference-Header-Content-Length must be an integer", id="header-length-5000-digits"),
    pytest.param("POST", INFER, {"data": b"{}", "headers": {"Content-Encoding": "gzip"}}, 415,
                 "Content-Encoding is not supported", id="infer-compressed-body"),
    pytest.param("POST", "/v2/models/nope/infer", infer_json({"inputs": [tensor(data=[0] * 64)]}), 404,
                 "unknown model 'nope'", id="infer-unknown-model"),
    pytest.param("POST", "/v2/models/digits/versions/2/infer", infer_json({"inputs": [tensor(data=[0] * 64)]}), 404,
                 "has no version '2'", id="infer-unknown-version"),
    pytest.param("GET", "/v2/models/digits/versions/2", {}, 404, "has no version '2'", id="metadata-unknown-version"),
    pytest.param("DELETE", INFER, {}, 405, "method DELETE is not allowed", id="delete-on-infer"),
    pytest.param("PUT", "/v2/models/digits", {"data": b"{}"}, 405, "method PUT is not allowed",
                 id="put-on-model-metadata"),
    pytest.param("GET", "/v2/no/such/endpoint", {}, 404, "no such endpoint", id="unknown-endpoint"),
]


@pytest.fixture(scope="module")
def workers(stack) -> list[int]:
    return sorted(stack.worker_pids())


def assert_json_error(response, status: int, fragment: str = "") -> None:
    assert "Traceback" not in response.text
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    assert fragment in body["error"]


def assert_still_serving(stack, workers: list[int]) -> None:
    response = stack.post(PREDICT, files={"file": ("good.png", GOOD_PNG)})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == str(GOOD_LABEL)
    assert sorted(stack.worker_pids()) == workers, "a worker died or was respawned"


@pytest.mark.parametrize("method, path, kwargs, status, fragment", CASES)
def test_bad_input_gets_a_json_error_and_the_stack_keeps_serving(stack, workers, method, path, kwargs, status,
                                                                  fragment):
    response = stack.session.request(method, stack.url + path, timeout=30, **kwargs)
    assert_json_error(response, status, fragment)
    assert_still_serving(stack, workers)


def test_limits_are_configurable(tmp_path):
    """MAX_UPLOAD_MB (nginx and Flask), MAX_IMAGE_PIXELS and MAX_BATCH_SIZE, each just under and just over."""
    small = start_stack(tmp_path / "run", WORKERS="1", MAX_UPLOAD_MB="1", MAX_IMAGE_PIXELS="10000", MAX_BATCH_SIZE="4")
    try:
        post = small.post
        assert post(PREDICT, **upload(image_bytes(Image.new("L", (100, 100))))).status_code == 200
        assert_json_error(post(PREDICT, **upload(image_bytes(Image.new("L", (101, 100))))), 413,
                          "101x100 pixels; the limit is 10000")

        assert len(post(PREDICT, **upload(*[GOOD_PNG] * 4)).json()["results"]) == 4
        assert_json_error(post(PREDICT, **upload(*[GOOD_PNG] * 5)), 400, "5 images in one request; the limit is 4")
        rows = {n: infer_json({"inputs": [tensor((n, 64), data=[0] * 64 * n)]}) for n in (4, 5)}
        assert post(INFER, **rows[4]).status_code == 200
        assert_json_error(post(INFER, **rows[5]), 422, "batch size 5 is outside 1..4")

        # Under the limit the body reaches the app (which finds no image); over it nginx answers.
        assert_json_error(post(PREDICT, **raw_image(bytes(1000 * 1024))), 415, "not a supported image")
        assert_json_error(post(PREDICT, **raw_image(bytes(1100 * 1024))), 413, "the limit is 1 MB")
        assert post(PREDICT, **upload(GOOD_PNG)).status_code == 200
    finally:
        small.stop()
