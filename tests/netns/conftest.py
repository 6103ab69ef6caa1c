"""A small home network in network namespaces, guarded by the gateway daemon itself.

    wan:  the home router (br0, 10.90.0.1), "the internet" (172.31.0.x, fd9f::x on lo) and
          its DNS server (172.31.0.53), which the test can point names elsewhere
      |  home LAN 10.90.0.0/24, fd90::/64 (the gateway's uplink side)
      +-- lan: a Home Assistant/admin host, 10.90.0.20
      +-- gw:  up0 10.90.0.2 | iot0 10.91.0.1, forwarding on; `home-gateway run` with
               firewall.mode = "enforce": its broker (device listener on the IoT side, Home
               Assistant's on the LAN side), its admin page, and the rules under test
                                 |  IoT segment 10.91.0.0/24, fd91::/64
    iot:  a switch (br0) whose device ports are isolated, as on an AP with client isolation
      +-- cam, sensor, plug, bulb: one namespace per device, /32 and /128 addresses routed
          via gw, so device-to-device traffic crosses the gateway as it must
      +-- stranger, newbie: devices the inventory does not know

The daemon's config declares the devices (cam and sensor restricted with lab profiles,
bulb open; plug gets no policy in the file, so it starts quarantined and can be changed
with `home-gateway device policy`). Its `nft` is a wrapper that passes everything to the
real nft unless the test writes a fault into `Net.fault`.

Every namespace name starts with a random `hg-xxxxxx-` prefix. Teardown always kills the
processes the lab started (by PID: the daemon, its Mosquitto, the servers) and deletes its
namespaces and /etc/netns entries, also after a failure. Needs root: without it the tests
are skipped, or fail when CI=true.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.control import request
from gateway.firewall.render import parse_counters
from gateway.sim.cloud import CloudSim
from tests.integration.daemon_proc import REPO, Gateway
from tests.needs import unavailable
from tests.polling import wait_until

NFT = shutil.which("nft") or "/usr/sbin/nft"
PROBE_TIMEOUT = 1.5  # seconds a probe waits for an answer; the namespaces answer in << 1 ms
CMD_TIMEOUT = 20.0
SETTLE_S = 20.0  # how long the daemon may take to (re)apply its table

# The gateway's own services (the daemon listens on them) and a port nothing may reach.
ADMIN, HA, BROKER, NOT_A_SERVICE = 8080, 1884, 8883, 2222
CLOUD, CLOUD_OTHER = "172.31.0.10", "172.31.0.99"
CLOUD6, CLOUD_OTHER6 = "fd9f::10", "fd9f::99"
DNS_OLD, DNS_NEW, DNS_OLD6, DNS_NEW6 = "172.31.0.20", "172.31.0.30", "fd9f::20", "fd9f::30"
DNS_SERVER = "172.31.0.53"
ATTACKER, ATTACKER6 = "172.31.0.66", "fd9f::66"  # internet hosts that probe the home
VENDOR, VENDOR_PORT = "172.31.0.40", 8884  # the vendor's cloud broker (home-gateway sim cloud)
ROUTER, ROUTER6 = "10.90.0.1", "fd90::1"
GW_UP, GW_UP6, GW_IOT, GW_IOT6 = "10.90.0.2", "fd90::2", "10.91.0.1", "fd91::1"
LAN_HOST, LAN_HOST6 = "10.90.0.20", "fd90::20"
CLOUD_NAME = "cloud.lab.test"
DNS_TTL = 2  # seconds: the daemon re-resolves at half of it

WAN_TCP = [80, 8443, 8444, 8883]
WAN_UDP = [123, 1900, 5351, 9999]
GW_TCP = [NOT_A_SERVICE, 53]  # echo servers beside the daemon (DNS stands in for dnsmasq)
GW_UDP = [53, 67, 123, 1900, 5351]
DEVICE_TCP = [22, 80, 7000]
DEVICE_UDP = [5000, 5683]


@dataclass(frozen=True)
class Device:
    role: str
    v4: str
    v6: str
    mac: str
    kind: str
    policy: str | None  # None: not in the inventory
    profile: str | None = None


DEVICES = (
    Device("cam", "10.91.0.11", "fd91::11", "02:48:47:00:00:11", "camera", "restricted",
           "lab-cam"),
    Device("sensor", "10.91.0.12", "fd91::12", "02:48:47:00:00:12", "sensor", "restricted",
           "lab-empty"),
    Device("plug", "10.91.0.13", "fd91::13", "02:48:47:00:00:13", "plug", "quarantine"),
    Device("bulb", "10.91.0.14", "fd91::14", "02:48:47:00:00:14", "bulb", "open"),
    Device("stranger", "10.91.0.50", "fd91::50", "02:48:47:00:00:50", "plug", None),
    # Unknown too, until a test registers it and its broker login reveals where it is.
    Device("newbie", "10.91.0.60", "fd91::60", "02:48:47:00:00:60", "camera", None),
)
DEV = {d.role: d for d in DEVICES}

PROFILES = {
    "lab-cam": f"""description = "The lab camera: its cloud, by address and by name"
