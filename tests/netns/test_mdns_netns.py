"""The mDNS edge for real: the gateway's zeroconf in one namespace, between two segments.

    lan: 10.97.0.20 --- lan0 10.97.0.2 [gw] iot0 10.98.0.1 --- 10.98.0.11 :iot
         (an admin host)      (gateway: serve)                  (a device)

The gateway side runs `python -m gateway.discovery.mdns serve` in gw: `_home-gateway._tcp`
announced on its LAN address, `_secure-mqtt._tcp` and `_mqtt._tcp` on its IoT address, the
IoT segment browsed. It prints JSON lines (found, lost, status). lan and iot each route the
other segment through gw, so a host on one side can also send a unicast query straight to
the gateway's address on the other side (the weak host model delivers it).

The hard requirement under test: nothing is advertised on a segment not configured for it,
whatever the query (multicast QM, QU asking for a unicast answer, legacy unicast from a port
other than 5353, to the multicast group or to either of the gateway's addresses).

Every namespace name starts with a random `hg-xxxxxx-` prefix; teardown kills the processes
the module started (by PID) and deletes its namespaces, also after a failure. Needs root:
skipped without it, failed when CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.discovery.dhcp import Lease, LeaseWatcher
from gateway.discovery.mdns import (
    Advert,
    MdnsService,
    Segment,
    decode_txt,
    found_from_info,
    server_name,
)
from tests.integration.daemon_proc import REPO
from tests.needs import unavailable
from tests.netns.conftest import require_root
from tests.polling import eventually

pytestmark = pytest.mark.netns

GW_LAN, LAN_HOST = "10.97.0.2", "10.97.0.20"
GW_IOT, DEVICE = "10.98.0.1", "10.98.0.11"
HOST_NAME = "pi"
ADMIN_PORT, MQTT_PORT, MQTTS_PORT = 8080, 1883, 8883
ADMIN_TYPE = "_home-gateway._tcp.local."
MQTT_TYPE, MQTTS_TYPE = "_mqtt._tcp.local.", "_secure-mqtt._tcp.local."
SHELLY_TYPE = "_shelly._tcp.local."
IOT_SERVER = f"{HOST_NAME}-hg-iot0.local."  # the gateway's host name on the IoT side
LAN_SERVER = f"{HOST_NAME}-hg-lan0.local."
TIMEOUT = 15.0

ADVERTS = [
    {"address": GW_LAN, "type": ADMIN_TYPE, "name": f"Home Gateway ({HOST_NAME})",
     "port": ADMIN_PORT, "txt": {"path": "/", "version": "1"}},
    {"address": GW_IOT, "type": MQTTS_TYPE, "name": f"Home Gateway broker ({HOST_NAME})",
     "port": MQTTS_PORT, "txt": {"tls": "1"}},
    {"address": GW_IOT, "type": MQTT_TYPE, "name": f"Home Gateway broker ({HOST_NAME})",
     "port": MQTT_PORT, "txt": {}},
]

# A raw mDNS client (standard library only): sends the questions as QU from port 5353 to the
# group, and as legacy unicast queries (from an ephemeral port) to the group and to each
# target address; prints every record of every answer it hears within the wait.
PROBE = r"""
import json, select, socket, struct, sys, time
local, targets, questions = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
wait = float(sys.argv[4])
GROUP = "224.0.0.251"
TYPES = {1: "A", 12: "PTR", 16: "TXT", 28: "AAAA", 33: "SRV", 47: "NSEC"}

