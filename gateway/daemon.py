"""The daemon: composes the services, owns their start/stop order, reload and health.

Start: store -> broker -> the gateway's MQTT session -> devices -> firewall -> enrollment
and rotation -> cloud relay -> control socket -> web admin -> READY.
Stop is the reverse. SIGHUP re-reads the config; an invalid one is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import ssl
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.broker.dynsec import RESPONSE_TOPIC, DynsecClient
from gateway.broker.process import BrokerError, EmbeddedBroker
from gateway.broker.render import GATEWAY_USERNAME, BrokerFiles, ListenerSpec, client_address
from gateway.cloud.service import CloudRelay
from gateway.config import Config, ConfigError, Listener, load_config
from gateway.control import ControlError, ControlServer
from gateway.credentials.pki import Pki, ca_fingerprint, ensure_ca
from gateway.credentials.rotation import OwnLogin, RotationPolicy, RotationRefused, Rotator
from gateway.credentials.secrets import load_or_create_login
from gateway.devices.enrollment import EnrollmentError, Enrollments
from gateway.devices.registry import DeviceError
from gateway.devices.service import CommandRejected, DeviceService
from gateway.devices.topics import (
    ACK_PREFIX,
    GATEWAY_SUBSCRIPTIONS,
    parse_device_topic,
    parse_enroll_topic,
)
from gateway.devices.validate import Limits
from gateway.discovery.service import DiscoveryService
from gateway.firewall.manager import Firewall, PolicyError
from gateway.homeassistant.bridge import HomeAssistantBridge
from gateway.homeassistant.login import HaLogin
from gateway.mqtt import Endpoint, MqttSession, Will
from gateway.privacy.service import PrivacyService
from gateway.store import Store
from gateway.systemd import Notifier
from gateway.updates import UpdateService
from gateway.web.accounts import Accounts, AuthError
from gateway.web.app import WebServer

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
STATUS_INTERVAL_S = 5.0
STATUS_TOPIC = "home-gateway/status"


class StartupError(Exception):
    pass


def runtime_dir(config: Config) -> Path:
    """Where the control socket lives: the configured path, systemd's RuntimeDirectory,
    or a folder inside the state dir (for the demo and tests)."""
    if config.gateway.runtime_dir is not None:
        return config.gateway.runtime_dir
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    return config.gateway.state_dir / "run"


def control_socket(config: Config) -> Path:
    return runtime_dir(config) / "control.sock"


def open_store(config: Config) -> Store:
    config.gateway.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Store(config.gateway.state_dir / "gateway.db")


def listener_specs(config: Config) -> list[ListenerSpec]:
    return [ListenerSpec(x.address, x.port, x.tls) for x in config.broker.listeners]


def gateway_pki(config: Config) -> Pki:
    return Pki(config.gateway.state_dir / "pki")


def rotation_policy(config: Config) -> RotationPolicy:
    c = config.credentials
    return RotationPolicy(period_days=c.rotation_days, ack_timeout_s=c.ack_timeout_s,
                          offline_wait_s=c.offline_wait_s, retry_initial_s=c.retry_initial_s,
                          alert_after=c.alert_after)


def plaintext_listeners(config: Config) -> list[Listener]:
    """Listeners that devices could reach without TLS (loopback ones serve this machine)."""
    if config.broker.mode != "embedded":
        return []
    return [x for x in config.broker.listeners
            if not x.tls and not ipaddress.ip_address(x.address).is_loopback]


def broker_endpoint(config: Config, files: BrokerFiles, pki: Pki) -> Endpoint:
    if config.broker.mode == "embedded":
        first = listener_specs(config)[0]
        tls = None
        if first.tls:  # the gateway trusts only its own CA, created on first use
            ensure_ca(pki)
            tls = pki.ssl_context()
        OwnLogin.discard_unfinished(files.gateway_secret)
        username, secret = load_or_create_login(files.gateway_secret, GATEWAY_USERNAME)
        return Endpoint(client_address(first), first.port, username, secret, tls)
    external = config.broker.external
    assert external is not None
    password = Path(external.password_file).read_text().strip()
    tls = ssl.create_default_context(cafile=external.ca_file) if external.tls else None
    return Endpoint(external.host, external.port, external.username, password, tls)


class MessageRate:
    """Messages per second over the last few seconds, sampled whenever it is read."""

    def __init__(self, count: Callable[[], int], window_s: float = 10.0) -> None:
        self._count = count
        self._window = window_s
        self._samples: deque[tuple[float, int]] = deque()

    @property
    def per_second(self) -> float:
        now, count = time.monotonic(), self._count()
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        then, before = self._samples[0]
        return (count - before) / (now - then) if now > then else 0.0


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None,
                 config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.started_at = time.monotonic()
        self.store = open_store(config)
        self.files = BrokerFiles(config.gateway.state_dir / "broker")
        self.pki = gateway_pki(config)
        self.endpoint = broker_endpoint(config, self.files, self.pki)
        self.broker: EmbeddedBroker | None = None
        self.session = MqttSession(
            self.endpoint, client_id=self._client_id(), on_message=self._route,
            subscriptions=[(t, 1) for t in (*GATEWAY_SUBSCRIPTIONS, RESPONSE_TOPIC)],
            on_connect=self._connected, will=Will(STATUS_TOPIC, b"offline"))
        self.dynsec = DynsecClient(self.session)
        ha = config.homeassistant
        # Home Assistant's login on our broker (not when it has a broker of its own, or
        # when the gateway's broker is someone else's).
        self.ha_login = (HaLogin(self.files.directory / "homeassistant.json", self.store,
                                 self.dynsec, ha.prefix)
                         if config.broker.mode == "embedded" and ha.enabled
                         and ha.broker == "gateway" else None)
        if config.broker.mode == "embedded":
            self.broker = EmbeddedBroker(
                self.files, listener_specs(config), executable=config.broker.executable,
                max_packet_size=config.broker.max_packet_size, store=self.store,
                pki=self.pki,
                on_restart=self._broker_restarted, on_login_refused=self._login_refused,
                on_login=self._broker_login,
                on_presence=lambda client_id, up: self.devices.set_presence(client_id, up),
                other_logins=self.ha_login.logins if self.ha_login else lambda: ())
        telemetry = config.telemetry
        self.devices = DeviceService(
            self.store, self.session, self.dynsec,
            limits=Limits(telemetry.max_payload_bytes, telemetry.max_future_skew_s,
                          telemetry.max_age_s),
            history_size=telemetry.history_size,
            invalid_audit_interval_s=telemetry.invalid_audit_interval_s)
        creds = config.credentials
        self.enrollments = Enrollments(self.store, self.session, self.dynsec,
                                       ttl_s=creds.enrollment_minutes * 60.0,
                                       on_change=self.devices.reload)
        own = (OwnLogin(self.files.gateway_secret, self.session, self.dynsec, self.store)
               if self.broker is not None else None)  # an external broker's login is not ours
        self.rotator = Rotator(
            self.store, self.session, self.dynsec, policy=rotation_policy(config),
            last_seen=self.devices.last_seen, devices=self.devices.devices,
            on_change=self.devices.reload,
            on_enrollment_ack=self.enrollments.handle_ack, own=own)
        self.devices.on_state = self.rotator.device_connected
        self.firewall = Firewall(config, self.store, self.devices.devices,
                                 on_change=self.devices.reload,
                                 on_health=lambda: self.notifier.status(self.status_line()))
        self.cloud = CloudRelay(config, self.store, self.devices)
        self.privacy = PrivacyService(config, self.store, self.devices)
        self.homeassistant = HomeAssistantBridge(
            config, self.store, self.devices, self.session,
            command=lambda device_id, action, params: self.cloud.command(
                device_id, action, params, source="homeassistant", actor="homeassistant"),
            gateway_status=self.status)
        if ha.enabled and ha.broker == "external":
            self.devices.reading_hooks.append(
                lambda device_id, leaf, ts, values: self.homeassistant.mirror_state(
                    device_id, dict(self.devices.state(device_id), ts=round(ts, 3))))
        self.discovery = DiscoveryService(config, self.store, self.devices)
        self.updates = UpdateService()
        self.refused_logins: dict[str, int] = {}  # by address, not yet audited
        self.refused_total = 0
        self.rates = MessageRate(lambda: self.devices.counters.accepted)
        self.accounts = Accounts(self.store)
        self.web = WebServer(self, config.web, config.gateway.state_dir,
                             self.accounts)
        self.control = ControlServer(control_socket(config), {
            "status": self._op_status,
            "device.add": self._op_device_add,
            "device.remove": self._op_device_remove,
            "device.credential": self._op_device_credential,
            "device.command": self._op_device_command,
            "device.enroll": self._op_device_enroll,
            "device.rotate": self._op_device_rotate,
            "device.policy": self._op_device_policy,
            "firewall.status": self._op_firewall_status,
            "cloud.status": self._op_cloud_status,
            "privacy.status": self._op_privacy_status,
            "privacy.preview": self._op_privacy_preview,
            "privacy.consent": self._op_privacy_consent,
            "privacy.delete": self._op_privacy_delete,
            "homeassistant.status": self._op_homeassistant_status,
            "homeassistant.rotate": self._op_homeassistant_rotate,
            "discovery.list": self._op_discovery_list,
            "discovery.adopt": self._op_discovery_adopt,
            "discovery.ignore": self._op_discovery_ignore,
            "setup.code": self._op_setup_code,
        })
        self.setup_code: str | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.running = False

    def _client_id(self) -> str:
        """On a shared external broker another gateway may also be "home-gateway", and a
        duplicate client id makes the broker drop the older session."""
        if self.config.broker.mode == "embedded":
            return "home-gateway"
        return f"home-gateway-{secrets.token_hex(4)}"

    # -- health and status -------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        broker_ok = self.broker is None or self.broker.running
        return self.running and broker_ok and self.session.connected

    def status(self) -> dict[str, Any]:
        c = self.devices.counters
        return {
            "healthy": self.healthy,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "broker": {
                "mode": self.config.broker.mode,
                "running": self.broker.running if self.broker else None,
                "pid": self.broker.pid if self.broker else None,
                "restarts": self.broker.restarts if self.broker else 0,
                "connected": self.session.connected,
            },
            "devices": {"total": len(self.devices.devices()), "online": self.devices.online()},
            "credentials": {
                "rotating": len(self.rotator.in_flight()),
                "gateway_login": self.session.endpoint.username,
                "alerts": [d.id for d in self.rotator.alerts()],
                "enrollments_open": len(self.store.live_enrollments(time.time())),
                "logins_refused": self.refused_total,
                "plaintext_listeners": [f"{x.address}:{x.port}" for x in plaintext_listeners(
                    self.config)],
            },
            "firewall": self.firewall.status(),
            "cloud": self.cloud.status(),
            "privacy": self.privacy.status(),
            "homeassistant": self.homeassistant_status(),
            "discovery": self.discovery.status(),
            "updates": self.updates.status(),
            "web": {"urls": list(self.web.urls),
                    "setup_pending": bool(self.web.urls) and self.accounts.needs_setup()},
            "messages": {"accepted": c.accepted, "rejected": c.rejected, "unknown": c.unknown,
                         "commands": c.commands, "rejected_by_reason": dict(c.by_reason)},
        }

    def status_line(self) -> str:
        s = self.status()
        if not s["healthy"]:
            broker = "broker down" if s["broker"]["running"] is False else "broker unreachable"
            return f"Degraded: {broker}; reconnecting"
        d, m = s["devices"], s["messages"]
        return (f"Running: {d['online']}/{d['total']} devices online, "
                f"{m['accepted']} messages accepted, {m['rejected']} rejected; "
                f"{s['firewall']['summary']}; {self.cloud.summary()}")

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.notifier.status("Starting broker")
        if self.broker is not None:
            try:
                await self.broker.start()
            except (BrokerError, OSError, ValueError) as exc:
                raise StartupError(f"broker: {exc}") from exc
        self.session.start()
        try:
            await self.session.wait_connected(CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise StartupError(
                f"could not connect to the broker at {self.endpoint.host}:{self.endpoint.port}"
                f" ({self.session.last_error or 'no answer'})") from None
        await self.devices.sync_declared(self.config.devices)
        await self.devices.start()
        self.notifier.status("Applying the firewall")
        await self.firewall.start()
        await self.enrollments.start()
        await self.rotator.start()
        await self.cloud.start()
        await self.privacy.start()
        await self.homeassistant.start()
        await self.discovery.start()
        await self.updates.start()
        for listener in plaintext_listeners(self.config):
            log.warning("broker: %s:%d is a plain-text listener: device credentials cross "
                        "the network readable (legacy devices only)", listener.address,
                        listener.port)
        await self.control.start()
        try:
            await self.web.start()
        except OSError as exc:
            raise StartupError(f"web admin: cannot listen on {exc}") from exc
        if self.web.urls and self.accounts.needs_setup():
            self.issue_setup_code()
        self.running = True
        self.store.audit("system", "daemon.start", "ok")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.notifier.watchdog(lambda: self.healthy)),
                       loop.create_task(self._status_loop())]
        self.notifier.ready(self.status_line())
        log.info("gateway ready: %s", self.status_line())

    async def stop(self) -> None:
        self.notifier.stopping("Stopping")
        self.running = False
        await cancel_and_wait(*self._tasks, *self._background)
        await self.web.stop()
        await self.control.stop()
        await self.updates.stop()
        await self.discovery.stop()
        await self.homeassistant.stop()
        await self.privacy.stop()
        await self.cloud.stop()
        await self.rotator.stop()
        await self.enrollments.stop()
        await self.firewall.stop()
        await self.devices.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.session.publish(STATUS_TOPIC, b"offline", 1, True), 1)
        await self.session.stop()
        if self.broker is not None:
            await self.broker.stop()
        self.store.audit("system", "daemon.stop", "ok")
        self.store.close()
        log.info("gateway stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop. SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()

    def issue_setup_code(self) -> dict[str, Any]:
        """A new first-run setup code, written to the log (the journal) for the installer."""
        code, expires = self.accounts.issue_setup_code()
        self.setup_code = code  # in memory only, for the demo to print; the store has a hash
        until = time.strftime("%H:%M", time.localtime(expires))
        log.warning("first-run setup: open %s and enter the setup code %s (valid until %s; "
                    "`home-gateway setup-code` makes a new one)",
                    self.web.urls[0] if self.web.urls else "the admin page", code, until)
        return {"code": code, "expires": expires, "urls": self.web.urls}

    def request_stop(self) -> None:
        self._stop.set()

    async def reload(self) -> None:
        if self.config_path is None:
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            self.store.audit("system", "config.reload", "rejected",
                             detail=f"{len(exc.problems)} problem(s)")
            self.notifier.ready(self.status_line())
            return
        old, self.config = self.config, new
        if new.gateway.state_dir != old.gateway.state_dir or new.broker.mode != old.broker.mode:
            log.warning("reload: gateway.state_dir and broker.mode take effect at restart")
        if new.web != old.web:
            log.warning("reload: the [web] settings take effect at restart")
        logging.getLogger().setLevel(new.gateway.log_level.upper())
        broker_changed = (new.broker.listeners, new.broker.max_packet_size) != (
            old.broker.listeners, old.broker.max_packet_size)
        if self.broker is not None and broker_changed:
            self.broker.listeners = tuple(listener_specs(new))
            self.broker.max_packet_size = new.broker.max_packet_size
            await self.broker.restart()
        if new.credentials != old.credentials:
            self.rotator.policy = rotation_policy(new)
            self.enrollments.ttl_s = new.credentials.enrollment_minutes * 60.0
        await self.devices.sync_declared(new.devices)
        await self.firewall.reconfigure(new)
        if new.cloud != old.cloud:
            log.warning("reload: the [cloud] link settings take effect at restart; signer "
                        "keys and limits apply now")
        self.cloud.configure(new)
        self.privacy.configure(new)
        if (new.homeassistant, new.discovery) != (old.homeassistant, old.discovery):
            log.warning("reload: the [homeassistant] and [discovery] settings take effect at "
                        "restart")
        self.store.audit("system", "config.reload", "ok")
        log.info("configuration reloaded from %s", self.config_path)
        self.notifier.ready(self.status_line())

    # -- internals ---------------------------------------------------------------------

    def _route(self, message: Any) -> None:
        if self.homeassistant.wants(message.topic):
            self.homeassistant.handle(message)
        elif message.topic == RESPONSE_TOPIC:
            self.dynsec.handle(message)
        elif (token_id := parse_enroll_topic(message.topic)) is not None:
            self.enrollments.handle_hello(token_id, message.payload)
        elif (parsed := parse_device_topic(message.topic)) and parsed[1].startswith(ACK_PREFIX):
            self.rotator.handle_ack(parsed[0], int(parsed[1][len(ACK_PREFIX):]))
        else:
            self.devices.handle(message)

    def _login_refused(self, address: str) -> None:
        self.refused_total += 1
        self.refused_logins[address] = self.refused_logins.get(address, 0) + 1

    def _audit_refused_logins(self) -> None:
        """One audit line per address and status interval, however many were refused."""
        refused, self.refused_logins = self.refused_logins, {}
        for address, count in refused.items():
            self.store.audit(f"mqtt:{address}", "mqtt.login_refused", "refused",
                             detail=f"{count} login(s) refused by the broker: unknown, wrong, "
                                    "expired or already used credential")
            log.warning("broker refused %d login(s) from %s", count, address)

    async def _connected(self) -> None:
        self.rotator.gateway_connected()
        with contextlib.suppress(Exception):
            await self.session.publish(STATUS_TOPIC, b"online", qos=1, retain=True)
        if not self.homeassistant.external:
            await self.homeassistant.connected()

    def _broker_login(self, address: str, username: str) -> None:
        self.firewall.device_login(address, username)
        if self.ha_login is not None:
            self._spawn(self.ha_login.seen(username, address))

    def _spawn(self, work: Any) -> None:
        """Run `work` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def homeassistant_status(self) -> dict[str, Any]:
        status = self.homeassistant.status()
        if self.ha_login is not None:
            status["login"] = self.ha_login.status()
        return status

    def _renew_certificates(self) -> None:
        """The TLS listeners' certificates are short-lived: renewed before they end."""
        try:
            self.web.renew()
            if self.broker is not None:
                self.broker.renew()
        except Exception:
            log.exception("renewing a TLS certificate failed (tried again shortly)")

    def _broker_restarted(self, count: int, reason: str) -> None:
        self.devices.connected = set()  # the old broker's sessions all ended with it
        self.store.audit("system", "broker.restart", "ok", detail=f"{reason}; restart {count}")

    async def _status_loop(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self.accounts.expire_sessions()
            self._audit_refused_logins()
            self._renew_certificates()
            if self.ha_login is not None and self.ha_login.due(
                    time.time(), self.config.credentials.rotation_days):
                try:
                    await self.ha_login.rotate("system")
                except Exception:
                    log.exception("homeassistant: could not rotate its login")
            line = self.status_line()
            if line != last:
                self.notifier.status(line)
                last = line

    # -- control operations ------------------------------------------------------------

    async def _op_status(self, args: dict[str, Any]) -> Any:
        return self.status()

    async def _op_device_add(self, args: dict[str, Any]) -> Any:
        try:
            device = await self.devices.add(str(args["id"]), str(args["kind"]),
                                            name=args.get("name"), source="cli",
                                            mac=args.get("mac"), ip=args.get("ip"))
            username, secret = await self.devices.issue_credential(device.id)
        except (KeyError, DeviceError) as exc:
            raise ControlError(str(exc)) from None
        return {"id": device.id, "username": username, "password": secret}

    async def _op_device_remove(self, args: dict[str, Any]) -> Any:
        try:
            await self.devices.remove(str(args["id"]))
        except (KeyError, DeviceError) as exc:
            raise ControlError(str(exc)) from None
        return {"id": args["id"]}

    async def _op_device_credential(self, args: dict[str, Any]) -> Any:
        try:
            username, secret = await self.devices.issue_credential(str(args["id"]))
        except (KeyError, DeviceError) as exc:
            raise ControlError(str(exc)) from None
        return {"id": args["id"], "username": username, "password": secret}

    async def _op_device_command(self, args: dict[str, Any]) -> Any:
        try:
            return await self.cloud.command(
                str(args["id"]), str(args["action"]), args.get("params") or {},
                source="admin", actor="admin")
        except CommandRejected as exc:
            raise ControlError(str(exc)) from None


    async def _op_device_enroll(self, args: dict[str, Any]) -> Any:
        minutes = args.get("minutes")
        try:
            ticket = await self.enrollments.create(
                "admin", name=args.get("name"), device_id=args.get("id"),
                ttl_s=float(minutes) * 60 if minutes else None)
        except EnrollmentError as exc:
            raise ControlError(str(exc)) from None
        return self.enrollment_info(ticket.id, ticket.token, ticket.expires_at)

    async def _op_device_rotate(self, args: dict[str, Any]) -> Any:
        if args.get("all"):
            return {"started": await self.rotator.rotate_all("admin")}
        device_id = str(args.get("id"))
        if self.devices.device(device_id) is None:
            raise ControlError(f"no device {device_id!r}")
        try:
            await self.rotator.rotate_now(device_id, "admin")
        except RotationRefused as exc:
            raise ControlError(str(exc)) from None
        return {"started": [device_id]}

    async def _op_device_policy(self, args: dict[str, Any]) -> Any:
        profile = args.get("profile")
        try:
            return await self.firewall.set_policy(str(args.get("id")), str(args.get("policy")),
                                                  str(profile) if profile else None, "admin")
        except PolicyError as exc:
            raise ControlError(str(exc)) from None

    async def _op_firewall_status(self, args: dict[str, Any]) -> Any:
        return self.firewall.status()

    async def _op_cloud_status(self, args: dict[str, Any]) -> Any:
        return self.cloud.status()

    async def _op_privacy_status(self, args: dict[str, Any]) -> Any:
        return self.privacy.status()

    async def _op_privacy_consent(self, args: dict[str, Any]) -> Any:
        try:
            purged = self.privacy.set_consent(str(args.get("category")),
                                              args.get("granted") is True, "cli")
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return {"purged": purged}

    async def _op_privacy_delete(self, args: dict[str, Any]) -> Any:
        return {"purged": self.privacy.delete_queued("cli")}

    async def _op_privacy_preview(self, args: dict[str, Any]) -> Any:
        ids, body, send_after = self.privacy.next_export()
        return {"reports": len(ids), "send_after": send_after, "sink": self.privacy.describe_sink(),
                "body": body.decode()}

    def enrollment_info(self, token_id: str, token: str, expires_at: float) -> dict[str, Any]:
        """What a device needs to enroll: the token, where the broker is, the CA to pin."""
        listeners = self.config.broker.listeners
        # Devices cannot reach a loopback listener; name it only when there is no other.
        reachable = [x for x in listeners if not ipaddress.ip_address(x.address).is_loopback]
        return {"id": token_id, "token": token, "expires_at": expires_at,
                "brokers": [{"host": x.address, "port": x.port, "tls": x.tls}
                            for x in reachable or listeners],
                "ca_file": str(self.pki.ca_cert), "ca_sha256": ca_fingerprint(self.pki)}

    async def _op_homeassistant_status(self, args: dict[str, Any]) -> Any:
        return self.homeassistant_connection(reveal=bool(args.get("reveal")))

    def homeassistant_connection(self, reveal: bool = False) -> dict[str, Any]:
        """What Home Assistant's MQTT integration needs, with the bridge's status. The
        password only when `reveal`: it is shown to an admin who asks, never logged."""
        status = self.homeassistant_status()
        ha = self.config.homeassistant
        brokers: list[dict[str, Any]] = []
        if self.ha_login is not None:
            iot = self.config.network.iot_subnets
            listeners = self.config.broker.listeners
            # Home Assistant connects from the LAN side; a loopback listener serves one on
            # this machine. Never a listener on the devices' segment.
            lan = [x for x in listeners if not any(
                ipaddress.ip_address(x.address) in ipaddress.ip_network(n) for n in iot)]
            brokers = [{"host": x.address, "port": x.port, "tls": x.tls} for x in lan]
            login = self.ha_login.current
            status["username"] = login["username"]
            if reveal:
                status["password"] = login["password"]
            status["ca_file"] = str(self.pki.ca_cert)
            status["ca_sha256"] = ca_fingerprint(self.pki) if self.pki.ca_cert.exists() else None
        elif ha.broker == "external" and ha.external is not None:
            brokers = [{"host": ha.external.host, "port": ha.external.port,
                        "tls": ha.external.tls}]
        status["brokers"] = brokers
        return status

    async def _op_homeassistant_rotate(self, args: dict[str, Any]) -> Any:
        if self.ha_login is None:
            raise ControlError("Home Assistant has no login on this gateway's broker")
        return {"username": await self.ha_login.rotate(str(args.get("actor") or "admin"))}

    async def _op_discovery_list(self, args: dict[str, Any]) -> Any:
        return {"discovered": self.discovery.listing(), "status": self.discovery.status()}

    async def _op_discovery_adopt(self, args: dict[str, Any]) -> Any:
        try:
            device, username, secret = await self.discovery.adopt(
                str(args.get("key")), str(args.get("id")), str(args.get("kind")),
                args.get("name"), "admin")
        except DeviceError as exc:
            raise ControlError(str(exc)) from None
        return {"id": device.id, "username": username, "password": secret}

    async def _op_discovery_ignore(self, args: dict[str, Any]) -> Any:
        try:
            self.discovery.ignore(str(args.get("key")), "admin", args.get("ignored", True) is True)
        except DeviceError as exc:
            raise ControlError(str(exc)) from None
        return {"key": args.get("key")}

    async def _op_setup_code(self, args: dict[str, Any]) -> Any:
        if not self.web.urls:
            raise ControlError("the admin page is off: set web.listen in the config")
        try:
            return self.issue_setup_code()
        except AuthError as exc:
            raise ControlError(exc.message) from None


def run_daemon(config: Config, config_path: Path | None,
               ready: Callable[[Daemon], None] | None = None) -> int:
    """Run until stopped; 0 on a clean stop, 1 when start-up failed."""
    async def main() -> int:
        daemon = Daemon(config, config_path=config_path)
        try:
            await daemon.run()
        except StartupError as exc:
            log.error("cannot start: %s", exc)
            return 1
        return 0
    return asyncio.run(main())
