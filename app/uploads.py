"""Image bytes out of a request: multipart ``file`` fields or a raw image body."""

from __future__ import annotations

from flask import request

from .inference import InferenceError, parse_count

RAW_TYPES = ("application/octet-stream", "")


def uploaded_images(max_count: int, form_fields: frozenset[str] = frozenset()) -> list[bytes]:
    """The request's images, in order; ``form_fields`` names the extra fields a form may carry."""
    if request.mimetype == "multipart/form-data":
        names = (set(request.files) - {"file"}) | (set(request.form) - form_fields)
        if None in names:  # Werkzeug's name for a part whose name it cannot read (one ending in a backslash)
            raise InferenceError(400, "a form field has no readable name; send the image as 'file'")
        unknown = sorted(names)
        if unknown:
            raise InferenceError(400, f"unknown form field '{unknown[0]}'; send the image as 'file'")
        files = [f for f in request.files.getlist("file") if f.filename or f.content_length]
        if not files:
            raise InferenceError(400, "no image: send it in a multipart field named 'file'")
        images = [f.read() for f in files]
    elif request.mimetype.startswith("image/") or request.mimetype in RAW_TYPES:
        images = [request.get_data(cache=False)]
    else:
        raise InferenceError(
            415, f"unsupported Content-Type {request.mimetype!r}; send multipart/form-data or an image body"
        )
    if len(images) > max_count:
        raise InferenceError(400, f"{len(images)} images in one request; the limit is {max_count}")
    if not all(images):
        raise InferenceError(400, "the image is empty")
    return images


def top_k(default: int, classes: int) -> int:
    raw = request.args.get("top_k")
    if raw is None:  # absent; an empty ?top_k= is refused below, as /openapi.json says
        return min(default, classes)
    k = parse_count(raw)
    if k is None or not 1 <= k <= classes:
        raise InferenceError(400, f"top_k must be an integer from 1 to {classes}")
    return k
