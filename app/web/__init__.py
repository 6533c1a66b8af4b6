"""Pages for people: pick a model, upload or draw an image, read the answer."""

from __future__ import annotations

import base64

from flask import Blueprint, redirect, render_template, request, url_for

from ..inference.preprocess import thumbnail
from ..state import registry, settings, stages_for_request
from ..uploads import uploaded_images

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

# Labels read aloud with a leading vowel sound take "an": "an 8", "an 11", "an apple".
VOWEL_INITIALS = frozenset("aeiouAEIOU8")
VOWEL_NUMBERS = frozenset({"11", "18"})


@bp.get("/")
def index():
    models = registry().latest()
    selected = request.args.get("model", models[0].name)
    return render_template("index.html", models=models, selected=selected, max_upload_mb=settings().max_upload_mb)


@bp.post("/predict")
def predict():
    model = registry().get(request.form.get("model", ""), request.form.get("version") or None)
    stages = stages_for_request(model)
    images = uploaded_images(1, form_fields=frozenset({"model", "version"}))
    top = model.classify(images, min(settings().default_top_k, len(model.config.labels)),
                         settings().max_image_pixels, stages)[0]
    preview = base64.b64encode(thumbnail(images[0], settings().max_image_pixels)).decode()
    timings = {name: seconds * 1000 for name, seconds in stages.seconds.items()}
    return render_template("result.html", model=model, predictions=top, preview=preview, timings=timings)


@bp.get("/predict")
def predict_form():
    """A bookmarked or reloaded result URL leads back to the form rather than to a 405."""
    return redirect(url_for("web.index"))


@bp.get("/models/<name>")
def model_page(name: str):
    model = registry().get(name, request.args.get("version") or None)
    versions = sorted(registry().versions[model.name])
    return render_template("model.html", model=model, versions=versions)


@bp.app_template_filter()
def with_article(label: str) -> str:
    """``"7"`` -> ``"a 7"``, ``"8"`` -> ``"an 8"``: the result reads as a sentence."""
    vowel = label[:1] in VOWEL_INITIALS or label in VOWEL_NUMBERS
    return f"{'an' if vowel else 'a'} {label}"


@bp.app_template_filter()
def percent(score: float) -> str:
    """A score as a percentage; tiny ones say so instead of a misleading 0.0%."""
    return "< 0.1%" if score < 0.0005 else f"{score * 100:.1f}%"
