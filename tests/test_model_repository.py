"""The model repository: configs checked at start-up, versions, sessions per worker, ImageNet-style preprocessing.

A temporary repository holds generated models: ``tiny`` (two versions that
disagree on purpose) and an ImageNet-shaped classifier in both layouts. Its
stack runs one worker, so the per-process statistics it reports are the
whole stack's.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from app.inference import ConfigError, ModelRegistry
from app.inference.config import load_config
from app.inference.preprocess import to_array
from app.settings import available_cpus

from .digits import image_bytes
from .onnx_models import linear_classifier, write_model
from .stackrunner import RunningStack, start_stack

TINY_LABELS = ["cat", "dog", "bird"]
TINY_CONFIG = """\
task = "image_classification"
max_batch_size = 8
labels = ["cat", "dog", "bird"]

[input]
name = "input"

[output]
name = "scores"

[preprocess]
color_mode = "L"
size = [4, 4]
resize = "stretch"
mean = [0.5]
std = [0.5]
"""

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGENET_CONFIG = """\
description = "ImageNet-shaped test model: one linear layer over every input value"
task = "image_classification"
max_batch_size = {max_batch_size}
labels = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]

[input]
name = "pixels"

[output]
name = "logits"
kind = "logits"

[preprocess]
color_mode = "RGB"
size = [224, 224]
resize = "center_crop"
crop_fraction = 0.875
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
layout = "{layout}"
"""
IMAGENET_SHAPES = {"NCHW": [3, 224, 224], "NHWC": [224, 224, 3]}


def tiny_model(favourite: int, batch: int | None = None) -> onnx.ModelProto:
    """Probabilities over TINY_LABELS that always favour ``favourite``, whatever the image."""
    rng = np.random.default_rng(favourite)
    bias = np.zeros(len(TINY_LABELS))
    bias[favourite] = 4.0
    return linear_classifier([batch, 16], rng.normal(0, 0.01, (16, len(TINY_LABELS))), bias, softmax=True)


def imagenet_model(layout: str, batch: int | None) -> onnx.ModelProto:
    shape = IMAGENET_SHAPES[layout]
    inputs = int(np.prod(shape))
    rng = np.random.default_rng(224)
    # Logits of order 1 for normalised images, and sensitive to every pixel.
    weights = rng.normal(0, 1 / np.sqrt(inputs), (inputs, 5))
    return linear_classifier([batch, *shape], weights, rng.normal(0, 0.1, 5), input_name="pixels", output_name="logits")


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    write_model(repo, "tiny", TINY_CONFIG, {1: tiny_model(0), 2: tiny_model(1)})
    # The NHWC model takes exactly one image: the server must run a request's images one by one.
    write_model(repo, "imagenet_nchw", IMAGENET_CONFIG.format(max_batch_size=8, layout="NCHW"),
                {1: imagenet_model("NCHW", None)})
    write_model(repo, "imagenet_nhwc", IMAGENET_CONFIG.format(max_batch_size=0, layout="NHWC"),
                {1: imagenet_model("NHWC", 1)})
    return repo


SESSIONS = 4  # model versions in ``repository``


@pytest.fixture(scope="module")
def repo_stack(repository, tmp_path_factory) -> RunningStack:
    running = start_stack(tmp_path_factory.mktemp("repo-stack") / "run", MODEL_REPOSITORY=str(repository), WORKERS="1")
    yield running
    running.stop()


def local_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# -- configs are checked at start-up -------------------------------------------------


def edit(old: str, new: str):
    """A change to tiny's config.toml; returns the file the error must name."""

    def apply(folder: Path) -> Path:
        path = folder / "config.toml"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))
        return path

    return apply


def remove_versions(folder: Path) -> Path:
    shutil.rmtree(folder / "1")
    return folder / "config.toml"


def corrupt_model(folder: Path) -> Path:
    path = folder / "1" / "model.onnx"
    path.write_bytes(b"this is not an ONNX model")
    return path


def fixed_batch_model(folder: Path) -> Path:
    onnx.save(tiny_model(0, batch=1), folder / "1" / "model.onnx")
    return folder / "config.toml"


