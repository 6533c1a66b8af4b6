"""The JSON API for programs: Open Inference Protocol v2, a simple image endpoint, health, OpenAPI."""

from flask import Blueprint

from . import health, oip, openapi, predict

bp = Blueprint("api", __name__)
for child in (health.bp, oip.bp, openapi.bp, predict.bp):
    bp.register_blueprint(child)
