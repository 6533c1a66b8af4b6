#!/usr/bin/env python3
"""Add a model version to the repository from a URL or a local file, checked before it lands.

    python scripts/fetch_model.py URL --name mobilenetv2 [--version N] [--sha256 HEX]
        [--config CONFIG.toml] [--labels LABELS.txt] [--repository models/]

URL may be https://, http:// or file://, or a plain path. The file is
downloaded to a temporary name, its SHA-256 compared when given, the whole
model folder (config, labels, the new version) validated with the server's
own loader, and only then moved into place; a failure leaves the repository
as it was. Afterwards `make reload` serves the new version with no downtime.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.inference.config import ConfigError  # noqa: E402
from app.inference.registry import ModelRegistry  # noqa: E402

CHUNK = 1 << 20
TIMEOUT = 60


def download(source: str, target: Path, max_bytes: int) -> str:
    """Copy ``source`` to ``target``; return the SHA-256 of what was written."""
    if "://" not in source:
        source = Path(source).resolve().as_uri()
    scheme = urllib.parse.urlsplit(source).scheme
    if scheme not in ("https", "http", "file"):
        raise ValueError(f"unsupported URL scheme {scheme!r}: use https, http or file")
    digest = hashlib.sha256()
    written = 0
    with urllib.request.urlopen(source, timeout=TIMEOUT) as response, open(target, "wb") as out:
        while chunk := response.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise ValueError(f"{source} is larger than {max_bytes // 2**20} MB (--max-mb)")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def add_version(
    source: str,
    name: str,
    repository: Path,
    version: int | None = None,
    sha256: str | None = None,
    config: Path | None = None,
    labels: Path | None = None,
    max_mb: int = 2048,
) -> Path:
    """Fetch, verify and validate; return the path of the new ``model.onnx``."""
    model_dir = repository / name
    existing = sorted(int(p.name) for p in model_dir.glob("*") if p.name.isdigit()) if model_dir.is_dir() else []
    version = version or (existing[-1] + 1 if existing else 1)
    if version in existing:
        raise ValueError(f"{model_dir / str(version)} exists; versions are immutable, pick another")
    if not model_dir.is_dir() and config is None:
        raise ValueError(f"{model_dir} is new: pass --config (see examples/ for one)")

    # A dot-folder: the server skips it if it rescans while we work.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=repository) as staging:
        # Validate the model folder as the server will see it, in a scratch repository.
        candidate = Path(staging) / "repo" / name
        if model_dir.is_dir():
            shutil.copytree(model_dir, candidate, ignore=shutil.ignore_patterns("[0-9]*"))
        else:
            candidate.mkdir(parents=True)
        if config:
            shutil.copy(config, candidate / "config.toml")
        if labels:
            shutil.copy(labels, candidate / labels.name)
        (candidate / str(version)).mkdir()
        onnx_file = candidate / str(version) / "model.onnx"
        actual = download(source, onnx_file, max_mb * 2**20)
        if sha256 and actual != sha256.lower():
            raise ValueError(f"SHA-256 mismatch: expected {sha256}, got {actual}")
        registry = ModelRegistry(candidate.parent, threads=1)
        registry.load()  # parses the config, opens the session and runs the warm-up

        model_dir.mkdir(parents=True, exist_ok=True)
        for item in candidate.iterdir():
            if not item.name.isdigit():
                shutil.copy(item, model_dir / item.name)
        # A rename within one file system: the server never sees a half-written version.
        os.replace(candidate / str(version), model_dir / str(version))
    return model_dir / str(version) / "model.onnx"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="URL (https, http, file) or path of an .onnx file")
    parser.add_argument("--name", required=True, help="model name (folder in the repository)")
    parser.add_argument("--version", type=int, help="version number (default: the next one)")
    parser.add_argument("--sha256", help="expected SHA-256 of the file")
    parser.add_argument("--config", type=Path, help="config.toml for a new model (or to replace the current one)")
    parser.add_argument("--labels", type=Path, help="labels file the config refers to")
    parser.add_argument("--max-mb", type=int, default=2048, help="refuse files larger than this")
    parser.add_argument(
        "--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "models"))
    )
    args = parser.parse_args()
    try:
        path = add_version(args.source, args.name, args.repository, args.version, args.sha256,
                           args.config, args.labels, args.max_mb)
    except (ValueError, OSError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"added {path}; run `make reload` to serve it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
