"""Per-application and per-request state that both blueprints read."""

from __future__ import annotations

from flask import current_app, g

from .inference import ModelRegistry, ModelVersion, Stages
from .settings import Settings


def registry() -> ModelRegistry:
    return current_app.extensions["registry"]


def settings() -> Settings:
    return current_app.extensions["settings"]


def stages_for_request(model: ModelVersion) -> Stages:
    """Start timing this request's stages; logs, metrics and headers read them from ``g``."""
    g.model = model
    g.stages = Stages()
    return g.stages