[[allow]]
cidr = "{CLOUD}"
protocol = "tcp"
ports = [8443]
[[allow]]
cidr = "{CLOUD}"
protocol = "udp"
ports = [9999]
[[allow]]
cidr = "{CLOUD6}"
protocol = "tcp"
ports = [8443]
[[allow]]
cidr = "{CLOUD6}"
protocol = "udp"
ports = [9999]
[[allow]]
host = "{CLOUD_NAME}"
protocol = "tcp"
ports = [8883]
[[peer]]
kind = "sensor"
protocol = "tcp"
ports = [7000]
[[peer]]
kind = "plug"   # the plug is quarantined: it stays cut off all the same
protocol = "tcp"
ports = [7000]
""",
    "lab-empty": 'description = "Nothing beyond the gateway"\n',
}


def daemon_config(nft: Path, profiles: Path) -> str:
    """What the daemon in gw is told (after the state dir and its loopback listener)."""
    listeners = "".join(
        f'\n[[broker.listeners]]\naddress = "{address}"\nport = {port}\n'
        for address, port in ((GW_IOT, BROKER), (GW_IOT6, BROKER), (GW_UP, HA), (GW_UP6, HA)))
    devices = ""
    for d in DEVICES:
        if d.policy is None:
            continue
        devices += (f'\n[[devices]]\nid = "{d.role}"\nkind = "{d.kind}"\nmac = "{d.mac}"\n'
                    f'ip = ["{d.v4}", "{d.v6}"]\n')
        if d.role != "plug":  # the plug's policy is left to the admin: it starts quarantined
            devices += f'policy = "{d.policy}"\n'
        if d.profile:
            devices += f'profile = "{d.profile}"\n'

    return f"""{listeners}
[web]
listen = ["{GW_UP}:{ADMIN}", "[{GW_UP6}]:{ADMIN}"]

[network]
uplink = "up0"
iot = "iot0"
iot_subnets = ["10.91.0.0/24", "fd91::/64"]
lan_subnets = ["10.90.0.0/24", "fd90::/64"]

[firewall]
mode = "enforce"
nft = "{nft}"
profiles_dir = "{profiles}"
check_interval_s = 1
{devices}"""


NFT_WRAPPER = """#!/bin/sh
# The real nft, unless the test wrote a fault into {fault}:
#   fail    every `nft -f` (not `nft -c`) fails, as if the kernel refused the ruleset
#   tamper  the next `nft -f` lands, then a rule is added behind the gateway's back (once)
fault=$(cat {fault} 2>/dev/null)
if [ "$1" = "-f" ] && [ "$fault" = "fail" ]; then
    echo "Error: injected fault: the kernel refused the ruleset" >&2
    exit 1
fi
if [ "$1" = "-f" ] && [ "$fault" = "tamper" ]; then
    rm -f {fault}
    {nft} "$@" || exit
    exec {nft} add rule inet home_gateway in_iot tcp dport {port} accept
fi
exec {nft} "$@"
"""


# --- scripts run inside the namespaces (standard library only) -----------------------------

SERVER = r"""
import asyncio, json, socket, sys
cfg = json.loads(sys.argv[1])
log = open(cfg["log"], "a", buffering=1)

