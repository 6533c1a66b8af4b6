"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) endpoints."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, request

from ..inference import InferenceError, ModelVersion
from ..inference.tensors import TensorSpec
from . import codec
from ..state import registry, settings, stages_for_request

bp = Blueprint("oip", __name__, url_prefix="/v2")

SERVER_NAME = "modelstack"
SERVER_VERSION = "1.0.0"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics"]


@bp.get("")
def server_metadata():
    return jsonify(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)


@bp.get("/health/live")
def live():
    return Response(status=200)


@bp.get("/health/ready")
def ready():
    return Response(status=200 if registry().ready else 503)


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    model = registry().get(name, version)
    return jsonify(
        name=model.name,
        versions=[str(v) for v in sorted(registry().versions[model.name])],
        platform="onnxruntime_onnx",
        inputs=[spec.metadata() for spec in model.inputs],
        outputs=[spec.metadata() for spec in model.outputs],
    )


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    registry().get(name, version)
    return Response(status=200)


@bp.get("/models/<name>/config")
@bp.get("/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None):
    model = registry().get(name, version)
    batch = model.config.max_batch_size

    def dims(spec: TensorSpec) -> list[int]:
        # Triton leaves the batch dimension out of config dims when it batches.
        return list(spec.shape[1:] if batch else spec.shape)

    return jsonify(
        name=model.name,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=batch,
        input=[{"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": dims(s)} for s in model.inputs],
        output=[
            {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": dims(s),
             **({"label_filename": "labels.txt"} if s.name == model.config.output_name else {})}
            for s in model.outputs
        ],
        version_policy={"all": {}},
        parameters={"task": {"string_value": model.config.task}},
    )


@bp.get("/models/stats")
@bp.get("/models/<name>/stats")
@bp.get("/models/<name>/versions/<version>/stats")
def model_stats(name: str | None = None, version: str | None = None):
    if name is None:
        models = registry().all_versions()
    elif version is None:
        registry().get(name)
        models = list(registry().versions[name].values())
    else:
        models = [registry().get(name, version)]
    return jsonify(model_stats=[_stats(model) for model in models])


def _stats(model: ModelVersion) -> dict:
    s = model.stats
    with s.lock:
        return {
            "name": model.name,
            "version": str(model.version),
            "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count,
            "execution_count": s.execution_count,
            "inference_stats": {
                "success": s.success.as_dict(),
                "fail": s.fail.as_dict(),
                "queue": {"count": 0, "ns": 0},
                "compute_input": s.compute_input.as_dict(),
                "compute_infer": s.compute_infer.as_dict(),
                "compute_output": s.compute_output.as_dict(),
            },
        }


@bp.post("/repository/index")
def repository_index():
    return jsonify([
        {"name": model.name, "version": str(model.version), "state": "READY"}
        for model in registry().all_versions()
    ])


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    model = registry().get(name, version)
    stages = stages_for_request(model)
    start = time.perf_counter()
    if request.headers.get("Content-Encoding", "identity") != "identity":
        raise InferenceError(415, "Content-Encoding is not supported; send the body uncompressed")
    try:
        with stages.measure("decode"):
            parsed = codec.parse_request(
                request.get_data(cache=False),
                request.headers.get(codec.HEADER_LENGTH),
                model,
                settings().max_batch_size,
            )
        compute_input = time.perf_counter() - start
        names = [output.name for output in parsed.outputs]
        arrays = model.run(parsed.inputs, names, stages)
        post_start = time.perf_counter()
        with stages.measure("postprocess"):
            body, headers = codec.encode_response(model, parsed, dict(zip(names, arrays)))
    except InferenceError:
        model.record(time.perf_counter() - start, ok=False)
        raise
    now = time.perf_counter()
    model.record(now - start, True, compute_input, now - post_start)
    return Response(body, headers=headers)
