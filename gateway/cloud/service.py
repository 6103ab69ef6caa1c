"""The cloud relay: one place where every command enters, whatever its source.

Sources: `cloud` (signed envelopes on gw/<id>/cmd), `local-signed` (the same envelope on
the local API, the owner's app's path when the cloud is unreachable), `admin` (a logged-in
admin; no signature), `homeassistant` and `schedule`. Every command is verified (signed
ones), carried out through the device service, written to the command log and audited with
its source and outcome. A rejected command never reaches the device.

The link to the cloud is outbound only: MQTT over TLS with the CA pinned and the host name
checked, a retained online/offline status with a last will, reconnecting with full-jitter
exponential backoff. Everything outbound goes through the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import zoneinfo
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.cloud import envelope as env
from gateway.cloud import shadows
from gateway.cloud.schedule import ScheduleError, due, next_run, parse_when
from gateway.cloud.spool import Spool
from gateway.config import CloudConfig, Config
from gateway.devices.kinds import KINDS, check_command
from gateway.devices.service import CommandRejected, CommandTimeout, DeviceOffline, DeviceService
from gateway.mqtt import Backoff, Endpoint, Message, MqttSession, NotConnected, Will
from gateway.store import CommandEntry, Schedule, Store

log = logging.getLogger(__name__)

SOURCES = ("cloud", "local-signed", "admin", "homeassistant", "schedule")
# Whose results the cloud hears: its own commands and those of the owner's app (signed by
# the vendor's keys) and its schedules. What the household does locally (admin page, Home
# Assistant, its own schedules) stays local.
REPORTED_SOURCES = ("cloud", "local-signed")
MAX_IN_FLIGHT = 64  # cloud commands being carried out at once; more are refused "busy"
SEND_BATCH = 100
SHADOW_INTERVAL_S = 1.0
SCHEDULE_CHECK_S = 30.0
HISTORY = 50


def local_zone(name: str | None) -> zoneinfo.ZoneInfo:
    """The household's time zone: the configured one, else the system's."""
    if name:
        return zoneinfo.ZoneInfo(name)
    with contextlib.suppress(OSError, ValueError), open("/etc/localtime", "rb") as f:
        return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    return zoneinfo.ZoneInfo("UTC")


def signers_of(cloud: CloudConfig) -> dict[str, env.Signer]:
    return {s.kid: env.Signer(s.kid, env.load_public_key(s.public_key), s.devices, s.actions)
            for s in cloud.signers}


def cloud_tls(cloud: CloudConfig) -> ssl.SSLContext:
    """Trust only the pinned CA; check the host name; TLS 1.2 or newer."""
    context = ssl.create_default_context(cafile=str(cloud.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cloud.cert_file is not None and cloud.key_file is not None:
        context.load_cert_chain(str(cloud.cert_file), str(cloud.key_file))
    return context


def cloud_endpoint(cloud: CloudConfig) -> Endpoint:
    assert cloud.host is not None
    password = None
    if cloud.password_file is not None:
        password = Path(cloud.password_file).read_text().strip()
    return Endpoint(cloud.host, cloud.port, cloud.username, password, cloud_tls(cloud))


class CloudRelay:
    def __init__(self, config: Config, store: Store, devices: DeviceService) -> None:
        self.store = store
        self.devices = devices
        self.configure(config)
        self.spool = Spool(store, max_bytes=config.cloud.spool_max_bytes,
                           max_age_s=config.cloud.spool_max_age_s)
        self.link: MqttSession | None = None
        self.link_backoff: Backoff | None = None  # tests compress time with their own
        self.link_history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.link_up_since: float | None = None
        self.reconnects = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._shadow_dirty: set[str] = set()
        self._telemetry: list[dict[str, Any]] = []
        self._schedules_changed = asyncio.Event()
        self._reported: dict[str, dict[str, Any]] = {}
        devices.reading_hooks.append(self._on_reading)

    def configure(self, config: Config) -> None:
        self.config = config.cloud
        self.signers = signers_of(config.cloud)
        self.limits = env.Limits(config.cloud.max_clock_skew_s,
                                 config.cloud.max_command_lifetime_s)
        self.zone = local_zone(config.schedules.timezone)
        self.missed_grace_s = config.schedules.missed_grace_s

    @property
    def enabled(self) -> bool:
        return self.config.host is not None

    def topic(self, leaf: str) -> str:
        return f"gw/{self.config.gateway_id}/{leaf}"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._schedule_loop(), name="cloud-schedules"),
                       loop.create_task(self._shadow_loop(), name="cloud-shadows")]
        if self.enabled:
            self._start_link()
            self._tasks.append(loop.create_task(self._send_loop(), name="cloud-send"))

    def _start_link(self) -> None:
        c = self.config
        backoff = self.link_backoff or Backoff(float(c.backoff_initial_s),
                                               float(c.backoff_max_s), full_jitter=True)
        self.link = MqttSession(
            cloud_endpoint(c), client_id=f"home-gateway-{c.gateway_id}",
            on_message=self._on_cloud_message,
            subscriptions=[(self.topic("cmd"), 1), (self.topic("shadow/desired"), 1)],
            on_connect=self._link_connected, on_disconnect=self._link_lost,
            will=Will(self.topic("status"), b"offline"), keepalive=c.keepalive_s,
            backoff=backoff)
        self.link.start()

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks, *self._handlers)
        self._flush_telemetry()
        if self.link is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.link.publish(self.topic("status"), b"offline", 1,
                                                         True), 1)
            await self.link.stop()

    # -- the link ----------------------------------------------------------------------

    async def _link_connected(self) -> None:
        assert self.link is not None
        self.link_up_since = time.time()
        self.reconnects += 1
        self._history("connected", "")
        self.store.audit("system", "cloud.link", "connected",
                         detail=f"{self.config.url} as {self.config.gateway_id}")
        with contextlib.suppress(Exception):
            await self.link.publish(self.topic("status"), b"online", qos=1, retain=True)
        # Both sides converge: the cloud merges each whole shadow with the same rules.
        self._shadow_dirty.update(d.id for d in self.devices.devices())
        self.spool.appended.set()

    def _link_lost(self, error: str | None) -> None:
        was_up = self.link_up_since is not None
        self.link_up_since = None
        self._history("down", error or "")
        if was_up:
            self.store.audit("system", "cloud.link", "lost", detail=error or "disconnected")
            log.warning("cloud link lost (%s); commands continue locally", error)

    def _report(self, cls: str, leaf: str, body: dict[str, Any]) -> None:
        """Spool a message for the cloud (nothing is kept when there is no cloud)."""
        if self.enabled:
            self.spool.append(cls, leaf, body)

    def _history(self, event: str, detail: str) -> None:
        self.link_history.append({"ts": time.time(), "event": event, "detail": detail})

    async def _send_loop(self) -> None:
        """Drain the spool in order whenever the link is up; delete on PUBACK."""
        assert self.link is not None
        while True:
            self.spool.appended.clear()
            if self.link.connected:
                batch = self.spool.pending(0, SEND_BATCH)
                if batch:
                    try:
                        await asyncio.gather(*(self.link.publish(self.topic(m.leaf),
                                                                 m.payload, qos=1)
                                               for m in batch))
                    except (NotConnected, Exception) as exc:  # resent after reconnecting
                        log.debug("cloud: sending stopped: %s", exc)
                        await asyncio.sleep(0.2)
                        continue
                    self.spool.acknowledged(batch)
                    continue
            self.spool.expire(time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.spool.appended.wait(), 1.0)

    def _on_cloud_message(self, message: Message) -> None:
        if len(self._handlers) >= MAX_IN_FLIGHT:
            raw: dict[str, Any] = {}
            with contextlib.suppress(env.Rejected):
                raw = env.parse(message.payload)
            self._report("result", "cmd/result", self._reply_rejected(env.Rejected(
                "busy", f"more than {MAX_IN_FLIGHT} commands in progress"), "cloud", raw))
            return
        task = asyncio.get_running_loop().create_task(
            self.submit_signed(message.payload, "cloud",
                               desired=message.topic == self.topic("shadow/desired")))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    # -- commands ----------------------------------------------------------------------

    async def submit_signed(self, payload: bytes | str, source: str, *,
                            desired: bool = False) -> dict[str, Any]:
        """Verify and carry out a signed envelope; the result goes back to the cloud for a
        cloud command, and is returned for every source."""
        started = time.monotonic()
        raw: Mapping[str, Any] = {}
        envelope: env.Envelope
        commands: list[tuple[str, dict[str, Any]]]
        try:
            raw = env.parse(payload)
            if desired != (raw["action"] == env.SHADOW_DESIRED):
                raise env.Rejected("malformed", "shadow/desired takes only shadow.desired, "
                                                "and shadow.desired only comes there")
            envelope = env.verify(raw, signers=self.signers, now=time.time(),
                                  limits=self.limits, seen=self.store.replay_seen)
            device = self.devices.device(envelope.device)
            commands = env.authorize(envelope, self.signers[envelope.kid],
                                     device.kind if device else None)
            if not self.store.replay_add(envelope.kid, envelope.id, envelope.exp,
                                         forget_before=time.time() - self.limits.skew_s):
                raise env.Rejected("replayed", f"command {envelope.id!r} was already received")
        except env.Rejected as exc:
            result = self._reply_rejected(exc, source, raw)
        else:
            result = await self._accepted(envelope, commands, source, started)
        if source in REPORTED_SOURCES:
            self._report("result", "cmd/result", dict(result, source=source))
        return result

    async def _accepted(self, envelope: env.Envelope, commands: list[tuple[str, dict[str, Any]]],
                        source: str, started: float) -> dict[str, Any]:
        actor = f"{source}:{envelope.kid}"
        side = shadows.CLOUD if source == "cloud" else shadows.LOCAL
        if envelope.action == env.SHADOW_DESIRED:
            result = await self._apply_desired(envelope, commands, actor, source)
        elif envelope.action == env.SCHEDULE_PUT:
            result = self._put_schedule(envelope, actor, source)
        elif envelope.action == env.SCHEDULE_DELETE:
            result = self._delete_schedule(envelope.params["id"], envelope.device, actor)
        else:
            result = await self._carry_out(envelope.id, envelope.device, envelope.action,
                                           envelope.params, source, actor, side, started)
        return result

    def _reply_rejected(self, error: env.Rejected, source: str,
                        raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Audit and log a rejected command; the result that says why."""
        raw = raw or {}
        command_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        device = str(raw.get("device", ""))[:40]
        action = str(raw.get("action", ""))[:40]
        actor = f"{source}:{raw['kid']}" if isinstance(raw.get("kid"), str) else source
        self.store.audit(actor[:80], "command", "rejected", target=device,
                         detail=f"{action or '?'} (source {source}): {error.code}: {error}")
        self.store.log_command(CommandEntry(time.time(), command_id or "", source, actor[:80],
                                            device, action, "rejected", error.code))
        log.warning("%s command %s rejected: %s: %s", source, command_id, error.code, error)
        return {"id": command_id, "device": device or None, "action": action or None,
                "status": "rejected", "reason": error.code, "message": str(error)}

    async def command(self, device_id: str, action: str, params: dict[str, Any], *,
                      source: str, actor: str) -> dict[str, Any]:
        """An unsigned command from a local, authenticated source (admin, Home Assistant,
        a schedule). Returns the result; raises CommandRejected like the device service."""
        result = await self._carry_out(None, device_id, action, params, source, actor,
                                       shadows.LOCAL, time.monotonic())
        if result["status"] == "rejected":
            raise CommandRejected(result["message"])
        if result["status"] == "timeout":
            raise CommandTimeout(result["message"])
        if result["status"] == "offline":
            raise DeviceOffline(result["message"])
        return result

    async def _carry_out(self, command_id: str | None, device_id: str, action: str,
                         params: dict[str, Any], source: str, actor: str, side: str,
                         started: float) -> dict[str, Any]:
        outcome, reason, result = "ok", "", {}
        try:
            result = await self.devices.send_command(
                device_id, action, params, source=source, actor=actor,
                timeout=float(self.config.command_timeout_s))
            outcome = str(result.get("status", "ok"))
        except CommandTimeout as exc:
            outcome, reason = "timeout", str(exc)
        except DeviceOffline as exc:
            outcome, reason = "offline", str(exc)
        except CommandRejected as exc:
            outcome, reason = "rejected", str(exc)
        latency_ms = round((time.monotonic() - started) * 1000, 2)
        self.store.log_command(CommandEntry(time.time(), command_id or str(
            result.get("id", "")), source, actor, device_id, action, outcome,
            "invalid" if outcome == "rejected" else reason, latency_ms))
        if outcome in ("ok", "timeout"):  # sent: it is what someone wants now
            device = self.devices.device(device_id)
            if device is not None:
                self._update_desired(device_id, KINDS[device.kind].state_set_by(action, params),
                                     time.time(), side)
        reply: dict[str, Any] = {"id": command_id or result.get("id"), "device": device_id,
                                 "action": action,
                                 "status": outcome, "latency_ms": latency_ms}
        if outcome == "rejected":
            reply["reason"] = "invalid"
        if reason:
            reply["message"] = reason
        if result:
            reply["result"] = {k: v for k, v in result.items() if k not in ("id", "status")}
        return reply

    # -- shadows -----------------------------------------------------------------------

    def shadow(self, device_id: str) -> dict[str, Any]:
        desired, desired_version, reported_version = self.store.shadow(device_id)
        return shadows.document(device_id, self._reported_state(device_id), reported_version,
                                desired, desired_version)

    def _reported_state(self, device_id: str) -> dict[str, Any]:
        device = self.devices.device(device_id)
        if device is None:
            return {}
        state = self.devices.state(device_id)
        return {k: state[k] for k in KINDS[device.kind].settable if k in state}

    def _update_desired(self, device_id: str, changes: Mapping[str, Any], ts: float,
                        side: str) -> list[str]:
        if not changes:
            return []
        desired, version, reported_version = self.store.shadow(device_id)
        merged, taken = shadows.merge_desired(desired, changes, ts, side)
        if taken:
            self.store.save_shadow(device_id, merged, version + 1, reported_version)
            self._shadow_dirty.add(device_id)
        return taken

    async def _apply_desired(self, envelope: env.Envelope,
                             commands: list[tuple[str, dict[str, Any]]], actor: str,
                             source: str) -> dict[str, Any]:
        state = envelope.params["state"]
        changed_at = float(envelope.params["changed_at"])
        taken = self._update_desired(envelope.device, state, changed_at, shadows.CLOUD)
        reported = self._reported_state(envelope.device)
        results = {}
        for key, (action, params) in zip(state, commands, strict=True):
            if key not in taken:
                continue
            if reported.get(key) == state[key]:
                results[key] = "already"
                continue
            reply = await self._carry_out(None, envelope.device, action, params, source,
                                          actor, shadows.CLOUD, time.monotonic())
            results[key] = reply["status"]
        kept = sorted(set(state) - set(taken))
        self.store.audit(actor, "shadow.desired", "ok", target=envelope.device,
                         detail=f"applied {sorted(taken)}; kept newer local {kept}")
        return {"id": envelope.id, "device": envelope.device, "action": env.SHADOW_DESIRED,
                "status": "ok", "applied": results, "kept_local": kept}

    def _on_reading(self, device_id: str, leaf: str, ts: float, values: dict[str, Any]) -> None:
        """From the device service's hot path: note changes, do nothing slow."""
        if self.config.telemetry and self.enabled and leaf == "telemetry":
            self._telemetry.append({"device": device_id, "ts": ts, "values": values})
        device = self.devices.device(device_id)
        if device is not None and any(k in values for k in KINDS[device.kind].settable):
            self._shadow_dirty.add(device_id)

    async def _shadow_loop(self) -> None:
        last_telemetry = time.monotonic()
        while True:
            await asyncio.sleep(SHADOW_INTERVAL_S)
            try:
                self._publish_shadows()
                if time.monotonic() - last_telemetry >= self.config.telemetry_interval_s:
                    last_telemetry = time.monotonic()
                    self._flush_telemetry()
            except Exception:
                log.exception("cloud: could not spool shadows or telemetry")

    def _publish_shadows(self) -> None:
        dirty, self._shadow_dirty = self._shadow_dirty, set()
        for device_id in sorted(dirty):
            if self.devices.device(device_id) is None:
                continue
            reported = self._reported_state(device_id)
            desired, desired_version, reported_version = self.store.shadow(device_id)
            if reported != self._reported.get(device_id):
                reported_version += 1
                self._reported[device_id] = reported
                self.store.save_shadow(device_id, desired, desired_version, reported_version)
            self._report("shadow", "shadow/reported", shadows.document(
                device_id, reported, reported_version, desired, desired_version))

    def _flush_telemetry(self) -> None:
        readings, self._telemetry = self._telemetry, []
        for start in range(0, len(readings), 500):
            self._report("telemetry", "telemetry", {"readings": readings[start:start + 500]})

    # -- schedules ---------------------------------------------------------------------

    def _put_schedule(self, envelope: env.Envelope, actor: str, source: str) -> dict[str, Any]:
        p = envelope.params
        try:
            self.put_schedule(p["id"], envelope.device, p["when"], p["action"], p["params"],
                              name=str(p.get("name") or p["id"]), source=source, actor=actor)
        except ScheduleError as exc:
            return self._reply_rejected(env.Rejected("bad-params", str(exc)), source,
                                        {"id": envelope.id, "device": envelope.device,
                                         "action": envelope.action, "kid": envelope.kid})
        return {"id": envelope.id, "device": envelope.device, "action": envelope.action,
                "status": "ok", "schedule": p["id"]}

    def put_schedule(self, id: str, device_id: str, when: str, action: str,
                     params: dict[str, Any], *, name: str, source: str, actor: str,
                     enabled: bool = True) -> Schedule:
        """Create or replace a schedule; raises ScheduleError (when) or CommandRejected."""
        parsed = parse_when(when)
        device = self.devices.device(device_id)
        if device is None:
            raise CommandRejected(f"no device {device_id!r}")
        problem = check_command(device.kind, action, params)
        if problem:
            raise CommandRejected(problem)
        now = time.time()
        existing = {s.id: s for s in self.store.schedules()}.get(id)
        schedule = Schedule(id, device_id, name, parsed.text, action, params, source, enabled,
                            existing.created_at if existing else now, now,
                            existing.last_result if existing else "")
        self.store.put_schedule(schedule)
        self.store.audit(actor, "schedule.put", "ok", target=device_id,
                         detail=f"{id}: {parsed.text} {action} {json.dumps(params)}")
        self._schedules_changed.set()
        return schedule

    def _delete_schedule(self, id: str, device_id: str, actor: str) -> dict[str, Any]:
        found = self.delete_schedule(id, actor, device_id)
        return {"device": device_id, "action": env.SCHEDULE_DELETE,
                "status": "ok" if found else "error",
                **({} if found else {"message": f"no schedule {id!r}"})}

    def delete_schedule(self, id: str, actor: str, device_id: str | None = None) -> bool:
        schedule = {s.id: s for s in self.store.schedules()}.get(id)
        if schedule is None or (device_id is not None and schedule.device_id != device_id):
            return False
        self.store.delete_schedule(id)
        self.store.audit(actor, "schedule.delete", "ok", target=schedule.device_id, detail=id)
        self._schedules_changed.set()
        return True

    def schedule_view(self, now: float) -> list[dict[str, Any]]:
        views = []
        for s in self.store.schedules():
            try:
                next_at: float | None = next_run(parse_when(s.when), now, self.zone)
            except ScheduleError:
                next_at = None
            views.append({"id": s.id, "device": s.device_id, "name": s.name, "when": s.when,
                          "action": s.action, "params": s.params, "source": s.source,
                          "enabled": s.enabled, "last_at": s.last_at,
                          "last_result": s.last_result, "next_at": next_at})
        return views

    async def run_due_schedules(self, now: float) -> float:
        """Run what is due (the missed-run policy is `schedule.due`'s); the next due time."""
        wake = now + SCHEDULE_CHECK_S
        for s in self.store.schedules():
            if not s.enabled:
                continue
            try:
                when = parse_when(s.when)
                d = due(when, s.last_at, now, self.zone, self.missed_grace_s)
            except ScheduleError as exc:
                log.error("schedule %s: %s", s.id, exc)
                continue
            wake = min(wake, d.next_at)
            if d.missed:
                self.store.audit(f"schedule:{s.id}", "schedule.missed", "skipped",
                                 target=s.device_id,
                                 detail=f"{d.missed} run(s) missed while the gateway was down "
                                        f"or past the {self.missed_grace_s} s grace")
            if not d.run and not d.missed:
                continue
            result = "missed"
            if d.run:
                reply = await self._carry_out(None, s.device_id, s.action, s.params,
                                              "schedule", f"schedule:{s.id}", shadows.LOCAL,
                                              time.monotonic())
                result = reply["status"]
                if s.source in REPORTED_SOURCES:  # the cloud's or the vendor app's
                    self._report("result", "cmd/result",
                                 dict(reply, source="schedule", schedule=s.id))
            self.store.schedule_ran(s.id, now, result)
        return wake

    async def _schedule_loop(self) -> None:
        while True:
            try:
                wake = await self.run_due_schedules(time.time())
            except Exception:
                log.exception("schedules: check failed")
                wake = time.time() + SCHEDULE_CHECK_S
            self._schedules_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._schedules_changed.wait(),
                                       max(0.05, min(wake - time.time(), SCHEDULE_CHECK_S)))

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        link = self.link
        if not self.enabled:
            state = "not configured"
        elif link is not None and link.connected:
            state = "connected"
        else:
            state = "offline"
        return {
            "state": state,
            "url": self.config.url,
            "gateway_id": self.config.gateway_id,
            "connected_since": self.link_up_since,
            "connections": link.connections if link else 0,
            "last_error": link.last_error if link else None,
            "history": list(self.link_history),
            "spool": self.spool.stats(now),
            "signers": sorted(self.signers),
            "telemetry": self.config.telemetry,
        }

    def summary(self) -> str:
        s = self.status()
        if s["state"] == "not configured":
            return "cloud: not configured"
        return f"cloud: {s['state']}, {s['spool']['messages']} spooled"
