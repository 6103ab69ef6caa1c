"""(f) The firewall: render and apply time by inventory size, the rule count, and forwarding
throughput with the gateway's ruleset against none.

Render and apply, for 10, 100 and 1,000 devices (quick: 10 and 100). The inventory is a
mix like a house's: mostly restricted devices (sensors, plugs, bulbs, cameras, door contacts,
thermostats), a few quarantined and a few open ones, each with an IPv4 and an IPv6 address
and a MAC; the profiles allow CIDRs, DNS names (with current answers) and peers by kind.

- render: `render_ruleset` (pure), the best of several runs;
- apply: what the daemon does on every apply: the script written to a file (temp, fsync,
  rename), `nft -c -f`, `nft -f`, `nft -s list table` read back; the best of a few runs,
  in a network namespace of our own (the machine's ruleset is never touched);
- the rules (`count_rules`, in the script and in what nft reads back) and the set elements.

The baseline of each time is the same step at 10 devices; the rule count must not grow.

Forwarding: three namespaces, wan (an iperf3 server) - gw (forwarding on) - iot (an
iperf3 client that is a restricted device whose profile allows the server's port). The
gateway's ruleset for that client plus 1,000 other devices is loaded in gw, or no table at
all, or a NAT-only table (connection tracking and masquerade: what any home router runs);
the three take turns in a rotating order (four rounds of 3 s each, after 1 s of TCP slow
start iperf3 leaves out; quick: two of 2 s) and the median run of each counts. Once per run a
connection to a port the profile does not allow must be dropped and counted with the
rules (and refused without them), and the server must see the masqueraded address: proof
that the traffic crossed the ruleset. Without root, nft or iperf3 the figures say why.
Every namespace and process is ours (random `hgb-xxxxxx-` names), removed by name or PID
in `finally`, also on failure, timeout or cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

from bench.common import Figure, progress
from gateway.firewall.model import (
    TABLE,
    Allow,
    DeviceRule,
    FirewallInput,
    Peer,
    Policy,
    Profile,
    Resolution,
    Services,
)
from gateway.firewall.render import count_rules, parse_counters, render_remove, render_ruleset

NFT = shutil.which("nft") or "/usr/sbin/nft"
IPERF3 = shutil.which("iperf3") or "/usr/bin/iperf3"
CMD_TIMEOUT_S = 60.0  # one nft or ip command; nft -f with 1,000 devices takes about 1 s
RENDER_MIN_RUNS, RENDER_MAX_RUNS, RENDER_MIN_S = 3, 50, 0.3
TARGET_COST = 0.10  # the rules may cost at most 10% of the forwarding throughput

# -- the inventory --------------------------------------------------------------------------

# The home LAN on the uplink side, with "the internet" (the iperf3 server) on it; the IoT
# segment behind the gateway. Private test ranges, only ever inside our namespaces.
WAN, GW_UP, UPLINK_NET = "10.99.0.1", "10.99.0.2", "10.99.0.0/24"
GW_IOT, IOT_NET, IOT_NET6, IOT_PREFIX = "10.99.16.1", "10.99.16.0/20", "fd99:16::/64", 20
CLIENT, CLIENT6, CLIENT_MAC = "10.99.16.10", "fd99:16::10", "02:99:00:00:00:0a"
PORT, FORBIDDEN_PORT = 5201, 5202  # the profile allows the first only
DEVICES_BASE = int(IPv4Address("10.99.17.0"))  # device i: 10.99.17.0 + i, fd99:16::1:i
DEVICES6_BASE = int(IPv6Address("fd99:16::1:0"))
FORWARD_DEVICES = 1000  # in the sets besides the client while measuring forwarding
FORWARD_FIGURE = (f"forwarding iot→wan, gateway's rules, {FORWARD_DEVICES:,} devices "
                  "(Gbit/s; base: no rules)")
NAT_FIGURE = ("forwarding iot→wan, gateway's rules (Gbit/s; base: a NAT-only table, what any "
              "home router runs)")
# The least a NAT router does: connection tracking and masquerade, nothing filtered.
NAT_ONLY = f"""table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "up0" ip saddr {IOT_NET} masquerade
\t}}
}}
"""
OMIT_S = 1  # iperf3 leaves TCP's first second (slow start) out of its figure

# Per 100 devices; spread out by a stride so every size gets a mix.
KIND_MIX = (("sensor", 40), ("plug", 20), ("bulb", 20), ("camera", 10), ("door", 6),
            ("thermostat", 4))
KIND_CYCLE = [kind for kind, weight in KIND_MIX for _ in range(weight)]
PLUG_CLOUD, CAMERA_CLOUD, THERMOSTAT_CLOUD = ("firmware.plug-vendor.example",
                                              "clips.camera-vendor.example",
                                              "api.thermostat-vendor.example")
PROFILES = {
    "bench-sensor": Profile("bench-sensor"),
    "bench-bulb": Profile("bench-bulb"),
    "bench-plug": Profile("bench-plug", allow=(
        Allow("tcp", ((443, 443),), host=PLUG_CLOUD),)),
    "bench-camera": Profile("bench-camera", allow=(
        Allow("tcp", ((443, 443),), host=CAMERA_CLOUD),
        Allow("tcp", ((443, 443),), cidr=ip_network("198.51.100.0/24")),
        Allow("udp", ((3478, 3479),), cidr=ip_network("198.51.100.0/24")),
        Allow("tcp", ((443, 443),), cidr=ip_network("2001:db8:100::/48")),
    )),
    "bench-door": Profile("bench-door", peers=(Peer("icmp", kind="camera"),)),
    "bench-thermostat": Profile("bench-thermostat", allow=(
        Allow("tcp", ((443, 443), (8883, 8883)), host=THERMOSTAT_CLOUD),
    ), peers=(Peer("udp", ((5683, 5683),), kind="sensor"),)),
    "bench-iperf": Profile("bench-iperf", allow=(
        Allow("tcp", ((PORT, PORT),), cidr=ip_network(f"{WAN}/32")),)),
}
DNS = {
    PLUG_CLOUD: Resolution((ip_address("203.0.113.10"), ip_address("2001:db8:203::10")), 600),
    CAMERA_CLOUD: Resolution((ip_address("203.0.113.20"), ip_address("203.0.113.21"),
                              ip_address("2001:db8:203::20")), 300),
    THERMOSTAT_CLOUD: Resolution((ip_address("203.0.113.30"),
                                  ip_address("2001:db8:203::30")), 600),
}


def device(i: int) -> DeviceRule:
    kind = KIND_CYCLE[(i * 37) % len(KIND_CYCLE)]
    policy: Policy = ("quarantine" if i % 20 == 3 else "open" if i % 50 == 7
                      else "restricted")
    return DeviceRule(f"dev-{i:04d}", (IPv4Address(DEVICES_BASE + i),
                                       IPv6Address(DEVICES6_BASE + i)), policy,
                      mac=f"02:99:01:00:{i >> 8:02x}:{i & 0xff:02x}", profile=f"bench-{kind}",
                      kind=kind)


def firewall_input(devices: int, client: bool = False) -> FirewallInput:
    """`devices` devices of the mix; with `client`, the iperf3 client as one more."""
    rules = [device(i) for i in range(devices)]
    if client:
        rules.append(DeviceRule("iperf-client", (ip_address(CLIENT), ip_address(CLIENT6)),
                                "restricted", mac=CLIENT_MAC, profile="bench-iperf"))
    return FirewallInput(
        uplink="up0", iot="iot0",
        iot_subnets=(ip_network(IOT_NET), ip_network(IOT_NET6)),
        lan_subnets=(ip_network(UPLINK_NET), ip_network("fd99::/64")),
        services=Services(admin_tcp=(8080,), ha_tcp=(1884,), device_tcp=(1883,)),
        devices=tuple(rules), profiles=PROFILES, dns=DNS)


_ELEMENTS = re.compile(r"elements = \{(.*?)\}", re.S)
_SET = re.compile(r"^\s*(?:set|map) (\S+) \{", re.M)


def set_elements(text: str) -> dict[str, int]:
    """Elements per set in a rendered script or an `nft list` (elements are separated by
    commas; none of them contains one)."""
    out: dict[str, int] = {}
    for match in _SET.finditer(text):
        end = text.find("\n\t}", match.end())
        block = _ELEMENTS.search(text, match.end(), end if end != -1 else len(text))
        out[match.group(1)] = block.group(1).count(",") + 1 if block else 0
    return out


# -- commands, namespaces, processes ---------------------------------------------------------

async def sh(*args: str, timeout: float = CMD_TIMEOUT_S, check: bool = True) -> str:
    """Run a command to completion (killed at the timeout); its stdout."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise RuntimeError(f"{' '.join(args)}: no answer in {timeout:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): "
                           f"{err.decode(errors='replace').strip()[-500:]}")
    return out.decode(errors="replace")


