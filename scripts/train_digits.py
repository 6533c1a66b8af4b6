#!/usr/bin/env python3
"""Train the embedded ``digits`` model and export it to ONNX, reproducibly.

The data is scikit-learn's bundled handwritten digits (8x8, no download).
Each training digit is also rendered as a picture would arrive -- larger,
with margins, light or dark paper, noise, thicker or thinner strokes -- and
sent back through the server's own preprocessing, so the model learns what
the server will really feed it.

    python scripts/train_digits.py            # writes models/digits/1/model.onnx
    python scripts/train_digits.py --out X    # writes elsewhere (the tests compare)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.inference.config import load_config  # noqa: E402
from app.inference.preprocess import to_array  # noqa: E402

SEED = 0
AUGMENTED_COPIES = 6


def render(digit: np.ndarray, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """An 8x8 data-set digit (values 0..16) drawn as a photo-like grayscale picture."""
    ink = Image.fromarray((digit.reshape(8, 8) * (255 / 16)).astype(np.uint8))
    side = int(rng.integers(size // 2, size * 2))
    picture = ink.resize((side, side), Image.Resampling.BICUBIC)
    if rng.random() < 0.3:
        picture = picture.filter(ImageFilter.MaxFilter(3))  # a thicker pen
    elif rng.random() < 0.2:
        picture = picture.filter(ImageFilter.MinFilter(3))  # a thinner pen
    if rng.random() < 0.5:
        picture = picture.rotate(float(rng.uniform(-12, 12)), Image.Resampling.BILINEAR)
    margin = rng.integers(0, side // 2, size=4)
    canvas = Image.new("L", (side + margin[0] + margin[2], side + margin[1] + margin[3]))
    canvas.paste(picture, (int(margin[0]), int(margin[1])))
    array = np.asarray(canvas, np.float32) / 255
    paper, pen = rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.0)
    array = paper + (pen - paper) * array + rng.normal(0, 0.03, array.shape)
    if rng.random() < 0.5:
        array = 1 - array  # dark ink on light paper
    return Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8))


def features(images: list[Image.Image], preprocess) -> np.ndarray:
    return np.stack([to_array(image, preprocess).reshape(-1) for image in images])


def train(out: Path) -> dict[str, float]:
    config = load_config(ROOT / "models" / "digits")
    pre = config.preprocess
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, stratify=digits.target, random_state=SEED
    )
    rng = np.random.default_rng(SEED)
    rendered = [render(x, rng) for x in x_train for _ in range(AUGMENTED_COPIES)]
    originals = [Image.fromarray((x.reshape(8, 8) * (255 / 16)).astype(np.uint8)) for x in x_train]
    train_x = np.concatenate([features(rendered, pre), features(originals, pre)])
    train_y = np.concatenate([np.repeat(y_train, AUGMENTED_COPIES), y_train])

    model = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=300, random_state=SEED)
    model.fit(train_x.astype(np.float32), train_y)

    test_rng = np.random.default_rng(SEED + 1)
    test_images = [render(x, test_rng) for x in x_test]
    test_originals = [Image.fromarray((x.reshape(8, 8) * (255 / 16)).astype(np.uint8)) for x in x_test]
    scores = {
        "accuracy_rendered": float(model.score(features(test_images, pre), y_test)),
        "accuracy_original": float(model.score(features(test_originals, pre), y_test)),
    }
    export(model, out, scores)
    return scores


def export(model: MLPClassifier, out: Path, scores: dict[str, float]) -> None:
    from onnx.helper import make_opsetid
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = convert_sklearn(
        model,
        name="digits",
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx lists the opsets in set order, which follows the process's hash seed: sort for stable bytes.
    opsets = sorted((opset.domain, opset.version) for opset in onnx_model.opset_import)
    del onnx_model.opset_import[:]
    onnx_model.opset_import.extend(make_opsetid(domain, version) for domain, version in opsets)
    onnx_model.doc_string = "scikit-learn MLP on the bundled digits data set; see scripts/train_digits.py"
    for key, value in scores.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, f"{value:.4f}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(onnx_model.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "digits" / "1" / "model.onnx")
    args = parser.parse_args()
    scores = train(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    for key, value in scores.items():
        print(f"{key}: {value:.4f}")


if __name__ == "__main__":
    main()
