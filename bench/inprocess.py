"""The limit: worker processes calling ``app.inference`` directly, with no HTTP in between.

As many processes as the servers have workers, each with its own registry (so its
own ONNX Runtime session and thread count), all running at once for the same time.
Images go through ``ModelVersion.classify`` as in the image endpoint, tensors
straight to ``session.run``.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

import numpy as np
import psutil

from app.inference import ModelRegistry, ModelVersion, Stages
from app.settings import Settings

from .workloads import Workload

# Each process waits until this long after the order, so all start together.
START_DELAY = 0.3


@dataclass
class Batch:
    """What one process did in one measurement."""

    seconds: float
    latencies: np.ndarray  # seconds per call
    answer: str  # the last call's top label or class, to check the servers do the same work


def _caller(model: ModelVersion, raw_input: bytes | np.ndarray, settings: Settings) -> Callable[[], str]:
    if isinstance(raw_input, bytes):
        k = min(settings.default_top_k, len(model.config.labels))
        return lambda: model.classify([raw_input], k, settings.max_image_pixels, Stages())[0][0].label
    feeds, names = {model.input.name: raw_input}, [model.config.output_name]
    return lambda: str(int(np.argmax(model.session.run(names, feeds)[0])))


def _serve(conn: Connection, repository: str, workers: int) -> None:
    # A terminal's Ctrl-C reaches the whole process group: let the harness stop us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = Settings(model_repository=Path(repository), workers=workers)
    registry = ModelRegistry(settings.model_repository, settings.intra_op_threads)
    registry.load()
    conn.send("ready")
    while (order := conn.recv()) is not None:
        model_name, raw_input, start_at, duration = order
        call = _caller(registry.get(model_name), raw_input, settings)
        time.sleep(max(0.0, start_at - time.time()))
        latencies = []
        begin = time.perf_counter()
        while True:  # at least one call: a zero duration just asks for the answer
            before = time.perf_counter()
            answer = call()
            latencies.append(time.perf_counter() - before)
            if before + latencies[-1] - begin >= duration:
                break
        conn.send(Batch(time.perf_counter() - begin, np.asarray(latencies), answer))


class InProcess:
    """A pool of ``workers`` processes with the model repository loaded, measured together."""

    name = "raw"

    def __init__(self, repository: Path, workers: int, timeout: float = 120):
        context = multiprocessing.get_context("spawn")  # ONNX Runtime's threads do not survive fork
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(child, str(repository), workers), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                self.close()
                raise TimeoutError(f"in-process workers did not load the models within {timeout:.0f} s")
            pipe.recv()

    def run(self, workload: Workload, duration: float) -> list[Batch]:
        """Every process calls the model back to back for ``duration`` seconds, all at once."""
        start_at = time.time() + START_DELAY
        for pipe in self.pipes:
            pipe.send((workload.model, workload.raw_input, start_at, duration))
        return [pipe.recv() for pipe in self.pipes]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes:
            times = psutil.Process(process.pid).cpu_times()
            total += times.user + times.system
        return total

    def close(self) -> None:
        for pipe, process in zip(self.pipes, self.processes):
            try:
                pipe.send(None)
            except OSError:  # already gone
                pass
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
