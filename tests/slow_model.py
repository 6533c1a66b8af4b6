"""A test-only model that hangs for as long as asked: real ONNX Runtime compute, no sleep.

Shared by the failure-mode tests (harakiri, graceful stop) and the overload test.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from .digits import digit_png
from .onnx_models import IR_VERSION, OPSET
from .stackrunner import ROOT

DIGITS = ROOT / "models" / "digits"
SLOW_INFER = "/v2/models/slow/infer"
SLOW_CONFIG = """\
description = "Test only: spins for as many steps as its input values add up to"
task = "image_classification"
max_batch_size = 8
labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]

[input]
name = "input"

[output]
name = "probabilities"

[preprocess]
color_mode = "L"
size = [8, 8]
"""


def slow_classifier(size: int = 128) -> onnx.ModelProto:
    """A 64-in, 10-out classifier that first multiplies a matrix ``sum(input)`` times.

    The work is real ONNX Runtime compute in C++ (a Loop of MatMuls), so only
    killing the process stops it; the warm-up's zeros make it instant.
    """
    # Orthogonal, so the product neither overflows nor vanishes however long it runs.
    mixing, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((size, size)))
    square = [size, size]
    body = helper.make_graph(
        [helper.make_node("Identity", ["going"], ["still_going"]),
         helper.make_node("MatMul", ["state", "mixing"], ["next_state"])],
        "spin",
        [helper.make_tensor_value_info("step", TensorProto.INT64, []),
         helper.make_tensor_value_info("going", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, square)],
        [helper.make_tensor_value_info("still_going", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next_state", TensorProto.FLOAT, square)],
    )
    nodes = [
        helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
        helper.make_node("Cast", ["total"], ["steps"], to=TensorProto.INT64),
        helper.make_node("Loop", ["steps", "true", "identity"], ["spun"], body=body),
        # The scores depend on the loop's result, so no optimiser may drop the loop.
        helper.make_node("ReduceSum", ["spun"], ["spun_total"], keepdims=0),
        helper.make_node("Mul", ["spun_total", "zero"], ["nothing"]),
        helper.make_node("MatMul", ["input", "weights"], ["product"]),
        helper.make_node("Add", ["product", "nothing"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.eye(size, dtype=np.float32), "identity"),
            numpy_helper.from_array(mixing.astype(np.float32), "mixing"),
            numpy_helper.from_array(np.array(0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.zeros((64, 10), dtype=np.float32), "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def steps_per_second(model: onnx.ModelProto) -> float:
    """Measured here, on one ONNX Runtime thread like each of two workers on two CPUs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    steps = 2000
    start = time.perf_counter()
    session.run(None, {"input": spin_input(steps)})
    return steps / (time.perf_counter() - start)


def spin_input(steps: float) -> np.ndarray:
    values = np.zeros((1, 64), dtype=np.float32)
    values[0, 0] = round(steps)
    return values


class SlowModel:
    """A repository holding the digits model and ``slow``, and requests that take a chosen time."""

    def __init__(self, repository: Path, speed: float):
        self.repository = repository
        self.speed = speed

    def request(self, seconds: float) -> dict:
        data = spin_input(seconds * self.speed)
        return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": data.ravel().tolist()}]}


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> SlowModel:
    repository = tmp_path_factory.mktemp("slow-repository")
    shutil.copytree(DIGITS, repository / "digits")
    model = slow_classifier()
    (repository / "slow" / "1").mkdir(parents=True)
    (repository / "slow" / "config.toml").write_text(SLOW_CONFIG)
    onnx.save(model, repository / "slow" / "1" / "model.onnx")
    return SlowModel(repository, steps_per_second(model))


@pytest.fixture(scope="module")
def three_png(digits) -> bytes:
    image = next(image for image, label in digits if label == 3)
    return digit_png(image)