def encode(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"

def query(qu, ident):
    body = b"".join(encode(n) + struct.pack("!HH", {"PTR": 12, "A": 1, "ANY": 255}[t],
                                            1 | (0x8000 if qu else 0)) for n, t in questions)
    return struct.pack("!HHHHHH", ident, 0, len(questions), 0, 0, 0) + body

def name_at(data, i):
    labels, end, jumps = [], None, 0
    while True:
        n = data[i]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = i + 2
            i = ((n & 0x3F) << 8) | data[i + 1]
            jumps += 1
            if jumps > 50:
                raise ValueError("loop")
            continue
        if n == 0:
            return ".".join(labels) + ".", (end if end is not None else i + 1)
        labels.append(data[i + 1:i + 1 + n].decode(errors="replace"))
        i += 1 + n

def parse(data):
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    i, records = 12, []
    for _ in range(qd):
        _, i = name_at(data, i)
        i += 4
    for _ in range(an + ns + ar):
        name, i = name_at(data, i)
        rtype, rclass, ttl, length = struct.unpack("!HHIH", data[i:i + 10])
        i += 10
        rdata = data[i:i + length]
        if rtype == 12:
            value = name_at(data, i)[0]
        elif rtype == 1:
            value = socket.inet_ntoa(rdata)
        elif rtype == 33:
            value = "%d %s" % (struct.unpack("!H", rdata[4:6])[0], name_at(data, i + 6)[0])
        else:
            value = rdata.hex()
        records.append({"name": name, "type": TYPES.get(rtype, str(rtype)), "data": value,
                        "ttl": ttl})
        i += length
    return {"id": ident, "response": bool(flags & 0x8000), "records": records}

mcast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
mcast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
mcast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
mcast.bind(("0.0.0.0", 5353))
mcast.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton(GROUP) + socket.inet_aton(local))
mcast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
legacy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
legacy.bind((local, 0))
legacy.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))

sent = []
for round_ in range(2):  # twice: the second QU finds the answers recently multicast
    mcast.sendto(query(True, 0), (GROUP, 5353)); sent.append("qu->group")
    legacy.sendto(query(False, 0x4200 + round_), (GROUP, 5353)); sent.append("legacy->group")
    for target in targets:
        legacy.sendto(query(False, 0x4300 + round_), (target, 5353))
        sent.append("legacy->" + target)
        mcast.sendto(query(True, 0), (target, 5353)); sent.append("qu->" + target)
    time.sleep(0.4)

heard = []
deadline = time.monotonic() + wait
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        break
    ready, _, _ = select.select([mcast, legacy], [], [], left)
    for s in ready:
        data, peer = s.recvfrom(9000)
        try:
            msg = parse(data)
        except Exception as e:
            msg = {"error": repr(e), "records": []}
        if msg.get("response"):
            heard.append({"from": peer[0], "to": "legacy" if s is legacy else "5353", **msg})
print(json.dumps({"sent": sent, "heard": heard}))
"""


def run(*cmd: str, input: str | None = None, timeout: float = TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return done


@dataclass
class Proc:
    """A process in a namespace whose stdout is JSON lines, collected by a thread."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def collect(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.lines.append(event)

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.lines if e.get("event") == kind]

    def wait_for(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if self.popen.poll() is not None and not probe():
                pytest.fail(f"{self.name} exited ({self.popen.returncode}) before {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()


@dataclass
class Topo:
    prefix: str
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def ip(self, role: str, *args: str) -> None:
        run("ip", "-n", self.ns(role), *args)

    def mdns(self, role: str, name: str, *args: str, code: str | None = None) -> Proc:
        """`python -m gateway.discovery.mdns -v ARGS` (or `-c CODE -v ARGS`) in `role`, its
        output collected; its log goes to NAME.err in the work dir."""
        errors = (self.workdir / f"{name}.err").open("w")
        how = ["-c", code] if code else ["-m", "gateway.discovery.mdns"]
        popen = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), sys.executable, "-u", *how, "-v", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        errors.close()
        proc = Proc(name, popen)
        self.procs.append(proc)  # before waiting: teardown must find it
        threading.Thread(target=proc.collect, daemon=True).start()
        return proc

    def ready(self, proc: Proc) -> dict[str, Any]:
        event = proc.wait_for(lambda: proc.events("ready"), TIMEOUT, f"{proc.name} ready")
        return dict(event[0])

    def stop(self, proc: Proc) -> None:
        proc.close_stdin()
        try:
            proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout=5)

    def browse(self, role: str, address: str, types: list[str],
               timeout: float = 3.0) -> list[dict[str, Any]]:
        args = [a for t in types for a in ("--type", t)]
        done = run("ip", "netns", "exec", self.ns(role), sys.executable, "-m",
                   "gateway.discovery.mdns", "browse", address, *args, "--timeout", str(timeout),
                   timeout=timeout + 15)
        found: list[dict[str, Any]] = json.loads(done.stdout.splitlines()[-1])["found"]
        return found

    def probe(self, role: str, local: str, targets: list[str],
              questions: list[tuple[str, str]], wait: float = 2.5) -> dict[str, Any]:
        done = run("ip", "netns", "exec", self.ns(role), sys.executable, "-c", PROBE, local,
                   json.dumps(targets), json.dumps(questions), str(wait), timeout=wait + 15)
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def close(self) -> None:
        popens: list[subprocess.Popen[Any]] = [p.popen for p in self.procs] + list(self.others)
        for popen in popens:
            if popen.poll() is None:
                popen.terminate()
        for popen in popens:
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=5)
        for proc in self.procs:
            for stream in (proc.popen.stdin, proc.popen.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                           check=False)
        self.namespaces.clear()


