"""Fixtures for tests that run the real daemon process."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon_proc import Gateway


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A configured, not yet started gateway; killed (with its broker) afterwards."""
    gw = Gateway(tmp_path / "gw", Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp")))
    try:
        yield gw
    finally:
        gw.close()


