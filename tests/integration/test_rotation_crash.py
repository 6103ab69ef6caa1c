"""kill -9 of the gateway at every rotation step never locks a device out.

The real daemon runs as a child process; HOME_GATEWAY_TEST_CRASH_AT makes it SIGKILL
itself right after the named step (the only way to hit each step exactly). A simulated
device in this process holds its login (and, once offered, the new one with the old as
fallback); after the restart it must connect again with one of them, and the rotation
must end with exactly one active login that the device uses and the old one refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3

import pytest

from gateway.control import request
from gateway.credentials.rotation import CRASH_ENV, STEPS
from gateway.mqtt import MqttError, make_client
from gateway.sim.devices import SimDevice
from tests.integration.daemon_proc import EXIT_TIMEOUT_S, MOSQUITTO, Gateway
from tests.polling import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not MOSQUITTO.exists(), reason=f"{MOSQUITTO} is not installed"),
]


def logins(gateway: Gateway, device_id: str) -> dict[str, str]:
    """username -> state, read from the gateway's database by a separate connection."""
    with sqlite3.connect(gateway.state_dir / "gateway.db") as db:
        rows = db.execute("SELECT username, state FROM credentials WHERE device_id = ?",
                          (device_id,)).fetchall()
        rotating = db.execute("SELECT count(*) FROM rotations").fetchone()[0]
    return {str(u): str(s) for u, s in rows} | ({"(rotating)": "yes"} if rotating else {})


@pytest.mark.parametrize("step", STEPS)
async def test_kill_9_at_each_rotation_step_never_locks_the_device_out(
        gateway: Gateway, step: str) -> None:
    await asyncio.to_thread(gateway.start, **{CRASH_ENV: step})
    added = request(gateway.control_socket, "device.add", id="crash-plug", kind="plug")
    first = gateway.endpoint(added["username"], added["password"])
    device = SimDevice("crash-plug", "plug", first, interval_s=0.3)
    await device.start()
    try:
        await device.session.wait_connected(10)
        await asyncio.sleep(0.5)  # the gateway has heard from it
        with contextlib.suppress(Exception):  # the daemon may die while answering
            request(gateway.control_socket, "device.rotate", id="crash-plug", timeout=10)
        assert gateway.proc is not None
        code = await asyncio.to_thread(gateway.proc.wait, EXIT_TIMEOUT_S)
        assert code == -signal.SIGKILL, f"expected kill -9 at {step}: {gateway.stderr()}"
        await eventually(lambda: not device.connected, 5, "the broker to go with the gateway")

        await asyncio.to_thread(gateway.start)  # no crash this time
        await eventually(lambda: device.connected, 15, f"the device to reconnect after {step}")
        # Resumed (acked) or rolled back and retried: either way it ends rotated.
        def rotated() -> bool:
            now = logins(gateway, "crash-plug")
            return list(now.values()) == ["active"] and added["username"] not in now

        await eventually(rotated, 30, f"the rotation interrupted at {step} to complete")
        [active] = logins(gateway, "crash-plug")
        await eventually(lambda: device.connected and device.username == active, 15,
                    f"the device on {active}")
        try:
            async with make_client(first, "crash-plug-old-login"):
                refused = False
        except MqttError:
            refused = True
        assert refused, f"the old login still works after a crash at {step}"
    finally:
        await device.stop()