@dataclass
class Netns:
    """Namespaces named `hgb-<random>-<role>` and the processes started in them; close()
    kills those processes by PID and deletes those namespaces by name, nothing else."""

    prefix: str = field(default_factory=lambda: f"hgb-{secrets.token_hex(3)}")
    names: list[str] = field(default_factory=list)
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    async def add(self, role: str) -> str:
        name = self.ns(role)
        if Path("/run/netns", name).exists():
            raise RuntimeError(f"namespace {name} exists already: not ours, left alone")
        self.names.append(name)  # before creating it: close() must find it
        await sh("ip", "netns", "add", name)
        await sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    async def exec(self, role: str, *cmd: str, timeout: float = CMD_TIMEOUT_S,
                   check: bool = True) -> str:
        return await sh("ip", "netns", "exec", self.ns(role), *cmd, timeout=timeout,
                        check=check)

    async def spawn(self, role: str, *cmd: str) -> asyncio.subprocess.Process:
        """A long-running process in the namespace (`ip netns exec` execs it: same PID)."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns(role), *cmd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self.procs.append(proc)
        return proc

    async def close(self) -> None:
        for proc in self.procs:  # synchronous first: done even if we are cancelled again
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        _delete_namespaces(reversed(self.names))
        self.names.clear()
        for proc in self.procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
        self.procs.clear()


def _delete_namespaces(names: Iterable[str]) -> None:
    """Blocking on purpose: a second cancellation cannot leave a namespace behind (a few ms
    each; deleting one also removes its veths)."""
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                       check=False)


def missing_tools(*tools: tuple[str, str]) -> str:
    """Why a part cannot run here (root, and `tools` as (name, path)); "" when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [name for name, path in (("ip", "ip"), ("nft", NFT), *tools)
               if shutil.which(path) is None]
    return f"needs {', '.join(missing)}" if missing else ""


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- render and apply -------------------------------------------------------------------------

