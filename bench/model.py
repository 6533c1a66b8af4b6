"""A compute-bound model for the benchmark: MobileNetV2's layers with random, untrained weights.

The graph has MobileNetV2's shape and cost (about 300 million multiply-adds per
224x224 image, several milliseconds on one core), so it times a realistic
vision model without downloading one; its predictions mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NAME = "mobilenet_like"
CLASSES = 1000
# MobileNetV2's inverted residual blocks: expansion t, output channels c, repeats n, first stride s.
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

CONFIG = """\
# Written by bench/model.py: MobileNetV2-shaped, random untrained weights; for timing only.
description = "MobileNetV2-like compute cost with random weights (benchmark only; predictions mean nothing)"
task = "image_classification"
max_batch_size = 8
labels = "labels.txt"

[input]
name = "input"

[output]
name = "probabilities"
kind = "probabilities"

[preprocess]
color_mode = "RGB"
size = [224, 224]
resize = "center_crop"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
layout = "NCHW"
"""


class _Graph:
    """Appends nodes and He-initialised weights; each method returns its output's name."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def _name(self, kind: str) -> str:
        return f"{kind}{len(self.nodes)}"

    def _weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        name = f"w{len(self.weights)}"
        values = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        self.weights.append(numpy_helper.from_array(values, name))
        return name

    def _bias(self, size: int) -> str:
        name = f"b{len(self.weights)}"
        self.weights.append(numpy_helper.from_array(np.zeros(size, np.float32), name))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu6: bool = True) -> str:
        out = self._name("conv")
        weight = self._weight((cout, cin // groups, kernel, kernel), cin // groups * kernel * kernel)
        pad = kernel // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, weight, self._bias(cout)], [out],
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4, group=groups,
        ))
        if not relu6:
            return out
        clipped = self._name("relu6")
        self.nodes.append(helper.make_node("Clip", [out, "zero", "six"], [clipped]))
        return clipped

    def add(self, a: str, b: str) -> str:
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out]))
        return out

    def head(self, x: str, channels: int, classes: int) -> str:
        pooled, flat, logits = self._name("pool"), self._name("flat"), self._name("logits")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat]))
        weight = self._weight((channels, classes), channels)
        self.nodes.append(helper.make_node("Gemm", [flat, weight, self._bias(classes)], [logits]))
        self.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
        return "probabilities"


def build_model(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 (width 1.0, 224x224 input) with random weights and a softmax output."""
    graph = _Graph(seed)
    x = graph.conv("input", 3, 32, kernel=3, stride=2)
    channels = 32
    for expansion, out_channels, repeats, first_stride in BLOCKS:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            hidden = channels * expansion
            y = graph.conv(x, channels, hidden) if expansion != 1 else x
            y = graph.conv(y, hidden, hidden, kernel=3, stride=stride, groups=hidden)
            y = graph.conv(y, hidden, out_channels, relu6=False)
            x = graph.add(x, y) if stride == 1 and channels == out_channels else y
            channels = out_channels
    x = graph.conv(x, channels, 1280)
    graph.head(x, 1280, CLASSES)
    constants = [numpy_helper.from_array(np.float32(v), n) for n, v in (("zero", 0.0), ("six", 6.0))]
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            NAME,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
            initializer=constants + graph.weights,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="modelstack-bench",
    )
    onnx.checker.check_model(model)
    return model


def write_model(repository: Path, seed: int = 0) -> Path:
    """Add the model to ``repository`` as ``mobilenet_like/1/model.onnx`` with its config.toml."""
    folder = repository / NAME
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(build_model(seed), folder / "1" / "model.onnx")
    (folder / "labels.txt").write_text("".join(f"class {i}\n" for i in range(CLASSES)))
    (folder / "config.toml").write_text(CONFIG)
    return folder
