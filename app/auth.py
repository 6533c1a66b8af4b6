"""API keys for the JSON API: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

With no key configured (``API_KEYS``, ``API_KEYS_FILE``) every request passes, as on a
laptop. With keys, a request without a valid one gets a 401 that says no more than that.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Callable, Iterable

from flask import Blueprint, current_app, request

from .errors import error_response
from .state import settings

UNAUTHORIZED = "a valid API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"


def presented_key() -> str:
    """The key the client sent: a bearer token, else ``X-API-Key``; empty when neither."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # Other schemes (Basic from an nginx auth_basic in front) are not ours to judge.
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip()


def accepts(presented: str, keys: Iterable[str]) -> bool:
    """Whether ``presented`` is one of ``keys``, in a time that tells nothing about either.

    Digests make every comparison the same length, and every key is compared, with
    no early exit: timing reveals neither which key matched nor any key's length.
    """
    candidate = _digest(presented)
    matched = False
    for digest in _digests(frozenset(keys)):
        matched |= hmac.compare_digest(candidate, digest)
    return matched


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@lru_cache(maxsize=4)
def _digests(keys: frozenset[str]) -> tuple[bytes, ...]:
    return tuple(_digest(key) for key in keys)


def protect(bp: Blueprint, open_views: Iterable[Callable]) -> None:
    """Require a key on every endpoint of ``bp`` and its children except ``open_views``.

    Open by exception: an endpoint added later is protected until someone decides otherwise.
    """
    open_views = frozenset(open_views)

    @bp.before_request
    def require_key():
        keys = settings().api_keys
        if not keys or current_app.view_functions.get(request.endpoint) in open_views:
            return None
        if accepts(presented_key(), keys):
            return None
        response = error_response(401, UNAUTHORIZED)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
