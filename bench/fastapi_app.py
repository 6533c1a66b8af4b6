"""The uvicorn comparison: FastAPI serving the stack's endpoints with the stack's own inference code.

Only the web framework and server differ from the Flask app: models load through
``app.inference``'s registry, images go through ``ModelVersion.classify`` and tensors
through the same Open Inference Protocol codec. Run with
``uvicorn --app-dir <repo> bench.fastapi_app:app`` (one registry per worker process).
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import Response

from app.api import codec
from app.inference import InferenceError, ModelRegistry, Stages
from app.settings import Settings

settings = Settings()
registry = ModelRegistry(settings.model_repository, settings.intra_op_threads)
registry.load()
app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


def json_response(body: dict, status: int = 200) -> Response:
    # orjson straight to bytes, as the Flask app's JSON provider does.
    return Response(orjson.dumps(body), status, media_type="application/json")


@app.exception_handler(InferenceError)
async def inference_error(request: Request, exc: InferenceError) -> Response:
    return json_response({"error": exc.message}, exc.status)


@app.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@app.get("/readyz")
async def readyz() -> Response:
    return json_response({"status": "ready", "models": {m.name: str(m.version) for m in registry.latest()}})


# async endpoints that compute in place: one request at a time per worker process, like a
# sync worker, without a thread hop; a worker per core is how uvicorn serves CPU-bound work.
@app.post("/api/v1/models/{name}/predict")
async def predict(name: str, file: UploadFile, top_k: int = settings.default_top_k) -> Response:
    model = registry.get(name)
    image = await file.read()
    k = min(top_k, len(model.config.labels))
    [predictions] = model.classify([image], k, settings.max_image_pixels, Stages())
    return json_response({
        "model": model.name,
        "version": str(model.version),
        "predictions": [{"label": p.label, "score": p.score} for p in predictions],
    })


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    model = registry.get(name)
    parsed = codec.parse_request(
        await request.body(), request.headers.get(codec.HEADER_LENGTH), model, settings.max_batch_size
    )
    names = [output.name for output in parsed.outputs]
    arrays = model.run(parsed.inputs, names, Stages())
    body, headers = codec.encode_response(model, parsed, dict(zip(names, arrays)))
    return Response(body, headers=headers)
