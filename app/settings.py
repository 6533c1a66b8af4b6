"""Settings read from environment variables, each with a production default.

This is the one place that names the variables; the launcher in ``deploy/``
imports it too, so nginx and the app never disagree about a limit.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def split_list(text: str) -> list[str]:
    """Items separated by commas, spaces or line breaks."""
    return text.replace(",", " ").split()


def env_list(name: str) -> list[str]:
    return split_list(os.environ.get(name, ""))


# Shorter keys are guessable; every key install.sh generates has 43 characters.
MIN_KEY_LENGTH = 16


def env_keys(name: str, file_name: str) -> frozenset[str]:
    """Secrets listed in ``name`` plus those in the file that ``file_name`` names.

    The file holds keys separated by commas, spaces or lines; ``#`` starts a comment.
    A missing, empty or world-readable file stops the start: a mistyped path must not
    leave the API open, and a file every local user can read gives the keys away.
    """
    keys = _checked_keys(env_list(name), name)
    path = env_str(file_name, "")
    if path:
        try:
            mode = os.stat(path).st_mode
            text = Path(path).read_text()
        except OSError as error:
            raise ValueError(f"{file_name}={path}: {error.strerror}") from None
        if mode & stat.S_IROTH:
            raise ValueError(f"{file_name}={path} is readable by every user: chmod o-rwx {path}")
        found = split_list(" ".join(line.partition("#")[0] for line in text.splitlines()))
        if not found:
            raise ValueError(f"{file_name}={path} holds no keys")
        keys |= _checked_keys(found, f"{file_name}={path}")
    return keys


def _checked_keys(keys: list[str], source: str) -> frozenset[str]:
    # Never name the offending key: this message ends up in logs.
    if any(len(key) < MIN_KEY_LENGTH or not (key.isascii() and key.isprintable()) for key in keys):
        raise ValueError(f"{source}: every key needs {MIN_KEY_LENGTH} or more printable ASCII characters")
    return frozenset(keys)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota.

    ``os.cpu_count()`` reports the host's cores, which oversubscribes a
    container limited to fewer.
    """
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment."""

    model_repository: Path = field(
        default_factory=lambda: Path(env_str("MODEL_REPOSITORY", str(PROJECT_ROOT / "models")))
    )
    # One limit for nginx's client_max_body_size and Flask's MAX_CONTENT_LENGTH.
    max_upload_mb: int = field(default_factory=lambda: env_int("MAX_UPLOAD_MB", 8, minimum=1))
    # Decoded pixels allowed per image: stops decompression bombs before decoding.
    max_image_pixels: int = field(
        default_factory=lambda: env_int("MAX_IMAGE_PIXELS", 40_000_000, minimum=1)
    )
    # Largest batch one request may carry, whatever the model allows.
    max_batch_size: int = field(default_factory=lambda: env_int("MAX_BATCH_SIZE", 64, minimum=1))
    # Worker processes sharing this machine's CPUs; sizes ONNX Runtime's thread pool.
    workers: int = field(default_factory=lambda: env_int("WORKERS", 1, minimum=1))
    # 0 means "CPUs available / workers".
    ort_threads: int = field(default_factory=lambda: env_int("ORT_INTRA_OP_THREADS", 0))
    default_top_k: int = field(default_factory=lambda: env_int("TOP_K", 5, minimum=1))
    # Keys the JSON API accepts (app/auth.py); none leaves it open. Out of repr(): never logged.
    api_keys: frozenset[str] = field(
        default_factory=lambda: env_keys("API_KEYS", "API_KEYS_FILE"), repr=False
    )

    @property
    def max_content_length(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def intra_op_threads(self) -> int:
        if self.ort_threads:
            return self.ort_threads
        return max(1, available_cpus() // self.workers)
