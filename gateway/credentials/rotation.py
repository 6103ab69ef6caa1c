"""Credential rotation that never locks a device out (versioned logins, DESIGN §6).

A device's login is `<id>.<n>`. Rotating it:

1. commit a pending login `<id>.<n+1>` (only its hash), then create it in the broker;
2. commit "offered", then offer its secret on `devices/<id>/creds` (the secret lives in
   memory only, and on the wire to the device);
3. the device reconnects with it and publishes on `devices/<id>/creds/ack/<n+1>`, which
   only that login may publish to: proof that the new login is in use. Commit "acked";
4. only then delete `<id>.<n>` from the broker (ending any session still using it) and
   commit the new login as the active one.

Every step is committed before it is acted on, so a restart after a crash at any point
either finishes the rotation (acked) or drops the unproven login (the old one was never
touched). An attempt that gets no acknowledgement in time is abandoned the same way and
retried with backoff; repeated failure raises an alert.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.broker.dynsec import DynsecClient
from gateway.broker.render import (
    GATEWAY_ROLE,
    create_device_login_commands,
    delete_login_commands,
)
from gateway.credentials.secrets import hash_password, new_secret, write_private
from gateway.devices.topics import ack_topic, device_topic
from gateway.mqtt import MqttSession
from gateway.store import Device, Rotation, Store, StoreError

log = logging.getLogger(__name__)

DAY_S = 86400.0
TICK_S = 1.0
REOFFER_EVERY_S = 60.0  # while a seen device has not switched, offer again this often
# After a gateway restart the secret of an offer in flight is gone: a device that took the
# offer proves it within moments of reconnecting; one that did not gets a fresh attempt.
RESUME_GRACE_S = 5.0
ACK_BATCH_S = 0.05  # acknowledgements arriving together share one broker batch

# For the crash-safety test only: the gateway SIGKILLs itself right after this step.
CRASH_ENV = "HOME_GATEWAY_TEST_CRASH_AT"
STEPS = ("created", "client-created", "offered", "acked", "old-deleted")


class RotationRefused(Exception):
    """A rotation that could not start; str() says why."""


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    period_days: int = 30
    ack_timeout_s: float = 600.0
    offline_wait_s: float = 7 * DAY_S
    retry_initial_s: float = 300.0
    retry_max_s: float = DAY_S
    alert_after: int = 3


# -- pure decisions ----------------------------------------------------------------------

def next_rotation_at(device: Device, policy: RotationPolicy) -> float | None:
    """When the device's login is next due for rotation (None: it has none)."""
    if device.rotated_at is None or device.status != "adopted":
        return None
    if device.rotation_retry_at is not None:
        return device.rotation_retry_at
    days = device.rotation_days or policy.period_days
    return device.rotated_at + days * DAY_S


def retry_delay(failures: int, policy: RotationPolicy) -> float:
    """Backoff after the n-th consecutive failure: initial, doubling, capped."""
    return min(policy.retry_max_s, policy.retry_initial_s * 2.0 ** max(failures - 1, 0))


def judge(rotation: Rotation, *, now: float, has_secret: bool, resumed_at: float,
          seen_after_offer: float | None, last_seen: float | None,
          policy: RotationPolicy) -> str:
    """What to do with a rotation in flight: "finish", "wait", "rollback" (the gateway lost
    the offer's secret in a restart: drop it and try again at once, no failure counted)
    or "fail" (no acknowledgement in time: drop it, count a failure, retry later)."""
    if rotation.step == "acked":
        return "finish"
    if now - rotation.started_at > policy.offline_wait_s:
        return "fail"
    if not has_secret:
        if rotation.step == "created":
            return "rollback"  # never offered: the device cannot hold it
        seen_since = last_seen is not None and last_seen >= resumed_at
        return "rollback" if seen_since and now - resumed_at > RESUME_GRACE_S else "wait"
    if seen_after_offer is not None and now - seen_after_offer > policy.ack_timeout_s:
        return "fail"  # online with the offer for the whole timeout, and did not switch
    return "wait"


def version_of(username: str) -> int:
    return int(username.rsplit(".", 1)[1])


def crash_point(step: str) -> None:
    """kill -9 of ourselves at `step`, when the crash-safety test asks for it."""
    if os.environ.get(CRASH_ENV) == step:
        log.warning("test: killing the gateway at rotation step %s", step)
        os.kill(os.getpid(), signal.SIGKILL)


