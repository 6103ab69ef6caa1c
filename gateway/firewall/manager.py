"""The firewall at run time: apply, verify, roll back, repair drift, count drops.

Every full apply is: render (pure) -> `nft -c -f` (check) -> `nft -f` (one transaction)
-> read the table back and compare it with what was rendered. A failure at any step keeps
the last good ruleset in force (a failed `nft -f` changes nothing; a table that reads back
wrong is replaced by the last good script) and marks the firewall unhealthy. Every
`check_interval_s` the table is read back again: a table someone deleted or changed is
restored and the repair audited. DNS answers only change the timed sets, in place.

In "render-only" mode nothing is applied: the ruleset is rendered and checked (where the
machine allows), and the status says loudly that the devices are not protected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.config import Config
from gateway.firewall import dns
from gateway.firewall.inventory import Inventory, build_input, learn_address, profile_dirs
from gateway.firewall.model import (
    DROP_CLASSES,
    POLICIES,
    TABLE,
    FirewallInput,
    Profile,
    Resolution,
)
from gateway.firewall.profiles import ProfileError, load_profiles
from gateway.firewall.render import (
    RenderError,
    count_rules,
    dns_names,
    parse_counters,
    render_dns_update,
    render_ruleset,
)
from gateway.store import Device, Store

log = logging.getLogger(__name__)

__all__ = ["Firewall", "Nft", "NftError", "PolicyError", "manifest", "normalize_listing"]

NFT_TIMEOUT_S = 30.0
WATCH_S = 1.0  # how often the inventory and the profiles are looked at
HISTORY = 2880  # counter samples kept (a day at the default 30 s)


class NftError(Exception):
    pass


class PolicyError(ValueError):
    """A policy change that cannot be made; the message says why."""


class Nft:
    """The `nft` program, run without a shell; scripts go in on standard input."""

    def __init__(self, program: str) -> None:
        self.program = program

    async def run(self, *args: str, script: str | None = None,
                  prefix: tuple[str, ...] = ()) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *prefix, self.program, *args,
                stdin=asyncio.subprocess.DEVNULL if script is None else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise NftError(f"cannot run {self.program}: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(script.encode() if script is not None else None), NFT_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise NftError(f"{self.program} {' '.join(args)}: no answer in "
                           f"{NFT_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            raise NftError(_first_lines(err.decode(errors="replace")) or
                           f"{self.program} exited with {proc.returncode}")
        return out.decode(errors="replace")

    async def check(self, script: str) -> None:
        await self.run("-c", "-f", "-", script=script)

    async def apply(self, script: str) -> None:
        await self.run("-f", "-", script=script)

    async def listing(self) -> str | None:
        """The gateway's table without counter values; None when it does not exist."""
        try:
            return await self.run("-s", "list", "table", "inet", TABLE)
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise

    async def counters(self) -> dict[str, tuple[int, int]]:
        return parse_counters(await self.run("-j", "list", "counters", "table", "inet", TABLE))


def _first_lines(text: str, n: int = 4) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[:n] if line.strip())


# --- comparing what was rendered with what the kernel holds (pure) ---------------------------

_EXPIRES = re.compile(r" expires [0-9hmsd]+")
_SELF_CHANGING_SET = re.compile(r"^\s*set (?:dns|conns)_")


def normalize_listing(listing: str) -> str:
    """`nft -s list table` output without what changes by itself: the elements of the timed
    DNS sets (refreshed in place) and of the connection-count sets (filled by packets), and
    expiry countdowns."""
    out: list[str] = []
    skipping = False
    for line in listing.splitlines():
        if _SELF_CHANGING_SET.match(line):
            skipping = True
            out.append(line)
            continue
        if skipping:
            stripped = line.strip()
            if stripped == "}":
                skipping = False
                out.append(line)
            elif stripped.startswith(("type ", "flags ", "timeout ", "size ")):
                out.append(line)
            continue  # the elements
        out.append(_EXPIRES.sub("", line))
    return "\n".join(out)


def _elements(block: str) -> int:
    """Top-level entries between the braces of one `elements = { ... }` block."""
    depth, count, seen = 0, 0, False
    for ch in block:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 1:
            count += 1
        elif not ch.isspace() and depth >= 1:
            seen = True
    return count + 1 if seen else 0


