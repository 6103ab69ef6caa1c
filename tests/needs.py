"""A test that cannot run on this machine is skipped, except under CI=true, where it fails:
nothing is skipped in CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(problem: str) -> NoReturn:
    """Skip (or, under CI=true, fail) the current test because of `problem`."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem} (CI=true: this layer must run)", pytrace=False)
    pytest.skip(problem)
