"""Shared fixtures: the real stack on loopback, and real digit images."""

from __future__ import annotations

import pytest

from .digits import held_out_digits
from .slow_model import slow_model, three_png  # noqa: F401  (fixtures for the failure-mode tests)
from .stackrunner import RunningStack, start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> RunningStack:
    """The default stack (nginx + 2 uWSGI workers + the digits model), shared by read-only tests."""
    running = start_stack(tmp_path_factory.mktemp("stack") / "run")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def digits():
    """Held-out digits (never seen in training) as (8x8 array, label) pairs."""
    return held_out_digits()