@dataclass
class Size:
    devices: int
    render_ms: float
    apply_ms: float
    rules: int  # in the script
    rules_read: int  # in what nft lists
    elements: int  # in the script
    elements_read: int  # in what nft lists
    biggest: str  # the largest sets


def best_render_ms(inp: FirewallInput) -> tuple[float, str]:
    samples: list[float] = []
    script = ""
    while len(samples) < RENDER_MAX_RUNS and (len(samples) < RENDER_MIN_RUNS
                                              or sum(samples) < RENDER_MIN_S):
        t0 = time.perf_counter()
        script = render_ruleset(inp)
        samples.append(time.perf_counter() - t0)
    return min(samples) * 1000, script


async def apply(net: Netns, role: str, script: str, path: Path) -> tuple[float, str]:
    """The daemon's apply, timed: write, check, load, read back. The listing."""
    t0 = time.perf_counter()
    write_atomic(path, script)
    await net.exec(role, NFT, "-c", "-f", str(path))
    await net.exec(role, NFT, "-f", str(path))
    listing = await net.exec(role, NFT, "-s", "list", "table", "inet", TABLE)
    return (time.perf_counter() - t0) * 1000, listing


async def render_and_apply(workdir: Path, sizes: Sequence[int], runs: int) -> list[Size]:
    net = Netns()
    out: list[Size] = []
    try:
        await net.add("nft")
        for n in sizes:
            render_ms, script = best_render_ms(firewall_input(n))
            times, listing = [], ""
            for _ in range(runs):  # the table exists from the run before: a replacement
                ms, listing = await apply(net, "nft", script, workdir / "ruleset.nft")
                times.append(ms)
            per_set = set_elements(script)
            top = sorted(per_set.items(), key=lambda kv: -kv[1])[:4]
            size = Size(n, render_ms, min(times), count_rules(script), count_rules(listing),
                        sum(per_set.values()), sum(set_elements(listing).values()),
                        ", ".join(f"{k} {v:,}" for k, v in top))
            progress(f"firewall: {n:,} devices: render {render_ms:.1f} ms, apply "
                     f"{size.apply_ms:.0f} ms (best of {runs}; script {len(script) / 1e3:,.0f}"
                     f" kB), rules {size.rules} (read back {size.rules_read}), set elements "
                     f"{size.elements:,} (read back {size.elements_read:,}; largest: "
                     f"{size.biggest})")
            out.append(size)
    finally:
        await net.close()
    return out


