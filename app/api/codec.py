"""Open Inference Protocol v2 bodies: JSON tensors and the binary tensor extension.

A binary request is ``<JSON header><raw tensor bytes...>`` with the JSON's
length in ``Inference-Header-Content-Length``; inputs that carry
``parameters.binary_data_size`` take their bytes from the tail, in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from ..inference import InferenceError, ModelVersion, parse_count
from ..inference.tensors import DATATYPES, NUMPY_TYPES

HEADER_LENGTH = "Inference-Header-Content-Length"
REQUEST_FIELDS = {"id", "parameters", "inputs", "outputs"}
INPUT_FIELDS = {"name", "shape", "datatype", "parameters", "data"}
OUTPUT_FIELDS = {"name", "parameters"}


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int  # 0: the raw tensor; k: the top k as "score:index:label" strings


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]


def _bad(message: str) -> InferenceError:
    return InferenceError(400, message)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    size = parse_count(header_length)
    if size is None or size > len(body):
        raise _bad(f"{HEADER_LENGTH} must be an integer no larger than the body ({len(body)} bytes)")
    return body[:size], body[size:]


def _object(value, fields: set[str], where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise _bad(f"{where} has unknown field '{unknown[0]}'")
    return value


def _parameters(value: dict, where: str) -> dict:
    params = value.get("parameters", {})
    if not isinstance(params, dict):
        raise _bad(f"{where}.parameters must be a JSON object")
    return params


def parse_request(body: bytes, header_length: str | None, model: ModelVersion, max_batch: int) -> InferRequest:
    """Validate a request against the model and return its input arrays."""
    header, binary = split_body(body, header_length)
    if not header.strip():
        raise _bad("the request body is empty; send an inference request JSON")
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the request is not valid JSON: {exc}") from None
    doc = _object(doc, REQUEST_FIELDS, "the request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("id must be a string")
    params = _parameters(doc, "the request")
    binary_default = params.get("binary_data_output", False) is True

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("inputs must be a non-empty list")
    specs = {spec.name: spec for spec in model.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, raw in enumerate(raw_inputs):
        where = f"inputs[{position}]"
        raw = _object(raw, INPUT_FIELDS, where)
        name = raw.get("name")
        if not isinstance(name, str) or name not in specs:
            raise _bad(f"{where}.name {name!r} is not an input of {model.name}; it takes {sorted(specs)}")
        if name in inputs:
            raise _bad(f"input '{name}' is given twice")
        spec = specs[name]
        shape = _shape(raw.get("shape"), where)
        datatype = raw.get("datatype")
        if datatype != spec.datatype:
            raise InferenceError(422, f"input '{name}' must have datatype {spec.datatype}, got {datatype!r}")
        _check_shape(name, shape, spec.shape, model, max_batch)
        count = math.prod(shape)
        size = _parameters(raw, where).get("binary_data_size")
        if size is not None:
            if "data" in raw:
                raise _bad(f"input '{name}' has both data and binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise _bad(f"input '{name}' binary_data_size {size!r} does not fit the {len(binary)} binary bytes sent")
            array = _from_binary(binary[offset : offset + size], spec.dtype, count, name)
            offset += size
        elif "data" in raw:
            array = _from_json(raw["data"], spec.dtype, count, name)
        else:
            raise _bad(f"input '{name}' has no data")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _bad(f"input '{name}' contains NaN or infinity")
        inputs[name] = array.reshape(shape)
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} binary bytes after the header belong to no input")
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise _bad(f"missing input '{missing[0]}'")
    return InferRequest(request_id, inputs, _outputs(doc, model, binary_default))


def _shape(value, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise _bad(f"{where}.shape must be a list of non-negative integers")
    return value


def _check_shape(name: str, shape: list[int], expected: tuple[int, ...], model: ModelVersion, max_batch: int) -> None:
    fits = len(shape) == len(expected) and all(e in (-1, d) for d, e in zip(shape, expected))
    if not fits:
        raise InferenceError(422, f"input '{name}' must have shape {list(expected)} (-1: any), got {shape}")
    if model.batchable:
        limit = min(model.config.max_batch_size, max_batch)
        if not 1 <= shape[0] <= limit:
            raise InferenceError(422, f"input '{name}' batch size {shape[0]} is outside 1..{limit}")


def _from_binary(chunk: bytes, dtype: np.dtype, count: int, name: str) -> np.ndarray:
    if len(chunk) != count * dtype.itemsize:
        raise _bad(f"input '{name}' needs {count * dtype.itemsize} bytes for its shape, got {len(chunk)}")
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))


def _from_json(data, dtype: np.dtype, count: int, name: str) -> np.ndarray:
    try:
        array = np.asarray(data)
    except ValueError:
        raise _bad(f"input '{name}' data is ragged; send a flat or evenly nested list") from None
    if array.size != count:
        raise _bad(f"input '{name}' has {array.size} values; its shape needs {count}")
    if count and array.dtype.kind not in "biuf":
        raise _bad(f"input '{name}' data must be numbers")
    if count and dtype.kind in "iu" and array.dtype.kind == "f":
        raise _bad(f"input '{name}' data must be integers")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return array.astype(dtype).reshape(-1)
    except (OverflowError, FloatingPointError):
        raise _bad(f"input '{name}' has values out of range for its datatype") from None


def _outputs(doc: dict, model: ModelVersion, binary_default: bool) -> list[RequestedOutput]:
    names = [spec.name for spec in model.outputs]
    raw_outputs = doc.get("outputs")
    if raw_outputs is None:
        return [RequestedOutput(name, binary_default, 0) for name in names]
    if not isinstance(raw_outputs, list):
        raise _bad("outputs must be a list")
    requested = []
    for position, raw in enumerate(raw_outputs):
        where = f"outputs[{position}]"
        raw = _object(raw, OUTPUT_FIELDS, where)
        name = raw.get("name")
        if name not in names:
            raise _bad(f"{where}.name {name!r} is not an output of {model.name}; it has {names}")
        params = _parameters(raw, where)
        binary = params.get("binary_data", binary_default)
        classes = params.get("classification", 0)
        if not isinstance(binary, bool):
            raise _bad(f"{where}.parameters.binary_data must be true or false")
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise _bad(f"{where}.parameters.classification must be a non-negative integer")
        requested.append(RequestedOutput(name, binary, classes))
    return requested


def classification_strings(scores: np.ndarray, k: int, labels: tuple[str, ...]) -> np.ndarray:
    """Triton's classification extension: the top k per row as ``"score:index:label"``."""
    rows = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
    k = min(k, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    text = [
        [f"{row[i]:f}:{i}:{labels[i] if i < len(labels) else i}" for i in indices]
        for row, indices in zip(rows, order)
    ]
    return np.asarray(text, dtype=object).reshape((*scores.shape[:-1], k) if scores.ndim > 1 else (k,))


def encode_response(model: ModelVersion, request: InferRequest, results: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The response body and its extra headers (binary outputs make it a binary response)."""
    outputs = []
    blobs = []
    for wanted in request.outputs:
        array = results[wanted.name]
        if wanted.classification:
            array = classification_strings(array, wanted.classification, model.config.labels)
        datatype = "BYTES" if array.dtype == object else DATATYPES.get(array.dtype, "BYTES")
        entry = {"name": wanted.name, "datatype": datatype, "shape": list(array.shape)}
        if wanted.binary:
            blob = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist() if datatype == "BYTES" else np.ascontiguousarray(array).reshape(-1)
        outputs.append(entry)
    doc = {"model_name": model.name, "model_version": str(model.version), "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=NUMPY_TYPES[datatype].newbyteorder("<")).tobytes()
