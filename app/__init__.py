"""modelstack: serve ONNX models over HTTP to people (pages) and programs (JSON API)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from functools import partial

from flask import Flask, current_app, g, request
from flask.json.provider import JSONProvider
import orjson

from . import logs, metrics
from .inference import ModelRegistry, ModelVersion, Stages
from .inference.timing import queue_seconds
from .settings import Settings

try:
    from uwsgi import disconnect as _end_response
except ImportError:  # not under uWSGI: the server ends the response itself
    def _end_response() -> None:
        pass

# A client-supplied request id is echoed in logs and headers: keep it short and printable.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class OrjsonProvider(JSONProvider):
    """orjson for every JSON body: numpy arrays serialise natively and fast."""

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(
            orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), mimetype="application/json"
        )


def create_app(settings: Settings | None = None) -> Flask:
    """Build the application and load every model version, warmed, in this process.

    Under a pre-forking server the app must be created in each worker
    (uWSGI ``lazy-apps``, gunicorn without ``--preload``): ONNX Runtime's
    thread pools do not survive ``fork()``.
    """
    settings = settings or Settings()
    app = Flask(__name__, static_folder=None)
    app.json = OrjsonProvider(app)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_content_length)
    # Before any other hook: the first before_request and (Flask runs them in reverse) the
    # last after_request, so the request id is always set and the stages cover every hook.
    app.before_request(_start_request)
    app.after_request(_finish_request)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logs.configure()

    registry = ModelRegistry(settings.model_repository, settings.intra_op_threads)
    registry.load()
    app.extensions["settings"] = settings
    app.extensions["registry"] = registry

    from . import api, errors, web

    app.register_blueprint(api.bp)
    app.register_blueprint(web.bp)
    errors.init_app(app)
    app.extensions["metrics"] = metrics.init_app(app, registry)
    return app


def _start_request() -> None:
    supplied = request.headers.get("X-Request-ID", "")
    g.request_id = supplied if REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
    # The worker picks the request up now: the queue ends, the worker's own time starts.
    g.queue = queue_seconds(request.headers.get("X-Request-Start"), time.time())
    g.started = time.perf_counter()


def _finish_request(response):
    """Complete the stages and send them; count and log the same figures once the client has its answer."""
    stages = g.get("stages") or Stages()
    stages.complete(time.perf_counter() - g.started, g.queue)
    response.headers["X-Request-ID"] = g.request_id
    response.headers["Server-Timing"] = stages.server_timing()
    model = g.get("model")
    line = logs.request_line(response, stages, model)
    has_body = bool(response.content_length) and request.method != "HEAD"
    response.call_on_close(partial(
        _record, current_app.extensions["metrics"], model, stages, response.status_code, line, has_body,
    ))
    return response


def _record(inference: metrics.InferenceMetrics, model: ModelVersion | None, stages: Stages, status: int,
            line: dict, has_body: bool) -> None:
    # nginx finishes a request when uWSGI closes the connection: close it before the bookkeeping
    # instead of making the client wait for it. uWSGI has written a body (and the headers with
    # it) by the time it closes the response; an empty response it writes only afterwards.
    if has_body:
        _end_response()
    if model is not None:
        inference.observe(model, stages, status)
    logs.write(line)
