"""modelstack: serve ONNX models over HTTP to people (pages) and programs (JSON API)."""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, g, request
from flask.json.provider import JSONProvider
import orjson

from .inference import ModelRegistry
from .settings import Settings

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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    registry = ModelRegistry(settings.model_repository, settings.intra_op_threads)
    registry.load()
    app.extensions["settings"] = settings
    app.extensions["registry"] = registry

    from . import api, errors, web

    app.register_blueprint(api.bp)
    app.register_blueprint(web.bp)
    errors.init_app(app)
    app.before_request(_assign_request_id)
    app.after_request(_send_request_id)
    return app


def _assign_request_id() -> None:
    supplied = request.headers.get("X-Request-ID", "")
    g.request_id = supplied if REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex


def _send_request_id(response):
    response.headers["X-Request-ID"] = g.get("request_id", "")
    stages = g.get("stages")
    if stages is not None and stages.seconds:
        response.headers["Server-Timing"] = stages.server_timing()
    return response
