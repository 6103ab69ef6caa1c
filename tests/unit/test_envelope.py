"""Command envelopes: every way a command can be wrong is rejected with its own reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.cloud import envelope as env

NOW = 1_800_000_000.0
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
SIGNERS = {
    "vendor": env.Signer("vendor", KEY.public_key()),
    "bulbs-only": env.Signer("bulbs-only", OTHER.public_key(), ("bulb-*",), ("set_power",)),
}
KINDS = {"bulb-1": "bulb", "plug-1": "plug", "thermo-1": "thermostat"}
LIMITS = env.Limits(skew_s=60, max_lifetime_s=3600)


def signed(key: Ed25519PrivateKey = KEY, kid: str = "vendor", **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": "c-1", "device": "bulb-1", "action": "set_power",
                              "params": {"on": True}, "iat": NOW - 5, "exp": NOW + 300}
    fields.update(over)
    return env.sign(key, kid, **fields)


def check(raw: dict[str, Any] | bytes, seen: frozenset[tuple[str, str]] = frozenset()
          ) -> list[tuple[str, dict[str, Any]]]:
    parsed = env.parse(raw if isinstance(raw, bytes) else json.dumps(raw).encode())
    envelope = env.verify(parsed, signers=SIGNERS, now=NOW, limits=LIMITS,
                          seen=lambda kid, id: (kid, id) in seen)
    return env.authorize(envelope, SIGNERS[envelope.kid], KINDS.get(envelope.device))


def reason(raw: dict[str, Any] | bytes, **kw: Any) -> str:
    with pytest.raises(env.Rejected) as info:
        check(raw, **kw)
    assert str(info.value)  # every rejection says why in words too
    return info.value.code


def test_a_good_command_is_accepted() -> None:
    assert check(signed()) == [("set_power", {"on": True})]


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert env.canonical({"b": 1, "a": "é", "c": [1, {"z": 0, "y": 1}]}) == (
        '{"a":"é","b":1,"c":[1,{"y":1,"z":0}]}'.encode())


def test_the_signature_covers_every_field() -> None:
    for field, value in (("device", "bulb-2"), ("action", "set_brightness"),
                         ("params", {"on": False}), ("iat", NOW - 6), ("exp", NOW + 301),
                         ("id", "c-2"), ("kid", "bulbs-only")):
        tampered = dict(signed(), **{field: value})
        assert reason(tampered) in ("bad-signature", "unknown-key")
    assert reason(signed(key=OTHER)) == "bad-signature"  # signed by the wrong key
    assert reason(dict(signed(), sig="AAAA")) == "bad-signature"
    assert reason(dict(signed(), sig="!!not base64!!")) == "bad-signature"


@pytest.mark.parametrize(("over", "code"), [
    ({"exp": NOW - 1}, "expired"),
    ({"exp": NOW}, "expired"),
    ({"iat": NOW + 61, "exp": NOW + 400}, "from-the-future"),
    ({"iat": NOW - 10, "exp": NOW + 3600}, "too-long-lived"),
    ({"device": "ghost-1"}, "unknown-device"),
    ({"action": "set_brightness", "params": {"brightness": 101}}, "bad-params"),
    ({"params": {"on": "yes"}}, "bad-params"),
    ({"params": {}}, "bad-params"),
    ({"params": {"on": True, "extra": 1}}, "bad-params"),
    ({"action": "set_target", "params": {"target": 20}}, "bad-params"),  # not a bulb action
])
def test_each_rejection_has_its_reason(over: dict[str, Any], code: str) -> None:
    assert reason(signed(**over)) == code


def test_clock_skew_is_tolerated_up_to_its_bound() -> None:
    assert check(signed(iat=NOW + 59, exp=NOW + 400))


def test_replayed_and_unknown_key() -> None:
    assert reason(signed(), seen=frozenset({("vendor", "c-1")})) == "replayed"
    assert check(signed(), seen=frozenset({("other", "c-1")}))  # ids are per key
    assert reason(signed(kid="nobody")) == "unknown-key"


def test_scope_limits_devices_and_actions() -> None:
    assert check(signed(OTHER, "bulbs-only"))
    assert reason(signed(OTHER, "bulbs-only", device="plug-1")) == "out-of-scope"
    assert reason(signed(OTHER, "bulbs-only", action="set_brightness",
                         params={"brightness": 5})) == "out-of-scope"
    # Scope is checked before existence: an out-of-scope key learns nothing about ids.
    assert reason(signed(OTHER, "bulbs-only", device="ghost-1")) == "out-of-scope"


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"[]", b'"x"', b"{}", b"{" * 5000,
    b"x" * (env.MAX_BYTES + 1),
])
def test_malformed_payloads(payload: bytes) -> None:
    assert reason(payload) == "malformed"


@pytest.mark.parametrize(("field", "value"), [
    ("v", 2), ("v", True), ("id", ""), ("id", "a b"), ("id", 5), ("device", "Bulb"),
    ("action", "Set"), ("iat", "now"), ("exp", True), ("exp", None), ("exp", 10**400),
    ("iat", float("nan")), ("params", []),
    ("sig", 5), ("kid", "x" * 65),
])
def test_malformed_fields(field: str, value: Any) -> None:
    assert reason(dict(signed(), **{field: value})) == "malformed"


def test_missing_and_extra_fields_are_named() -> None:
    raw = signed()
    del raw["exp"]
    with pytest.raises(env.Rejected, match="missing exp"):
        check(raw)
    with pytest.raises(env.Rejected, match="unknown extra"):
        check(dict(signed(), extra=1))


def test_gateway_actions_are_authorized_as_the_device_actions_they_lead_to() -> None:
    desired = signed(action=env.SHADOW_DESIRED, params={"state": {"on": False},
                                                        "changed_at": NOW - 1})
    assert check(desired) == [("set_power", {"on": False})]
    both = signed(OTHER, "bulbs-only", action=env.SHADOW_DESIRED,
                  params={"state": {"on": True, "brightness": 5}, "changed_at": NOW})
    assert reason(both) == "out-of-scope"  # set_brightness is not this key's
    assert reason(signed(action=env.SHADOW_DESIRED, params={
        "state": {"power_w": 3}, "changed_at": NOW})) == "bad-params"  # a reading, not settable
    assert reason(signed(action=env.SHADOW_DESIRED, params={"state": {}, "changed_at": NOW})
                  ) == "bad-params"
    put = signed(action=env.SCHEDULE_PUT, params={"id": "night", "when": "daily 23:00",
                                                  "action": "set_power",
                                                  "params": {"on": False}})
    assert check(put) == [("set_power", {"on": False})]
    assert reason(signed(action=env.SCHEDULE_PUT, params={
        "id": "night", "when": "daily 23:00", "action": "set_power",
        "params": {"on": 1}})) == "bad-params"
    assert check(signed(action=env.SCHEDULE_DELETE, params={"id": "night"})) == []
    assert reason(signed(action="reboot", params={})) == "bad-params"


def test_public_key_text_round_trips_and_bad_keys_are_named() -> None:
    text = env.public_key_text(KEY.public_key())
    assert len(text) == 43
    assert env.public_key_text(env.load_public_key(text)) == text
    for bad, words in (("AAAA", "3 bytes"), ("***", "base64"), ("", "0 bytes")):
        with pytest.raises(ValueError, match=words):
            env.load_public_key(bad)


@given(st.dictionaries(st.text(max_size=8), st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8)), max_size=6))
def test_any_json_object_is_rejected_or_accepted_never_crashes(raw: dict[str, Any]) -> None:
    try:
        check(json.dumps(raw).encode())
    except env.Rejected as exc:
        assert exc.code == "malformed"
