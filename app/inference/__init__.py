"""Everything between request bytes and predictions: configs, sessions, pre- and postprocessing."""

from .config import ConfigError, ModelConfig
from .errors import InferenceError, parse_count
from .model import ModelVersion, Prediction
from .registry import ModelRegistry
from .timing import Stages

__all__ = [
    "ConfigError",
    "InferenceError",
    "ModelConfig",
    "ModelRegistry",
    "ModelVersion",
    "Prediction",
    "Stages",
    "parse_count",
]