def build(topo: Topo) -> None:
    for role in ("lan", "gw", "iot"):
        run("ip", "netns", "add", topo.ns(role))
        topo.namespaces.append(topo.ns(role))  # recorded at once: teardown deletes it
        topo.ip(role, "link", "set", "lo", "up")
    run("ip", "link", "add", "lan0", "netns", topo.ns("gw"), "type", "veth",
        "peer", "name", "eth0", "netns", topo.ns("lan"))
    run("ip", "link", "add", "iot0", "netns", topo.ns("gw"), "type", "veth",
        "peer", "name", "eth0", "netns", topo.ns("iot"))
    for role, dev, address in (("gw", "lan0", GW_LAN), ("gw", "iot0", GW_IOT),
                               ("lan", "eth0", LAN_HOST), ("iot", "eth0", DEVICE)):
        topo.ip(role, "link", "set", dev, "multicast", "on", "up")
        topo.ip(role, "addr", "add", f"{address}/24", "dev", dev)
    for role in ("lan", "iot"):
        topo.ip(role, "route", "add", "224.0.0.0/4", "dev", "eth0")
    # Each side can reach the gateway's address on the other side (not the other hosts:
    # gw does not forward).
    topo.ip("lan", "route", "add", "10.98.0.0/24", "via", GW_LAN)
    topo.ip("iot", "route", "add", "10.97.0.0/24", "via", GW_IOT)


@dataclass
class Net:
    topo: Topo
    gateway: Proc
    device: Proc


@pytest.fixture(scope="module")
def mdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    require_root()
    topo = Topo(f"hg-{secrets.token_hex(3)}", tmp_path_factory.mktemp("mdns"))
    try:
        build(topo)
        device = topo.mdns("iot", "device", "announce", json.dumps(
            {"address": DEVICE, "type": SHELLY_TYPE, "name": "shellyplug-s-1", "port": 80,
             "txt": {"gen": "2", "App": "PlugS", "ver": "1.0.5", "id": "shellyplug-s-1"}}))
        advertise = [a for advert in ADVERTS for a in ("--advertise", json.dumps(advert))]
        gateway = topo.mdns("gw", "gateway", "serve", *advertise, "--browse", GW_IOT,
                            "--host-name", HOST_NAME)
        topo.ready(device)
        topo.ready(gateway)
        yield Net(topo, gateway, device)
    finally:
        topo.close()


def names(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in found}


