"""The embedded digits model is reproducible: the training script rebuilds the committed file byte for byte."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from app.settings import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "train_digits.py"
COMMITTED = PROJECT_ROOT / "models" / "digits" / "1" / "model.onnx"


@pytest.mark.slow
def test_training_script_reproduces_the_committed_model(tmp_path):
    out = tmp_path / "model.onnx"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    print(run.stdout)
    scores = {key: float(value) for key, value in re.findall(r"^(accuracy_\w+): ([\d.]+)$", run.stdout, re.M)}
    assert set(scores) == {"accuracy_rendered", "accuracy_original"}
    # Held-out digits: as rendered pictures (what people send) and as the data set's own 8x8 images.
    assert min(scores.values()) >= 0.95, scores
    assert out.read_bytes() == COMMITTED.read_bytes(), "scripts/train_digits.py no longer reproduces the model"
