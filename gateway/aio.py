"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel tasks and wait until they are really done.

    A single cancel() is not enough on Python 3.11: asyncio.wait_for (used inside the MQTT
    libraries) can swallow a cancellation that races with its inner future, leaving the
    task running. So keep cancelling until each task has finished.
    """
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