def test_gateway_announces_each_advert_on_its_own_address(mdns: Net) -> None:
    status = mdns.topo.ready(mdns.gateway)["status"]
    lan, iot = status["addresses"][GW_LAN], status["addresses"][GW_IOT]
    assert lan["interface"] == "lan0" and iot["interface"] == "iot0"
    assert [(a["type"], a["announced"]) for a in lan["adverts"]] == [(ADMIN_TYPE, True)]
    assert sorted((a["type"], a["announced"]) for a in iot["adverts"]) == sorted([
        (MQTTS_TYPE, True), (MQTT_TYPE, True)])
    assert (lan["browsing"], iot["browsing"]) == (False, True)
    assert lan["errors"] == iot["errors"] == []


def test_gateway_reports_the_device(mdns: Net) -> None:
    name = f"shellyplug-s-1.{SHELLY_TYPE}"
    found = mdns.gateway.wait_for(
        lambda: [e for e in mdns.gateway.events("found") if e["name"] == name], TIMEOUT,
        "the gateway reporting the Shelly plug")[-1]
    assert found["type"] == SHELLY_TYPE
    assert found["addresses"] == [DEVICE]
    assert found["port"] == 80
    assert found["txt"] == {"gen": "2", "app": "PlugS", "ver": "1.0.5", "id": "shellyplug-s-1"}
    assert found["server"] == "shellyplug-s-1.local."
    # The gateway's own services on the browsed segment are not reported as found.
    assert not [e for e in mdns.gateway.events("found") if "Home Gateway" in e["name"]]


def test_device_finds_the_broker_and_not_the_admin_page(mdns: Net) -> None:
    found = names(mdns.topo.browse("iot", DEVICE, [MQTTS_TYPE, MQTT_TYPE, ADMIN_TYPE]))
    broker = found.get(f"Home Gateway broker ({HOST_NAME}).{MQTTS_TYPE}")
    assert broker is not None, found
    assert (broker["addresses"], broker["port"], broker["server"]) == (
        [GW_IOT], MQTTS_PORT, IOT_SERVER)
    assert broker["txt"] == {"tls": "1"}
    plain = found.get(f"Home Gateway broker ({HOST_NAME}).{MQTT_TYPE}")
    assert plain is not None and (plain["addresses"], plain["port"]) == ([GW_IOT], MQTT_PORT)
    assert not [f for f in found.values() if f["type"] == ADMIN_TYPE], found


def test_lan_finds_the_admin_page_and_not_the_broker(mdns: Net) -> None:
    found = names(mdns.topo.browse("lan", LAN_HOST, [ADMIN_TYPE, MQTTS_TYPE, MQTT_TYPE,
                                                    SHELLY_TYPE]))
    admin = found.get(f"Home Gateway ({HOST_NAME}).{ADMIN_TYPE}")
    assert admin is not None, found
    assert (admin["addresses"], admin["port"], admin["server"]) == (
        [GW_LAN], ADMIN_PORT, LAN_SERVER)
    assert admin["txt"] == {"path": "/", "version": "1"}
    assert list(found) == [admin["name"]], found


def leaked(heard: list[dict[str, Any]], words: tuple[str, ...]) -> list[dict[str, Any]]:
    return [r | {"from": h["from"], "to": h["to"]} for h in heard for r in h["records"]
            if any(w.lower() in (r["name"] + " " + r["data"]).lower() for w in words)]


QUESTIONS = [(ADMIN_TYPE, "PTR"), (MQTT_TYPE, "PTR"), (MQTTS_TYPE, "PTR"),
             ("_services._dns-sd._udp.local.", "PTR"), (IOT_SERVER, "A"), (LAN_SERVER, "A"),
             (IOT_SERVER, "ANY")]


