"""One JSON line per request on stderr (the uWSGI log): the app's half of nginx's access log.

Both carry the same ``request_id``; this side adds the model and the time per stage.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timezone

import orjson
from flask import Response, g, request

from .inference import ModelVersion, Stages

log = logging.getLogger("modelstack.requests")


def configure() -> None:
    """Bare JSON lines, whatever format the root logger uses; once per process."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def request_line(response: Response, stages: Stages, model: ModelVersion | None) -> dict:
    """This request's line; seconds, like nginx's ``request_time``; ``duration`` is the sum of the stages."""
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": g.request_id,
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "model": model.name if model else None,
        "version": str(model.version) if model else None,
        "duration": round(sum(stages.seconds.values()), 6),
        "stages": {name: round(seconds, 6) for name, seconds in stages.seconds.items()},
        "pid": os.getpid(),
    }


def write(line: dict) -> None:
    log.info(orjson.dumps(line).decode())
