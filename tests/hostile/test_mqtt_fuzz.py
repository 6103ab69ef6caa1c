"""A raw MQTT fuzzer against the gateway's real Mosquitto: 2,000 malformed packets, each on a
connection of its own, from a second loopback address (another host, as the gateway sees
it). Nothing they contain may restart the broker, end or flap a device's session, charge
a refused login to another host, or keep a device from logging in afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.daemon import STATUS_INTERVAL_S
from gateway.mqtt import make_client
from gateway.sim.lab import Lab, start_lab
from tests.hostile.corpus import HOSTILE_CLIENT_IDS

pytestmark = pytest.mark.integration

PACKETS = 2000
AT_ONCE = 50
STRANGER = "127.0.0.2"
DEVICES = [("fz-plug-1", "plug"), ("fz-door-1", "door")]


def _text(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect(client_id: bytes, flags: int = 0xC2, level: int = 4, name: bytes = b"MQTT",
             payload_extra: bytes = _text(b"u") + _text(b"p")) -> bytes:
    body = _text(name) + bytes([level, flags]) + struct.pack("!H", 30) + _text(client_id)
    body += payload_extra
    return b"\x10" + _varint(len(body)) + body


def _cases(rng: random.Random) -> list[Callable[[], bytes]]:
    """Ways of being wrong; each draws its details from `rng`."""
    ids = [i.encode("utf-8", "surrogatepass") for i in HOSTILE_CLIENT_IDS]

    def flipped() -> bytes:
        packet = bytearray(_connect(rng.choice(ids)))
        for _ in range(rng.randint(1, 4)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        return bytes(packet)

    return [
        lambda: rng.randbytes(rng.randint(1, 300)),  # noise
        flipped,  # a CONNECT with bytes changed
        lambda: _connect(rng.choice(ids)),  # a hostile id, a wrong login
        lambda: _connect(b"x", level=rng.choice([0, 3, 6, 9, 255])),  # unknown versions
        lambda: _connect(b"x", name=rng.choice([b"MQIsdp", b"HTTP", b"", b"MQTT\x00"])),
        lambda: _connect(b"x", flags=rng.randrange(256)),  # reserved bit, will flags, …
        lambda: _connect(b"x", payload_extra=b""),  # username and password flagged, absent
        lambda: b"\x10\xff\xff\xff\x7f" + rng.randbytes(20),  # 256 MB announced
        lambda: b"\x10\xff\xff\xff\xff\x01",  # a length of five bytes
        lambda: b"\x30" + _varint(12) + _text(b"devices/fz-plug-1/state") [:12],  # PUBLISH first
        lambda: b"\x82\x08\x00\x01" + _text(b"#") + b"\x00",  # SUBSCRIBE before CONNECT
        lambda: _connect(b"\xff" * rng.randint(1, 64)),  # invalid UTF-8 id
        lambda: _connect(b"x" * 4) + rng.randbytes(rng.randint(1, 100)),  # garbage after
    ]


async def _send(port: int, packet: bytes) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, local_addr=(STRANGER, 0)), 5)
        try:
            writer.write(packet)
            await asyncio.wait_for(reader.read(64), 0.5)
        finally:
            writer.transport.abort()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = await start_lab(tmp_path / "gw")
    try:
        await lab.add_devices(DEVICES, interval_s=0.5)
        yield lab
    finally:
        await lab.stop()


async def test_malformed_packets_change_nothing_a_user_would_see(lab: Lab) -> None:
    daemon = lab.daemon
    assert daemon.broker is not None
    pid, restarts = daemon.broker.pid, daemon.broker.restarts
    flaps: list[tuple[str, bool]] = []
    watching = daemon.broker.on_presence

    def watch(client_id: str, up: bool) -> None:
        flaps.append((client_id, up))
        watching(client_id, up)

    daemon.broker.on_presence = watch
    audits_before = {e.id for e in daemon.store.audit_log(500)}
    rng = random.Random(20261206)
    cases = _cases(rng)
    port = daemon.endpoint.port
    queue = [rng.choice(cases)() for _ in range(PACKETS)]
    sending = asyncio.Semaphore(AT_ONCE)

    async def one(packet: bytes) -> None:
        async with sending:
            await _send(port, packet)

    await asyncio.wait_for(asyncio.gather(*(one(p) for p in queue)), 240)
    await asyncio.sleep(1.0)  # the broker's last log lines reach the gateway
    assert (daemon.broker.pid, daemon.broker.restarts) == (pid, restarts)
    assert daemon.broker.running
    devices = [d for d, _ in DEVICES]
    assert all(daemon.devices.present(d) for d in devices)
    assert not [f for f in flaps if f[0] in devices], flaps  # no session ended or began
    await asyncio.sleep(STATUS_INTERVAL_S + 0.5)  # refused logins are audited per interval
    charged = {e.actor for e in daemon.store.audit_log(500, "mqtt.login_refused")
               if e.id not in audits_before}
    assert charged and charged <= {f"mqtt:{STRANGER}", "mqtt:unknown"}, charged
    # A device still logs in and is heard.
    await daemon.devices.add("fz-new-1", "sensor", source="sim", actor="test")
    username, secret = await daemon.devices.issue_credential("fz-new-1", "test")
    async with make_client(lab.endpoint(username, secret), "fz-new-1") as client:
        await client.publish("devices/fz-new-1/telemetry", b'{"temperature_c": 20.5}', qos=1)
