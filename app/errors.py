"""Every error becomes a clear answer: JSON ``{"error": ...}`` for programs, a page for people."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .inference import InferenceError

log = logging.getLogger(__name__)


def wants_html() -> bool:
    """Pages answer people; everything else (and any unknown URL a program asks for) gets JSON."""
    if request.blueprint and request.blueprint.startswith("web"):
        return True
    if request.blueprint is None:
        best = request.accept_mimetypes.best_match(["application/json", "text/html"])
        return best == "text/html" and request.accept_mimetypes[best] > request.accept_mimetypes["application/json"]
    return False


def error_response(status: int, message: str):
    if wants_html():
        return render_template("error.html", status=status, message=message), status
    response = jsonify(error=message)
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(InferenceError)
    def inference_error(exc: InferenceError):
        return error_response(exc.status, exc.message)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
        return error_response(413, f"the request body is larger than {limit} MB")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = error_response(exc.code or 500, _describe(exc))
        if exc.code == 405 and exc.valid_methods:
            response = app.make_response(response)
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # Logged with its traceback for the operator; the client learns nothing internal.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error")


def _describe(exc: HTTPException) -> str:
    messages = {
        400: "bad request",
        404: f"no such endpoint: {request.path}",
        405: f"method {request.method} is not allowed on {request.path}",
        415: "unsupported media type",
    }
    return messages.get(exc.code or 0, (exc.name or "error").lower())
