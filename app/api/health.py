"""Liveness and readiness for load balancers, orchestrators and the launcher."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..state import registry

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers: nothing more is checked, so it stays cheap."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Every model version is loaded and warmed in this worker."""
    if not registry().ready:
        return jsonify(status="loading"), 503
    return jsonify(status="ready", models={m.name: str(m.version) for m in registry().latest()})
