"""Shared fixtures. Under CI=true a skipped test fails the run: nothing is skipped in CI."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.sim.lab import Lab, start_lab


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") == "true" and skipped:
        reporter.write_line(f"CI=true: {len(skipped)} skipped test(s) count as failures",
                            red=True)
        session.exitstatus = 1


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    """A running gateway (real Mosquitto on a free loopback port) with no devices yet."""
    running = await start_lab(tmp_path / "state")
    try:
        yield running
    finally:
        await running.stop()
