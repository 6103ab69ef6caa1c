"""The demo and the device simulator as a user runs them, and the external-broker mode."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway.sim.lab import Lab, start_lab
from tests.integration.test_broker import until

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def home_gateway(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def mosquitto_pids_under(path: Path) -> list[int]:
    """Mosquitto processes whose config lives under `path` (ours, by construction)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"mosquitto" in cmdline and str(path).encode() in cmdline:
                pids.append(int(proc.name))
    return pids


def test_demo_runs_devices_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    proc = subprocess.Popen(home_gateway("demo", "--state-dir", str(state)), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if any("devices reporting" in x for x in lines) and "cloud: signed" in line:
                break
        # The simulated cloud's signed commands reach the devices and come back.
        assert any("(link: connected)" in x for x in lines), lines
        cloud = next(x for x in lines if "cloud: signed" in x)
        assert re.search(r"-> sim-bulb-\d+: ok in [\d.]+ ms round trip", cloud), cloud
        assert any("6 simulated devices enrolled with one-time tokens over TLS" in x
                   for x in lines), lines
        assert mosquitto_pids_under(state), "the demo's broker is not running"
        # The admin page is served on loopback; its URL and the setup code are printed.
        admin = next(x for x in lines if "admin page: " in x)
        url = re.search(r"admin page: (http://127\.0\.0\.1:\d+/)", admin).group(1)
        assert re.search(r"setup code: [A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4} ", admin), admin
        with urllib.request.urlopen(url, timeout=5) as page:  # redirected to first-run setup
            assert page.url.endswith("/setup") and "setup code" in page.read().decode()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=15)
        lines += out.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, lines
    online = next(x for x in lines if "devices reporting" in x)
    assert online.split()[1].startswith("6/"), online
    assert any("stopped cleanly" in x for x in lines)
    assert not mosquitto_pids_under(state), "the demo left its broker behind"


async def test_sim_devices_enroll_through_the_running_gateway(lab: Lab) -> None:
    proc = await asyncio.create_subprocess_exec(
        *home_gateway("sim", "devices", "--config", str(lab.config.source), "--count", "4",
                      "--kinds", "plug,bulb", "--interval", "0.2", "--duration", "4"),
        env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await until(lambda: lab.daemon.devices.online() == 4, 15, "4 simulated devices online")
        ids = sorted(d.id for d in lab.daemon.devices.devices())
        assert ids == ["sim-bulb-2", "sim-bulb-4", "sim-plug-1", "sim-plug-3"]
        result = await lab.daemon.devices.send_command("sim-bulb-2", "set_brightness",
                                                       {"brightness": 10}, source="test")
        assert result["status"] == "ok" and result["state"]["brightness"] == 10
    finally:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    # Each simulated device logged in with its own credential, issued by the gateway.
    usernames = {c.username for c in lab.daemon.store.credentials()}
    assert usernames == {f"{i}.1" for i in ids}


async def test_sim_rejects_unknown_kind(lab: Lab) -> None:
    proc = await asyncio.create_subprocess_exec(
        *home_gateway("sim", "devices", "--config", str(lab.config.source), "--kinds", "toaster"),
        env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"toaster" in out and b"thermostat" in out


async def test_external_broker_mode(lab: Lab, tmp_path: Path) -> None:
    """A second gateway uses the first one's broker as an external broker."""
    password_file = tmp_path / "password"
    password_file.write_text(lab.daemon.endpoint.password or "")
    password_file.chmod(0o600)
    extra = ('[broker]\nmode = "external"\n[broker.external]\nhost = "127.0.0.1"\n'
             f'port = {lab.daemon.endpoint.port}\nusername = "home-gateway"\n'
             f'password_file = "{password_file}"\ntls = false\n')
    # The external lab's config has no listener of its own in use: it starts no broker.
    external = await start_lab(tmp_path / "external", extra_config=extra)
    try:
        assert external.daemon.broker is None and external.daemon.healthy
        (agent,) = await lab.add_devices([("ext-sensor", "sensor")], interval_s=0.2)
        await external.daemon.devices.add("ext-sensor", "sensor", source="test")
        await until(lambda: external.daemon.devices.counters.accepted > 2, 10,
                    "telemetry through the external broker")
        state = external.daemon.devices._live["ext-sensor"].state
        assert json.dumps(state) and "temperature" in state
        assert agent.connected
    finally:
        await external.stop()