BROKEN_CONFIGS = [
    pytest.param(edit('task = "image_classification"\n', ""), "task", id="missing-field"),
    pytest.param(edit("max_batch_size = 8", 'max_batch_size = "8"'), "max_batch_size", id="wrong-type"),
    pytest.param(edit("max_batch_size = 8", "max_batch_size = -1"), "max_batch_size", id="negative-batch"),
    pytest.param(edit("color_mode", "colour_mode"), "preprocess.colour_mode", id="typo-in-field-name"),
    pytest.param(edit('[output]\nname = "scores"', '[output]\nname = "scores"\nshape = [3]'), "output.shape",
                 id="unknown-field"),
    pytest.param(edit('resize = "stretch"', 'resize = "squash"'), "preprocess.resize", id="bad-enum"),
    pytest.param(edit("size = [4, 4]", "size = [4]"), "preprocess.size", id="size-not-two-numbers"),
    pytest.param(edit("size = [4, 4]", "size = [0, 4]"), "preprocess.size", id="size-zero"),
    pytest.param(edit("size = [4, 4]", "size = [5, 5]"), "preprocess.size", id="size-does-not-fit-model"),
    pytest.param(edit("mean = [0.5]", "mean = [0.5, 0.5]"), "preprocess.mean", id="mean-for-other-channels"),
    pytest.param(edit("std = [0.5]", "std = [0.0]"), "preprocess.std", id="std-zero"),
    pytest.param(edit('"bird"]', '"bird", "fish"]'), "labels", id="labels-count-vs-model-outputs"),
    pytest.param(edit('labels = ["cat", "dog", "bird"]', 'labels = "labels.txt"'), "labels", id="label-file-missing"),
    pytest.param(edit('[input]\nname = "input"', '[input]\nname = "image"'), "input.name", id="input-not-in-model"),
    pytest.param(edit('name = "scores"', 'name = "probabilities"'), "output.name", id="output-not-in-model"),
    pytest.param(edit("task =", 'name = "other"\ntask ='), "name", id="name-is-not-the-folder"),
    pytest.param(edit("[input]", "[input"), "(file)", id="invalid-toml"),
    pytest.param(remove_versions, "(versions)", id="no-version-folder"),
    pytest.param(corrupt_model, "(model)", id="model-not-onnx"),
    pytest.param(fixed_batch_model, "max_batch_size", id="batching-a-fixed-batch-model"),
]


def test_the_tiny_config_is_valid(tmp_path):
    """The baseline the broken cases edit loads, so each failure below is the edit's doing."""
    write_model(tmp_path, "tiny", TINY_CONFIG, {1: tiny_model(0)})
    registry = ModelRegistry(tmp_path, threads=1)
    registry.load()
    assert registry.get("tiny").config.labels == tuple(TINY_LABELS)


@pytest.mark.parametrize("breaks, field", BROKEN_CONFIGS)
def test_a_broken_config_names_the_file_and_the_field(tmp_path, breaks, field):
    folder = write_model(tmp_path, "tiny", TINY_CONFIG, {1: tiny_model(0)})
    culprit = breaks(folder)
    with pytest.raises(ConfigError) as caught:
        ModelRegistry(tmp_path, threads=1).load()
    message = str(caught.value)
    print(message)
    assert message.startswith(f"{culprit}: field '{field}': ")


def test_the_stack_refuses_to_start_on_a_broken_config(tmp_path):
    config = TINY_CONFIG.replace("color_mode", "colour_mode")
    folder = write_model(tmp_path / "repo", "tiny", config, {1: tiny_model(0)})
    # RuntimeError: the stack exited (a hang would be TimeoutError).
    with pytest.raises(RuntimeError):
        start_stack(tmp_path / "run", timeout=60, MODEL_REPOSITORY=str(tmp_path / "repo"))
    log = (tmp_path / "run" / "logs" / "uwsgi.log").read_text()
    assert f"{folder / 'config.toml'}: field 'preprocess.colour_mode': is not a known field" in log
    assert "need-app requested, destroying the instance" in log


# -- versions -------------------------------------------------------------------------


