"""scripts/fetch_model.py: the download path for users' own models, exercised on local files."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "fetch_model.py"
DIGITS = ROOT / "models" / "digits"
MODEL = DIGITS / "1" / "model.onnx"


def fetch(repository: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--repository", str(repository)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    shutil.copytree(DIGITS, tmp_path / "repo" / "digits")
    return tmp_path / "repo"


def snapshot(repository: Path) -> list[str]:
    return sorted(str(p.relative_to(repository)) for p in repository.rglob("*"))


def test_adds_next_version_from_a_file_url_with_checksum(repository):
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    result = fetch(repository, MODEL.as_uri(), "--name", "digits", "--sha256", digest)
    assert result.returncode == 0, result.stderr
    assert (repository / "digits" / "2" / "model.onnx").read_bytes() == MODEL.read_bytes()
    assert not list(repository.glob(".fetch-*")), "staging folder left behind"


def test_new_model_needs_a_config_and_gets_it(tmp_path):
    repository = tmp_path / "repo"
    repository.mkdir()
    refused = fetch(repository, str(MODEL), "--name", "mine")
    assert refused.returncode == 1 and "--config" in refused.stderr
    added = fetch(repository, str(MODEL), "--name", "mine", "--config", str(DIGITS / "config.toml"),
                  "--labels", str(DIGITS / "labels.txt"))
    assert added.returncode == 0, added.stderr
    assert sorted(p.name for p in (repository / "mine").iterdir()) == ["1", "config.toml", "labels.txt"]


@pytest.mark.parametrize("case", ["checksum", "not-onnx", "wrong-config", "missing-file", "existing-version"])
def test_a_bad_fetch_leaves_the_repository_unchanged(repository, tmp_path, case):
    before = snapshot(repository)
    args = [str(MODEL), "--name", "digits"]
    if case == "checksum":
        args += ["--sha256", "0" * 64]
    elif case == "not-onnx":
        junk = tmp_path / "junk.onnx"
        junk.write_bytes(b"this is not a model")
        args[0] = str(junk)
    elif case == "wrong-config":
        config = tmp_path / "config.toml"
        config.write_text((DIGITS / "config.toml").read_text().replace('name = "input"', 'name = "pixels"'))
        args += ["--config", str(config)]
    elif case == "missing-file":
        args[0] = str(tmp_path / "nowhere.onnx")
    elif case == "existing-version":
        args += ["--version", "1"]
    result = fetch(repository, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert snapshot(repository) == before


def test_the_documented_mobilenetv2_config_fits_an_imagenet_shaped_model(tmp_path):
    """README's drop-in path, with a stand-in of MobileNetV2's interface (no download here)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 1000)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["output"])],
        "mobilenetv2-interface",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1000])],
        [weights],
    )
    model_file = tmp_path / "stand-in.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model_file)
    synset = tmp_path / "synset.txt"
    synset.write_text("".join(f"n{i:08d} class {i}\n" for i in range(1000)))
    repository = tmp_path / "repo"
    repository.mkdir()
    result = fetch(repository, str(model_file), "--name", "mobilenetv2",
                   "--config", str(ROOT / "examples" / "mobilenetv2" / "config.toml"), "--labels", str(synset))
    assert result.returncode == 0, result.stderr