# -- the gateway's own login ---------------------------------------------------------------

OWN_ROTATED_AT = "gateway_login_rotated_at"  # settings key
OWN_CONNECT_TIMEOUT_S = 10.0


class OwnLogin:
    """The gateway's own broker login, rotated by the same rule as a device's: the next
    login (`home-gateway:<n>`) is created beside the current one and replaces it only once
    the gateway has connected with it. The gateway must keep this secret to log in after
    a restart: it lives in a 0600 file. The next login is written to "<file>.next" first;
    a leftover one (a crash before the switch was proven) is discarded at start, and the
    file is replaced atomically once the new login works."""

    def __init__(self, path: Path, session: MqttSession, dynsec: DynsecClient,
                 store: Store) -> None:
        self.path = path
        self.session = session
        self.dynsec = dynsec
        self.store = store

    @staticmethod
    def discard_unfinished(path: Path) -> None:
        _next_path(path).unlink(missing_ok=True)

    def rotated_at(self) -> float:
        stored = self.store.setting(OWN_ROTATED_AT)
        if stored is not None:
            return float(stored)
        return self.path.stat().st_mtime if self.path.exists() else time.time()

    def due(self, now: float, policy: RotationPolicy) -> bool:
        return now - self.rotated_at() >= policy.period_days * DAY_S

    async def rotate(self, actor: str) -> bool:
        old = self.session.endpoint
        assert old.username is not None
        base, _, number = old.username.partition(":")
        username = f"{base}:{int(number or 0) + 1}"
        secret = new_secret()
        write_private(_next_path(self.path), f"{username} {secret}\n")
        await self.dynsec.apply([{"command": "createClient", "username": username,
                                  "password": secret,
                                  "roles": [{"rolename": GATEWAY_ROLE}]}])
        self.session.endpoint = replace(old, username=username, password=secret)
        await self.session.reconnect()
        try:
            await self.session.wait_connected(OWN_CONNECT_TIMEOUT_S)
        except TimeoutError:
            # Not proven: back to the login that works; the new one goes.
            self.session.endpoint = old
            await self.session.reconnect()
            await self.session.wait_connected(OWN_CONNECT_TIMEOUT_S)
            await self.dynsec.apply([{"command": "deleteClient", "username": username}])
            self.discard_unfinished(self.path)
            self.store.audit(actor, "credential.rotate", "failed", target="home-gateway",
                             detail=f"{username} was refused; {old.username} kept")
            return False
        os.replace(_next_path(self.path), self.path)
        await self.dynsec.apply([{"command": "deleteClient", "username": old.username}])
        self.store.set_setting(OWN_ROTATED_AT, str(time.time()))
        self.store.audit(actor, "credential.rotate", "ok", target="home-gateway",
                         detail=f"{username} in use; {old.username} deleted")
        return True


def _next_path(path: Path) -> Path:
    return path.with_name(path.name + ".next")


# -- the service -------------------------------------------------------------------------

@dataclass(slots=True)
class Offer:
    """An offer in flight, in memory only: the one place a new secret exists."""

    username: str
    secret: str
    offered_at: float = 0.0
    seen_after: float | None = None


