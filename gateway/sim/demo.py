"""`home-gateway demo`: a working gateway with its own broker and simulated devices."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import tempfile
import time
from pathlib import Path

from gateway.aio import cancel_and_wait
from gateway.devices.kinds import KINDS
from gateway.devices.service import CommandRejected
from gateway.devices.topics import device_topic
from gateway.mqtt import Endpoint, MqttSession
from gateway.sim.cloud import CloudSim
from gateway.sim.devices import fleet_ids
from gateway.sim.lab import Lab, free_port, start_lab

REPORT_EVERY_S = 5.0
ROTATE_EVERY_S = 30.0
CLOUD_EVERY_S = 12.0


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {text}", flush=True)


async def _misbehave(lab: Lab) -> None:
    """One extra device that sometimes sends garbage, to show it being dropped."""
    await lab.daemon.devices.add("demo-rogue", "sensor", name="Misbehaving sensor",
                                 source="sim", actor="demo")
    username, secret = await lab.daemon.devices.issue_credential("demo-rogue", "demo")
    garbage = [b"not json", b'{"temperature": NaN}', b'[1, 2, 3]', b'{"ts": "yesterday"}']
    async with MqttSession(lab.endpoint(username, secret), client_id="demo-rogue",
                           on_message=lambda m: None) as rogue:
        for i in range(1_000_000):
            await asyncio.sleep(20)
            with contextlib.suppress(Exception):
                await rogue.publish(device_topic("demo-rogue", "telemetry"),
                                    garbage[i % len(garbage)])


async def _commands(lab: Lab) -> None:
    """Now and then, switch a plug or bulb from the gateway, as an admin would."""
    on = False
    while True:
        await asyncio.sleep(15)
        targets = [d for d in lab.fleet.devices if d.kind in ("plug", "bulb")]
        if not targets:
            return
        on = not on
        for agent in targets:
            started = time.perf_counter()
            try:
                result = await lab.daemon.cloud.command(
                    agent.id, "set_power", {"on": on}, source="admin", actor="demo")
                say(f"command set_power on={on} -> {agent.id}: {result['status']} in "
                    f"{(time.perf_counter() - started) * 1000:.1f} ms")
            except CommandRejected as exc:
                say(f"command to {agent.id} failed: {exc}")


async def _rotations(lab: Lab) -> None:
    """Rotate one device's login at a time, round robin, and say how it went."""
    turn = 0
    while True:
        await asyncio.sleep(ROTATE_EVERY_S)
        agents = lab.fleet.devices
        if not agents:
            continue
        agent = agents[turn % len(agents)]
        turn += 1
        before = agent.username
        await lab.daemon.rotator.rotate([agent.id], "manual", "demo")
        for _ in range(100):
            await asyncio.sleep(0.1)
            if lab.daemon.store.rotation(agent.id) is None:
                break
        device = lab.daemon.store.device(agent.id)
        say(f"rotated {agent.id}: {before} -> {agent.username} "
            f"({device.rotation_result if device else '?'}; the device was offline "
            f"{agent.longest_offline_s * 1000:.0f} ms at most)")


# A made-up network (documentation ranges) for the firewall to render, never to apply.
DEMO_NETWORK = """
[network]
uplink = "demo-lan0"
iot = "demo-iot0"
iot_subnets = ["192.0.2.0/24", "2001:db8:1::/64"]
lan_subnets = ["198.51.100.0/24", "2001:db8:2::/64"]

[firewall]
mode = "render-only"
"""


async def _place_on_network(lab: Lab) -> None:
    """Give the simulated devices addresses (as DHCP would) and adopt every other one."""
    daemon = lab.daemon
    for i, agent in enumerate(lab.fleet.devices):
        daemon.store.set_device_addresses(
            agent.id, f"02:00:5e:00:53:{i + 16:02x}", f"192.0.2.{i + 16} 2001:db8:1::{i + 16:x}")
        daemon.devices.reload()
        if i % 2 == 0:
            await daemon.firewall.set_policy(agent.id, "restricted", None, "demo")
    await daemon.firewall.apply("demo devices placed")


async def _cloud(lab: Lab, cloud: CloudSim) -> None:
    """The vendor's cloud sends signed commands; now and then it goes away for a while and
    the owner's app uses the local API instead; then the backlog flows up."""
    relay = lab.daemon.cloud
    bulbs = [d for d in lab.fleet.devices if d.kind == "bulb"] or lab.fleet.devices[:1]
    level = 10
    for turn in range(1_000_000):
        await asyncio.sleep(CLOUD_EVERY_S)
        target = bulbs[turn % len(bulbs)]
        level = level % 90 + 10
        if turn % 6 == 3:
            await cloud.kill()
            say("cloud: the vendor's cloud is DOWN (its broker was killed); the gateway keeps "
                "working locally and spools what it owes the cloud")
            continue
        if turn % 6 in (4, 5):
            envelope = cloud.command(target.id, "set_brightness", {"brightness": level})
            started = time.perf_counter()
            result = await relay.submit_signed(json.dumps(envelope), "local-signed")
            spool = relay.spool.stats(time.time())
            say(f"cloud down: the owner's app sent a signed set_brightness={level} to "
                f"{target.id} on the local API: {result['status']} in "
                f"{(time.perf_counter() - started) * 1000:.1f} ms; {spool['messages']} "
                "message(s) spooled for the cloud")
            if turn % 6 == 5:
                await cloud.restart()
                say("cloud: back up; the spool drains in order (the Cloud page shows it)")
            continue
        started = time.perf_counter()
        try:
            result = await cloud.request(target.id, "set_brightness", {"brightness": level})
        except TimeoutError as exc:
            say(f"cloud: {exc}")
            continue
        say(f"cloud: signed set_brightness={level} -> {target.id}: {result['status']} in "
            f"{(time.perf_counter() - started) * 1000:.1f} ms round trip (cloud -> gateway -> "
            "device -> cloud)")