async def on_tcp(reader, writer):
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        log.write("tcp %s\n" % line.decode(errors="replace").strip())
        writer.write(line)
        await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        log.write("udp %s\n" % data.decode(errors="replace").strip())
        self.transport.sendto(data, addr)

async def main():
    loop = asyncio.get_running_loop()
    for port in cfg["tcp"]:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        await asyncio.start_server(on_tcp, sock=s, backlog=512)
    for addr in cfg["addrs"]:  # one UDP socket per address: replies leave from it
        for port in cfg["udp"]:
            s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET,
                              socket.SOCK_DGRAM)
            s.bind((addr, port))
            await loop.create_datagram_endpoint(Echo, sock=s)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

CLIENT = r"""
import asyncio, json, socket, sys
probes, timeout = json.loads(sys.argv[1]), float(sys.argv[2])

async def one(p):
    v6 = ":" in p["dst"]
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET,
                      socket.SOCK_STREAM if p["proto"] == "tcp" else socket.SOCK_DGRAM)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    token = (p["token"] + "\n").encode()
    async def go():
        if p.get("src"):
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, 75, 1)  # IPV6_TRANSPARENT
            else:
                s.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)
            s.bind((p["src"], 0))
        await loop.sock_connect(s, (p["dst"], p["port"]))
        if p.get("connect"):  # a real service of the gateway: the handshake is the answer
            return True
        await loop.sock_sendall(s, token)
        data = b""
        while not data.endswith(b"\n"):
            chunk = await loop.sock_recv(s, 256)
            if not chunk:
                break
            data += chunk
        return data == token
    try:
        return await asyncio.wait_for(go(), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        s.close()

async def main():
    print(json.dumps(await asyncio.gather(*(one(p) for p in probes))))

asyncio.run(main())
"""

DNS = r"""
import json, socket, struct, sys
# A tiny authoritative DNS server: answers A/AAAA from a JSON file re-read per query,
# {"name": {"A": [...], "AAAA": [...]}}, with a fixed TTL; NXDOMAIN for other names.
addr, zone_file, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    try:
        ident, flags, qd = struct.unpack("!HHH", q[:6])
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
            i += 1 + q[i]
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
        zone = json.load(open(zone_file))
        name = ".".join(labels)
        rtype = {1: "A", 28: "AAAA"}.get(qtype)
        records = zone.get(name, {}).get(rtype, []) if rtype else []
        family = socket.AF_INET if qtype == 1 else socket.AF_INET6
        answers = b"".join(struct.pack("!HHHIH", 0xC00C, qtype, 1, ttl, 4 if qtype == 1 else 16)
                           + socket.inet_pton(family, r) for r in records)
        rcode = 0 if name in zone else 3
        head = struct.pack("!HHHHHH", ident, 0x8400 | (flags & 0x0100) | rcode, 1,
                           len(records), 0, 0)
        s.sendto(head + question + answers, peer)
    except (IndexError, struct.error, ValueError, OSError):
        pass
"""

SWEEP = r"""
import errno, json, resource, selectors, socket, sys, time
dst, wait, src = sys.argv[1], float(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
batch = max(256, min(hard - 200, 16384))
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
opened, refused, silent = [], 0, 0
start = time.monotonic()
for first in range(1, 65536, batch):
    sel = selectors.DefaultSelector()
    pending = {}
    for port in range(first, min(first + batch, 65536)):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        if src:
            s.bind((src, 0))
        err = s.connect_ex((dst, port))
        if err == errno.EINPROGRESS:
            sel.register(s, selectors.EVENT_WRITE, port)
            pending[s] = port
            continue
        if err == 0:
            opened.append(port)
        elif err == errno.ECONNREFUSED:
            refused += 1
        else:
            silent += 1
        s.close()
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                opened.append(key.data)
            elif err == errno.ECONNREFUSED:
                refused += 1
            else:
                silent += 1
            sel.unregister(s)
            s.close()
            del pending[s]
    silent += len(pending)
    for s in pending:
        s.close()
    sel.close()
print(json.dumps({"open": sorted(opened), "refused": refused, "silent": silent,
                  "seconds": round(time.monotonic() - start, 2)}))
"""


