"""Store-and-forward for everything the gateway sends the cloud.

Every outbound message (command results, shadow documents, telemetry batches) is written
to the store's spool first and deleted only once the cloud acknowledged it (QoS 1), so a
cloud outage or a `kill -9` of the gateway loses nothing that was committed. Each message
carries `mid` ("<spool epoch>-<seq>") and `seq`: the cloud drops duplicates by `mid` (a
message whose PUBACK was lost is sent again) and sees the order in `seq`.

The spool is bounded by bytes and by age. Over the byte bound, whole messages are evicted
oldest first in this order: telemetry, then shadow documents (a later one supersedes
them), then results last.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.store import Store

log = logging.getLogger(__name__)

EVICTION_ORDER = ("telemetry", "shadow", "result")
EPOCH_SETTING = "cloud.spool_epoch"


@dataclass(frozen=True, slots=True)
class Outbound:
    seq: int
    cls: str
    leaf: str  # the topic under gw/<gateway-id>/
    payload: str  # the JSON body with mid and seq
    created: float
    size: int  # of the body as spooled (what counts against the bound)


class Spool:
    def __init__(self, store: Store, *, max_bytes: int, max_age_s: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        epoch = store.setting(EPOCH_SETTING)
        if epoch is None:  # a new database numbers from 1 again: new ids, never old ones
            epoch = secrets.token_hex(4)
            store.set_setting(EPOCH_SETTING, epoch)
        self.epoch = epoch
        self.bytes = sum(size for _, size, _ in store.spool_sizes().values())
        self.evicted: dict[str, int] = dict.fromkeys(EVICTION_ORDER, 0)
        self.appended = asyncio.Event()

    def append(self, cls: str, leaf: str, body: dict[str, Any]) -> int:
        """Commit one message; it is sent when the link is up."""
        text = json.dumps(body, separators=(",", ":"))
        seq = self.store.spool_append(cls, leaf, text, time.time())
        self.bytes += len(text)
        if self.bytes > self.max_bytes:
            self._evict()
        self.appended.set()
        return seq

    def _evict(self) -> None:
        for cls in EVICTION_ORDER:
            while self.bytes > self.max_bytes:
                oldest = self.store.spool_oldest(cls, 256)
                if not oldest:
                    break
                chosen, freed = [], 0
                for seq, size in oldest:
                    chosen.append(seq)
                    freed += size
                    if self.bytes - freed <= self.max_bytes:
                        break
                self.store.spool_delete(chosen)
                self.bytes -= freed
                self.evicted[cls] += len(chosen)
                log.warning("cloud spool full: dropped the %d oldest %s message(s)",
                            len(chosen), cls)

    def expire(self, now: float) -> None:
        for cls, (count, size) in self.store.spool_expire(now - self.max_age_s).items():
            self.bytes -= size
            self.evicted[cls] += count
            log.warning("cloud spool: dropped %d %s message(s) older than %d s", count, cls,
                        self.max_age_s)

    def pending(self, after: int, limit: int) -> list[Outbound]:
        """Messages not yet acknowledged, oldest first, with their ids filled in."""
        return [Outbound(seq, cls, leaf, self._with_ids(seq, body), created, len(body))
                for seq, cls, leaf, body, created in self.store.spool_rows(after, limit)]

    def _with_ids(self, seq: int, body: str) -> str:
        head = f'{{"mid":"{self.epoch}-{seq}","seq":{seq}'
        return head + ("}" if body == "{}" else "," + body[1:])

    def acknowledged(self, messages: list[Outbound]) -> None:
        self.store.spool_delete(m.seq for m in messages)
        self.bytes -= sum(m.size for m in messages)

    def stats(self, now: float) -> dict[str, Any]:
        """For the status (every few seconds): the bytes are kept in memory, so no body is
        read; the counts come from the class index."""
        counts, oldest = self.store.spool_counts()
        return {
            "messages": sum(counts.values()),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "oldest_age_s": round(now - oldest, 1) if oldest is not None else None,
            "max_age_s": self.max_age_s,
            "by_class": {cls: counts.get(cls, 0) for cls in EVICTION_ORDER},
            "evicted": dict(self.evicted),
        }
