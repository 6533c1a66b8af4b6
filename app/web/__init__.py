"""Pages for people: pick a model, upload or draw an image, read the answer."""

from __future__ import annotations

import base64

from flask import Blueprint, render_template, request, url_for

from ..inference import InferenceError
from ..inference.preprocess import thumbnail
from ..state import registry, settings, stages_for_request
from ..uploads import uploaded_images

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")


@bp.get("/")
def index():
    models = registry().latest()
    return render_template("index.html", models=models, selected=request.args.get("model", models[0].name))


@bp.post("/predict")
def predict():
    name = request.form.get("model", "")
    model = registry().get(name, request.form.get("version") or None)
    stages = stages_for_request(model)
    images = uploaded_images(1, form_fields=frozenset({"model", "version"}))
    top = model.classify(images, min(settings().default_top_k, len(model.config.labels)),
                         settings().max_image_pixels, stages)[0]
    preview = base64.b64encode(thumbnail(images[0], settings().max_image_pixels)).decode()
    timings = {name: seconds * 1000 for name, seconds in stages.seconds.items()}
    return render_template("result.html", model=model, predictions=top, preview=preview, timings=timings)


@bp.get("/models/<name>")
def model_page(name: str):
    model = registry().get(name, request.args.get("version") or None)
    versions = sorted(registry().versions[model.name])
    return render_template("model.html", model=model, versions=versions)
