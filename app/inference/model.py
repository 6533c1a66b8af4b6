"""One model version in one worker process: its ONNX Runtime session and statistics."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .config import ConfigError, ModelConfig
from .errors import InferenceError
from .preprocess import decode, sample_png, to_array
from .tensors import TensorSpec
from .timing import Stages


WARM_UP_IMAGE = sample_png()


def create_session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session tuned for a process that shares the machine with other workers."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the CPU other workers need; measured 3x slower with it on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Counter:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class Statistics:
    """Triton-style statistics for one model version in this process."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Counter = field(default_factory=Counter)
    fail: Counter = field(default_factory=Counter)
    compute_input: Counter = field(default_factory=Counter)
    compute_infer: Counter = field(default_factory=Counter)
    compute_output: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    index: int


class ModelVersion:
    """A loaded, warmed model version; every request for it goes through here."""

    def __init__(self, config: ModelConfig, version: int, threads: int):
        self.config = config
        self.version = version
        self.path = config.path / str(version) / "model.onnx"
        try:
            self.session = create_session(self.path, threads)
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise ConfigError(self.path, "(model)", f"ONNX Runtime cannot load it: {exc}") from None
        self.inputs = tuple(TensorSpec.from_ort(node) for node in self.session.get_inputs())
        self.outputs = tuple(TensorSpec.from_ort(node) for node in self.session.get_outputs())
        self.stats = Statistics()
        self._check_against_config()
        self.warm_up()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def input(self) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == self.config.input_name)

    @property
    def batchable(self) -> bool:
        return self.config.max_batch_size > 0

    def _check_against_config(self) -> None:
        source = self.config.source
        input_names = [spec.name for spec in self.inputs]
        output_names = [spec.name for spec in self.outputs]
        if self.config.input_name not in input_names:
            raise ConfigError(
                source, "input.name", f"{self.config.input_name!r} is not an input of {self.path}; it has {input_names}"
            )
        if self.config.output_name not in output_names:
            raise ConfigError(
                source, "output.name", f"{self.config.output_name!r} is not an output of {self.path}; it has {output_names}"
            )
        if len(self.inputs) != 1:
            raise ConfigError(source, "task", f"image classification needs one input; {self.path} has {input_names}")
        spec = self.input
        if spec.datatype not in ("FP32", "FP64", "FP16"):
            raise ConfigError(source, "input.name", f"input is {spec.datatype}; image models take floats")
        if self.batchable and spec.shape[0] != -1:
            raise ConfigError(source, "max_batch_size", f"{self.path} has a fixed batch dimension {spec.shape[0]}; set 0")
        pre = self.config.preprocess
        produced = pre.channels * pre.size[0] * pre.size[1]
        wanted = spec.shape[1:]
        if -1 not in wanted and int(np.prod(wanted)) != produced:
            raise ConfigError(
                source, "preprocess.size",
                f"preprocessing makes {pre.channels}x{pre.size[0]}x{pre.size[1]} values; input {spec.name} takes {list(wanted)}",
            )

    def item_shape(self) -> tuple[int, ...]:
        """Shape of one preprocessed image as the model wants it (batch axis excluded)."""
        wanted = self.input.shape[1:]
        if -1 in wanted:
            pre = self.config.preprocess
            return (pre.channels, *pre.size) if pre.layout == "NCHW" else (*pre.size, pre.channels)
        return wanted

    def warm_up(self) -> None:
        """Send a picture through the whole path once: decoders, preprocessing and the
        session initialise lazily, and the first real request should not pay for that."""
        (batch,) = self._prepare([WARM_UP_IMAGE], max_pixels=1 << 20, stages=Stages())[:1]
        outputs = self.session.run([self.config.output_name], {self.input.name: batch})
        classes = outputs[0].shape[-1]
        if classes != len(self.config.labels):
            raise ConfigError(
                self.config.source, "labels", f"{len(self.config.labels)} labels for {classes} model outputs"
            )

    # -- requests ---------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], stages: Stages) -> list[np.ndarray]:
        """One ONNX Runtime call; batching is the caller's choice of the leading axis."""
        start = time.perf_counter()
        try:
            with stages.measure("inference"):
                results = self.session.run(output_names, feeds)
        except Exception as exc:  # ORT's own error types: a shape the graph rejects, etc.
            raise InferenceError(422, f"the model rejected the input: {_first_line(exc)}") from None
        elapsed = time.perf_counter() - start
        items = next(iter(feeds.values())).shape[0] if self.batchable else 1
        stages.batch_sizes.append(items)
        with self.stats.lock:
            self.stats.inference_count += items
            self.stats.execution_count += 1
            self.stats.compute_infer.add(elapsed)
            self.stats.last_inference_ms = int(time.time() * 1000)
        return results

    def record(self, seconds: float, ok: bool, compute_input: float = 0.0, compute_output: float = 0.0) -> None:
        """Account one whole request in the statistics."""
        with self.stats.lock:
            (self.stats.success if ok else self.stats.fail).add(seconds)
            if ok:
                self.stats.compute_input.add(compute_input)
                self.stats.compute_output.add(compute_output)

    def classify(self, images: list[bytes], top_k: int, max_pixels: int, stages: Stages) -> list[list[Prediction]]:
        """Decode, preprocess and classify images; one batch when the model allows it."""
        start = time.perf_counter()
        try:
            batches = self._prepare(images, max_pixels, stages)
            compute_input = time.perf_counter() - start
            scores = [self.run({self.input.name: batch}, [self.config.output_name], stages)[0] for batch in batches]
            post_start = time.perf_counter()
            with stages.measure("postprocess"):
                predictions = [self._top_k(row, top_k) for batch in scores for row in batch.reshape(len(batch), -1)]
        except InferenceError:
            self.record(time.perf_counter() - start, ok=False)
            raise
        now = time.perf_counter()
        self.record(now - start, True, compute_input, now - post_start)
        return predictions

    def _prepare(self, images: list[bytes], max_pixels: int, stages: Stages) -> list[np.ndarray]:
        pre = self.config.preprocess
        shape = self.item_shape()
        with stages.measure("decode"):
            decoded = [decode(data, max_pixels, pre) for data in images]
        with stages.measure("preprocess"):
            arrays = [to_array(image, pre).reshape(shape).astype(self.input.dtype, copy=False) for image in decoded]
        if self.batchable:
            return [np.stack(arrays)]
        return [array[None] for array in arrays]

    def _top_k(self, row: np.ndarray, k: int) -> list[Prediction]:
        row = row.astype(np.float64)
        if self.config.output_kind == "logits":
            row = np.exp(row - row.max())
            row /= row.sum()
        order = np.argsort(-row, kind="stable")[:k]
        labels = self.config.labels
        return [Prediction(labels[i], float(row[i]), int(i)) for i in order]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
