"""The spool's bounds and ids, and the shadow conflict rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cloud import shadows
from gateway.cloud.spool import Spool
from gateway.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "gateway.db")


def test_messages_carry_unique_ids_in_order_and_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    spool = Spool(store, max_bytes=1 << 20, max_age_s=3600)
    for i in range(5):
        spool.append("result", "cmd/result", {"id": f"c{i}", "status": "ok"})
    store.close()
    again = Spool(Store(tmp_path / "g.db"), max_bytes=1 << 20, max_age_s=3600)
    sent = again.pending(0, 100)
    bodies = [json.loads(m.payload) for m in sent]
    assert [b["id"] for b in bodies] == [f"c{i}" for i in range(5)]
    assert [b["seq"] for b in bodies] == sorted(b["seq"] for b in bodies)
    assert len({b["mid"] for b in bodies}) == 5
    assert all(b["mid"].startswith(again.epoch + "-") for b in bodies)
    assert again.bytes == sum(m.size for m in sent)
    again.acknowledged(sent[:2])
    assert [json.loads(m.payload)["id"] for m in again.pending(0, 100)] == ["c2", "c3", "c4"]
    assert again.bytes == sum(m.size for m in again.pending(0, 100))


def test_a_flood_stays_within_the_bound_and_evicts_telemetry_first(store: Store) -> None:
    spool = Spool(store, max_bytes=20_000, max_age_s=3600)
    for i in range(20):
        spool.append("result", "cmd/result", {"id": f"r{i}", "pad": "x" * 100})
    for i in range(2000):
        spool.append("telemetry", "telemetry", {"readings": [{"n": i, "pad": "y" * 50}]})
        assert spool.bytes <= 20_000
    stats = spool.stats(0.0)
    assert stats["bytes"] == spool.bytes <= 20_000
    assert stats["by_class"]["result"] == 20  # every result kept
    assert stats["evicted"]["telemetry"] > 0 and stats["evicted"]["result"] == 0
    kept = [json.loads(m.payload) for m in spool.pending(0, 10_000) if m.cls == "telemetry"]
    numbers = [k["readings"][0]["n"] for k in kept]
    assert numbers == list(range(2000 - len(numbers), 2000))  # the newest survive


def test_results_go_last_and_only_when_nothing_else_is_left(store: Store) -> None:
    spool = Spool(store, max_bytes=65_536, max_age_s=3600)
    spool.append("telemetry", "telemetry", {"pad": "t" * 1000})
    spool.append("shadow", "shadow/reported", {"pad": "s" * 1000})
    for i in range(200):
        spool.append("result", "cmd/result", {"id": i, "pad": "r" * 1000})
    assert spool.bytes <= 65_536
    assert spool.evicted["telemetry"] == 1 and spool.evicted["shadow"] == 1
    ids = [json.loads(m.payload)["id"] for m in spool.pending(0, 1000)]
    assert ids == list(range(200 - len(ids), 200))


def test_old_messages_expire(store: Store) -> None:
    spool = Spool(store, max_bytes=1 << 20, max_age_s=60)
    spool.append("result", "cmd/result", {"id": "old"})
    store.db.execute("UPDATE spool SET created = created - 120")
    spool.append("result", "cmd/result", {"id": "new"})
    spool.expire(__import__("time").time())
    assert [json.loads(m.payload)["id"] for m in spool.pending(0, 10)] == ["new"]
    assert spool.evicted["result"] == 1


# --- shadows ------------------------------------------------------------------------------


def test_desired_newest_wins_and_a_tie_goes_to_local() -> None:
    desired, taken = shadows.merge_desired({}, {"on": True}, 100.0, shadows.LOCAL)
    assert taken == ["on"]
    older, taken = shadows.merge_desired(desired, {"on": False}, 99.0, shadows.CLOUD)
    assert taken == [] and older == desired
    tie, taken = shadows.merge_desired(desired, {"on": False}, 100.0, shadows.CLOUD)
    assert taken == [] and tie["on"]["value"] is True
    newer, taken = shadows.merge_desired(desired, {"on": False}, 101.0, shadows.CLOUD)
    assert taken == ["on"] and newer["on"] == {"value": False, "ts": 101.0, "side": "cloud"}
    local_tie, taken = shadows.merge_desired(newer, {"on": True}, 101.0, shadows.LOCAL)
    assert taken == ["on"] and local_tie["on"]["side"] == "local"


def test_keys_merge_independently() -> None:
    desired, _ = shadows.merge_desired({}, {"on": True, "brightness": 10}, 100.0, "local")
    merged, taken = shadows.merge_desired(desired, {"on": False, "brightness": 50}, 100.0,
                                          "cloud")
    assert taken == []
    merged, taken = shadows.merge_desired(desired, {"brightness": 50}, 150.0, "cloud")
    assert taken == ["brightness"] and merged["on"]["value"] is True


changes = st.lists(st.tuples(st.sampled_from(["on", "brightness"]), st.integers(0, 9),
                             st.integers(0, 5), st.sampled_from([shadows.LOCAL, shadows.CLOUD])),
                   max_size=12)


@given(changes)
def test_both_sides_converge_whatever_order_they_see_the_changes_in(
        history: list[tuple[str, int, int, str]]) -> None:
    """The gateway and the cloud each see the same changes in a different order (each its
    own first, the other's after the outage): they end with the same desired state."""
    def apply(order: list[tuple[str, int, int, str]]) -> dict[str, object]:
        state: dict[str, dict[str, object]] = {}
        for key, value, ts, side in order:
            state, _ = shadows.merge_desired(state, {key: value}, float(ts), side)
        return {k: v["value"] for k, v in state.items()}
    local_first = sorted(history, key=lambda c: c[3] != shadows.LOCAL)
    cloud_first = sorted(history, key=lambda c: c[3] != shadows.CLOUD)
    # Two changes on one side at the same time are one change made twice: keep histories
    # where that does not happen, since no clock orders them.
    seen = {(k, ts, side) for k, _, ts, side in history}
    if len(seen) == len(history):
        assert apply(local_first) == apply(cloud_first)
