"""``GET /openapi.json``: the API described for client generators and fuzzers."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..state import registry, settings
from .codec import HEADER_LENGTH
from .oip import SERVER_NAME, SERVER_VERSION

bp = Blueprint("openapi", __name__)


def _json(schema_ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}


def _error(description: str) -> dict:
    return {"description": description, "content": _json("Error")}


ERRORS = {
    "400": _error("Bad input"),
    "404": _error("Unknown model or version"),
    "413": _error("Body or image too large"),
    "415": _error("Unsupported media type"),
    "422": _error("Wrong tensor shape or datatype"),
    "503": _error("Not ready"),
}
# What nginx answers on the inference endpoints before the app sees the request.
OVERLOAD = {
    "429": _error("Rate limited per client address (Retry-After)"),
    "502": _error("The worker died mid-request (time limit or restart)"),
    "503": _error("Overloaded: every worker busy and the queue full (Retry-After)"),
}
# Operations any client may call, with or without API keys on the server (see app/auth.py).
OPEN = {"security": []}
UNAUTHORIZED = {
    "description": "Missing or invalid API key (only when the server has keys)",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
    "content": _json("Error"),
}
# With keys configured, either header will do.
SECURITY = [{"bearer": []}, {"apiKey": []}]
NAME = {"name": "name", "in": "path", "required": True, "schema": {"$ref": "#/components/schemas/ModelName"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
# The binary tensor extension: the length of the JSON that comes before the raw tensor bytes.
BINARY_HEADER_LENGTH = {"name": HEADER_LENGTH, "in": "header", "schema": {"type": "integer", "minimum": 0}}


def _model_paths(suffix: str, operation: dict, method: str = "get", prefix: str = "/v2") -> dict:
    """The same operation for the latest version and for a named one."""
    extra = operation.get("parameters", [])
    return {
        f"{prefix}/models/{{name}}{suffix}": {method: {**operation, "parameters": [NAME, *extra]}},
        f"{prefix}/models/{{name}}/versions/{{version}}{suffix}": {
            method: {**operation, "operationId": operation["operationId"] + "_version",
                     "parameters": [NAME, VERSION, *extra]}
        },
    }


def _ok(description: str, schema: str | None = None) -> dict:
    return {"description": description, **({"content": _json(schema)} if schema else {})}


def _requiring_keys(paths: dict) -> dict:
    """Every operation not marked ``OPEN`` answers 401 without a valid key (when the server has keys)."""
    for operations in paths.values():
        for operation in operations.values():
            if "security" not in operation:
                operation["responses"] = {**operation["responses"], "401": UNAUTHORIZED}
    return paths


TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                                "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
    "additionalProperties": False,
}

SPEC = {
    "openapi": "3.1.0",
    "info": {
        "title": f"{SERVER_NAME} inference API",
        "version": SERVER_VERSION,
        "description": "Open Inference Protocol v2 (KServe v2 / Triton HTTP) plus a simple image endpoint. "
        "Binary tensors: put the JSON header's length in Inference-Header-Content-Length and append the raw "
        "little-endian tensor bytes; see parameters.binary_data_size.",
    },
    "paths": _requiring_keys({
        "/healthz": {"get": {"operationId": "healthz", "summary": "The process is alive", **OPEN,
                             "responses": {"200": _ok("Alive")}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Every model is loaded and warmed", **OPEN,
                            "responses": {"200": _ok("Ready"), "503": ERRORS["503"]}}},
        "/v2": {"get": {"operationId": "server_metadata", "responses": {"200": _ok("Server metadata", "ServerMetadata")}}},
        "/v2/health/live": {"get": {"operationId": "server_live", **OPEN, "responses": {"200": _ok("Live")}}},
        "/v2/health/ready": {"get": {"operationId": "server_ready", **OPEN,
                                     "responses": {"200": _ok("Ready"), "503": _ok("Not ready")}}},
        **_model_paths("", {"operationId": "model_metadata",
                            "responses": {"200": _ok("Model metadata", "ModelMetadata"), "404": ERRORS["404"]}}),
        **_model_paths("/ready", {"operationId": "model_ready",
                                  "responses": {"200": _ok("Ready"), "404": ERRORS["404"]}}),
        **_model_paths("/config", {"operationId": "model_config",
                                   "responses": {"200": _ok("Triton-style model configuration"), "404": ERRORS["404"]}}),
        **_model_paths("/stats", {"operationId": "model_stats",
                                  "responses": {"200": _ok("Statistics of this worker process"), "404": ERRORS["404"]}}),
        **_model_paths("/infer", {
            "operationId": "model_infer",
            "parameters": [{**BINARY_HEADER_LENGTH, "description": "Sent with binary inputs"}],
            "requestBody": {"required": True, "content": {
                **_json("InferenceRequest"),
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }},
            "responses": {"200": {
                "description": "Inference response; with binary outputs, its JSON header and then the raw tensors",
                "headers": {HEADER_LENGTH: {"schema": BINARY_HEADER_LENGTH["schema"],
                                            "description": "Sent with binary outputs"}},
                "content": {**_json("InferenceResponse"),
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }, **{k: ERRORS[k] for k in ("400", "404", "413", "415", "422")}, **OVERLOAD},
        }, method="post"),
        "/v2/repository/index": {"post": {"operationId": "repository_index",
                                          "responses": {"200": _ok("Every model version and its state")}}},
        **_model_paths("/predict", {
            "operationId": "predict",
            "summary": "Classify an image (multipart field 'file', several for a batch, or a raw image body)",
            "parameters": [{"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"], "additionalProperties": False,
                    "properties": {"file": {"type": "string", "format": "binary"}}}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }},
            "responses": {"200": _ok("Top-k labels and scores", "Prediction"),
                          **{k: ERRORS[k] for k in ("400", "404", "413", "415")}, **OVERLOAD},
        }, method="post", prefix="/api/v1"),
    }),
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            # The served models' names, filled in per request (see openapi()).
            "ModelName": {"type": "string"},
            "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}}}},
            "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
                "name": {"type": "string"}, "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}}}},
            "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
                "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}}}},
            "InferenceRequest": {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
                "id": {"type": "string"}, "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "items": TENSOR},
                "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False,
                                                       "properties": {"name": {"type": "string"},
                                                                      "parameters": {"type": "object"}}}}}},
            "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": TENSOR}}},
            "Prediction": {"type": "object", "required": ["model", "version"], "properties": {
                "model": {"type": "string"}, "version": {"type": "string"},
                "predictions": {"type": "array", "items": {"type": "object", "required": ["label", "score"], "properties": {
                    "label": {"type": "string"}, "score": {"type": "number"}}}},
                "results": {"type": "array", "items": {"type": "object"}}}},
        },
    },
}


@bp.get("/openapi.json")
def openapi():
    """What this server serves: its models' names, and keys only when it has some."""
    schemas = {**SPEC["components"]["schemas"], "ModelName": {"type": "string", "enum": registry().names}}
    spec = {**SPEC, "components": {**SPEC["components"], "schemas": schemas}}
    return jsonify({**spec, "security": SECURITY} if settings().api_keys else spec)
