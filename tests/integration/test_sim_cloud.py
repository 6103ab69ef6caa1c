"""The simulated cloud against its real Mosquitto: TLS, logins, ACLs, kill/restart, and
envelopes the gateway's own parser accepts."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import mqtt
from gateway.cloud.envelope import Limits, Rejected, Signer, load_public_key, parse, verify
from gateway.credentials.pki import Pki, ensure_ca
from gateway.mqtt import Backoff, Endpoint, Message, MqttSession
from gateway.sim.cloud import CloudSim

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# MQTT 3.1.1 CONNECT: clean session, keepalive 60, empty client id.
CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudSim]:
    sim = CloudSim(tmp_path / "cloud")
    try:
        await sim.start()
        yield sim
    finally:
        await sim.stop()


class Client:
    """A gateway-side client that records what it receives."""

    def __init__(self, endpoint: Endpoint, topics: list[str], client_id: str = "gw") -> None:
        self.messages: list[Message] = []
        self.session = MqttSession(endpoint, client_id=client_id,
                                   on_message=self.messages.append,
                                   subscriptions=[(t, 1) for t in topics],
                                   backoff=Backoff(initial=0.05, maximum=0.3))

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]


async def refused(endpoint: Endpoint) -> str:
    """Connect once; return the error, or fail if the broker let us in."""
    try:
        async with mqtt.make_client(endpoint, "probe"):
            pass
    except (mqtt.MqttError, OSError) as exc:
        return str(exc)
    pytest.fail(f"the cloud accepted {endpoint}")


def result(seq: int, command_id: str) -> bytes:
    return json.dumps({"mid": f"m-{seq}", "seq": seq, "id": command_id, "status": "ok",
                       "reason": None, "message": "done"}).encode()


async def test_config_files_and_login_as_the_gateway(cloud: CloudSim) -> None:
    config = tomllib.loads(cloud.config_toml())["cloud"]
    assert config["url"] == f"mqtts://127.0.0.1:{cloud.port}"
    assert config["username"] == "gw-home-1" and "cert_file" not in config
    assert os.stat(config["password_file"]).st_mode & 0o777 == 0o600
    assert os.stat(cloud.directory).st_mode & 0o777 == 0o700
    assert (cloud.directory / "cloud.toml").read_text() == cloud.config_toml()
    signer = tomllib.loads(cloud.config_toml())["cloud"]["signers"][0]
    assert signer == {"kid": "sim-cloud", "public_key": cloud.signer_public_key,
                      "devices": ["*"], "actions": ["*"]}

    # Exactly what the snippet says: host and port from the url, the pinned CA, the login.
    host, port = config["url"].removeprefix("mqtts://").rsplit(":", 1)
    endpoint = Endpoint(host, int(port), config["username"],
                        Path(config["password_file"]).read_text().strip(),
                        tls=ssl.create_default_context(cafile=config["ca_file"]))
    gw = Client(endpoint, ["gw/home-1/cmd", "gw/home-1/shadow/desired"])
    async with gw.session:
        await gw.session.wait_connected(5)
        command = cloud.command("plug-1", "set", {"on": True})
        await cloud.send(command)
        await cloud.send(cloud.desired("plug-1", {"on": False}))
        await cloud.wait_for(lambda: gw.on("gw/home-1/cmd") and gw.on(
            "gw/home-1/shadow/desired"), 5)
        assert json.loads(gw.on("gw/home-1/cmd")[0].payload) == command

        for seq in range(1, 21):
            await gw.session.publish("gw/home-1/cmd/result",
                                     result(seq, command["id"] if seq == 20 else f"c{seq}"), 1)
        await gw.session.publish("gw/home-1/shadow/reported", json.dumps(
            {"mid": "m-21", "seq": 21, "device": "plug-1", "state": {"on": True}}), 1)
        got = await cloud.wait_result(command["id"], 5)
        await cloud.wait_for(lambda: cloud.shadows.get("plug-1"), 5)
    assert got["status"] == "ok" and got["seq"] == 20
    assert [r.data["seq"] for r in cloud.uplink] == list(range(1, 22))
    assert cloud.duplicates() == []
    assert len(cloud.results) == 20
    assert cloud.shadows["plug-1"]["state"] == {"on": True}


async def test_the_gateway_stays_inside_its_topics(cloud: CloudSim) -> None:
    gw = Client(cloud.gateway_endpoint(), ["gw/home-1/cmd", "gw/other/cmd", "#"])
    async with gw.session:
        await gw.session.wait_connected(5)
        # Publishes outside gw/home-1/# are dropped; the later marker proves they came first.
        await gw.session.publish("gw/other/cmd/result", result(1, "x"), 1)
        await gw.session.publish("elsewhere", b"x", 1)
        await gw.session.publish("gw/home-1/telemetry", b'{"mid": "marker", "seq": 2}', 1)
        await cloud.wait_for(lambda: cloud.by_topic("telemetry"), 5)
        assert [r.topic for r in cloud.received] == ["gw/home-1/telemetry"]
        # Nor does it receive other gateways' commands, even subscribed to "#".
        await cloud.publish("gw/other/cmd", b"not for you")
        await cloud.send_raw("cmd", b"for you")
        await cloud.wait_for(lambda: gw.on("gw/home-1/cmd"), 5)
        await asyncio.sleep(0.2)
    assert [m.topic for m in gw.messages if not m.topic.startswith("gw/home-1/")] == []
    assert [m.payload for m in gw.on("gw/home-1/cmd")] == [b"for you"]


async def test_wrong_logins_and_wrong_tls_are_refused(cloud: CloudSim, tmp_path: Path) -> None:
    good = cloud.gateway_endpoint()
    await refused(Endpoint(good.host, good.port, good.username, "wrong", tls=good.tls))
    await refused(Endpoint(good.host, good.port, tls=good.tls))  # anonymous
    other = Pki(tmp_path / "other-ca")
    ensure_ca(other)
    for context in (other.ssl_context(), ssl.create_default_context()):
        reason = await refused(Endpoint(good.host, good.port, good.username, good.password,
                                        tls=context))
        assert "certificate verify failed" in reason
    # The certificate names 127.0.0.1 only: the same server under another name fails.
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await asyncio.open_connection("127.0.0.1", cloud.port, ssl=cloud.ssl_context(),
                                      server_hostname="127.0.0.2")
    _, writer = await asyncio.open_connection("127.0.0.1", cloud.port, ssl=cloud.ssl_context(),
                                              server_hostname="127.0.0.1")
    writer.close()
    await writer.wait_closed()


async def test_mutual_tls(tmp_path: Path) -> None:
    async with CloudSim(tmp_path / "cloud", mtls=True) as sim:
        config = tomllib.loads(sim.config_toml())["cloud"]
        assert "username" not in config and "password_file" not in config
        assert os.stat(config["key_file"]).st_mode & 0o777 == 0o600
        context = ssl.create_default_context(cafile=config["ca_file"])
        context.load_cert_chain(config["cert_file"], config["key_file"])
        gw = Client(Endpoint("127.0.0.1", sim.port, tls=context), ["gw/home-1/cmd"])
        async with gw.session:
            await gw.session.wait_connected(5)
            # The certificate's CN is the login, so the ACL holds: gw/other is dropped.
            await gw.session.publish("gw/other/telemetry", b'{"mid": "a", "seq": 1}', 1)
            await gw.session.publish("gw/home-1/telemetry", b'{"mid": "b", "seq": 2}', 1)
            envelope = sim.command("plug-1", "toggle")
            await sim.send(envelope)
            await sim.wait_for(lambda: gw.messages, 5)
            await gw.session.publish("gw/home-1/cmd/result", result(3, envelope["id"]), 1)
            assert (await sim.wait_result(envelope["id"], 5))["status"] == "ok"
        assert [r.data["mid"] for r in sim.uplink] == ["b", "m-3"]
        # Without a certificate: under TLS 1.3 the server's "certificate required" alert
        # comes after the client's handshake, and paho then waits out its 10 s connect
        # timeout; a raw CONNECT shows the refusal at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port,
                                                       ssl=sim.ssl_context(client=None))
        writer.write(CONNECT)
        try:
            answer = await asyncio.wait_for(reader.read(4), 5)
        except (ConnectionError, ssl.SSLError):
            answer = b""
        writer.close()
        assert answer == b"", "the cloud answered a client without a certificate"
        tls12 = sim.ssl_context(client=None)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2  # here the handshake itself fails
        await refused(Endpoint("127.0.0.1", sim.port, "gw-home-1", sim.gateway_password,
                               tls=tls12))


async def test_kill_and_restart(cloud: CloudSim) -> None:
    gw = Client(cloud.gateway_endpoint(), ["gw/home-1/cmd"])
    async with gw.session:
        await gw.session.wait_connected(5)
        pid = cloud.pid
        assert pid is not None
        await cloud.kill()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        await cloud.wait_for(lambda: not gw.session.connected, 5)
        assert not cloud.running
        await cloud.restart()
        assert cloud.running and cloud.pid != pid
        await cloud.wait_for(lambda: gw.session.connections == 2, 5)
        envelope = cloud.command("plug-1", "toggle")
        await cloud.send(envelope)
        await cloud.wait_for(lambda: gw.messages, 5)
        await gw.session.publish("gw/home-1/cmd/result", result(1, envelope["id"]), 1)
        assert (await cloud.wait_result(envelope["id"], 5))["id"] == envelope["id"]


async def test_envelopes_verify_with_the_gateways_parser(cloud: CloudSim) -> None:
    signers = {"sim-cloud": Signer("sim-cloud", load_public_key(cloud.signer_public_key))}
    now = time.time()

    def check(envelope: dict[str, object]) -> str:
        try:
            verify(parse(json.dumps(envelope)), signers=signers, now=now, limits=Limits(),
                   seen=lambda kid, id: False)
        except Rejected as exc:
            return exc.code
        return "ok"

    command = cloud.command("plug-1", "set", {"on": True}, id="c-1")
    assert check(command) == "ok" and command["id"] == "c-1"
    desired = cloud.desired("thermo-1", {"target_c": 21}, changed_at=now - 5)
    assert check(desired) == "ok"
    assert desired["params"] == {"state": {"target_c": 21}, "changed_at": now - 5}
    assert check(cloud.command("plug-1", "toggle", exp=now - 10)) == "expired"
    assert check(cloud.command("plug-1", "toggle", iat=now + 3600)) == "from-the-future"
    assert check(cloud.command("plug-1", "toggle", kid="other")) == "unknown-key"
    wrong = cloud.command("plug-1", "toggle", key=Ed25519PrivateKey.generate())
    assert check(wrong) == "bad-signature"

    # The key survives a restart of the simulator in the same directory.
    public = cloud.signer_public_key
    await cloud.stop()
    again = CloudSim(cloud.directory)
    again.prepare()
    assert again.signer_public_key == public


def test_cli_prints_the_snippet(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", "sim", "cloud", "--dir",
                           str(tmp_path / "d"), "--duration", "2", "--every", "0.5",
                           "--device", 'plug-1=set:{"on": true}'],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "[cloud]" in done.stdout and "[[cloud.signers]]" in done.stdout
    assert "sent " in done.stdout
    written = tomllib.loads((tmp_path / "d" / "cloud.toml").read_text())
    assert written["cloud"]["gateway_id"] == "home-1"