# --- the lab --------------------------------------------------------------------------------


def require_root() -> None:
    """Skip without root and the tools; under CI=true, fail instead (never skipped there)."""
    missing = [t for t in ("ip", "bridge") if shutil.which(t) is None]
    if not Path(NFT).exists():
        missing.append("nft")
    problem = None
    if os.geteuid() != 0:
        problem = "network-namespace tests need root"
    elif missing:
        problem = "network-namespace tests need " + ", ".join(missing)
    if problem is not None:
        unavailable(problem)


@dataclass
class Lab:
    prefix: str
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    # running things

    def sh(self, *cmd: str, input: str | None = None, timeout: float = CMD_TIMEOUT,
           check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(cmd, input=input, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): "
                               f"{result.stderr.strip()}")
        return result

    def ip(self, role: str, *args: str) -> None:
        self.sh("ip", "-n", self.ns(role), *args)

    def exec(self, role: str, *cmd: str, input: str | None = None,
             timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("ip", "netns", "exec", self.ns(role), *cmd, input=input,
                       timeout=timeout, check=check)

    def sysctl(self, role: str, **settings: str) -> None:
        script = "".join(f"echo {v} > /proc/sys/{k.replace('__', '/')}\n"
                         for k, v in settings.items())
        self.exec(role, "sh", "-ec", script)

    def python(self, role: str, code: str, *args: str,
               timeout: float = CMD_TIMEOUT) -> str:
        return self.exec(role, sys.executable, "-c", code, *args, timeout=timeout).stdout

    def spawn(self, role: str, name: str, code: str, *args: str) -> None:
        """Start a script in `role` and wait for it to print "ready"."""
        errors = self.workdir / f"{name}.err"
        with errors.open("w") as err:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(role), sys.executable, "-u", "-c", code, *args],
                stdout=subprocess.PIPE, stderr=err, text=True)
        self.processes.append(proc)  # before waiting: teardown must find it
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            raise RuntimeError(f"{name} in {role} did not start: {line!r} "
                               f"{errors.read_text()[-2000:]}")

    def spawn_server(self, role: str, tcp: Sequence[int], udp: Sequence[int],
                     addrs: Sequence[str]) -> Path:
        """Start an echo server in `role`; returns the file it logs every payload to."""
        log = self.workdir / f"{role}.log"
        log.touch()
        self.spawn(role, f"{role}-server", SERVER, json.dumps(
            {"tcp": list(tcp), "udp": list(udp), "addrs": list(addrs), "log": str(log)}))
        return log

    # the firewall

    def nft(self, script: str) -> None:
        self.exec("gw", NFT, "-f", "-", input=script)

    def listing(self) -> str | None:
        done = self.exec("gw", NFT, "-s", "list", "table", "inet", "home_gateway", check=False)
        return done.stdout if done.returncode == 0 else None

    def counters(self) -> dict[str, tuple[int, int]]:
        out = self.exec("gw", NFT, "-j", "list", "counters", "table", "inet",
                        "home_gateway").stdout
        return parse_counters(out)

    # traffic

    def probe(self, role: str, probes: Sequence[dict[str, Any]],
              timeout: float = PROBE_TIMEOUT) -> list[bool]:
        """Run connection attempts from `role` at once; True where the echo came back."""
        tagged = [{**p, "token": p.get("token") or f"probe-{secrets.token_hex(6)}"}
                  for p in probes]
        out = self.python(role, CLIENT, json.dumps(tagged), str(timeout),
                          timeout=timeout + 15)
        result: list[bool] = json.loads(out)
        assert len(result) == len(probes)
        return result

    def sweep(self, role: str, dst: str, src: str = "", wait: float = 0.4) -> dict[str, Any]:
        """Connect to every TCP port of `dst` at once (in batches); count the answers."""
        return json.loads(self.python(role, SWEEP, dst, str(wait), src, timeout=120))

    def close(self) -> None:
        shutil.rmtree(Path("/etc/netns") / self.ns("gw"), ignore_errors=True)
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                           check=False)
        self.namespaces.clear()


