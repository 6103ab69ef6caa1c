"""Pending upgrades of the gateway and the packages it runs on, as apt sees them.

Installed as the Debian package `home-gateway`, the gateway is kept current by apt (and
unattended-upgrades), not by itself: it only reports. A check reads dpkg's status file
for what is installed (`home-gateway` and its dependency closure) and asks
`apt-get -s dist-upgrade` what an upgrade would install. `-s` simulates: it needs no
root and takes no lock (`Debug::NoLocking`), so it works for the unprivileged service user
under ProtectSystem=strict (apt keeps its cache in memory when it cannot write one). It
never refreshes the package lists (that needs root): the answer is as fresh as apt's own
daily update.

Checks run at start, hourly, and within a minute of apt or dpkg changing their state (the
mtimes of the status file and the lists folder, polled); one at a time. A failed check
is reported ("unknown" with its error), never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.aio import cancel_and_wait

log = logging.getLogger(__name__)

PACKAGE = "home-gateway"
STATUS_FILE = Path("/var/lib/dpkg/status")
LISTS_DIR = Path("/var/lib/apt/lists")
APT_GET: tuple[str, ...] = ("apt-get",)
SIMULATE = ("-s", "-o", "Debug::NoLocking=1", "dist-upgrade")
INTERVAL_S = 3600.0
POLL_S = 60.0
TIMEOUT_S = 300.0  # building apt's cache in memory takes a Raspberry Pi a while
NICE = 10  # apt-get runs this much nicer than the daemon (seconds of CPU on a Pi)
ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class Upgrade:
    """One package `apt-get -s dist-upgrade` would install."""

    package: str  # as apt prints it: "name", or "name:arch" for a foreign architecture
    installed: str | None  # None: a new install
    candidate: str
    origin: str  # where the candidate comes from: "Debian-Security:12/stable-security"
    security: bool

    def to_json(self) -> dict[str, Any]:
        return {"package": self.package, "installed": self.installed,
                "candidate": self.candidate, "origin": self.origin,
                "security": self.security}


# `Inst NAME [INSTALLED] (CANDIDATE ORIGIN, ORIGIN [ARCH])`, optionally followed by what
# apt says about broken dependencies (often a bare " []").
_INST = re.compile(r"Inst (?P<package>\S+)(?: \[(?P<installed>[^\]]*)\])? "
                   r"\((?P<candidate>\S+)(?: (?P<origin>.*?))? ?\[[^\]]*\]\)")


def parse_simulation(text: str) -> list[Upgrade]:
    """The `Inst` lines of `apt-get -s dist-upgrade` output (LC_ALL=C), in order."""
    upgrades = []
    for line in text.splitlines():
        found = _INST.match(line)
        if found is None:
            continue
        origin = (found["origin"] or "").strip()
        upgrades.append(Upgrade(found["package"], found["installed"] or None,
                                found["candidate"], origin,
                                "security" in origin.lower()))
    return upgrades


# -- dpkg's status file ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Installed:
    version: str
    depends: tuple[tuple[str, ...], ...]  # Depends and Pre-Depends: groups of alternatives
    provides: tuple[str, ...]


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """RFC 822 paragraphs: field names lower-cased, continuation lines joined."""
    fields: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, name = {}, None
        elif line[0] in " \t":
            if name is not None:
                fields[name] += "\n" + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            name = name.strip().lower()
            fields[name] = value.strip()
    if fields:
        yield fields


def relation_name(item: str) -> str:
    """`python3:any (>= 3.11~)` -> `python3`: no version constraint or arch qualifier."""
    return re.split(r"[([<]", item, maxsplit=1)[0].strip().split(":", 1)[0]


def relations(field: str) -> list[tuple[str, ...]]:
    """`a (>= 1) | b, c:any` -> [("a", "b"), ("c",)]."""
    groups = []
    for group in field.split(","):
        names = tuple(n for n in (relation_name(x) for x in group.split("|")) if n)
        if names:
            groups.append(names)
    return groups


def installed_packages(status: str) -> dict[str, Installed]:
    """What dpkg has installed, by package name (a multi-arch package's instances merged).

    Held packages ("hold ok installed") are installed too: a hold stops upgrades, not use.
    """
    found: dict[str, Installed] = {}
    for fields in stanzas(status):
        want, flag, state = ([*fields.get("status", "").split(), "", "", ""])[:3]
        if want not in ("install", "hold") or (flag, state) != ("ok", "installed"):
            continue  # removed, half-installed, config files only: not in use
        name = fields.get("package", "")
        if not name:
            continue
        depends = tuple(relations(fields.get("pre-depends", ""))
                        + relations(fields.get("depends", "")))
        provides = tuple(n for group in relations(fields.get("provides", "")) for n in group)
        if name in found:
            known = found[name]
            found[name] = Installed(known.version, known.depends + depends,
                                    known.provides + provides)
        else:
            found[name] = Installed(fields.get("version", ""), depends, provides)
    return found


def closure(packages: dict[str, Installed], root: str) -> set[str]:
    """`root` and every installed package it needs, transitively (see dependency_closure)."""
    if root not in packages:
        return set()
    providers: dict[str, set[str]] = {}
    for name, package in packages.items():
        for virtual in package.provides:
            providers.setdefault(virtual, set()).add(name)
    needed, todo = {root}, [root]
    while todo:
        for group in packages[todo.pop()].depends:
            for alternative in group:
                # Any installed alternative may be the one in use: each counts.
                real = {alternative} if alternative in packages else set()
                for name in real | providers.get(alternative, set()):
                    if name not in needed:
                        needed.add(name)
                        todo.append(name)
    return needed


def dependency_closure(status: str, root: str) -> set[str]:
    """From a dpkg status file's text: `root` and every installed package it needs through
    Depends and Pre-Depends, transitively. Every installed alternative of `a | b` counts,
    and a virtual package stands for the installed packages that provide it. Empty when
    `root` is not installed."""
    return closure(installed_packages(status), root)


# -- the service ----------------------------------------------------------------------

State = Literal["current", "pending", "not-packaged", "unknown"]


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome."""

    state: State  # not-packaged: a source or venv install; unknown: see `error`
    checked_at: float | None  # None: not checked yet
    installed: str | None = None  # the gateway package's version
    pending: tuple[Upgrade, ...] = ()  # upgrades of the gateway and what it needs
    error: str | None = None  # why the state is "unknown"


class AptError(Exception):
    pass


def apt_error(returncode: int, stderr: str) -> str:
    """apt's own `E:` lines name the problem; failing those, its last words."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("E:")]
    why = "; ".join(errors or lines[-1:]) or "no error message"
    return f"apt-get failed (exit {returncode}): {why}"[:ERROR_CHARS]


_Signature = tuple[tuple[int, int, int] | None, ...]


class UpdateService:
    """Keeps the latest check (`status()`); the checks run in the background."""

    def __init__(self, package: str = PACKAGE, apt_get: Sequence[str] = APT_GET,
                 status_file: Path = STATUS_FILE, lists_dir: Path = LISTS_DIR,
                 interval_s: float = INTERVAL_S, poll_s: float = POLL_S,
                 timeout_s: float = TIMEOUT_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.package = package
        self.apt_get = tuple(apt_get)
        self.status_file = status_file
        self.lists_dir = lists_dir
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.last = Check("unknown", None, error="not checked yet")
        self.checking = False
        self.checks = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:  # start-up does not wait for the first check
            self._task = asyncio.get_running_loop().create_task(self._run(), name="updates")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "state": last.state, "package": self.package, "installed": last.installed,
            "checked_at": last.checked_at, "checking": self.checking, "error": last.error,
            "pending": [u.to_json() for u in last.pending],
            "security": sum(1 for u in last.pending if u.security),
        }

    async def check(self) -> Check:
        """Check now (after a check already running, never beside it)."""
        async with self._lock:
            self.checking = True
            try:
                result = await self._check()
            except Exception as exc:  # whatever went wrong, the daemon carries on
                log.exception("updates: the check failed")
                error = f"check failed: {exc}"[:ERROR_CHARS]
                result = Check("unknown", self.clock(), error=error)
            finally:
                self.checking = False
            self._report(result)
            self.last = result
            self.checks += 1
            return result

    def _report(self, result: Check) -> None:
        """Log a change of state (not every hourly check)."""
        before = self.last
        if (result.state, result.pending, result.error) == (
                before.state, before.pending, before.error):
            return
        if result.state == "pending":
            security = sum(1 for u in result.pending if u.security)
            log.warning("updates: %d upgrade(s) pending for %s (%d security): %s",
                        len(result.pending), self.package, security,
                        ", ".join(f"{u.package} {u.candidate}" for u in result.pending))
        elif result.state == "unknown":
            log.warning("updates: cannot tell whether upgrades are pending: %s", result.error)
        elif result.state == "current":
            log.info("updates: %s %s and the packages it needs are up to date", self.package,
                     result.installed)
        else:
            log.info("updates: %s is not installed as a Debian package: apt does not update "
                     "this installation", self.package)

    async def _check(self) -> Check:
        now = self.clock()
        try:
            packages = await asyncio.to_thread(self._installed)
        except FileNotFoundError:  # no dpkg database at all: not a Debian system
            return Check("not-packaged", now)
        except OSError as exc:
            return Check("unknown", now,
                         error=f"cannot read {self.status_file}: {exc.strerror or exc}")
        own = packages.get(self.package)
        if own is None:  # a source or venv install: apt does not update it
            return Check("not-packaged", now)
        needed = closure(packages, self.package)
        try:
            output = await self._simulate()
        except AptError as exc:
            return Check("unknown", now, own.version, error=str(exc))
        pending = tuple(u for u in parse_simulation(output)
                        if u.package.split(":", 1)[0] in needed)
        return Check("pending" if pending else "current", now, own.version, pending)

    def _installed(self) -> dict[str, Installed]:
        return installed_packages(self.status_file.read_text(encoding="utf-8",
                                                             errors="replace"))

    async def _simulate(self) -> str:
        """apt-get's simulated dist-upgrade. The environment passes through (APT_CONFIG
        with it); LC_ALL=C keeps its output parseable."""
        env = {**os.environ, "LC_ALL": "C"}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.apt_get, *SIMULATE, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        except FileNotFoundError:
            raise AptError(f"{self.apt_get[0]} not found: is apt installed?") from None
        except OSError as exc:
            raise AptError(f"cannot run {self.apt_get[0]}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):  # a background chore: devices come first
            os.setpriority(os.PRIO_PROCESS, proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            raise AptError(f"apt-get did not finish within {self.timeout_s:g} s") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: never leave it running
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await proc.wait()
        if proc.returncode != 0:
            raise AptError(apt_error(proc.returncode or 0, err.decode(errors="replace")))
        return out.decode(errors="replace")

    def _signature(self) -> _Signature:
        """What changes when apt or dpkg did something: the status file is replaced, the
        lists folder gets new files."""
        marks: list[tuple[int, int, int] | None] = []
        for path in (self.status_file, self.lists_dir):
            try:
                st = os.stat(path)
            except OSError:
                marks.append(None)
            else:
                marks.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(marks)

    async def _run(self) -> None:
        while True:
            seen = await asyncio.to_thread(self._signature)  # before: a change during counts
            await self.check()
            due = time.monotonic() + self.interval_s
            while time.monotonic() < due:
                await asyncio.sleep(max(0.0, min(self.poll_s, due - time.monotonic())))
                if await asyncio.to_thread(self._signature) != seen:
                    break