def _web_port(preferred: int = 8080) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


async def run_demo(state_dir: str | None, devices: int = 6,
                   duration: float | None = None) -> int:
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="home-gateway-"))
        # The demo prints the setup code itself; the daemon's log line would repeat it.
        logging.getLogger("gateway.daemon").setLevel(logging.ERROR)
        # A TLS listener for the devices, as on the IoT side of a real gateway.
        device_port = free_port()
        cloud = CloudSim(Path(state_dir).resolve() / "cloud")
        await cloud.start()
        extra = (f'\n[[broker.listeners]]\naddress = "127.0.0.1"\nport = {device_port}\n'
                 'tls = true\n\n'
                 f'[web]\nlisten = ["127.0.0.1:{_web_port()}"]\n{DEMO_NETWORK}\n'
                 + cloud.config_toml())
        try:
            lab = await start_lab(Path(state_dir).resolve(), extra_config=extra)
        except BaseException:
            await cloud.stop()
            raise
        daemon = lab.daemon
        say(f"home-gateway demo: state in {state_dir}")
        if daemon.setup_code:
            say(f"admin page: {daemon.web.urls[0]}  setup code: {daemon.setup_code} "
                "(create your admin account with it; valid 1 hour)")
        say(f"broker: mosquitto pid {daemon.broker.pid if daemon.broker else '-'} on "
            f"{daemon.endpoint.host}:{daemon.endpoint.port} (anonymous access refused)")
        kinds = list(KINDS)
        tls = Endpoint("localhost", device_port, tls=daemon.pki.ssl_context())
        await lab.enroll_devices(fleet_ids(kinds, devices), tls)
        say(f"{devices} simulated devices enrolled with one-time tokens over TLS (port "
            f"{device_port}, the gateway's CA pinned), each with its own login: "
            + ", ".join(d.id for d in lab.fleet.devices))
        await _place_on_network(lab)
        say(f"{daemon.firewall.summary()}: the demo renders the ruleset for a made-up IoT "
            "segment (192.0.2.0/24) and applies nothing to this machine; half the devices "
            "are adopted with their kind's profile, the rest wait in quarantine "
            "(Network page, `home-gateway firewall render`)")
        say(f"every {ROTATE_EVERY_S:.0f} s one device's login is rotated; the old one is "
            "deleted only after the device proves the new one")
        say(f"cloud: a simulated vendor cloud (its own Mosquitto with TLS and CA) at {cloud.url}; "
            f"the gateway links out to it as {cloud.gateway_id} (link: "
            f"{daemon.cloud.status()['state']}). Every {CLOUD_EVERY_S:.0f} s it sends a "
            "signed command; every so often it goes down and comes back")
        say("demo-rogue is a misbehaving sensor: every 20 s it sends garbage, which is dropped.")
        ha = daemon.homeassistant_connection()
        say(f"Home Assistant: {ha['entities']} entities published by MQTT discovery; point "
            f"its MQTT integration at {daemon.endpoint.host}:{daemon.endpoint.port} as "
            f"{ha.get('username', '-')} (the Home Assistant page shows the password)")
        say("privacy export: off, nothing collected, until you opt in on the Privacy page "
            "(`home-gateway privacy preview` shows the exact bytes that would leave)")
        say("Ctrl-C stops everything.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [loop.create_task(_misbehave(lab)), loop.create_task(_commands(lab)),
                 loop.create_task(_rotations(lab)), loop.create_task(_cloud(lab, cloud))]
        started = time.monotonic()
        last_accepted, last_time = 0, time.monotonic()
        try:
            while duration is None or time.monotonic() - started < duration:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), REPORT_EVERY_S)
                if stop.is_set():
                    break
                s = daemon.status()
                now = time.monotonic()
                rate = (s["messages"]["accepted"] - last_accepted) / (now - last_time)
                last_accepted, last_time = s["messages"]["accepted"], now
                rejected = s["messages"]["rejected"]
                reasons = json.dumps(s["messages"]["rejected_by_reason"]) if rejected else ""
                say(f"{s['devices']['online']}/{s['devices']['total']} devices reporting · "
                    f"{rate:.1f} msg/s · {s['messages']['accepted']} accepted · "
                    f"{rejected} rejected {reasons}· broker restarts {s['broker']['restarts']}"
                    + ("" if s["healthy"] else " · DEGRADED"))
        finally:
            await cancel_and_wait(*tasks)
            say("stopping")
            await lab.stop()
            await cloud.stop()
            say("stopped cleanly")
    return 0