class Rotator:
    def __init__(self, store: Store, session: MqttSession, dynsec: DynsecClient, *,
                 policy: RotationPolicy, last_seen: Callable[[str], float | None],
                 devices: Callable[[], Sequence[Device]],
                 on_change: Callable[[], None] = lambda: None,
                 on_enrollment_ack: Callable[[str, int], Any] | None = None,
                 own: OwnLogin | None = None) -> None:
        self.store = store
        self.session = session
        self.dynsec = dynsec
        self.policy = policy
        self.last_seen = last_seen
        # The device service's cached view, read every second: `on_change` refreshes it
        # right after each commit here that changes a device.
        self.devices = devices
        self.on_change = on_change
        self.on_enrollment_ack = on_enrollment_ack
        self.own = own
        self._offers: dict[str, Offer] = {}
        self._acked: list[Rotation] = []
        self._resumed_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._ack_flush: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()

    async def start(self) -> None:
        self._resumed_at = time.time()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="rotation")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, self._ack_flush)

    # -- status --------------------------------------------------------------------

    def in_flight(self) -> dict[str, Rotation]:
        return {r.device_id: r for r in self.store.rotations()}

    def alerts(self) -> list[Device]:
        return [d for d in self.devices() if d.rotation_result.startswith("alert")]

    async def rotate_now(self, device_id: str, actor: str) -> None:
        """Start one device's rotation, or raise RotationRefused (audited) saying why not."""
        if await self.rotate([device_id], "manual", actor):
            return
        why = ("is already rotating" if self.store.rotation(device_id) is not None
               else "has no credential to rotate")
        self.store.audit(actor, "credential.rotate", "rejected", target=device_id, detail=why)
        raise RotationRefused(f"{device_id} {why}")

    # -- starting rotations --------------------------------------------------------

    async def rotate(self, device_ids: Sequence[str], reason: str, actor: str) -> list[str]:
        """Start rotations (one broker batch for all); returns the ids actually started
        (a device already rotating, or without a login, is skipped)."""
        async with self._busy:
            started: list[tuple[Rotation, str]] = []
            for device_id in device_ids:
                if self.store.rotation(device_id) is not None:
                    continue
                secret = new_secret()
                try:
                    rotation = self.store.begin_rotation(device_id, hash_password(secret),
                                                         reason)
                except StoreError as exc:
                    log.warning("rotation of %s not started: %s", device_id, exc)
                    continue
                self.store.audit(actor, "credential.rotate", "started", target=device_id,
                                 detail=f"{rotation.old_username} -> {rotation.new_username}"
                                        f" ({reason})")
                started.append((rotation, secret))
            if not started:
                return []
            crash_point("created")
            commands: list[dict[str, object]] = []
            for rotation, secret in started:
                commands += create_device_login_commands(rotation.device_id,
                                                         rotation.new_username, secret)
            await self.dynsec.apply(commands)
            crash_point("client-created")
            now = time.time()
            for rotation, secret in started:
                self.store.set_rotation_step(rotation.device_id, "offered", offered_at=now)
                self._offers[rotation.device_id] = Offer(rotation.new_username, secret)
            crash_point("offered")
            for rotation, _ in started:
                await self._offer(rotation.device_id)
            self.on_change()
            return [r.device_id for r, _ in started]

    async def rotate_all(self, actor: str) -> list[str]:
        """Every device's login, and the gateway's own."""
        ids = [d.id for d in self.devices() if d.status == "adopted" and d.rotated_at]
        if self.own is not None:  # first: its reconnect would race device acks
            async with self._busy:
                await self.own.rotate(actor)
        return await self.rotate(ids, "all", actor)

    async def _offer(self, device_id: str) -> None:
        offer = self._offers.get(device_id)
        if offer is None:
            return
        version = version_of(offer.username)
        payload = json.dumps({"username": offer.username, "password": offer.secret,
                              "client_id": device_id, "version": version,
                              "ack_topic": ack_topic(device_id, version)})
        offer.offered_at = time.time()
        try:
            await self.session.publish(device_topic(device_id, "creds"), payload, qos=1)
        except Exception as exc:  # not connected: the loop offers again
            log.debug("offer to %s not sent: %s", device_id, exc)

    def gateway_connected(self) -> None:
        """Our own session (re)connected: an acknowledgement sent meanwhile was lost, so
        offer again (a device already on the offered login acknowledges once more)."""
        for device_id in list(self._offers):
            asyncio.get_running_loop().create_task(self._offer(device_id))

    def device_connected(self, device_id: str) -> None:
        """A device (re)connected (it publishes its state on connect): a device that was
        offline during its rotation gets the offer now."""
        offer = self._offers.get(device_id)
        if offer is not None and time.time() - offer.offered_at > 1.0:
            asyncio.get_running_loop().create_task(self._offer(device_id))

    # -- acknowledgements ----------------------------------------------------------

    def handle_ack(self, device_id: str, version: int) -> None:
        """devices/<id>/creds/ack/<version>: only login <id>.<version> can publish it."""
        rotation = self.store.rotation(device_id)
        if rotation is None or version_of(rotation.new_username) != version:
            if self.on_enrollment_ack is not None:
                self.on_enrollment_ack(device_id, version)
            return
        if rotation.step == "acked" or any(r.device_id == device_id for r in self._acked):
            return
        self.store.set_rotation_step(device_id, "acked")
        crash_point("acked")
        self._acked.append(rotation)
        if self._ack_flush is None or self._ack_flush.done():
            self._ack_flush = asyncio.get_running_loop().create_task(self._finish_acked())

    async def _finish_acked(self) -> None:
        await asyncio.sleep(ACK_BATCH_S)
        async with self._busy:
            while self._acked:  # acks that arrive while a batch is applied are taken too
                batch, self._acked = self._acked, []
                await self._finish(batch)

    async def _finish(self, rotations: Sequence[Rotation]) -> None:
        """Delete the old logins (one broker batch), then commit the new ones. Runs under
        `_busy`; a rotation another caller finished meanwhile is skipped."""
        rotations = [r for r in rotations if (now := self.store.rotation(r.device_id))
                     is not None and now.new_username == r.new_username]
        if not rotations:
            return
        await self.dynsec.apply(delete_login_commands([r.old_username for r in rotations]))
        crash_point("old-deleted")
        for rotation in rotations:
            self.store.finish_rotation(rotation)
            self._offers.pop(rotation.device_id, None)
            self.store.audit("system", "credential.rotate", "ok", target=rotation.device_id,
                             detail=f"{rotation.new_username} in use; "
                                    f"{rotation.old_username} deleted")
        log.info("rotated %d credential(s)", len(rotations))
        self.on_change()

    # -- the clock -----------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("rotation: tick failed")
            await asyncio.sleep(TICK_S)

    async def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        # Under the lock: a rotation that rotate() has committed but not yet offered must
        # not look like one whose secret died in a restart.
        async with self._busy:
            in_flight = await self._judge_in_flight(now)
        busy = {r.device_id for r in in_flight}
        due = [d.id for d in self.devices() if d.id not in busy
               and (at := next_rotation_at(d, self.policy)) is not None and at <= now]
        if due:
            await self.rotate(due, "scheduled", "system")
        if self.own is not None and self.own.due(now, self.policy):
            async with self._busy:
                await self.own.rotate("system")

    async def _judge_in_flight(self, now: float) -> list[Rotation]:
        finish: list[Rotation] = []
        in_flight = self.store.rotations()
        for rotation in in_flight:
            offer = self._offers.get(rotation.device_id)
            seen = self.last_seen(rotation.device_id)
            if offer is not None and seen is not None and seen > offer.offered_at:
                if offer.seen_after is None:
                    offer.seen_after = seen
                if now - offer.offered_at > REOFFER_EVERY_S:
                    await self._offer(rotation.device_id)
            verdict = judge(rotation, now=now, has_secret=offer is not None,
                            resumed_at=self._resumed_at,
                            seen_after_offer=offer.seen_after if offer else None,
                            last_seen=seen, policy=self.policy)
            if verdict == "finish":
                if not any(r.device_id == rotation.device_id for r in self._acked):
                    finish.append(rotation)
            elif verdict in ("rollback", "fail"):
                await self._abandon(rotation, failed=verdict == "fail", now=now)
        await self._finish(finish)
        return in_flight

    async def _abandon(self, rotation: Rotation, *, failed: bool, now: float) -> None:
        """Drop the unproven login, never the old one."""
        self._offers.pop(rotation.device_id, None)
        device = self.store.device(rotation.device_id)
        failures = (device.rotation_failures if device else 0) + (1 if failed else 0)
        if failed:
            alert = failures >= self.policy.alert_after
            result = (f"{'alert' if alert else 'failed'}: no acknowledgement "
                      f"({failures} attempt{'s' if failures > 1 else ''} in a row)")
            retry_at = now + retry_delay(failures, self.policy)
        else:
            result, retry_at = "interrupted by a gateway restart; retrying", now
        self.store.abandon_rotation(rotation, failed=failed, result=result, retry_at=retry_at)
        # Audit and views show the outcome with the commit, not after the broker's answer.
        outcome = "alert" if result.startswith("alert") else ("failed" if failed else "retry")
        self.store.audit("system", "credential.rotate", outcome, target=rotation.device_id,
                         detail=f"{rotation.new_username} dropped, {rotation.old_username} "
                                f"kept: {result}")
        if outcome == "alert":
            log.error("credential rotation for %s keeps failing: %s", rotation.device_id,
                      result)
        self.on_change()
        await self.dynsec.apply(delete_login_commands([rotation.new_username]))
