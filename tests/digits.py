"""Real test images: scikit-learn's held-out digits drawn as pictures a person might send."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

# The split scripts/train_digits.py trains on; its test part was never seen in training.
SEED = 0


def held_out_digits() -> list[tuple[np.ndarray, int]]:
    data = load_digits()
    _, x_test, _, y_test = train_test_split(
        data.data, data.target, test_size=0.25, stratify=data.target, random_state=SEED
    )
    return list(zip(x_test, y_test.tolist()))


def digit_png(digit: np.ndarray, size: int = 64, dark_on_light: bool = True, margin: int = 8) -> bytes:
    """A data-set digit (8x8, 0..16) as a smooth PNG of ``size`` pixels with a paper margin."""
    ink = Image.fromarray((digit.reshape(8, 8) * (255 / 16)).astype(np.uint8))
    picture = ink.resize((size, size), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (size + 2 * margin, size + 2 * margin))
    canvas.paste(picture, (margin, margin))
    if dark_on_light:
        canvas = Image.eval(canvas, lambda v: 255 - v)
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def image_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()
