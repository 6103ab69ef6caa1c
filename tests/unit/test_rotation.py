"""The pure parts of enrollment and rotation: decisions, backoff, hello parsing, the broker's
connection log and refused-login detection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.broker.process import PENDING_S, ConnectionLog
from gateway.credentials.rotation import (
    DAY_S,
    RESUME_GRACE_S,
    RotationPolicy,
    judge,
    next_rotation_at,
    retry_delay,
)
from gateway.credentials.secrets import load_or_create_login
from gateway.devices.enrollment import EnrollmentError, parse_hello, token_parts
from gateway.mqtt import login_refused
from gateway.store import Device, Rotation
from tests.hostile.corpus import HOSTILE_CLIENT_IDS

POLICY = RotationPolicy(period_days=30, ack_timeout_s=600, offline_wait_s=7 * DAY_S,
                        retry_initial_s=300, alert_after=3)
T0 = 1_000_000.0


def rotation(step: str, started_at: float = T0) -> Rotation:
    return Rotation("plug-1", step, "plug-1.1", "plug-1.2", "manual", started_at, started_at)


def decide(step: str, *, now: float, has_secret: bool = True, resumed_at: float = 0.0,
           seen_after_offer: float | None = None, last_seen: float | None = None) -> str:
    return judge(rotation(step), now=now, has_secret=has_secret, resumed_at=resumed_at,
                 seen_after_offer=seen_after_offer, last_seen=last_seen, policy=POLICY)


def test_an_acknowledged_rotation_is_always_finished() -> None:
    assert decide("acked", now=T0 + 1) == "finish"
    assert decide("acked", now=T0 + 1, has_secret=False, resumed_at=T0) == "finish"


def test_an_online_device_gets_the_ack_timeout_counted_from_when_it_was_seen() -> None:
    seen = T0 + 5
    assert decide("offered", now=seen + 599, seen_after_offer=seen, last_seen=seen) == "wait"
    assert decide("offered", now=seen + 601, seen_after_offer=seen, last_seen=seen) == "fail"


def test_an_offline_device_is_waited_for_up_to_the_maximum() -> None:
    assert decide("offered", now=T0 + 6 * DAY_S) == "wait"
    assert decide("offered", now=T0 + 7 * DAY_S + 1) == "fail"


def test_after_a_restart_an_unoffered_rotation_is_rolled_back_at_once() -> None:
    assert decide("created", now=T0 + 1, has_secret=False, resumed_at=T0) == "rollback"


def test_after_a_restart_an_offered_rotation_waits_for_the_device_to_prove_it() -> None:
    resumed = T0 + 100
    # Not seen since the restart: it may still come back with the new login.
    assert decide("offered", now=resumed + 60, has_secret=False, resumed_at=resumed,
                  last_seen=T0 + 50) == "wait"
    # Seen, but no proof within the grace period: it did not take the offer.
    assert decide("offered", now=resumed + RESUME_GRACE_S - 1, has_secret=False,
                  resumed_at=resumed, last_seen=resumed + 1) == "wait"
    assert decide("offered", now=resumed + RESUME_GRACE_S + 1, has_secret=False,
                  resumed_at=resumed, last_seen=resumed + 1) == "rollback"


@given(st.integers(1, 200))
def test_retry_backoff_doubles_and_is_capped(failures: int) -> None:
    delay = retry_delay(failures, POLICY)
    assert POLICY.retry_initial_s <= delay <= POLICY.retry_max_s
    assert retry_delay(failures + 1, POLICY) == min(POLICY.retry_max_s, 2 * delay)
    assert retry_delay(1, POLICY) == POLICY.retry_initial_s


def device(**changes: object) -> Device:
    base = Device("plug-1", "Plug", "plug", "adopted", "cli", None, None, T0, None, None, 0,
                  {}, 1, None, None, None, T0, 0, None, "", "quarantine", None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_next_rotation_follows_the_period_the_device_override_and_a_retry() -> None:
    assert next_rotation_at(device(), POLICY) == T0 + 30 * DAY_S
    assert next_rotation_at(device(rotation_days=7), POLICY) == T0 + 7 * DAY_S
    assert next_rotation_at(device(rotation_retry_at=T0 + 60), POLICY) == T0 + 60
    assert next_rotation_at(device(rotated_at=None), POLICY) is None  # no login yet
    assert next_rotation_at(device(status="removed"), POLICY) is None


def test_a_good_hello_is_normalised() -> None:
    hello = parse_hello(b'{"kind": "plug", "model": "P-1", "firmware": "1.0",'
                        b' "mac": "AA-BB-CC-DD-EE-FF"}')
    assert (hello.kind, hello.model, hello.firmware, hello.mac, hello.name) == (
        "plug", "P-1", "1.0", "aa:bb:cc:dd:ee:ff", None)


@pytest.mark.parametrize(("payload", "problem"), [
    (b"not json", "hello is not JSON"),
    (b"[1]", "hello must be a JSON object"),
    (b'{"kind": "toaster"}', "'kind' must be one of"),
    (b'{"kind": "plug", "serial": "123"}', "unknown field(s) in hello: serial"),
    (b'{"kind": "plug", "mac": "nope"}', "is not like aa:bb:cc:dd:ee:ff"),
    (b'{"kind": "plug", "model": ""}', "'model' must be printable text of 1 to 64"),
    (b'{"kind": "plug", "model": "a\\nb"}', "'model' must be printable text"),
    (b'{"kind": "plug", "name": ' + b'"' + b"x" * 3000 + b'"}', "larger than 2048 bytes"),
])
def test_a_bad_hello_names_what_is_wrong(payload: bytes, problem: str) -> None:
    with pytest.raises(EnrollmentError) as info:
        parse_hello(payload)
    assert problem in str(info.value)


def test_token_parts() -> None:
    assert token_parts(" 0a1b2c3d4e.SeCrEt-_x ") == ("0a1b2c3d4e", "SeCrEt-_x")
    for bad in ("", "abc", ".secret", "id."):
        with pytest.raises(EnrollmentError):
            token_parts(bad)


def test_connection_log_charges_a_refused_login_to_the_connection_that_did_not_log_in() -> None:
    log = ConnectionLog()
    for address in ("10.0.0.5:4000", "10.0.0.9:5000"):
        assert log.feed(f"1: New connection from {address} on port 8883.", 0)[:3] == (
            True, None, None)
    assert log.feed("1: New client connected from 10.0.0.5:4000 as plug-1 (p2, c1, k30, "
                    "u'plug-1.1').", 0.1)[:3] == (True, None, ("10.0.0.5", "plug-1.1"))
    assert log.feed("1: Client <unknown> disconnected, not authorised.", 0.2)[:3] == (
        True, "10.0.0.9", None)
    assert log.feed("1: Client <unknown> disconnected, not authorised.", 0.3)[:3] == (
        True, "unknown", None)
    assert log.feed("1: mosquitto version 2.0.11 running", 0.4)[:3] == (False, None, None)
    # IPv6, and a connection that never sent CONNECT is forgotten after a while.
    log.feed("1: New connection from ::1:6000 on port 1883.", 1)
    log.feed("1: New connection from fd00::7:6001 on port 1883.", 1 + PENDING_S + 1)
    assert log.feed("1: Client <unknown> disconnected, not authorised.", 1 + PENDING_S + 1.5
                    )[:3] == (True, "fd00::7", None)
    # A login over IPv6 names its address and user; one without a user name names none.
    assert log.feed("1: New client connected from fd91::11:40022 as cam (p2, c1, k60, "
                    "u'cam.3').", 2).login == ("fd91::11", "cam.3")
    assert log.feed("1: New client connected from 10.0.0.5:4001 as anon (p2, c1, k60).",
                    2).login is None


def test_connection_log_tells_when_a_client_session_begins_and_ends() -> None:
    log = ConnectionLog()
    assert log.feed("1: New client connected from 10.0.0.5:4000 as plug-1 (p2, c1, k30, "
                    "u'plug-1.1').", 0).up == "plug-1"
    for line in ("1: Client plug-1 disconnected.", "1: Client plug-1 closed its connection.",
                 "1: Client plug-1 has exceeded timeout, disconnecting.",
                 "1: Socket error on client plug-1, disconnecting."):
        event = log.feed(line, 1)
        assert (event.connection, event.down, event.up) == (True, "plug-1", None), line
    assert log.feed("1: mosquitto version 2.0.11 running", 2).down is None


@pytest.mark.parametrize("client_id", HOSTILE_CLIENT_IDS)
def test_connection_log_reads_a_hostile_client_id_only_where_the_grammar_puts_it(
        client_id: str) -> None:
    log = ConnectionLog()
    # A login that may choose its id (Home Assistant's, an enrollment token's) logs in...
    log.feed("1: New connection from 10.0.0.9:5000 on port 1883.", 0)
    event = log.feed(f"1: New client connected from 10.0.0.9:5000 as {client_id} (p2, c1, "
                     "k60, u'homeassistant:1').", 0)
    assert (event.up, event.login, event.down) == (
        client_id, ("10.0.0.9", "homeassistant:1"), None)
    # ...and leaves, however it leaves: the session that ends is its own, never plug-1's.
    for line in (f"Client {client_id} disconnected.", f"Client {client_id} closed its "
                 "connection.", f"Client {client_id} has exceeded timeout, disconnecting.",
                 f"Client {client_id} disconnected due to protocol error.",
                 f"Socket error on client {client_id}, disconnecting."):
        event = log.feed(f"1: {line}", 1)
        assert (event.down, event.up, event.refused) == (client_id, None, None), line
    # Refused (Mosquitto 2.0.21 names the id): one refusal, from where it came, nothing else.
    log.feed("1: New connection from 10.0.0.9:5001 on port 1883.", 2)
    event = log.feed(f"1: Client {client_id} disconnected, not authorised.", 2)
    assert (event.refused, event.down, event.up, event.login) == ("10.0.0.9", None, None, None)


def test_a_refused_login_is_never_charged_to_another_hosts_waiting_connection() -> None:
    log = ConnectionLog()
    log.feed("1: New connection from 10.0.0.5:4000 on port 1883.", 0)  # a device, slow
    log.feed("1: New connection from 10.0.0.66:5000 on port 1883.", 0.1)  # a stranger
    assert log.feed("1: Client <unknown> disconnected, not authorised.", 0.2).refused == (
        "unknown")  # which of the two was refused the log does not say
    log.feed("1: New connection from 10.0.0.66:5001 on port 1883.", 0.3)
    log.feed("1: New client connected from 10.0.0.5:4000 as plug-1 (p2, c1, k30, "
             "u'plug-1.1').", 0.4)
    assert log.feed("1: Client mallory disconnected, not authorised.", 0.5).refused == (
        "10.0.0.66")  # only the stranger's connections wait: it is theirs
    # Not a whole message: never an event.
    for line in ("Client plug-1 disconnected.", "1: Client plug-1 disconnected. ",
                 "x 1: Client plug-1 disconnected.", "1: client plug-1 disconnected."):
        assert log.feed(line, 1) == (False, None, None, None, None), line


@pytest.mark.parametrize(("error", "refused"), [
    ("[code:5] The connection was refused.", True),  # asyncio-mqtt 0.16 / paho 1.6
    ("[code:135] Not authorized", True),  # aiomqtt 2 / paho 2
    ("Connection refused: bad user name or password", True),
    ("[Errno 111] Connection refused", False),
    ("Operation timed out", False),
    (None, False),
])
def test_login_refused_tells_a_refused_login_from_a_network_error(error: str | None,
                                                                   refused: bool) -> None:
    assert login_refused(error) is refused


def test_the_gateways_login_file_old_and_new_format(tmp_path: Path) -> None:
    old = tmp_path / "old.secret"
    old.write_text("just-a-secret\n")
    assert load_or_create_login(old, "home-gateway") == ("home-gateway", "just-a-secret")
    new = tmp_path / "new.secret"
    new.write_text("home-gateway:3 s3cret\n")
    assert load_or_create_login(new, "home-gateway") == ("home-gateway:3", "s3cret")
    made = tmp_path / "made.secret"
    username, secret = load_or_create_login(made, "home-gateway")
    assert username == "home-gateway" and len(secret) >= 32
    assert made.stat().st_mode & 0o777 == 0o600
