"""The JSON API for programs: Open Inference Protocol v2, a simple image endpoint, health, OpenAPI."""

from flask import Blueprint

from .. import auth
from . import health, oip, openapi, predict

bp = Blueprint("api", __name__)
for child in (health.bp, oip.bp, openapi.bp, predict.bp):
    bp.register_blueprint(child)
# Probes and the API's description answer without a key; the web pages are another blueprint.
auth.protect(bp, open_views=(health.healthz, health.readyz, oip.live, oip.ready, openapi.openapi))
