"""The privacy export (`daemon.privacy`): consent, the week's aggregates, release, export.

Off until the household consents, category by category. While a category is on, the
readings it needs are folded into the week's aggregates (`reports.accumulate`; nothing is
kept for categories that are off). When the household's week ends, each consented
category's report is drawn (`reports.release`), charged to the ε ledger — written and
fsynced — and only then queued; the queue leaves at a random moment within the window,
through the file or the HTTPS sink, after the ledger is checked once more. Everything
queued can be previewed byte for byte and deleted; withdrawing a consent deletes that
category's queued reports at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.cloud.service import local_zone
from gateway.config import Config, PrivacyConfig
from gateway.devices.service import DeviceService
from gateway.mqtt import Backoff
from gateway.privacy.consent import consent_text, show
from gateway.privacy.ledger import Ledger, LedgerError
from gateway.privacy.reports import (
    CATEGORIES,
    Context,
    DeviceFacts,
    WeekData,
    accumulate,
    pseudonym,
    release,
    week_of,
)
from gateway.store import Store

log = logging.getLogger(__name__)

COLLECTED = ("usage", "energy", "comfort")  # categories built from readings over the week
WEEK_KEY, HEAD_KEY = "privacy.week", "privacy.ledger_head"
SAVE_INTERVAL_S = 60.0
TICK_S = 30.0


class SinkError(Exception):
    pass


def report_line(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, separators=(",", ":")) + "\n"


def batch(rows: list[tuple[int, str, str, str, float]]
          ) -> tuple[list[int], bytes, float | None]:
    """Queued rows (id, category, week, line, send_after) -> their ids, the bytes they make
    and when they may leave (None when there are none)."""
    body = "".join(row[3] for row in rows).encode()
    return [row[0] for row in rows], body, max((row[4] for row in rows), default=None)


def write_atomically(path: Path, data: bytes, mode: int = 0o640) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class PrivacyService:
    def __init__(self, config: Config, store: Store, devices: DeviceService,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.devices = devices
        self.clock = clock
        self.dir = config.gateway.state_dir / "privacy"
        self.configure(config)
        self.last_error: str | None = None
        self.backoff: Backoff | None = None  # while the sink fails
        self.retry_at = 0.0
        self._dirty = False
        self._ledger_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._consented = self._read_consents()
        saved = store.setting(WEEK_KEY)
        self.data: WeekData | None = WeekData.from_json(json.loads(saved)) if saved else None
        devices.reading_hooks.append(self._on_reading)

    def configure(self, config: Config) -> None:
        self.config: PrivacyConfig = config.privacy
        self.zone = local_zone(config.schedules.timezone)
        self.ledger = Ledger(self.dir / "ledger.jsonl", week_cap=self.config.week_cap,
                             year_cap=self.config.year_cap)
        self.outbox = self.config.directory or self.dir / "outbox"

    # -- consent -------------------------------------------------------------------------

    def _read_consents(self) -> list[str]:
        given = self.store.consents()
        return [c for c in CATEGORIES if given.get(c, (False, 0.0, ""))[0]]

    def consented(self) -> list[str]:
        """The categories the household has turned on (kept in memory: every reading asks)."""
        return list(self._consented)

    def set_consent(self, category: str, granted: bool, actor: str) -> int:
        """The household's choice for one category; returns the queued reports purged."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r} (expected one of "
                             f"{', '.join(CATEGORIES)})")
        now = self.clock()
        purged = self.store.set_consent(category, granted, now, actor)
        self._consented = self._read_consents()
        self.store.audit(actor, "privacy.consent", "granted" if granted else "withdrawn",
                         target=category,
                         detail=f"purged {purged} queued report(s)" if purged else "")
        wanted = self.consented()
        if not wanted:
            self._forget_week()  # nothing is collected for a household that opted out
        elif self.data is None:
            self.data = WeekData(week_of(now, self.zone))
            self._save_week()
        self._wake.set()
        return purged

    def delete_queued(self, actor: str) -> int:
        """Delete every queued report and the week's aggregates collected so far."""
        purged = self.store.purge_queue()
        if self.data is not None:
            self.data = WeekData(self.data.week)
            self._save_week()
        self.store.audit(actor, "privacy.queue", "deleted",
                         detail=f"{purged} queued report(s) and this week's aggregates")
        return purged

    # -- the week ------------------------------------------------------------------------

    def _on_reading(self, device_id: str, leaf: str, ts: float, values: dict[str, Any]) -> None:
        if self.data is None:
            return
        device = self.devices.device(device_id)
        wanted = [c for c in self._consented if c in COLLECTED]
        if device is None or device.status != "adopted" or not wanted:
            return
        # By the gateway's clock, not the device's: a device cannot place readings in
        # another week or hour, and a device clock that is off does not skew the buckets.
        accumulate(self.data, wanted, device_id, device.kind, self.clock(), values, self.zone)
        self._dirty = True

    def _save_week(self) -> None:
        self.store.set_setting(WEEK_KEY, json.dumps(self.data.to_json())
                               if self.data is not None else None)
        self._dirty = False

    def _forget_week(self) -> None:
        self.data = None
        self._save_week()

    def _head(self) -> tuple[int, str] | None:
        saved = self.store.setting(HEAD_KEY)
        if saved is None:
            return None
        seq, digest = json.loads(saved)
        return int(seq), str(digest)

    def close_week(self) -> list[dict[str, Any]]:
        """When the collected week has ended: release its reports and start the current
        week. Returns the reports queued."""
        now = self.clock()
        current = week_of(now, self.zone)
        if self.data is None or self.data.week >= current:
            return []
        closed, self.data = self.data, WeekData(current)
        queued = self._release(closed, now)
        self._save_week()
        return queued

    def _release(self, data: WeekData, now: float) -> list[dict[str, Any]]:
        facts = [DeviceFacts(d.kind, d.model, d.firmware) for d in self.devices.devices()
                 if d.status == "adopted"]
        send_after = now + secrets.randbelow(self.config.window_s + 1)
        name = self._pseudonym(now)
        queued: list[dict[str, Any]] = []
        for category in self.consented():
            epsilon = self.config.epsilon[category]
            report = release(category, Context(data.week, self.config.region, epsilon, name),
                             data, facts)
            try:
                entry = self.ledger.charge(now, data.week, category, epsilon,
                                           expect_head=self._head())
            except LedgerError as exc:
                self._refused(str(exc))
                if exc.reason in ("week-cap", "year-cap"):
                    continue  # another category may still fit
                break
            head = json.dumps(list(self.ledger.head()))
            self.store.queue_reports([(category, data.week, report_line(report), now,
                                       send_after)], {HEAD_KEY: head})
            self.store.audit("system", "privacy.release", "ok", target=category,
                             detail=f"week {data.week}, ε {show(entry.epsilon)}")
            queued.append(report)
        return queued

    def _refused(self, message: str) -> None:
        if message != self.last_error:
            self.store.audit("system", "privacy.release", "refused", detail=message[:500])
            log.error("privacy export stopped: %s", message)
        self.last_error = message

    def _key_path(self, now: float) -> Path | None:
        """The current epoch's key file, when reports are linked."""
        if not self.config.link_reports:
            return None
        epoch = int(now // (self.config.pseudonym_epoch_days * 86400))
        return self.dir / "keys" / f"epoch-{epoch}.key"

    def _expire_keys(self, keep: Path | None) -> None:
        """Delete every epoch key but `keep`: an ended epoch's key is gone for good."""
        with contextlib.suppress(FileNotFoundError):
            for path in (self.dir / "keys").iterdir():
                if path != keep:
                    path.unlink()

    def _pseudonym(self, now: float) -> str | None:
        current = self._key_path(now)
        self._expire_keys(current)
        if current is None:
            return None
        if not current.exists():
            current.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(current, secrets.token_bytes(32), mode=0o600)
        return pseudonym(current.read_bytes())

    # -- export --------------------------------------------------------------------------

    def next_export(self) -> tuple[list[int], bytes, float | None]:
        """The queued reports' ids, exactly the bytes the next export sends, and when."""
        return batch(self.store.queued_reports())

    async def export_due(self) -> str | None:
        """Send the queue if its time has come; the result recorded, or None if nothing."""
        now = self.clock()
        rows = self.store.queued_reports()
        ids, body, send_after = batch(rows)
        if send_after is None or now < max(send_after, self.retry_at):
            return None
        categories = ",".join(sorted({row[1] for row in rows}))
        sink = self.describe_sink()
        try:
            self.ledger.check(now, expect_head=self._head())
        except LedgerError as exc:
            self._refused(str(exc))
            return None
        try:
            await self._send(body)
        except SinkError as exc:
            self.backoff = self.backoff or Backoff(float(self.config.retry_initial_s),
                                                   float(self.config.retry_max_s),
                                                   full_jitter=True)
            self.retry_at = now + self.backoff.next_delay()
            result = f"failed: {exc}"
            self.store.log_export(now, sink, len(ids), len(body), categories, result)
            return result
        self.backoff, self.retry_at = None, 0.0
        self.store.log_export(now, sink, len(ids), len(body), categories, "ok", sent_ids=ids)
        self.store.audit("system", "privacy.export", "ok", target=sink,
                         detail=f"{len(ids)} report(s), {len(body)} bytes ({categories})")
        return "ok"

    def describe_sink(self) -> str:
        return (f"https {self.config.url}" if self.config.sink == "https"
                else f"file {self.outbox}")

    async def _send(self, body: bytes) -> None:
        if self.config.sink == "file":
            try:
                self.outbox.mkdir(parents=True, exist_ok=True, mode=0o750)
                name = time.strftime("reports-%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
                write_atomically(self.outbox / f"{name}-{secrets.token_hex(4)}.jsonl", body)
            except OSError as exc:
                raise SinkError(f"cannot write to {self.outbox}: {exc.strerror or exc}") from exc
            return
        await self._post(body)

    async def _post(self, body: bytes) -> None:
        import aiohttp

        assert self.config.url is not None
        context = ssl.create_default_context(
            cafile=str(self.config.ca_file) if self.config.ca_file else None)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                    self.config.url, data=body, ssl=context, allow_redirects=False,
                    headers={"Content-Type": "application/x-ndjson"}) as response:
                if not 200 <= response.status < 300:
                    raise SinkError(f"{self.config.url} answered HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkError(f"{self.config.url}: {exc or type(exc).__name__}") from exc

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._loop(), name="privacy")]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self._dirty:
            self._save_week()

    async def _loop(self) -> None:
        saved_at = time.monotonic()
        while True:
            try:
                self.close_week()
                if self._dirty and time.monotonic() - saved_at >= SAVE_INTERVAL_S:
                    self._save_week()
                    saved_at = time.monotonic()
                self._expire_keys(self._key_path(self.clock()))
                await self.export_due()
            except Exception:  # one bad round must not end the export for good
                log.exception("privacy export round failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)

    # -- what the admin page and the CLI show --------------------------------------------

    def _ledger_view(self, now: float, week: str) -> dict[str, Any]:
        """The ledger's state and budget for the status. Every open admin page asks each
        second, so the ledger is verified line by line again only when its bytes changed
        (one hash of the file tells), the recorded head or the week did, or a minute passed
        (the 365-day window moves). Releasing and exporting verify it every time."""
        head = self._head()
        try:
            key: tuple[Any, ...] = (hashlib.sha256(self.ledger.path.read_bytes()).digest(),)
        except OSError as exc:
            key = (type(exc).__name__, exc.errno)
        key += (head, week, int(now // 60), self.ledger.week_cap, self.ledger.year_cap)
        if self._ledger_cache is not None and self._ledger_cache[0] == key:
            return self._ledger_cache[1]
        view: dict[str, Any] = {"ok": True, "error": None}
        try:
            budget = self.ledger.budget(now, week, expect_head=head)
            view["budget"] = {
                "week": week, "week_spent": str(budget.week_spent),
                "week_cap": str(budget.week_cap), "week_left": str(budget.week_left),
                "year_spent": str(budget.year_spent), "year_cap": str(budget.year_cap),
                "year_left": str(budget.year_left)}
        except LedgerError as exc:
            view = {"ok": False, "error": str(exc), "budget": None}
        self._ledger_cache = (key, view)
        return view

    def status(self) -> dict[str, Any]:
        now = self.clock()
        given = self.store.consents()
        ids, body, send_after = self.next_export()
        week = week_of(now - 7 * 86400, self.zone)  # the week whose reports went out last
        ledger = self._ledger_view(now, week)
        consented = self.consented()
        state = ("error" if not ledger["ok"] or self.last_error else
                 "on" if consented else "off")
        return {
            "state": state,
            "last_error": self.last_error,
            "categories": [
                {"name": c, "granted": c in consented, "epsilon": str(self.config.epsilon[c]),
                 "changed_at": given[c][1] if c in given else None,
                 "changed_by": given[c][2] if c in given else None,
                 "text": consent_text(c, self.config)} for c in CATEGORIES],
            "collecting": self.data.week if self.data is not None else None,
            "ledger": ledger,
            "queue": {"reports": len(ids), "bytes": len(body), "send_after": send_after,
                      "retry_at": self.retry_at or None},
            "sink": self.describe_sink(),
            "region": self.config.region,
            "history": [{"ts": ts, "sink": sink, "reports": n, "bytes": size,
                         "categories": cats, "result": result}
                        for ts, sink, n, size, cats, result in self.store.exports(20)],
        }