def test_the_latest_version_is_served_unless_a_request_names_one(repo_stack, repository):
    assert repo_stack.get("/v2/models/tiny").json()["versions"] == ["1", "2"]
    picture = image_bytes(Image.new("L", (12, 12), 128))
    answers = {}
    for path in ("/api/v1/models/tiny/predict", "/api/v1/models/tiny/versions/1/predict",
                 "/api/v1/models/tiny/versions/2/predict"):
        response = repo_stack.post(path, files={"file": ("grey.png", picture)})
        assert response.status_code == 200, response.text
        body = response.json()
        answers[path] = (body["version"], body["predictions"][0]["label"])
    assert answers == {
        "/api/v1/models/tiny/predict": ("2", "dog"),
        "/api/v1/models/tiny/versions/1/predict": ("1", "cat"),
        "/api/v1/models/tiny/versions/2/predict": ("2", "dog"),
    }

    batch = np.random.default_rng(1).random((3, 16), dtype=np.float32)
    request = {"inputs": [{"name": "input", "shape": [3, 16], "datatype": "FP32", "data": batch.ravel().tolist()}]}
    for version, path in (("2", "/v2/models/tiny/infer"), ("1", "/v2/models/tiny/versions/1/infer")):
        body = repo_stack.post(path, json=request).json()
        assert body["model_version"] == version
        expected = local_session(repository / "tiny" / version / "model.onnx").run(None, {"input": batch})[0]
        np.testing.assert_allclose(np.reshape(body["outputs"][0]["data"], (3, 3)), expected, rtol=1e-6, atol=1e-7)

    response = repo_stack.post("/api/v1/models/tiny/versions/3/predict", files={"file": ("grey.png", picture)})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'tiny' has no version '3'; it has [1, 2]"}


# -- sessions: one per model version per worker, made after fork ------------------------


def loaded_lines(log: str, model: str, pid: int) -> list[int]:
    pattern = rf"loaded model {re.escape(model)} versions \[[\d, ]+\] with (\d+) intra-op threads in process {pid}\b"
    return [int(threads) for threads in re.findall(pattern, log)]