def test_lan_queries_of_any_kind_get_no_iot_answer(mdns: Net) -> None:
    """QU to the group, legacy unicast to the group and to both gateway addresses."""
    before = status(mdns)
    result = mdns.topo.probe("lan", LAN_HOST, [GW_LAN, GW_IOT], QUESTIONS)
    heard = result["heard"]
    # Positive control: the same queries do get the LAN's answers, also by unicast.
    admin = leaked(heard, ("_home-gateway",))
    assert {(r["from"], r["to"]) for r in admin} >= {(GW_LAN, "legacy"), (GW_LAN, "5353")}, heard
    assert any(r["type"] == "A" and r["data"] == GW_LAN for h in heard for r in h["records"])
    # Nothing of the IoT side, whichever way it was asked.
    assert leaked(heard, ("mqtt", IOT_SERVER.rstrip("."), GW_IOT)) == []
    assert {h["from"] for h in heard} == {GW_LAN}
    # The IoT instance did receive the LAN's unicast queries and dropped them.
    after = status(mdns)
    assert (after["addresses"][GW_IOT]["dropped_off_segment"]
            > before["addresses"][GW_IOT]["dropped_off_segment"])


def test_iot_queries_of_any_kind_get_no_lan_answer(mdns: Net) -> None:
    result = mdns.topo.probe("iot", DEVICE, [GW_IOT, GW_LAN], QUESTIONS)
    heard = result["heard"]
    broker = leaked(heard, ("_secure-mqtt",))
    assert {(r["from"], r["to"]) for r in broker} >= {(GW_IOT, "legacy"), (GW_IOT, "5353")}, heard
    assert leaked(heard, ("_home-gateway", "Home Gateway (", LAN_SERVER.rstrip("."),
                          GW_LAN)) == []
    assert {h["from"] for h in heard} <= {GW_IOT, DEVICE}


def status(mdns: Net) -> dict[str, Any]:
    count = len(mdns.gateway.events("status"))
    mdns.gateway.send("status")
    events = mdns.gateway.wait_for(lambda: mdns.gateway.events("status")[count:], TIMEOUT,
                                  "the gateway's status")
    result: dict[str, Any] = events[0]["status"]
    return result


def test_goodbye_reports_the_device_lost(mdns: Net) -> None:
    name = f"bulb-7.{SHELLY_TYPE}"
    bulb = mdns.topo.mdns("iot", "bulb", "announce", json.dumps(
        {"address": DEVICE, "type": SHELLY_TYPE, "name": "bulb-7", "port": 8081,
         "txt": {"gen": "1"}}))
    mdns.topo.ready(bulb)
    mdns.gateway.wait_for(lambda: [e for e in mdns.gateway.events("found") if e["name"] == name],
                         TIMEOUT, "the gateway reporting the bulb")
    assert not [e for e in mdns.gateway.events("lost") if e["name"] == name]
    started = time.monotonic()
    mdns.topo.stop(bulb)
    assert bulb.events("stopped")
    mdns.gateway.wait_for(lambda: [e for e in mdns.gateway.events("lost") if e["name"] == name],
                         TIMEOUT, "the gateway reporting the bulb lost")
    assert time.monotonic() - started < 10
    # The other device is still there.
    assert not [e for e in mdns.gateway.events("lost") if e["name"].startswith("shellyplug")]


# The same service with the guard switched off (every source "on the segment").
UNGUARDED = r"""
import sys
from gateway.discovery import mdns
mdns.Segment.allows = lambda self, source, scope_id=None: True
sys.exit(mdns.main(sys.argv[1:]))
"""


def test_control_zeroconf_alone_answers_across_segments(mdns: Net) -> None:
    """Why the guard exists, and that the probe sees a leak when there is one: zeroconf by
    itself (0.47 and 0.15x alike) answers the LAN's QU and legacy queries with a service
    announced only on the IoT address. Should this start failing, zeroconf itself stopped
    answering across interfaces; the guard then stays as a second line."""
    control = mdns.topo.mdns("gw", "unguarded", "serve", "--advertise", json.dumps(
        {"address": GW_IOT, "type": MQTT_TYPE, "name": "Unguarded broker", "port": 1884,
         "txt": {}}), "--host-name", "control", code=UNGUARDED)
    try:
        mdns.topo.ready(control)
        heard = mdns.topo.probe("lan", LAN_HOST, [GW_LAN, GW_IOT], [(MQTT_TYPE, "PTR")])["heard"]
        leaks = leaked(heard, ("Unguarded broker",))
        assert {r["to"] for r in leaks} == {"legacy", "5353"}, heard
        # The guarded gateway beside it still answers nothing of the IoT side.
        assert leaked(heard, ("Home Gateway broker",)) == []
    finally:
        mdns.topo.stop(control)