def manifest(text: str) -> dict[str, int]:
    """What a script or listing of the gateway's table declares: rules per chain, elements
    per set or map (timed DNS sets excepted), and each counter. Two texts with equal
    manifests hold the same structure; nft's own formatting does not matter."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        head = line.split()
        if len(head) >= 3 and head[0] in ("chain", "set", "map") and line.endswith("{"):
            name = f"{head[0]} {head[1]}"
            body: list[str] = []
            depth = 1
            i += 1
            while i < len(lines) and depth > 0:
                inner = lines[i]
                depth += inner.count("{") - inner.count("}")
                if depth > 0 or inner.strip() != "}":
                    body.append(inner)
                i += 1
            if head[0] == "chain":
                out[name] = count_rules("\n".join([line, *body, "}"]))
            elif not head[1].startswith("dns_"):
                joined = "\n".join(body)
                start = joined.find("elements = {")
                out[name] = _elements(joined[start + 11:]) if start >= 0 else 0
            continue
        if len(head) >= 2 and head[0] == "counter" and not line.startswith("counter name"):
            out[f"counter {head[1]}"] = 1
        i += 1
    return out


def _difference(want: dict[str, int], got: dict[str, int]) -> str:
    problems = []
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            problems.append(f"{key}: rendered {want.get(key, 'none')}, "
                            f"kernel has {got.get(key, 'none')}")
    return "; ".join(problems[:5])


# --- the service ------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # wall-clock time
    totals: dict[str, int]  # packets per drop class since the gateway first counted


@dataclass
class FirewallState:
    """What the status, the CLI and the admin page show."""

    healthy: bool = False
    enforcing: bool = False
    problem: str = ""  # why it is unhealthy, or what render-only could not check
    last_apply: float | None = None
    last_apply_ms: float | None = None
    last_reason: str = ""
    applies: int = 0
    failures: int = 0
    drift_repairs: int = 0
    last_drift: str = ""
    last_drift_at: float | None = None
    rules: int = 0
    elements: int = 0
    warnings: list[str] = field(default_factory=list)  # devices that could not be placed


class Firewall:
    def __init__(self, config: Config, store: Store, devices: Callable[[], Iterable[Device]],
                 on_change: Callable[[], None] = lambda: None,
                 on_health: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.store = store
        self.devices = devices
        self.on_change = on_change  # after a policy change is committed
        self.on_health = on_health  # when it turns healthy or unhealthy (systemd STATUS)
        self.nft = Nft(config.firewall.nft)
        self.state = FirewallState()
        self.profiles: dict[str, Profile] = {}
        self.inventory: Inventory | None = None
        self.script = ""  # the last good script
        self.applied: FirewallInput | None = None  # the input the kernel's table holds
        self._baseline = ""  # normalize_listing of the table right after a good apply
        self._fingerprint: tuple[Any, ...] = ()
        self._profiles_stamp: tuple[Any, ...] = ()
        self._answers: dict[str, dns.Answer] = {}
        self._base: dict[str, int] = dict.fromkeys(DROP_CLASSES, 0)
        self._current: dict[str, int] = dict.fromkeys(DROP_CLASSES, 0)
        self.history: deque[Sample] = deque(maxlen=HISTORY)
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.conntrack = shutil.which("conntrack", path="/usr/sbin:/sbin:/usr/bin:/bin")

    # -- what is shown ------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return self.config.network.uplink is not None

    @property
    def mode(self) -> str:
        return self.config.firewall.mode if self.configured else "off"

    def totals(self) -> dict[str, int]:
        return {c: self._base[c] + self._current[c] for c in DROP_CLASSES}

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "summary": self.summary(),
            **dataclasses.asdict(self.state),
            "dropped": self.totals(),
            "dns": {name: {"addresses": [str(a) for a in ans.addresses],
                           "ttl_s": round(ans.ttl), "ok": ans.ok}
                    for name, ans in sorted(self._answers.items())},
        }

    def summary(self) -> str:
        """One line for systemd's STATUS and the CLI."""
        if self.mode == "off":
            return "firewall off (network.uplink not set)"
        if self.mode == "render-only":
            return "firewall RENDER-ONLY: devices are NOT protected"
        if not self.state.healthy:
            return f"firewall UNHEALTHY: {self.state.problem}"
        return f"firewall enforcing ({self.state.rules} rules)"

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.configured:
            self.state.problem = "network.uplink is not set: nothing is firewalled"
            log.warning("firewall: %s", self.state.problem)
            return
        await self.apply("start")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._check_loop()),
                       loop.create_task(self._dns_loop())]

    async def stop(self) -> None:
        """The table stays: the devices stay protected while the daemon restarts."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    async def reconfigure(self, config: Config) -> None:
        was = self.configured
        self.config = config
        self.nft = Nft(config.firewall.nft)
        if self.configured and not was:
            await self.start()
        elif self.configured:
            await self.apply("config reloaded")
        elif was:
            await self.stop()
            self.state = FirewallState(problem="network.uplink is not set: nothing is "
                                       "firewalled")
            log.warning("firewall: network.uplink was removed; the last table applied stays "
                        "in force until removed (nft delete table inet %s)", TABLE)

    # -- policy changes -----------------------------------------------------------------

    def profile_names(self) -> list[str]:
        with contextlib.suppress(RenderError):
            self._load_profiles()
        return sorted(self.profiles)

    async def set_policy(self, device_id: str, policy: str, profile: str | None,
                         actor: str) -> dict[str, Any]:
        """Adopt (restricted/open with a profile), quarantine or block a device; applied
        before this returns. Audited, refusals too."""
        try:
            device = self.store.device(device_id)
            if device is None or device.status == "removed":
                raise PolicyError(f"no device {device_id!r}")
            if policy not in POLICIES:
                raise PolicyError(f"policy {policy!r} is not one of: {', '.join(POLICIES)}")
            names = self.profile_names()
            if profile is not None and profile not in names:
                raise PolicyError(f"no profile {profile!r} (profiles: {', '.join(names)})")
            declared = next((d for d in self.config.devices if d.id == device_id), None)
            if declared is not None and declared.policy is not None:
                raise PolicyError(f"{device_id}'s policy is set in the config file "
                                  f"({self.config.source}); change it there")
        except PolicyError as exc:
            self.store.audit(actor, "device.policy", "refused", target=device_id,
                             detail=str(exc))
            raise
        self.store.set_device_policy(device_id, policy, profile)
        self.store.audit(actor, "device.policy", "ok", target=device_id,
                         detail=f"{device.policy} -> {policy}, profile "
                                f"{profile or f'{device.kind} (its kind)'}")
        self.on_change()
        applied = await self.apply(f"policy of {device_id} changed") if self.configured else False
        return {"id": device_id, "policy": policy, "profile": profile, "applied": applied,
                "firewall": self.summary()}

    def device_login(self, address: str, username: str) -> None:
        """A broker login `<id>.<n>` connected from `address`: where that device is, if its
        address was not known yet (an enrolled device says its MAC, not its address).
        Addresses declared in the config file are left alone."""
        device = self.store.device(username.rpartition(".")[0])
        if device is None or device.status == "removed":
            return
        if any(d.id == device.id and d.ip for d in self.config.devices):
            return
        learned = learn_address(device.ip, address, self.config.network.iot_subnets)
        if learned is None:
            return
        self.store.set_device_addresses(device.id, device.mac, learned)
        self.store.audit("system", "device.address", "learned", target=device.id,
                         detail=f"{address}: its broker login {username} connected from it")
        log.info("firewall: %s is at %s (its broker login connected from there)", device.id,
                 address)
        self.on_change()  # the watcher applies the firewall with it

    # -- applying -----------------------------------------------------------------------

    def _load_profiles(self) -> dict[str, Profile]:
        try:
            self.profiles = load_profiles(*profile_dirs(self.config))
        except ProfileError as exc:  # keep the profiles that were good
            raise RenderError([f"profiles: {p}" for p in exc.problems]) from None
        return self.profiles

    def _resolutions(self) -> dict[str, Resolution]:
        return {n: a.resolution() for n, a in self._answers.items() if a.addresses}

    async def apply(self, reason: str) -> bool:
        """Render and apply the whole table; True when it is in force and verified."""
        async with self._lock:
            return await self._apply(reason)

    async def _apply(self, reason: str) -> bool:
        started = time.monotonic()
        self._fingerprint = self._inventory_fingerprint()
        self._profiles_stamp = self._profiles_fingerprint()
        try:
            profiles = self._load_profiles()
            inventory = build_input(self.config, self.devices(), profiles, self._resolutions())
            # Half a second for 1,000 devices here, more on a Pi: not on the event loop.
            script = await asyncio.to_thread(render_ruleset, inventory.input)
        except RenderError as exc:
            return self._failed(reason, "cannot render: " + "; ".join(exc.problems[:5]))
        self.inventory = inventory
        warnings, before = inventory.warnings(), set(self.state.warnings)
        for problem in warnings:
            if problem not in before:  # once, not at every apply
                log.warning("firewall: %s", problem)
        self.state.warnings = warnings
        if self.mode == "render-only":
            return await self._render_only(reason, script, inventory.input, started)
        try:
            await self._fold_counters()
            await self.nft.check(script)
        except NftError as exc:
            return self._failed(reason, f"nft rejected the ruleset: {exc}")
        try:
            await self.nft.apply(script)
        except NftError as exc:
            return self._failed(reason, f"nft could not apply the ruleset: {exc}")
        try:
            listing = await self.nft.listing()
        except NftError as exc:
            listing = None
            log.error("firewall: cannot read the table back: %s", exc)
        want = manifest(script)
        got = manifest(listing) if listing is not None else {}
        if listing is None or want != got:
            why = ("the table is missing after apply" if listing is None
                   else "the table reads back different: " + _difference(want, got))
            await self._roll_back()
            return self._failed(reason, why)
        changed = self._changed_devices(self.applied, inventory.input)
        self.script, self.applied = script, inventory.input
        self._baseline = normalize_listing(listing)
        self._current = dict.fromkeys(DROP_CLASSES, 0)  # a new table counts from zero
        self._succeeded(reason, want, started, enforcing=True)
        await self._end_connections(changed)
        return True

    async def _render_only(self, reason: str, script: str, inp: FirewallInput,
                           started: float) -> bool:
        """Check the script where this machine allows it; apply nothing."""
        problem = ""
        try:
            await self.nft.check(script)
        except NftError as exc:
            if "Operation not permitted" not in str(exc):
                return self._failed(reason, f"nft rejected the ruleset: {exc}")
            problem = "not checked by nft (needs CAP_NET_ADMIN)"
        self.script, self.applied = script, inp
        self._succeeded(reason, manifest(script), started, enforcing=False)
        self.state.problem = problem
        return True

    def _succeeded(self, reason: str, shape: dict[str, int], started: float, *,
                   enforcing: bool) -> None:
        """`shape`: the script's manifest (rules per chain, elements per set)."""
        s = self.state
        first_or_recovered = not s.healthy
        s.healthy, s.enforcing, s.problem = True, enforcing, ""
        s.last_apply, s.last_reason = time.time(), reason
        s.last_apply_ms = round((time.monotonic() - started) * 1000, 1)
        s.applies += 1
        s.rules = sum(v for k, v in shape.items() if k.startswith("chain "))
        s.elements = sum(v for k, v in shape.items() if k.startswith(("set ", "map ")))
        verb = "applied" if enforcing else "rendered (render-only: not applied)"
        log.info("firewall %s (%s): %d rules, %d set elements, %.0f ms", verb, reason,
                 s.rules, s.elements, s.last_apply_ms)
        if first_or_recovered or reason != "inventory changed":
            self.store.audit("system", "firewall.apply", "ok", detail=f"{reason}; {verb}; "
                             f"{s.rules} rules, {len(self.applied.devices) if self.applied else 0}"
                             " devices")
        if first_or_recovered:  # after the state is complete: the summary names the rules
            self.on_health()

    def _failed(self, reason: str, problem: str) -> bool:
        s = self.state
        was_healthy = s.healthy
        s.healthy, s.problem = False, problem
        s.failures += 1
        s.enforcing = bool(self.script) and self.mode == "enforce"  # the last good one
        kept = "the last good ruleset stays in force" if self.script else "no ruleset in force"
        log.error("firewall: %s (%s); %s", problem, reason, kept)
        self.store.audit("system", "firewall.apply", "failed", detail=f"{reason}: {problem}; "
                         f"{kept}"[:500])
        if was_healthy:
            self.on_health()
        return False

    async def _roll_back(self) -> None:
        if not self.script:
            return
        try:
            await self.nft.apply(self.script)
        except NftError as exc:
            log.error("firewall: rolling back to the last good ruleset failed: %s", exc)

    async def _fold_counters(self) -> None:
        """Before the table is replaced (counters restart at zero), keep what it counted."""
        with contextlib.suppress(NftError, ValueError):  # no table yet: nothing counted
            self._current = self._counter_values(await self.nft.counters())
        for c in DROP_CLASSES:
            self._base[c] += self._current[c]
        self._current = dict.fromkeys(DROP_CLASSES, 0)

    @staticmethod
    def _counter_values(raw: dict[str, tuple[int, int]]) -> dict[str, int]:
        return {c: raw.get(c, (0, 0))[0] for c in DROP_CLASSES}

    @staticmethod
    def _changed_devices(old: FirewallInput | None, new: FirewallInput) -> list[str]:
        """Addresses of devices whose allowance changed: their open connections must end."""
        if old is None:
            return []
        before = {d.id: (d.policy, d.profile) for d in old.devices}
        return sorted({str(ip) for d in new.devices if d.id in before
                       and before[d.id] != (d.policy, d.profile) for ip in d.ips})

    async def _end_connections(self, addresses: list[str]) -> None:
        """Delete the connection-tracking entries of devices whose policy changed; an
        established connection would otherwise outlive a tighter policy."""
        if not addresses or self.conntrack is None:
            return
        for address in addresses:
            for flag in ("-s", "-d"):
                proc = await asyncio.create_subprocess_exec(
                    self.conntrack, "-D", flag, address, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)

    # -- watching -----------------------------------------------------------------------

    def _inventory_fingerprint(self) -> tuple[Any, ...]:
        return tuple((d.id, d.ip, d.mac, d.kind, d.policy, d.profile, d.status)
                     for d in self.devices())

    def _profiles_fingerprint(self) -> tuple[Any, ...]:
        stamps = []
        for folder in profile_dirs(self.config):
            with contextlib.suppress(OSError):
                stamps += [(p.name, p.stat().st_mtime_ns, p.stat().st_size)
                           for p in sorted(folder.glob("*.toml"))]
        return tuple(stamps)

    async def _watch(self) -> None:
        """Re-apply when the inventory or a profile changed (debounced: a burst of
        changes, such as many devices added at once, is applied once)."""
        while True:
            await asyncio.sleep(WATCH_S)
            if self._lock.locked():
                continue
            if self._inventory_fingerprint() != self._fingerprint:
                await asyncio.sleep(WATCH_S)  # let the burst finish
                await self.apply("inventory changed")
            elif self._profiles_fingerprint() != self._profiles_stamp:
                await self.apply("profiles changed")

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.firewall.check_interval_s)
            await self.check()

    async def check(self) -> None:
        """Read the table back: repair drift, sample the counters, retry a failed apply."""
        async with self._lock:
            if self.mode != "enforce":
                return
            if not self.state.healthy:
                await self._apply("retry")
                return
            await self._check()

    async def _check(self) -> bool:
        """Under the lock: True when the table had drifted (and was re-applied)."""
        try:
            listing = await self.nft.listing()
            if listing is not None:
                self._current = self._counter_values(await self.nft.counters())
        except (NftError, ValueError) as exc:
            log.error("firewall: cannot read the table: %s", exc)
            return False
        self.history.append(Sample(time.time(), self.totals()))
        if listing is None:
            drift = "the table was deleted"
            self._current = dict.fromkeys(DROP_CLASSES, 0)  # gone with it
        elif normalize_listing(listing) != self._baseline:
            drift = "the table was changed"
        else:
            return False
        log.warning("firewall: %s outside the gateway; restoring it", drift)
        repaired = await self._apply("drift repair")
        self.state.drift_repairs += 1
        self.state.last_drift, self.state.last_drift_at = drift, time.time()
        self.store.audit("system", "firewall.drift", "repaired" if repaired else "failed",
                         detail=drift)
        return True

    async def _dns_loop(self) -> None:
        """Resolve the profiles' names; change only the timed sets when answers change."""
        due: dict[str, float] = {}
        while True:
            # Render-only applies nothing, so it asks no resolver either.
            names = (sorted(dns_names(self.applied))
                     if self.applied is not None and self.mode == "enforce" else [])
            now = time.monotonic()
            for name in list(self._answers):
                if name not in names:
                    del self._answers[name]
            todo = [n for n in names if due.get(n, 0.0) <= now]
            if todo:
                answers = await dns.resolve_all(todo)
                for name, answer in answers.items():
                    due[name] = answer.refresh_at
                    if answer.ok or name not in self._answers:
                        self._answers[name] = answer
                await self._update_dns()
            wait = min((due[n] for n in names if n in due), default=now + WATCH_S)
            await asyncio.sleep(min(max(0.2, wait - time.monotonic()), WATCH_S * 5))

    async def _update_dns(self) -> None:
        async with self._lock:
            if self.applied is None:
                return
            new = self._resolutions()
            if self.mode != "enforce":
                self.applied = dataclasses.replace(self.applied, dns=new)
                return
            try:
                script = render_dns_update(self.applied, new)
                if script:
                    await self.nft.apply(script)
            except (RenderError, NftError) as exc:
                # Most likely the table was changed behind our back: that is drift.
                log.warning("firewall: DNS update failed (%s)", exc)
                if not await self._check():
                    await self._apply("dns update failed")
                return
            self.applied = dataclasses.replace(self.applied, dns=new)
