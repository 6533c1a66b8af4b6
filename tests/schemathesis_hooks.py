"""Hooks for the schemathesis run in tests/test_fuzz.py, which loads them through ``SCHEMATHESIS_HOOKS``."""

from __future__ import annotations

import schemathesis
from schemathesis.openapi.checks import UnsupportedMethodResponse

from .fuzzing import fault


@schemathesis.check
def errors_explain_themselves(ctx, response, case):
    """The hypothesis tests' rule: no 5xx, no trace, errors as JSON ``{"error": "..."}``."""
    request = response.request
    content_type = (response.headers.get("content-type") or [""])[0]
    problem = fault(request.method, request.path_url, response.status_code, content_type, response.content,
                    request.headers.get("Accept", ""))
    if problem:
        raise AssertionError(problem)


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep every failure but one: no ``Allow`` on nginx's 405 for TRACE.

    nginx refuses TRACE itself, for every URL, before any location is chosen: it cannot know
    which methods the URL takes. Its answer is still checked (a JSON error, by the rule above).
    """
    return not (
        isinstance(failure, UnsupportedMethodResponse)
        and failure.method == "TRACE"
        and failure.failure_reason == "missing_allow_header"
    )