def size_figures(sizes: Sequence[Size]) -> list[Figure]:
    base, *rest = sizes
    figures: list[Figure] = []
    for what, attr in (("render", "render_ms"), ("apply (write, check, load, read back)",
                                                 "apply_ms")):
        figures += [Figure(f"firewall {what}, {s.devices:,} devices (ms; base: {base.devices})",
                           getattr(s, attr), getattr(base, attr)) for s in rest]
    top = sizes[-1]
    counts = {s.rules for s in sizes} | {s.rules_read for s in sizes}
    rules = Figure(f"firewall rules, {top.devices:,} devices (base: {base.devices})",
                   top.rules, base.rules, target="flat", met=len(counts) == 1)
    if len(counts) != 1:
        rules.note = "read back " + " / ".join(f"{s.rules_read}" for s in sizes)
    lost = [s for s in sizes if s.elements_read != s.elements]
    elements = Figure(f"firewall set elements, {top.devices:,} devices (base: {base.devices})",
                      top.elements, base.elements,
                      note="; ".join(f"{s.devices}: nft lists {s.elements_read:,}"
                                     for s in lost))
    return [*figures, rules, elements]


# -- forwarding -------------------------------------------------------------------------------

PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print("error", exc.errno)
"""


@dataclass
class Run:
    gbps: float
    seen_from: str  # the client address as the server saw it


async def build_path(net: Netns) -> None:
    """wan (eth0) -- (up0) gw (iot0) -- (eth0) iot, forwarding on in gw."""
    for role in ("wan", "gw", "iot"):
        await net.add(role)
    await sh("ip", "link", "add", "up0", "netns", net.ns("gw"), "type", "veth",
             "peer", "name", "eth0", "netns", net.ns("wan"))
    await sh("ip", "link", "add", "iot0", "netns", net.ns("gw"), "type", "veth",
             "peer", "name", "eth0", "netns", net.ns("iot"))
    await sh("ip", "-n", net.ns("iot"), "link", "set", "eth0", "address", CLIENT_MAC)
    for role, dev, addr in (("wan", "eth0", f"{WAN}/24"), ("gw", "up0", f"{GW_UP}/24"),
                            ("gw", "iot0", f"{GW_IOT}/{IOT_PREFIX}"),
                            ("iot", "eth0", f"{CLIENT}/{IOT_PREFIX}")):
        await sh("ip", "-n", net.ns(role), "addr", "add", addr, "dev", dev)
        await sh("ip", "-n", net.ns(role), "link", "set", dev, "up")
    await sh("ip", "-n", net.ns("wan"), "route", "add", IOT_NET, "via", GW_UP)
    await sh("ip", "-n", net.ns("iot"), "route", "add", "default", "via", GW_IOT)
    settings = {"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0",
                "net/ipv4/conf/default/rp_filter": "0", "net/ipv4/conf/up0/rp_filter": "0",
                "net/ipv4/conf/iot0/rp_filter": "0", "net/ipv4/conf/all/send_redirects": "0"}
    await net.exec("gw", "sh", "-ec", "".join(f"echo {v} > /proc/sys/{k}\n"
                                              for k, v in settings.items()))


async def iperf(net: Netns, seconds: int) -> Run:
    """One iperf3 TCP test, iot -> wan through gw: a fresh one-shot server, the client."""
    server = await net.spawn("wan", IPERF3, "-s", "-1", "-J", "-B", WAN, "-p", str(PORT))
    deadline = time.monotonic() + 10.0
    while not (await net.exec("wan", "ss", "-Hltn", f"sport = :{PORT}")).strip():
        if server.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 server not listening (exit {server.returncode})")
        await asyncio.sleep(0.05)
    out = await net.exec("iot", IPERF3, "-c", WAN, "-p", str(PORT), "-t", str(seconds),
                         "-O", str(OMIT_S), "-J", timeout=seconds + OMIT_S + 20.0, check=False)
    try:
        served, _ = await asyncio.wait_for(server.communicate(), 10.0)
    except TimeoutError:
        raise RuntimeError("iperf3 server did not finish") from None
    try:
        doc: dict[str, Any] = json.loads(out)
        if "error" in doc:
            raise RuntimeError(f"iperf3 client: {doc['error']}")
        bps = float(doc["end"]["sum_received"]["bits_per_second"])
        seen = json.loads(served)["start"]["connected"][0]["remote_host"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RuntimeError(f"iperf3 output not understood ({exc!r}): {out[-300:]}") from None
    return Run(bps / 1e9, str(seen))


async def probe(net: Netns) -> str:
    """A TCP connection from the client to the port its profile does not allow."""
    out = await net.exec("iot", sys.executable, "-c", PROBE, WAN, str(FORBIDDEN_PORT), "1.5",
                         timeout=20.0)
    return out.strip()


async def egress_drops(net: Netns) -> int:
    out = await net.exec("gw", NFT, "-j", "list", "counters", "table", "inet", TABLE)
    return parse_counters(out).get("egress", (0, 0))[0]


async def forwarding(workdir: Path, rounds: int, seconds: int) -> list[Figure]:
    """The gateway's rules against no table and against a NAT-only table, rotating the
    order round by round; the median run of each (this machine's forwarding swings by a
    quarter from run to run, so the best run would measure luck)."""
    scripts = {"rules": workdir / "forward.nft", "none": workdir / "remove.nft",
               "nat": workdir / "nat.nft"}
    net = Netns()
    runs: dict[str, list[Run]] = {name: [] for name in scripts}
    problems: list[str] = []
    try:
        t0 = time.perf_counter()
        write_atomic(scripts["rules"],
                     render_ruleset(firewall_input(FORWARD_DEVICES, client=True)))
        write_atomic(scripts["none"], render_remove())
        write_atomic(scripts["nat"], NAT_ONLY)
        progress(f"firewall: forwarding ruleset for {FORWARD_DEVICES:,} devices + the client "
                 f"rendered in {time.perf_counter() - t0:.2f} s")
        await build_path(net)
        order = list(scripts)
        for r in range(rounds):
            for name in order[r % 3:] + order[:r % 3]:
                await net.exec("gw", NFT, "-f", str(scripts[name]))
                rules = name == "rules"
                if r == 0 and name != "nat":  # once: the forbidden port, dropped by the rules
                    before = await egress_drops(net) if rules else 0
                    answer = await probe(net)
                    dropped = await egress_drops(net) - before if rules else 0
                    expected = "timeout" if rules else "refused"
                    progress(f"firewall: port {FORBIDDEN_PORT} {'with' if rules else 'without'}"
                             f" rules: {answer}" + (f", {dropped} egress drops counted"
                                                    if rules else ""))
                    if answer != expected or (rules and dropped < 1):
                        problems.append(f"port {FORBIDDEN_PORT} {'with' if rules else 'without'}"
                                        f" rules: {answer}, {dropped} drops")
                run = await iperf(net, seconds)
                progress(f"firewall: forwarding, table {name}: {run.gbps:.2f} Gbit/s "
                         f"({seconds} s; the server saw {run.seen_from})")
                if run.seen_from != (CLIENT if name == "none" else GW_UP):
                    problems.append(f"server saw {run.seen_from} with table {name}")
                runs[name].append(run)
    except (RuntimeError, OSError, ValueError) as exc:  # ValueError: RenderError
        progress(f"firewall: forwarding failed: {exc}")
        problems.append(f"failed: {str(exc)[:200]}")
    finally:
        await net.close()
    best = {name: statistics.median(r.gbps for r in got) if got else math.nan
            for name, got in runs.items()}
    figures = []
    for base, figure, target in (("none", FORWARD_FIGURE, TARGET_COST), ("nat", NAT_FIGURE, None)):
        cost = 1 - best["rules"] / best[base] if best[base] else math.nan
        if not math.isnan(cost):
            progress(f"firewall: the rules cost {cost * 100:.1f}% against table {base} "
                     f"(median of {len(runs['rules'])} and {len(runs[base])})")
        note = "; ".join(([] if math.isnan(cost) else [f"cost {cost * 100:.1f}%"])
                         + [f"NOT VERIFIED: {p}" for p in problems])
        figures.append(Figure(
            figure, best["rules"], best[base],
            target=f"cost < {target * 100:.0f}%" if target is not None else "",
            met=(not problems and best["rules"] >= (1 - target) * best[base])
            if target is not None else None, note=note))
    return figures


# -- the figures ------------------------------------------------------------------------------

async def measure(workdir: Path, quick: bool) -> list[Figure]:
    sizes = (10, 100) if quick else (10, 100, 1000)
    runs, rounds, seconds = (2, 2, 2) if quick else (3, 4, 3)
    figures: list[Figure] = []
    top = f"{sizes[-1]:,} devices"
    if why := missing_tools():
        progress(f"firewall: render and apply skipped: {why}")
        figures += [Figure(f"firewall render+apply, {top} (ms)", math.nan, note=why),
                    Figure(f"firewall rules, {top}", math.nan, note=why)]
    else:
        try:
            figures += size_figures(await render_and_apply(workdir, sizes, runs))
        except (RuntimeError, OSError, ValueError) as exc:  # ValueError: RenderError
            progress(f"firewall: render and apply failed: {exc}")
            figures.append(Figure(f"firewall render+apply, {top} (ms)", math.nan,
                                  note=f"failed: {str(exc)[:200]}"))
    if why := missing_tools(("iperf3", IPERF3), ("ss", "ss")):
        progress(f"firewall: forwarding skipped: {why}")
        figures.append(Figure(FORWARD_FIGURE, math.nan, note=why))
    else:
        figures += await forwarding(workdir, rounds, seconds)
    return figures