def build_lab(lab: Lab) -> None:
    """Namespaces, links, addresses and routes of the picture in the module docstring."""
    roles = ["wan", "gw", "lan", "iot", *(d.role for d in DEVICES)]
    for role in roles:
        lab.sh("ip", "netns", "add", lab.ns(role))
        lab.namespaces.append(lab.ns(role))  # recorded at once: teardown deletes it
        # No duplicate address detection: addresses are usable at once.
        lab.sysctl(role, net__ipv6__conf__all__accept_dad="0",
                   net__ipv6__conf__default__accept_dad="0",
                   net__ipv6__conf__all__accept_redirects="0",
                   net__ipv6__conf__default__accept_redirects="0",
                   net__ipv4__conf__all__accept_redirects="0",
                   net__ipv4__conf__default__accept_redirects="0")
        lab.ip(role, "link", "set", "lo", "up")

    def veth(a: str, a_if: str, b: str, b_if: str) -> None:
        lab.sh("ip", "link", "add", a_if, "netns", lab.ns(a), "type", "veth",
               "peer", "name", b_if, "netns", lab.ns(b))

    # home LAN: a bridge in the router (wan) joining gw and lan
    lab.ip("wan", "link", "add", "br0", "type", "bridge")
    veth("wan", "pgw", "gw", "up0")
    veth("wan", "plan", "lan", "eth0")
    for port in ("pgw", "plan"):
        lab.ip("wan", "link", "set", port, "master", "br0")
    for dev in ("br0", "pgw", "plan"):
        lab.ip("wan", "link", "set", dev, "up")
    lab.ip("wan", "addr", "add", f"{ROUTER}/24", "dev", "br0")
    lab.ip("wan", "addr", "add", f"{ROUTER6}/64", "dev", "br0", "nodad")
    for host in (CLOUD, CLOUD_OTHER, DNS_OLD, DNS_NEW, ATTACKER, DNS_SERVER, VENDOR):
        lab.ip("wan", "addr", "add", f"{host}/32", "dev", "lo")
    for host in (CLOUD6, CLOUD_OTHER6, DNS_OLD6, DNS_NEW6, ATTACKER6):
        lab.ip("wan", "addr", "add", f"{host}/128", "dev", "lo", "nodad")
    lab.ip("wan", "route", "add", "10.91.0.0/24", "via", GW_UP)
    lab.ip("wan", "-6", "route", "add", "fd91::/64", "via", GW_UP6)

    lab.ip("lan", "link", "set", "eth0", "up")
    lab.ip("lan", "addr", "add", f"{LAN_HOST}/24", "dev", "eth0")
    lab.ip("lan", "addr", "add", f"{LAN_HOST6}/64", "dev", "eth0", "nodad")
    lab.ip("lan", "route", "add", "default", "via", ROUTER)
    lab.ip("lan", "-6", "route", "add", "default", "via", ROUTER6)
    lab.ip("lan", "route", "add", "10.91.0.0/24", "via", GW_UP)
    lab.ip("lan", "-6", "route", "add", "fd91::/64", "via", GW_UP6)

    # the gateway
    veth("gw", "iot0", "iot", "up0")
    for dev in ("up0", "iot0"):
        lab.ip("gw", "link", "set", dev, "up")
    lab.ip("gw", "addr", "add", f"{GW_UP}/24", "dev", "up0")
    lab.ip("gw", "addr", "add", f"{GW_UP6}/64", "dev", "up0", "nodad")
    lab.ip("gw", "addr", "add", f"{GW_IOT}/24", "dev", "iot0")
    lab.ip("gw", "addr", "add", f"{GW_IOT6}/64", "dev", "iot0", "nodad")
    lab.ip("gw", "route", "add", "default", "via", ROUTER)
    lab.ip("gw", "-6", "route", "add", "default", "via", ROUTER6)
    lab.sysctl("gw", net__ipv4__ip_forward="1", net__ipv6__conf__all__forwarding="1",
               net__ipv4__conf__all__send_redirects="0",
               net__ipv4__conf__iot0__send_redirects="0",
               net__ipv4__conf__all__rp_filter="0", net__ipv4__conf__default__rp_filter="0",
               net__ipv4__conf__up0__rp_filter="0", net__ipv4__conf__iot0__rp_filter="0")

    # the IoT switch and the devices
    lab.ip("iot", "link", "add", "br0", "type", "bridge")
    lab.ip("iot", "link", "set", "up0", "master", "br0")
    for dev in ("br0", "up0"):
        lab.ip("iot", "link", "set", dev, "up")
    for d in DEVICES:
        port = f"p-{d.role}"[:15]
        veth("iot", port, d.role, "eth0")
        lab.ip("iot", "link", "set", port, "master", "br0")
        lab.exec("iot", "bridge", "link", "set", "dev", port, "isolated", "on")
        lab.ip("iot", "link", "set", port, "up")
        lab.ip(d.role, "link", "set", "eth0", "address", d.mac)
        lab.ip(d.role, "link", "set", "eth0", "up")
        lab.ip(d.role, "addr", "add", f"{d.v4}/32", "dev", "eth0")
        lab.ip(d.role, "addr", "add", f"{d.v6}/128", "dev", "eth0", "nodad")
        lab.ip(d.role, "route", "add", GW_IOT, "dev", "eth0")
        lab.ip(d.role, "route", "add", "default", "via", GW_IOT, "dev", "eth0")
        lab.ip(d.role, "-6", "route", "add", GW_IOT6, "dev", "eth0")
        lab.ip(d.role, "-6", "route", "add", "default", "via", GW_IOT6, "dev", "eth0")


