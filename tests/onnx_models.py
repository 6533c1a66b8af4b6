"""Small ONNX models built with the ``onnx`` package, and model repositories to serve them from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ONNX Runtime 1.32 reads IR 10 with opset 17; newer onnx releases would write a newer IR by default.
IR_VERSION = 10
OPSET = 17


def linear_classifier(
    input_shape: list[int | None],
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    input_name: str = "input",
    output_name: str = "scores",
    softmax: bool = False,
) -> onnx.ModelProto:
    """``Flatten(input) @ weights + bias`` (then ``Softmax`` when asked): every input value moves the output.

    ``None`` in ``input_shape`` is a free (batch) dimension.
    """
    classes = weights.shape[1]
    batch = input_shape[0]
    nodes = [
        helper.make_node("Flatten", [input_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["logits" if softmax else output_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "linear_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [d or "batch" for d in input_shape])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch" if batch is None else batch, classes])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "weights"),
            numpy_helper.from_array(bias.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def write_model(repository: Path, name: str, config: str, versions: dict[int, onnx.ModelProto]) -> Path:
    """``<repository>/<name>/config.toml`` and one ``<version>/model.onnx`` per entry; returns the model folder."""
    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(config)
    for version, model in versions.items():
        (folder / str(version)).mkdir(exist_ok=True)
        onnx.save(model, folder / str(version) / "model.onnx")
    return folder
