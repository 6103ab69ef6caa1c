"""`home-gateway sim devices`: simulated devices against a running gateway.

The simulator registers its devices through the gateway's control socket, like an admin
would, and receives each device's credential there; then every agent connects with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from gateway.broker.render import ListenerSpec, client_address
from gateway.config import Config
from gateway.control import ControlError, request
from gateway.daemon import control_socket
from gateway.mqtt import Endpoint
from gateway.sim.devices import Fleet, SimDevice, fleet_ids

log = logging.getLogger("gateway.sim")


def enroll(config: Config, kinds: Sequence[str], count: int) -> list[tuple[str, str, str, str]]:
    """(id, kind, username, password) for each simulated device, via the control socket."""
    path = control_socket(config)
    enrolled = []
    for device_id, kind in fleet_ids(kinds, count):
        try:
            result = request(path, "device.add", id=device_id, kind=kind)
        except ControlError:  # already registered from an earlier run: a fresh credential
            result = request(path, "device.credential", id=device_id)
        enrolled.append((device_id, kind, result["username"], result["password"]))
    return enrolled


async def run_sim_devices(config: Config, kinds: Sequence[str], count: int,
                          interval: float | None, duration: float | None) -> int:
    listener = config.broker.listeners[0]
    host = client_address(ListenerSpec(listener.address, listener.port, listener.tls))
    fleet = Fleet([
        SimDevice(device_id, kind, Endpoint(host, listener.port, username, password),
                  interval_s=interval)
        for device_id, kind, username, password in enroll(config, kinds, count)
    ])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await fleet.start()
    log.info("%d simulated devices started", len(fleet.devices))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    await fleet.stop()
    sent = sum(d.telemetry_sent for d in fleet.devices)
    log.info("stopped: %d readings sent, %d commands handled", sent,
             sum(d.commands_handled for d in fleet.devices))
    return 0
