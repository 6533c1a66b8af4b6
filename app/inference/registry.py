"""The model repository in memory: every model version loaded, warmed and looked up by name.

Layout (as Triton's): ``<repository>/<model>/config.toml`` and
``<repository>/<model>/<version>/model.onnx``, versions being positive integers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import ConfigError, ModelConfig, load_config
from .errors import InferenceError, parse_count
from .model import ModelVersion

log = logging.getLogger(__name__)


def scan(repository: Path) -> dict[str, tuple[ModelConfig, list[int]]]:
    """Parse every config and list the versions, without loading any model."""
    if not repository.is_dir():
        raise ConfigError(repository, "MODEL_REPOSITORY", "is not a directory")
    found: dict[str, tuple[ModelConfig, list[int]]] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = load_config(model_dir)
        versions = sorted(
            number for p in model_dir.iterdir() if (number := parse_count(p.name)) and (p / "model.onnx").is_file()
        )
        if not versions:
            raise ConfigError(model_dir / "config.toml", "(versions)", f"no {model_dir}/<version>/model.onnx found")
        found[config.name] = (config, versions)
    if not found:
        raise ConfigError(repository, "MODEL_REPOSITORY", "holds no model folders")
    return found


class ModelRegistry:
    """All servable model versions of this worker process."""

    def __init__(self, repository: Path, threads: int):
        self.repository = repository
        self.threads = threads
        self.configs = scan(repository)
        self.versions: dict[str, dict[int, ModelVersion]] = {}
        self.ready = False

    def load(self) -> None:
        """Create one session per model version, warmed; call once per process, after fork."""
        for name, (config, versions) in self.configs.items():
            self.versions[name] = {v: ModelVersion(config, v, self.threads) for v in versions}
            # The pid tells the workers apart: each loads its own sessions after fork.
            log.info("loaded model %s versions %s with %d intra-op threads in process %d",
                     name, versions, self.threads, os.getpid())
        self.ready = True

    @property
    def names(self) -> list[str]:
        return list(self.configs)

    def get(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The named version, or the latest; 404 for anything unknown."""
        versions = self.versions.get(name)
        if versions is None:
            if name in self.configs:
                raise InferenceError(503, f"model '{name}' is not loaded yet")
            raise InferenceError(404, f"unknown model '{name}'")
        if version in (None, ""):
            return versions[max(versions)]
        number = parse_count(str(version))
        if number not in versions:
            raise InferenceError(404, f"model '{name}' has no version '{version}'; it has {sorted(versions)}")
        return versions[number]

    def latest(self) -> list[ModelVersion]:
        return [versions[max(versions)] for versions in self.versions.values()]

    def all_versions(self) -> list[ModelVersion]:
        return [model for versions in self.versions.values() for model in versions.values()]