# --- dnsmasq's real lease file --------------------------------------------------------------


def require_tools(*tools: str) -> dict[str, str]:
    found = {t: shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin") for t in tools}
    missing = [t for t, where in found.items() if where is None]
    if missing:
        unavailable(f"needs {', '.join(missing)} (Debian: dnsmasq-base, udhcpc)")
    return {t: str(where) for t, where in found.items()}


async def test_dnsmasq_lease_file_reaches_the_watcher(mdns: Net) -> None:
    """dnsmasq serving DHCP on the gateway's IoT side, busybox udhcpc asking for a lease in
    iot: the LeaseWatcher reads dnsmasq's own lease file."""
    tools = require_tools("dnsmasq", "udhcpc")
    topo = mdns.topo
    work = topo.workdir / "dhcp"
    work.mkdir()
    leases = work / "dnsmasq.leases"
    script = work / "udhcpc.script"  # udhcpc must not touch the interface or resolv.conf
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    link = json.loads(run("ip", "-n", topo.ns("iot"), "-j", "link", "show", "eth0").stdout)
    mac = link[0]["address"]

    seen: list[list[Lease]] = []
    watcher = LeaseWatcher(leases, seen.append, interval_s=0.1)
    await watcher.start()
    log = (work / "dnsmasq.out").open("wb")
    dnsmasq = await asyncio.to_thread(
        subprocess.Popen,
        ["ip", "netns", "exec", topo.ns("gw"), tools["dnsmasq"], "--keep-in-foreground",
         "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--port=0", "--no-ping",
         "--interface=iot0", "--bind-interfaces", "--dhcp-authoritative",
         "--dhcp-range=10.98.0.100,10.98.0.150,255.255.255.0,1h",
         f"--dhcp-leasefile={leases}", f"--pid-file={work / 'dnsmasq.pid'}",
         "--user=root", "--group=root", f"--log-facility={work / 'dnsmasq.log'}"],
        stdout=log, stderr=subprocess.STDOUT)
    topo.others.append(dnsmasq)  # teardown kills it if this test does not get to
    log.close()
    try:
        await eventually(lambda: leases.exists() or dnsmasq.poll() is not None, TIMEOUT,
                         "dnsmasq creating its lease file")
        assert dnsmasq.poll() is None, (work / "dnsmasq.out").read_text()
        client = await asyncio.to_thread(
            run, "ip", "netns", "exec", topo.ns("iot"), tools["udhcpc"], "-f", "-q", "-n",
            "-i", "eth0", "-s", str(script), "-t", "5", "-T", "1", "-x", "hostname:plug-7",
            check=False)
        assert client.returncode == 0, client.stderr + (work / "dnsmasq.log").read_text()
        batch = await eventually(lambda: [b for b in seen if b], TIMEOUT,
                                 "the watcher reporting the lease")
        (lease,) = batch[-1]
        assert lease.mac == mac
        assert lease.hostname == "plug-7"
        assert lease.client_id == "01:" + mac  # udhcpc's default client id: type 1 + MAC
        assert 100 <= int(lease.ip.rsplit(".", 1)[1]) <= 150 and lease.ip.startswith("10.98.0.")
        assert time.time() + 3000 < lease.expires <= time.time() + 3601
        status = watcher.status()
        assert (status["present"], status["leases"], status["problems"]) == (True, 1, [])
    finally:
        await watcher.stop()
        dnsmasq.terminate()
        try:
            dnsmasq.wait(timeout=5)
        except subprocess.TimeoutExpired:
            dnsmasq.kill()
            dnsmasq.wait(timeout=5)


# --- the pure parts (no namespaces needed) ---------------------------------------------------


V4 = Segment("10.98.0.1", 4, "iot0", 7, (ipaddress.ip_network("10.98.0.0/24"),))
V6 = Segment("fd98::1", 6, "iot0", 7, (ipaddress.ip_network("fd98::/64"),))


def test_segment_allows_only_its_own_hosts() -> None:
    assert V4.allows("10.98.0.11") and V4.allows("10.98.0.1") and V4.allows("::ffff:10.98.0.9")
    for source in ("10.97.0.20", "10.98.1.1", "fd98::5", "fe80::1", "224.0.0.251", "junk", ""):
        assert not V4.allows(source), source
    assert V6.allows("fd98::11") and V6.allows("fe80::1", 7) and V6.allows("fe80::1%iot0", 7)
    for source, scope in (("fe80::1", 8), ("fe80::1", None), ("fd97::1", 7), ("10.98.0.11", 7)):
        assert not V6.allows(source, scope), source


def test_server_name_is_per_interface() -> None:
    assert server_name("Pi.home.arpa", V4) == "pi-hg-iot0.local."
    lan = Segment("10.97.0.2", 4, "eth0.10", 2, ())
    assert server_name("my_box!", lan) == "my-box-hg-eth0-10.local."
    assert server_name("", lan) == "gateway-hg-eth0-10.local."


def test_txt_from_the_network_is_capped_and_decoded() -> None:
    props: dict[Any, Any] = {b"Gen": b"2", b"gen": b"3", b"flag": None, b"bad": b"\xff\xfe",
                             b"ctl": b"a\x00b\x1bc", b"long": b"x" * 1000, b"": b"nokey"}
    props.update({f"k{i}".encode(): b"v" for i in range(100)})
    txt = decode_txt(props)
    assert txt["gen"] == "2"  # keys lower-cased, the first of duplicates wins
    assert txt["flag"] == ""
    assert txt["bad"] == "\ufffd\ufffd"
    assert txt["ctl"] == "a\ufffdb\ufffdc"
    assert txt["long"] == "x" * 255
    assert "" not in txt
    assert len(txt) == 40


def test_found_from_a_resolved_info() -> None:
    info = types.SimpleNamespace(
        name="plug\x07-1._shelly._tcp.local." + "x" * 300, type="_shelly._tcp.local.",
        server="plug-1.local.", port=80, properties={b"App": b"PlugS"},
        parsed_addresses=lambda: ["fd98::0011", "10.98.0.11", "not-an-ip", "10.98.0.11"])
    found = found_from_info(info)
    assert found.name.startswith("plug\ufffd-1._shelly._tcp.local.") and len(found.name) == 255
    assert found.addresses == ("10.98.0.11", "fd98::11")
    assert (found.port, dict(found.txt), found.server) == (80, {"app": "PlugS"}, "plug-1.local.")


async def test_a_bad_address_is_recorded_not_raised() -> None:
    advert = Advert(ADMIN_TYPE, "Home Gateway (test)", ADMIN_PORT, {})
    service = MdnsService([("192.0.2.1", advert)], ["not-an-address"], lambda found: None)
    await service.start()
    try:
        status = service.status()
        assert status["running"] and status["found"] == 0
        bad = status["addresses"]["192.0.2.1"]
        assert bad["adverts"] == [{"type": ADMIN_TYPE, "name": "Home Gateway (test)",
                                   "port": ADMIN_PORT, "announced": False, "error": None}]
        assert bad["errors"] and "192.0.2.1" in bad["errors"][0]
        assert status["addresses"]["not-an-address"]["errors"]
        assert status["addresses"]["not-an-address"]["browsing"] is False
    finally:
        await service.stop()
    assert service.status()["running"] is False
