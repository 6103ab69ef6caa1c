"""A self-contained gateway with simulated devices on loopback: the demo, the integration
tests and the benchmarks all stand one up the same way."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, parse_config
from gateway.daemon import Daemon
from gateway.mqtt import Endpoint
from gateway.sim.devices import Fleet, SimDevice, enrolled_device
from gateway.systemd import Notifier


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lab_config(state_dir: Path, port: int | None = None, extra: str = "") -> Config:
    """The smallest complete config: a state dir and one loopback broker listener."""
    text = (f'[gateway]\nstate_dir = "{state_dir}"\n\n[[broker.listeners]]\n'
            f'address = "127.0.0.1"\nport = {port or free_port()}\n{extra}')
    path = state_dir / "gateway.toml"
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return parse_config(text, path)


@dataclass
class Lab:
    daemon: Daemon
    fleet: Fleet

    @property
    def config(self) -> Config:
        return self.daemon.config

    def endpoint(self, username: str | None = None, password: str | None = None) -> Endpoint:
        return Endpoint(self.daemon.endpoint.host, self.daemon.endpoint.port, username,
                        password)

    async def add_devices(self, devices: Sequence[tuple[str, str]],
                          interval_s: float | None = None) -> list[SimDevice]:
        """Register devices with the gateway and start a simulated agent for each."""
        agents = []
        for device_id, kind in devices:
            await self.daemon.devices.add(device_id, kind, source="sim", actor="demo")
            username, secret = await self.daemon.devices.issue_credential(device_id, "demo")
            agent = SimDevice(device_id, kind, self.endpoint(username, secret),
                              interval_s=interval_s)
            await agent.start()
            agents.append(agent)
        self.fleet.devices.extend(agents)
        await self.wait_seen([a.id for a in agents])
        return agents

    async def enroll_devices(self, devices: Sequence[tuple[str, str]], endpoint: Endpoint,
                             interval_s: float | None = None) -> list[SimDevice]:
        """(id, kind) devices that enroll themselves with one-time tokens, like new
        devices the admin enrolls, then start."""
        agents = []
        for device_id, kind in devices:
            ticket = await self.daemon.enrollments.create("demo", device_id=device_id)
            agent = await enrolled_device(endpoint, ticket.token, kind)
            agent.interval_s = interval_s
            await agent.start()
            agents.append(agent)
        self.fleet.devices.extend(agents)
        await self.wait_seen([a.id for a in agents])
        return agents

    async def wait_seen(self, device_ids: Sequence[str], timeout: float = 15.0) -> None:
        """Until the gateway has heard from each device (its retained state on connect):
        only then will it accept commands for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(self.daemon.devices.last_seen(d) is None for d in device_ids):
            if loop.time() > deadline:
                missing = [d for d in device_ids if self.daemon.devices.last_seen(d) is None]
                raise TimeoutError(f"the gateway never heard from {', '.join(missing)}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        await self.fleet.stop()
        await self.daemon.stop()


async def start_lab(state_dir: Path, notifier: Notifier | None = None,
                    extra_config: str = "") -> Lab:
    config = lab_config(state_dir, extra=extra_config)
    daemon = Daemon(config, notifier=notifier or Notifier({}), config_path=config.source)
    await daemon.start()
    return Lab(daemon, Fleet([]))
