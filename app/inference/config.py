"""The model repository's contract: ``models/<name>/config.toml``.

A config is parsed once at start-up; any mistake raises :class:`ConfigError`
naming the file and the field, so a bad deploy fails before serving.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TASKS = ("image_classification",)
COLOR_MODES = ("L", "RGB")
RESIZE_MODES = ("stretch", "pad", "center_crop")
LAYOUTS = ("NCHW", "NHWC")
OUTPUT_KINDS = ("probabilities", "logits")


class ConfigError(ValueError):
    """A model config is invalid; the message names the file and field."""

    def __init__(self, path: Path, field: str, message: str):
        super().__init__(f"{path}: field '{field}': {message}")
        self.path = path
        self.field = field


@dataclass(frozen=True)
class Preprocess:
    color_mode: str = "RGB"
    size: tuple[int, int] = (224, 224)  # height, width
    resize: str = "center_crop"
    crop_fraction: float = 0.875  # ImageNet's 224/256
    invert: str = "never"  # "never" | "always" | "auto" (make the background dark)
    crop_to_content: bool = False
    stroke_width: float = 0.0  # thicken pen strokes to this share of the content's size; 0: off
    autocontrast: bool = False
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path  # the model's folder
    task: str
    input_name: str
    output_name: str
    output_kind: str
    labels: tuple[str, ...]
    max_batch_size: int
    preprocess: Preprocess
    description: str = ""

    @property
    def source(self) -> Path:
        return self.path / "config.toml"


class _Reader:
    """Typed access to one TOML table with errors that name the field."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = ""):
        self.path, self.table, self.prefix = path, table, prefix
        self.seen: set[str] = set()

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.prefix + key, message)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.seen.add(key)
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "is required")
            return default
        value = self.table[key]
        # TOML booleans are ints in Python; never accept one for the other.
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be {names}, got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def numbers(self, key: str, default: Any = ..., length: int | None = None) -> tuple[float, ...]:
        value = self.get(key, list, default)
        if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise self.fail(key, f"must be a non-empty list of numbers, got {value!r}")
        if length is not None and len(value) != length:
            raise self.fail(key, f"must have {length} entries, got {len(value)}")
        return tuple(float(v) for v in value)

    def table_of(self, key: str) -> "_Reader":
        value = self.get(key, dict, {})
        return _Reader(self.path, value, f"{self.prefix}{key}.")

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "is not a known field (typo?)")


def load_config(model_dir: Path) -> ModelConfig:
    """Parse and validate ``model_dir/config.toml``."""
    path = model_dir / "config.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "is missing") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "(file)", f"is not valid TOML: {exc}") from None

    top = _Reader(path, raw)
    name = top.get("name", str, model_dir.name)
    if name != model_dir.name:
        raise top.fail("name", f"must match the folder name {model_dir.name!r}")
    task = top.choice("task", TASKS)
    description = top.get("description", str, "")
    max_batch_size = top.get("max_batch_size", int, 0)
    if max_batch_size < 0:
        raise top.fail("max_batch_size", "must be >= 0 (0: the model takes no batch dimension)")

    inp = top.table_of("input")
    input_name = inp.get("name", str)
    inp.reject_unknown()

    out = top.table_of("output")
    output_name = out.get("name", str)
    output_kind = out.choice("kind", OUTPUT_KINDS, "probabilities")
    out.reject_unknown()

    labels = _labels(top, model_dir)
    preprocess = _preprocess(top.table_of("preprocess"))
    top.reject_unknown()
    return ModelConfig(
        name=name,
        path=model_dir,
        task=task,
        input_name=input_name,
        output_name=output_name,
        output_kind=output_kind,
        labels=labels,
        max_batch_size=max_batch_size,
        preprocess=preprocess,
        description=description,
    )


def _labels(top: _Reader, model_dir: Path) -> tuple[str, ...]:
    value = top.get("labels", (str, list))
    if isinstance(value, str):
        label_file = model_dir / value
        try:
            lines = label_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise top.fail("labels", f"cannot read label file {label_file}: {exc.strerror}") from None
        value = [line.strip() for line in lines if line.strip()]
    if not value or not all(isinstance(v, str) for v in value):
        raise top.fail("labels", "must be a non-empty list of strings or a label file name")
    return tuple(value)


def _stroke_width(pre: _Reader) -> float:
    value = float(pre.get("stroke_width", (int, float), 0.0))
    if not 0 <= value < 0.5:
        raise pre.fail("stroke_width", "must be in [0, 0.5): a share of the content's larger side")
    return value


def _preprocess(pre: _Reader) -> Preprocess:
    color_mode = pre.choice("color_mode", COLOR_MODES, Preprocess.color_mode)
    size = pre.get("size", list, list(Preprocess.size))
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise pre.fail("size", f"must be [height, width] in pixels, got {size!r}")
    channels = 1 if color_mode == "L" else 3
    mean = pre.numbers("mean", [0.0] * channels)
    std = pre.numbers("std", [1.0] * channels)
    counts = "1 value" if channels == 1 else f"1 or {channels} values"
    for key, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise pre.fail(key, f"needs {counts} for color_mode {color_mode!r}")
    if any(v <= 0 for v in std):
        raise pre.fail("std", "values must be > 0")
    crop_fraction = float(pre.get("crop_fraction", (int, float), Preprocess.crop_fraction))
    if not 0 < crop_fraction <= 1:
        raise pre.fail("crop_fraction", "must be in (0, 1]")
    result = Preprocess(
        color_mode=color_mode,
        size=(size[0], size[1]),
        resize=pre.choice("resize", RESIZE_MODES, Preprocess.resize),
        crop_fraction=crop_fraction,
        invert=pre.choice("invert", ("never", "always", "auto"), Preprocess.invert),
        crop_to_content=pre.get("crop_to_content", bool, False),
        stroke_width=_stroke_width(pre),
        autocontrast=pre.get("autocontrast", bool, False),
        scale=float(pre.get("scale", (int, float), Preprocess.scale)),
        mean=mean,
        std=std,
        layout=pre.choice("layout", LAYOUTS, Preprocess.layout),
    )
    pre.reject_unknown()
    return result
