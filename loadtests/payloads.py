"""Request bodies made from real handwritten digits (scikit-learn's bundled set, no download).

Every body is built once, before the test, so the load generator spends its CPU
on sending requests rather than on encoding them.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

BOUNDARY = "modelstack-loadtest-boundary"
HEADER_LENGTH = "Inference-Header-Content-Length"
COUNT = 200  # distinct digits; enough that no cache on the way sees the same body twice in a row


@dataclass(frozen=True)
class Body:
    data: bytes
    headers: dict[str, str]


@cache
def _digits() -> np.ndarray:
    """``COUNT`` digits as 8x8 float arrays with values 0..16, in a fixed order."""
    from sklearn.datasets import load_digits  # slow import: only when the test starts

    images = load_digits().images
    return images[np.random.default_rng(0).permutation(len(images))[:COUNT]]


def digit_png(digit: np.ndarray, size: int = 64, dark_on_light: bool = True, margin: int = 8) -> bytes:
    """A data-set digit (8x8, values 0..16) drawn like a photo: smoothly upscaled, with a margin
    of paper, dark ink on white (or light on dark)."""
    ink = Image.fromarray((digit.reshape(8, 8) * (255 / 16)).astype(np.uint8))
    picture = ink.resize((size, size), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (size + 2 * margin, size + 2 * margin))
    canvas.paste(picture, (margin, margin))
    if dark_on_light:
        canvas = Image.eval(canvas, lambda v: 255 - v)
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def _multipart(png: bytes) -> Body:
    data = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
    return Body(data, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def _oip_json(tensor: np.ndarray) -> Body:
    doc = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": tensor.tolist()}]}
    return Body(json.dumps(doc).encode(), {"Content-Type": "application/json"})


def _oip_binary(tensor: np.ndarray) -> Body:
    raw = tensor.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    return Body(header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))})


@cache
def bodies() -> dict[str, tuple[Body, ...]]:
    """Bodies per kind: ``upload`` (multipart PNG), ``oip-json`` and ``oip-binary`` (FP32 [1, 64], 0..1)."""
    digits = _digits()
    tensors = [(d.reshape(-1) / 16).astype(np.float32) for d in digits]
    return {
        "upload": tuple(_multipart(digit_png(d)) for d in digits),
        "oip-json": tuple(_oip_json(t) for t in tensors),
        "oip-binary": tuple(_oip_binary(t) for t in tensors),
    }


def pick(kind: str) -> Body:
    return random.choice(bodies()[kind])