@dataclass
class Net:
    """What the tests get: the lab, the servers' payload logs and the gateway daemon."""

    lab: Lab
    logs: dict[str, Path]
    gateway: Gateway
    zone: Path  # the DNS server's answers
    fault: Path  # what the nft wrapper should get wrong ("" or missing: nothing)
    cloud_out: Path  # what the simulated cloud in wan prints (results it receives)

    def seen(self, role: str, token: str) -> bool:
        return token in self.logs[role].read_text()

    def control(self, op: str, **args: Any) -> Any:
        return request(self.gateway.control_socket, op, **args)

    def firewall(self) -> dict[str, Any]:
        status: dict[str, Any] = self.control("firewall.status")
        return status

    def firewall_devices(self) -> list[dict[str, Any]]:
        """The registry as `home-gateway device list --json` shows it."""
        done = self.gateway.device("list", "--json")
        assert done.returncode == 0, done.stderr
        devices: list[dict[str, Any]] = json.loads(done.stdout)
        for device in devices:
            device["addresses"] = (device["ip"] or "").split()
        return devices

    def healthy(self, timeout: float = SETTLE_S) -> dict[str, Any]:
        """The firewall's status once it is healthy and enforcing (fails the test if not)."""
        return wait_until(lambda: (lambda s: s if s["healthy"] and s["enforcing"] else None)(
            self.firewall()), timeout, "a healthy, enforcing firewall")

    def set_policy(self, role: str, policy: str, profile: str | None = None) -> Any:
        return self.control("device.policy", id=role, policy=policy, profile=profile)

    def point(self, name: str, *addresses: str) -> None:
        """Make the lab's DNS server answer `name` with `addresses`."""
        zone = json.loads(self.zone.read_text())
        zone[name] = {"A": [a for a in addresses if ":" not in a],
                      "AAAA": [a for a in addresses if ":" in a]}
        self.zone.write_text(json.dumps(zone))