def threads_of(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_each_worker_loads_its_own_sessions_after_fork(stack):
    workers = stack.worker_pids()
    assert len(workers) == int(stack.env["WORKERS"]) == 2
    expected_threads = max(1, available_cpus() // len(workers))
    log = stack.uwsgi_log()
    for pid in workers:
        assert loaded_lines(log, "digits", pid) == [expected_threads], f"worker {pid}"
        assert "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()
    # lazy-apps: the master that forks never imports the app, so no ONNX Runtime pool exists before fork.
    assert "onnxruntime" not in Path(f"/proc/{stack.master_pid()}/maps").read_text()


def test_intra_op_threads_are_the_cpus_divided_by_the_workers(stack, repo_stack):
    """ONNX Runtime's intra-op pool runs N-1 threads per session beside the caller's: count them in /proc.

    The default stack (two workers, one session each) shows the app's baseline
    thread count; the one-worker repository stack has SESSIONS sessions of
    ``cpus // 1`` threads each on top of the same baseline.
    """
    cpus = available_cpus()
    default_worker = stack.worker_pids()[0]
    [repo_worker] = repo_stack.worker_pids()
    baseline = threads_of(default_worker) - (max(1, cpus // 2) - 1)
    assert set(loaded_lines(repo_stack.uwsgi_log(), "imagenet_nchw", repo_worker)) == {cpus}
    print(f"cpus {cpus}: default worker {threads_of(default_worker)} threads, "
          f"repository worker {threads_of(repo_worker)} threads for {SESSIONS} sessions")
    assert threads_of(repo_worker) == baseline + SESSIONS * (cpus - 1)


# -- ImageNet-style preprocessing ----------------------------------------------------------


def reference_tensor(image: Image.Image, layout: str) -> np.ndarray:
    """The textbook ImageNet evaluation transform, written out independently of the server.

    Shorter side to 256 (224 / 0.875) with bilinear resampling, centre 224x224
    crop, scale to [0, 1], subtract the mean and divide by the std per channel.
    """
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    image = image.convert("RGB")
    scale = 256 / min(image.size)
    width, height = round(image.width * scale), round(image.height * scale)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - 224) // 2, (height - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32) / 255
    pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    return pixels.transpose(2, 0, 1) if layout == "NCHW" else pixels


def picture(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Coloured 9-pixel blocks: any shift, flip or scaling error changes many values."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (max(2, height // 9), max(2, width // 9), 4), dtype=np.uint8)
    blocks[..., 3] = np.maximum(blocks[..., 3], 64)
    return Image.fromarray(blocks, "RGBA").resize((width, height), Image.Resampling.NEAREST).convert(mode)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("width, height, mode", [
    (301, 257, "RGB"), (200, 500, "RGB"), (224, 224, "RGB"), (100, 60, "RGB"),
    (1500, 1000, "RGB"), (640, 480, "L"), (333, 250, "RGBA"),
], ids=lambda value: str(value))
def test_preprocessing_matches_the_imagenet_reference(repository, layout, width, height, mode):
    pre = load_config(repository / f"imagenet_{layout.lower()}").preprocess
    image = picture(width, height, mode)
    tensor = to_array(image, pre)
    assert tensor.dtype == np.float32 and tensor.shape == tuple(IMAGENET_SHAPES[layout])
    np.testing.assert_allclose(tensor, reference_tensor(image, layout), atol=1e-5, rtol=0)


def test_large_photos_are_close_to_the_reference(repository):
    """Past a 6x reduction Pillow shrinks by an integer factor first (reducing_gap, for speed): close, not equal."""
    pre = load_config(repository / "imagenet_nchw").preprocess
    image = picture(3000, 2000)
    levels = np.abs(to_array(image, pre) - reference_tensor(image, "NCHW")) * IMAGENET_STD[:, None, None] * 255
    print(f"3000x2000 photo: {levels.mean():.2f} grey levels off on average, {levels.max():.1f} at most")
    assert levels.mean() < 1.0 and levels.max() < 8


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max())
    return exp / exp.sum()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_imagenet_model_end_to_end_equals_onnx_runtime_on_the_reference(repo_stack, repository, layout):
    name = f"imagenet_{layout.lower()}"
    labels = load_config(repository / name).labels
    session = local_session(repository / name / "1" / "model.onnx")
    for image in (picture(301, 257, seed=1), picture(180, 400, seed=2)):
        response = repo_stack.post(f"/api/v1/models/{name}/predict?top_k=5",
                                   files={"file": ("photo.png", image_bytes(image))})
        assert response.status_code == 200, response.text
        served = {p["label"]: p["score"] for p in response.json()["predictions"]}
        expected = softmax(session.run(None, {"pixels": reference_tensor(image, layout)[None]})[0][0])
        assert max(served, key=served.get) == labels[int(expected.argmax())]
        np.testing.assert_allclose([served[label] for label in labels], expected, atol=1e-5)


def model_stats(stack: RunningStack, name: str) -> tuple[int, int]:
    [stats] = stack.get(f"/v2/models/{name}/stats").json()["model_stats"]
    return stats["execution_count"], stats["inference_count"]


def test_a_request_with_several_images_runs_as_one_batch(repo_stack):
    files = [("file", (f"{i}.png", image_bytes(picture(240 + 10 * i, 260, seed=i)))) for i in range(3)]
    cases = [
        # (model, images sent, session runs expected): the NHWC model takes no batch dimension.
        ("imagenet_nchw", 3, 1),
        ("imagenet_nhwc", 2, 2),
    ]
    for name, count, runs in cases:
        before = model_stats(repo_stack, name)
        response = repo_stack.post(f"/api/v1/models/{name}/predict", files=files[:count])
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == count
        after = model_stats(repo_stack, name)
        assert (after[0] - before[0], after[1] - before[1]) == (runs, count), name

    # The same through the Open Inference Protocol: a [2, 3, 224, 224] tensor is one run.
    tensor = np.random.default_rng(3).normal(size=(2, 3, 224, 224)).astype(np.float32)
    header = b'{"inputs":[{"name":"pixels","shape":[2,3,224,224],"datatype":"FP32",' \
             b'"parameters":{"binary_data_size":%d}}]}' % tensor.nbytes
    before = model_stats(repo_stack, "imagenet_nchw")
    response = repo_stack.post("/v2/models/imagenet_nchw/infer", data=header + tensor.tobytes(),
                               headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    after = model_stats(repo_stack, "imagenet_nchw")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)
