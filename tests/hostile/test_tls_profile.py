"""The TLS listeners (the broker's and the admin page's) against Mozilla's "intermediate"
profile, probed with Python's own TLS client as a scanner would: what they refuse (TLS 1.1,
CBC suites, the P-521 and X448 groups), what they accept, a short-lived ECDSA leaf, and its
renewal while running (no broker restart: sessions stay, and logins still work)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.credentials.pki import SERVER_DAYS, validity
from gateway.mqtt import Endpoint, make_client
from gateway.sim.lab import Lab, free_port
from tests.web.kit import web_lab

pytestmark = pytest.mark.integration


def _client(max_version: ssl.TLSVersion | None = None, ciphers: str | None = None
            ) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        with warnings.catch_warnings():  # offering TLS 1.1 on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = max_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def _group_accepted(port: int, group: str) -> bool:
    """A handshake offering only `group` (OpenSSL's client: Python's cannot offer X25519 or
    X448 alone before 3.13)."""
    done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-groups",
                           group, "-brief"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=10, check=False)
    # The handshake's own verdict: the exit status also counts how the connection ended,
    # which differs between OpenSSL releases.
    return "CONNECTION ESTABLISHED" in done.stdout + done.stderr


async def _handshake(port: int, context: ssl.SSLContext) -> tuple[str, str, x509.Certificate]:
    """(TLS version, cipher, leaf) of a completed handshake; ssl.SSLError if refused."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"), 5)
    try:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        return tls.version(), tls.cipher()[0], x509.load_der_x509_certificate(der)
    finally:
        writer.close()


async def _refused(port: int, context: ssl.SSLContext) -> str:
    with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
        await _handshake(port, context)
    assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)  # our client did offer it
    return str(refused.value)


async def _check_profile(port: int, groups: tuple[str, ...]) -> None:
    """`groups`: those of the profile (X25519, P-256, P-384) this listener offers."""
    version, _, leaf = await _handshake(port, _client())
    assert version == "TLSv1.3"
    _, cipher, _ = await _handshake(port, _client(ssl.TLSVersion.TLSv1_2))
    assert "GCM" in cipher or "CHACHA20" in cipher, cipher
    for group in groups:
        assert await asyncio.to_thread(_group_accepted, port, group), group
    # Refused: TLS 1.1 (offered at security level 0), CBC suites, groups outside the profile.
    await _refused(port, _client(ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0"))
    await _refused(port, _client(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:"
                                                         "ECDHE-ECDSA-AES256-SHA384"))
    for group in ("P-521", "X448"):
        assert not await asyncio.to_thread(_group_accepted, port, group), group
    # A short-lived ECDSA P-256 leaf (Mozilla: 366 days at most).
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    start, end = validity(leaf)
    assert end - start <= datetime.timedelta(days=SERVER_DAYS, minutes=10)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[tuple[Lab, int]]:
    tls_port = free_port()
    async with web_lab(tmp_path / "state", extra='tls = "always"\n'
                       f'\n[[broker.listeners]]\naddress = "127.0.0.1"\nport = {tls_port}\n'
                       'tls = true\n') as lab:
        await lab.add_devices([("tls-plug-1", "plug")], interval_s=0.5)
        yield lab, tls_port


def _web_port(lab: Lab) -> int:
    return int(lab.daemon.web.urls[0].rstrip("/").rsplit(":", 1)[1])


async def test_the_broker_and_the_admin_page_follow_mozillas_intermediate_profile(
        lab: tuple[Lab, int]) -> None:
    gateway, broker_port = lab
    await _check_profile(broker_port, ("X25519", "P-256", "P-384"))
    await _check_profile(_web_port(gateway), ("P-256",))  # Python's server: one group


async def test_certificates_are_renewed_while_running(lab: tuple[Lab, int]) -> None:
    gateway, broker_port = lab
    daemon = gateway.daemon
    assert daemon.broker is not None
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=SERVER_DAYS - 20)
    assert not daemon.web.renew() and not daemon.broker.renew()  # not due yet
    before = {port: (await _handshake(port, _client()))[2].serial_number
              for port in (broker_port, _web_port(gateway))}
    pid, restarts = daemon.broker.pid, daemon.broker.restarts
    seen = daemon.devices.last_seen("tls-plug-1")
    assert daemon.web.renew(soon) and daemon.broker.renew(soon)
    await asyncio.sleep(1)  # Mosquitto reads its certificate again on SIGHUP
    for port, serial in before.items():
        assert (await _handshake(port, _client()))[2].serial_number != serial, port
    assert (daemon.broker.pid, daemon.broker.restarts) == (pid, restarts)  # no restart
    # The plug's session went on, and a device still logs in over TLS.
    await asyncio.sleep(1.5)
    assert (daemon.devices.last_seen("tls-plug-1") or 0) > (seen or 0)
    await daemon.devices.add("tls-door-1", "door", source="sim", actor="test")
    username, secret = await daemon.devices.issue_credential("tls-door-1", "test")
    tls = daemon.pki.ssl_context()
    async with make_client(Endpoint("127.0.0.1", broker_port, username, secret, tls),
                           "tls-door-1") as client:
        await client.publish("devices/tls-door-1/telemetry", b'{"open": true}', qos=1)