def start_cloud(lab: Lab) -> tuple[CloudSim, Path]:
    """`home-gateway sim cloud` in wan (the internet side): its broker on VENDOR, sending
    the gateway a signed command for the bulb every second. Returns the sim (for its files
    and config) and the file its output goes to."""
    cloud = CloudSim(lab.workdir / "cloud", gateway_id="home-1", address=VENDOR,
                     port=VENDOR_PORT)
    cloud.prepare()
    output = lab.workdir / "cloud.out"
    with output.open("w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("wan"), sys.executable, "-u", "-m", "gateway",
             "sim", "cloud", "--dir", str(cloud.directory), "--address", VENDOR, "--port",
             str(VENDOR_PORT), "--gateway-id", "home-1", "--device",
             'bulb=set_power:{"on": true}', "--every", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    lab.processes.append(proc)
    return cloud, output


def start_gateway(lab: Lab, fault: Path, cloud: CloudSim) -> Gateway:
    """`home-gateway run` in gw, with the lab's profiles and the fault-injecting nft."""
    profiles = lab.workdir / "profiles"
    profiles.mkdir()
    for name, text in PROFILES.items():
        (profiles / f"{name}.toml").write_text(text)
    wrapper = lab.workdir / "nft"
    wrapper.write_text(NFT_WRAPPER.format(fault=fault, nft=NFT, port=NOT_A_SERVICE))
    wrapper.chmod(0o755)
    gateway = Gateway(lab.workdir / "gateway", Path(tempfile.mkdtemp(prefix="hg-", dir="/tmp")),
                      prefix=("ip", "netns", "exec", lab.ns("gw")))
    gateway.write_config(daemon_config(wrapper, profiles) + cloud.config_toml())
    return gateway


@pytest.fixture(scope="session")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    require_root()
    lab = Lab(f"hg-{secrets.token_hex(3)}", tmp_path_factory.mktemp("netns"))
    gateway: Gateway | None = None
    try:
        build_lab(lab)
        logs = {
            "wan": lab.spawn_server("wan", WAN_TCP, WAN_UDP,
                                    [CLOUD, CLOUD_OTHER, DNS_OLD, DNS_NEW, ROUTER, CLOUD6,
                                     CLOUD_OTHER6, DNS_OLD6, DNS_NEW6, ROUTER6]),
            "gw": lab.spawn_server("gw", GW_TCP, GW_UDP, [GW_UP, GW_UP6, GW_IOT, GW_IOT6]),
            "lan": lab.spawn_server("lan", [22, 8123], [5000], [LAN_HOST, LAN_HOST6]),
        }
        for d in DEVICES:
            logs[d.role] = lab.spawn_server(d.role, DEVICE_TCP, DEVICE_UDP, [d.v4, d.v6])
        # The daemon in gw resolves through the lab's DNS server (`ip netns exec` mounts
        # /etc/netns/NS/resolv.conf over /etc/resolv.conf).
        zone = lab.workdir / "zone.json"
        zone.write_text(json.dumps({CLOUD_NAME: {"A": [DNS_OLD], "AAAA": [DNS_OLD6]}}))
        lab.spawn("wan", "dns", DNS, DNS_SERVER, str(zone), str(DNS_TTL))
        etc = Path("/etc/netns") / lab.ns("gw")
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {DNS_SERVER}\n")
        fault = lab.workdir / "nft-fault"
        cloud, cloud_out = start_cloud(lab)
        gateway = start_gateway(lab, fault, cloud)
        gateway.start()
        net = Net(lab, logs, gateway, zone, fault, cloud_out)
        net.healthy()
        wait_until(lambda: net.firewall()["dns"].get(CLOUD_NAME, {}).get("addresses"),
                   SETTLE_S, f"the daemon resolving {CLOUD_NAME}")
        yield net
    finally:
        try:
            if gateway is not None:
                gateway.close()
        finally:
            lab.close()


@pytest.fixture
def lab(net: Net) -> Iterator[Lab]:
    """The shared lab, its firewall healthy and in its standard state before and after."""
    net.healthy()
    yield net.lab
    net.fault.unlink(missing_ok=True)
    net.point(CLOUD_NAME, DNS_OLD, DNS_OLD6)
    net.set_policy("plug", "quarantine")
    net.healthy()
    wait_until(lambda: net.firewall()["dns"].get(CLOUD_NAME, {}).get("addresses") == [
        DNS_OLD, DNS_OLD6], SETTLE_S, f"{CLOUD_NAME} back at its first addresses")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root; runs in network namespaces")
