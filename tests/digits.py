"""Real test images: scikit-learn's held-out digits drawn as pictures a person might send."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from loadtests.payloads import digit_png  # noqa: F401  (one way to draw a digit, for tests and load tests)

# The split scripts/train_digits.py trains on; its test part was never seen in training.
SEED = 0


def held_out_digits() -> list[tuple[np.ndarray, int]]:
    data = load_digits()
    _, x_test, _, y_test = train_test_split(
        data.data, data.target, test_size=0.25, stratify=data.target, random_state=SEED
    )
    return list(zip(x_test, y_test.tolist()))


def image_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()
