"""Live changes to the running broker through the dynamic-security $CONTROL topic.

The database stays the source of truth: every change is written there first, so a change
that fails here (broker restarting) is still applied when the broker file is next rendered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Sequence
from typing import Any

from gateway.broker.render import DYNSEC_TOPIC
from gateway.mqtt import Message, MqttSession

log = logging.getLogger(__name__)

RESPONSE_TOPIC = DYNSEC_TOPIC + "/response"
TIMEOUT_S = 5.0
TIMEOUT_PER_COMMAND_S = 0.05  # the plugin rewrites its whole file after every change
# The plugin answers a batch only when all of it is done, and blocks the broker meanwhile:
# large changes go in chunks, so other clients are served in between and no batch outlasts
# the MQTT client's own 10 s publish timeout.
CHUNK = 100


class DynsecError(Exception):
    pass


class DynsecClient:
    def __init__(self, session: MqttSession) -> None:
        self.session = session
        self._pending: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)

    def handle(self, message: Message) -> None:
        """Route a message from RESPONSE_TOPIC (the session subscribes to it)."""
        try:
            responses = json.loads(message.payload)["responses"]
            key = responses[0]["correlationData"]
        except (ValueError, KeyError, IndexError, TypeError):
            return
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(responses)

    async def execute(self, commands: Sequence[dict[str, Any]],
                      ignore: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Run one batch; raise DynsecError for an error not listed in `ignore`
        (matched as a substring, e.g. "not found" when deleting what may not exist)."""
        batch_id = f"hg-{next(self._ids)}"
        batch = [dict(c, correlationData=batch_id) for c in commands]
        future: asyncio.Future[list[dict[str, Any]]] = (
            asyncio.get_running_loop().create_future())
        self._pending[batch_id] = future
        try:
            await self.session.publish(DYNSEC_TOPIC, json.dumps({"commands": batch}), qos=1)
            responses = await asyncio.wait_for(
                future, TIMEOUT_S + TIMEOUT_PER_COMMAND_S * len(batch))
        except TimeoutError:
            raise DynsecError("the broker did not answer a dynamic-security command") from None
        finally:
            self._pending.pop(batch_id, None)
        for response in responses:
            error = response.get("error")
            if error and not any(text in error for text in ignore):
                raise DynsecError(f"{response.get('command')}: {error}")
        return responses

    async def apply(self, commands: Sequence[dict[str, Any]]) -> None:
        """Apply a change the database already holds: what exists already (or is gone
        already) is fine, and a broker that cannot take it now gets it at its next start,
        when its file is rendered from the database."""
        if not commands:
            return
        try:
            for start in range(0, len(commands), CHUNK):
                await self.execute(commands[start:start + CHUNK],
                                   ignore=("not found", "already exists"))
        except Exception as exc:
            log.warning("broker: live update deferred to the next broker start: %s", exc)
