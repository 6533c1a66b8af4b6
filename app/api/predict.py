"""``POST /api/v1/models/<name>/predict``: an image in, labels and scores out (for curl users)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..state import registry, settings, stages_for_request
from ..uploads import top_k, uploaded_images

bp = Blueprint("predict", __name__, url_prefix="/api/v1")


@bp.post("/models/<name>/predict")
@bp.post("/models/<name>/versions/<version>/predict")
def predict(name: str, version: str | None = None):
    """One image gives ``predictions``; several ``file`` fields give ``results``, run as one batch."""
    model = registry().get(name, version)
    stages = stages_for_request(model)
    limit = min(settings().max_batch_size, model.config.max_batch_size or settings().max_batch_size)
    images = uploaded_images(limit)
    k = top_k(settings().default_top_k, len(model.config.labels))
    predictions = model.classify(images, k, settings().max_image_pixels, stages)
    rows = [[{"label": p.label, "score": p.score} for p in row] for row in predictions]
    body = {"model": model.name, "version": str(model.version)}
    if len(rows) == 1:
        body["predictions"] = rows[0]
    else:
        body["results"] = [{"predictions": row} for row in rows]
    return jsonify(body)
