"""`home-gateway sim cloud`: a simulated vendor cloud that is real.

A second Mosquitto with TLS from its own CA (never the gateway's), password or mutual-TLS
logins with an ACL that keeps the gateway inside `gw/<gateway-id>/#`, and an issuer: an
MQTT client that signs commands with a test Ed25519 key, sends them, and records every
message the gateway sends up, in arrival order. The demo, the integration and netns tests
and the benchmarks use it; `prefix` runs the broker elsewhere, e.g. inside a network
namespace with ("ip", "netns", "exec", "wan").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.aio import cancel_and_wait
from gateway.broker.process import (
    BrokerError,
    set_parent_death_signal,
    terminate,
    wait_accepting,
)
from gateway.cloud.envelope import SHADOW_DESIRED, public_key_text, sign
from gateway.cloud.shadows import CLOUD, merge_desired
from gateway.credentials.pki import Pki, ensure_ca, issue_server_cert
from gateway.credentials.secrets import hash_password, load_or_create_secret, write_private
from gateway.mqtt import Backoff, Endpoint, Message, MqttError, MqttSession, make_client
from gateway.sim.lab import free_port

log = logging.getLogger("gateway.sim.cloud")

T = TypeVar("T")

KID = "sim-cloud"
ISSUER = "cloud-issuer"
START_TIMEOUT_S = 10.0
COMMAND_LIFETIME_S = 300.0


@dataclass(frozen=True, slots=True)
class Received:
    """One message the issuer received. `data` is the parsed JSON (None if not JSON)."""

    topic: str
    gateway_id: str  # the <id> of gw/<id>/...
    leaf: str  # the rest, e.g. "cmd/result"
    payload: bytes
    data: Any
    retain: bool
    at: float  # time.monotonic() on arrival


def _die_with_parent() -> None:
    """Runs in the child before exec: the broker never outlives the test or CLI."""
    set_parent_death_signal(signal.SIGKILL)


def _common_name(path: Path) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def issue_client_cert(pki: Pki, cert_path: Path, key_path: Path, common_name: str,
                      days: int = 397) -> None:
    """A TLS client certificate for `common_name` (Mosquitto's use_identity_as_username
    makes the CN the login), signed by the CA."""
    ca_cert, ca_key = ensure_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def password_line(username: str, password: str) -> str:
    """A Mosquitto 2.0 password file line ($7$ = PBKDF2-SHA512), as mosquitto_passwd
    writes it, so no tool is needed."""
    hashed = hash_password(password)
    return f"{username}:$7${hashed.iterations}${hashed.salt}${hashed.hash}\n"


def _load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Kept across restarts: the gateway's config names its public key."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        assert isinstance(key, Ed25519PrivateKey)
        return key
    key = Ed25519PrivateKey.generate()
    write_private(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    return key


def _toml(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


class CloudSim:
    """The simulated cloud: its broker process and its issuer client. `async with` works."""

    def __init__(self, directory: Path, *, gateway_id: str = "home-1",
                 address: str = "127.0.0.1", port: int | None = None, mtls: bool = False,
                 prefix: Sequence[str] = (), executable: str = "/usr/sbin/mosquitto",
                 on_message: Callable[[Received], None] | None = None) -> None:
        self.directory = Path(directory)
        self.gateway_id = gateway_id
        self.address = address
        self.port = port or free_port()
        self.mtls = mtls
        self.prefix = tuple(prefix)
        self.executable = executable
        self.on_message = on_message
        self.pki = Pki(self.directory / "pki")
        self.kid = KID
        self.received: list[Received] = []
        self.shadows: dict[str, dict[str, Any]] = {}  # device -> latest shadow/reported
        # The cloud's own desired state per device (key -> value, ts, side), merged with
        # the gateway's by the rules of gateway.cloud.shadows.
        self.desired_state: dict[str, dict[str, dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: dict[str, dict[str, Any]] = {}
        self._key: Ed25519PrivateKey | None = None
        self._issuer_password = ""
        self._gateway_password = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=30)
        self._issuer: MqttSession | None = None
        self._waiters: set[asyncio.Event] = set()

    # -- files --------------------------------------------------------------------------

    @property
    def gateway_username(self) -> str:
        return f"gw-{self.gateway_id}"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_cert

    @property
    def password_file(self) -> Path:
        return self.directory / "gateway.password"

    @property
    def cert_file(self) -> Path:
        return self.directory / "gateway.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "gateway.key"

    @property
    def conf_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            raise RuntimeError("the cloud simulator has not been started")
        return self._key

    @property
    def signer_public_key(self) -> str:
        """The signing key as the gateway's config writes it."""
        return public_key_text(self.key.public_key())

    @property
    def gateway_password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"mqtts://{host}:{self.port}"

    def prepare(self) -> None:
        """Create (first time) or load every file, and render the broker's config."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        ensure_ca(self.pki)  # the sim's own CA, never a gateway's
        try:
            names, addresses = [], [str(ipaddress.ip_address(self.address))]
        except ValueError:
            names, addresses = [self.address], []
        # Cheap to re-issue and the CA stays: the address may differ from the last run.
        issue_server_cert(self.pki, self.directory / "server.crt",
                          self.directory / "server.key", names, addresses)
        self._key = _load_or_create_signing_key(self.directory / "signing.key")
        gateway_password = load_or_create_secret(self.password_file)
        self._issuer_password = load_or_create_secret(self.directory / "issuer.password")
        if self.mtls:  # the CN is the login; re-issue when the gateway id changed
            for cn, stem in ((self.gateway_username, "gateway"), (ISSUER, "issuer")):
                cert, key = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
                if _common_name(cert) != cn or not key.exists():
                    issue_client_cert(self.pki, cert, key, cn)
        self._gateway_password = gateway_password
        self._write_passwords(gateway=False)
        write_private(self.directory / "mosquitto.acl",
                      f"user {self.gateway_username}\ntopic readwrite gw/{self.gateway_id}/#\n\n"
                      f"user {ISSUER}\ntopic readwrite gw/#\n")
        write_private(self.conf_file, self.render_conf())
        (self.directory / "cloud.toml").write_text(self.config_toml())

    def _write_passwords(self, *, gateway: bool) -> None:
        """The broker's password file, with or without the gateway's login. A (re)started
        cloud lets the gateway in only once the issuer is subscribed, as a real cloud's
        back end always is: otherwise the backlog would reach a cloud that hears nothing."""
        lines = password_line(ISSUER, self._issuer_password)
        if gateway or self.mtls:  # with mutual TLS the certificate is the login
            lines += password_line(self.gateway_username, self._gateway_password)
        write_private(self.directory / "mosquitto.passwd", lines)

    async def _admit_gateway(self) -> None:
        """Add the gateway's login and make Mosquitto re-read its password file."""
        self._write_passwords(gateway=True)
        if self.mtls or self._proc is None or self._proc.returncode is not None:
            return
        os.kill(self._proc.pid, signal.SIGHUP)
        # The reload is asynchronous: done when the gateway's login works.
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                async with make_client(self.gateway_endpoint(), "cloud-sim-probe"):
                    return
            except MqttError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the cloud broker never accepted the gateway's login "
                                       "after reloading its passwords") from None
                await asyncio.sleep(0.05)

    def render_conf(self) -> str:
        d = self.directory
        lines = [
            "# Rendered by home-gateway sim cloud at every start.",
            "per_listener_settings false",
            "allow_anonymous false",
            "persistence false",
            # Mosquitto keeps 1,000 queued QoS 1 messages per subscriber by default and
            # drops the rest after acknowledging them; a cloud must not lose a burst. (Not
            # 0, "unlimited": with it, 2.0.11 disconnects a client whose publish the ACL
            # denies.)
            "max_queued_messages 1000000",
            "log_dest stderr",
            "connection_messages true",
            "set_tcp_nodelay true",
            f"password_file {d / 'mosquitto.passwd'}",
            f"acl_file {d / 'mosquitto.acl'}",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto would drop to the "mosquitto" user, which cannot read our
            # 0700 directory (see gateway/broker/render.py).
            lines.append("user root")
        lines += [
            f"listener {self.port} {self.address}",
            f"cafile {self.ca_file}",
            f"certfile {d / 'server.crt'}",
            f"keyfile {d / 'server.key'}",
            "tls_version tlsv1.2",
        ]
        if self.mtls:
            lines += ["require_certificate true", "use_identity_as_username true"]
        return "\n".join(lines) + "\n"

    def config_toml(self, extra: str = "") -> str:
        """The gateway's [cloud] section for this simulator; `extra` lines (such as
        "telemetry = true") go into the [cloud] table."""
        if self.mtls:
            login = (f"cert_file = {_toml(str(self.cert_file))}\n"
                     f"key_file = {_toml(str(self.key_file))}\n")
        else:
            login = (f"username = {_toml(self.gateway_username)}\n"
                     f"password_file = {_toml(str(self.password_file))}\n")
        return (
            "# The simulated cloud (home-gateway sim cloud); paste into gateway.toml.\n"
            "[cloud]\n"
            f"url = {_toml(self.url)}\n"
            f"gateway_id = {_toml(self.gateway_id)}\n"
            f"ca_file = {_toml(str(self.ca_file))}\n"
            f"{login}{extra}\n"
            "[[cloud.signers]]\n"
            f"kid = {_toml(self.kid)}\n"
            f"public_key = {_toml(self.signer_public_key)}\n"
            'devices = ["*"]\n'
            'actions = ["*"]\n'
        )

    # -- TLS and endpoints ----------------------------------------------------------------

    def ssl_context(self, client: str | None = "gateway") -> ssl.SSLContext:
        """A client context trusting only the sim's CA (host names checked); with mTLS it
        carries the client certificate of `client` ("gateway" or "issuer"; None: none)."""
        context = self.pki.ssl_context()
        if self.mtls and client is not None:
            context.load_cert_chain(self.directory / f"{client}.crt",
                                    self.directory / f"{client}.key")
        return context

    def gateway_endpoint(self, password: str | None = None) -> Endpoint:
        """How the gateway logs in (tests and benchmarks play the gateway with it)."""
        if self.mtls:
            return Endpoint(self.address, self.port, tls=self.ssl_context())
        return Endpoint(self.address, self.port, self.gateway_username,
                        password if password is not None else self.gateway_password,
                        tls=self.ssl_context())

    def _issuer_endpoint(self) -> Endpoint:
        if self.mtls:
            return Endpoint(self.address, self.port, tls=self.ssl_context("issuer"))
        return Endpoint(self.address, self.port, ISSUER, self._issuer_password,
                        tls=self.ssl_context("issuer"))

    # -- the broker process ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def log_tail(self) -> list[str]:
        return list(self._stderr_tail)

    async def start(self) -> None:
        self.prepare()
        await self._spawn()
        self._issuer = MqttSession(
            self._issuer_endpoint(), client_id=ISSUER, on_message=self._record,
            subscriptions=[("gw/+/#", 1)], backoff=Backoff(initial=0.05, maximum=0.5))
        self._issuer.start()
        try:
            await self._issuer.wait_connected(START_TIMEOUT_S)
        except TimeoutError:
            error = self._issuer.last_error
            await self.stop()
            raise RuntimeError(f"the cloud issuer could not connect: {error}") from None
        await self._admit_gateway()

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        issuer, self._issuer = self._issuer, None
        if issuer is not None:
            await issuer.stop()
        await self._terminate()

    async def __aenter__(self) -> CloudSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def kill(self) -> None:
        """SIGKILL the broker by its PID: the cloud dies without a word."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        await cancel_and_wait(self._stderr_task)

    async def restart(self) -> None:
        """Start the broker again on the same port; returns once the issuer is back."""
        before = self._issuer.connections if self._issuer else 0
        await self._terminate()
        self._write_passwords(gateway=False)
        await self._spawn()
        await self.wait_for(lambda: self._issuer is None or self._issuer.connections > before,
                            START_TIMEOUT_S)
        await self._admit_gateway()

    async def _spawn(self) -> None:
        self._stderr_tail.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *self.prefix, self.executable, "-c", str(self.conf_file),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
        self._stderr_task = asyncio.get_running_loop().create_task(
            self._read_stderr(self._proc), name="cloud-sim-stderr")
        try:
            await self._wait_accepting(self._proc)
        except BaseException:
            await self._terminate()
            raise
        log.info("cloud: mosquitto (pid %d) on %s", self._proc.pid, self.url)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("cloud mosquitto: %s", line)

    async def _wait_accepting(self, proc: asyncio.subprocess.Process) -> None:
        """Until a TLS handshake with the sim's CA succeeds (proves the TLS setup too)."""
        await wait_accepting(proc, self.address, self.port, "cloud mosquitto",
                             self._stderr_tail, ssl=self.ssl_context("issuer"))

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        await terminate(proc)
        await cancel_and_wait(self._stderr_task)
        self._stderr_task = None

    # -- what the cloud receives ----------------------------------------------------------

    def _record(self, message: Message) -> None:
        parts = message.topic.split("/", 2)
        gateway_id, leaf = (parts[1], parts[2]) if len(parts) == 3 else ("", message.topic)
        try:
            data = json.loads(message.payload)
        except ValueError:
            data = None
        item = Received(message.topic, gateway_id, leaf, message.payload, data,
                        message.retain, time.monotonic())
        self.received.append(item)
        if gateway_id == self.gateway_id and isinstance(data, dict):
            if leaf == "cmd/result" and isinstance(data.get("id"), str):
                self._results[data["id"]] = data
            elif leaf == "shadow/reported" and isinstance(data.get("device"), str):
                self.shadows[data["device"]] = data
                self._merge_gateway_desired(data["device"], data.get("desired") or {})
        if (gateway_id == self.gateway_id and leaf == "status" and message.payload == b"online"
                and self._issuer is not None):
            # The gateway is back: send it what we want, it merges by the same rules.
            task = asyncio.get_running_loop().create_task(self._resend_desired())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for waiter in self._waiters:
            waiter.set()
        if self.on_message is not None:
            self.on_message(item)

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        """The latest result per command id."""
        return dict(self._results)

    def by_topic(self, leaf: str) -> list[Received]:
        """Messages on gw/<gateway-id>/<leaf>, in arrival order."""
        return [r for r in self.received if r.gateway_id == self.gateway_id and r.leaf == leaf]

    @property
    def status(self) -> str | None:
        """The latest `status` payload ("online"/"offline"), None before any."""
        found = self.by_topic("status")
        return found[-1].payload.decode(errors="replace") if found else None

    @property
    def uplink(self) -> list[Received]:
        """Every gw->cloud message that carries a `mid`, in arrival order."""
        return [r for r in self.received if isinstance(r.data, dict) and "mid" in r.data]

    def duplicates(self) -> list[str]:
        """The mids that arrived more than once."""
        seen: set[str] = set()
        again: list[str] = []
        for r in self.uplink:
            mid = str(r.data["mid"])
            if mid in seen:
                again.append(mid)
            seen.add(mid)
        return again

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0) -> T:
        """Until predicate() is truthy (checked at each message and every 0.1 s); returns
        its value or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        event = asyncio.Event()
        self._waiters.add(event)
        try:
            while not (value := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the cloud simulator waited {timeout:g} s in vain")
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, 0.1))
            return value
        finally:
            self._waiters.discard(event)

    async def wait_result(self, command_id: str, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return await self.wait_for(lambda: self._results.get(command_id), timeout)
        except TimeoutError:
            raise TimeoutError(f"no result for command {command_id!r} within {timeout:g} s"
                               ) from None

    # -- the cloud's side of the shadows --------------------------------------------------

    def _merge_gateway_desired(self, device: str, desired: dict[str, Any]) -> None:
        mine = self.desired_state.get(device, {})
        for key, entry in desired.items():
            mine, _ = merge_desired(mine, {key: entry["value"]}, float(entry["ts"]),
                                    str(entry["side"]))
        self.desired_state[device] = mine

    async def set_desired(self, device: str, state: dict[str, Any],
                          changed_at: float | None = None) -> None:
        """What the cloud's user wants now: kept here, sent when the gateway is online."""
        changed_at = time.time() if changed_at is None else changed_at
        self.desired_state[device], _ = merge_desired(self.desired_state.get(device, {}),
                                                      state, changed_at, CLOUD)
        if self.status == "online" and self._issuer is not None and self._issuer.connected:
            with contextlib.suppress(Exception):
                await self.send(self.desired(device, state, changed_at))

    async def _resend_desired(self) -> None:
        for device, entries in list(self.desired_state.items()):
            for key, entry in entries.items():
                if entry["side"] == CLOUD:
                    with contextlib.suppress(Exception):
                        await self.send(self.desired(device, {key: entry["value"]},
                                                     float(entry["ts"])))

    def desired_values(self, device: str) -> dict[str, Any]:
        return {k: e["value"] for k, e in self.desired_state.get(device, {}).items()}

    # -- what the cloud sends -------------------------------------------------------------

    def command(self, device: str, action: str, params: dict[str, Any] | None = None, *,
                id: str | None = None, iat: float | None = None, exp: float | None = None,
                kid: str | None = None, key: Ed25519PrivateKey | None = None
                ) -> dict[str, Any]:
        """A signed envelope; the keywords make expired, future or wrongly signed ones."""
        iat = time.time() if iat is None else iat
        return sign(key or self.key, kid or self.kid, id=id or secrets.token_hex(8),
                    device=device, action=action, params=params or {}, iat=iat,
                    exp=iat + COMMAND_LIFETIME_S if exp is None else exp)

    def desired(self, device: str, state: dict[str, Any], changed_at: float | None = None,
                **overrides: Any) -> dict[str, Any]:
        """A signed desired-shadow envelope (`overrides` as for command())."""
        params = {"state": state, "changed_at": time.time() if changed_at is None
                  else changed_at}
        return self.command(device, SHADOW_DESIRED, params, **overrides)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                      retain: bool = False) -> None:
        """Publish as the issuer (waits up to 10 s for its connection)."""
        if self._issuer is None:
            raise RuntimeError("the cloud simulator is not running")
        await self._issuer.wait_connected(START_TIMEOUT_S)
        await self._issuer.publish(topic, payload, qos, retain)

    async def send(self, envelope: dict[str, Any]) -> None:
        leaf = "shadow/desired" if envelope.get("action") == SHADOW_DESIRED else "cmd"
        await self.send_raw(leaf, json.dumps(envelope, separators=(",", ":")).encode())

    async def send_raw(self, topic_leaf: str, payload: bytes) -> None:
        await self.publish(f"gw/{self.gateway_id}/{topic_leaf}", payload)

    async def request(self, device: str, action: str, params: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> dict[str, Any]:
        envelope = self.command(device, action, params)
        await self.send(envelope)
        return await self.wait_result(envelope["id"], timeout)


# -- the command line ----------------------------------------------------------------------

def parse_device_command(text: str) -> tuple[str, str, dict[str, Any]]:
    """ID=ACTION[:JSONPARAMS] -> (device, action, params); ValueError if malformed."""
    device, sep, rest = text.partition("=")
    action, _, raw = rest.partition(":")
    if not sep or not device or not action:
        raise ValueError(f"{text!r}: expected ID=ACTION[:JSONPARAMS]")
    try:
        params = json.loads(raw) if raw else {}
    except ValueError:
        raise ValueError(f"{text!r}: the params are not JSON") from None
    if not isinstance(params, dict):
        raise ValueError(f"{text!r}: the params must be a JSON object")
    return device, action, params


async def run(sim: CloudSim, commands: Sequence[tuple[str, str, dict[str, Any]]],
              every: float, duration: float | None) -> int:
    def show(item: Received) -> None:
        if item.leaf in ("cmd/result", "status"):
            print(f"{item.leaf}: {item.payload.decode(errors='replace')}", flush=True)

    sim.on_message = show
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = None if duration is None else time.monotonic() + duration
    async with sim:
        print(sim.config_toml(), flush=True)
        print(f"# written to {sim.directory / 'cloud.toml'}; broker pid {sim.pid}", flush=True)
        turn = 0
        while not stop.is_set():
            wait = every if deadline is None else min(every, deadline - time.monotonic())
            if wait <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if commands and not stop.is_set() and (deadline is None
                                                   or time.monotonic() < deadline):
                device, action, params = commands[turn % len(commands)]
                envelope = sim.command(device, action, params)
                await sim.send(envelope)
                print(f"sent {envelope['id']}: {device} {action} {json.dumps(params)}",
                      flush=True)
                turn += 1
    return 0


def main(args: argparse.Namespace) -> int:
    """`home-gateway sim cloud` (the parser is in gateway.cli)."""
    try:
        commands = [parse_device_command(text) for text in args.device or ()]
    except ValueError as exc:
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 2
    directory = Path(args.dir) if args.dir else Path(
        tempfile.mkdtemp(prefix="sim-cloud-", dir="/tmp"))
    print(f"# cloud simulator files: {directory}", flush=True)
    sim = CloudSim(directory, gateway_id=args.gateway_id, address=args.address,
                   port=args.port, mtls=args.mtls)
    try:
        return asyncio.run(run(sim, commands, args.every, args.duration))
    except (RuntimeError, BrokerError) as exc:
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 1

