"""(j) The Debian package: its installed size, and the daemon's start-to-READY time and RSS
when run from the package (Debian's Python libraries), each next to the same from a venv
(PyPI's libraries) in the same run.

Builds the .deb from this tree, installs it with apt, and starts the daemon the way its
systemd unit says (tests/package/harness.py): first the installed ExecStart, then the
venv's `home-gateway` in its place, same user, capabilities, config and state, turn and
turn about. The package is purged at the end. Needs root.

- installed size: the package's own files plus every Debian Python library beneath it
  (dpkg's Installed-Size; shared C libraries such as libssl3 not counted) vs the project
  and its PyPI dependencies installed into a fresh venv (`pip install .`; pip and
  setuptools not counted; wheels bundle their C libraries).
- start -> READY: exec until the READY=1 datagram, median of a few warm starts (the
  state, keys and broker files exist already, as at every boot after the first).
- RSS: the daemon's own (not Mosquitto's), right after READY.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import REPO, Figure, progress, rss_mb
from tests.integration.daemon_proc import NotifySocket, has
from tests.package.harness import (
    PACKAGE,
    Machine,
    build_both,
    installed,
    run,
    short_workdir,
)

ROUNDS = 5
QUICK_ROUNDS = 2
READY_TIMEOUT_S = 60.0
NOT_COUNTED = ("pip", "setuptools", "_distutils_hack", "pkg_resources")


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def python_depends(package: str) -> set[str]:
    """The python3-* packages `package` depends on, directly or not (the interpreter and its
    standard library not counted: the venv has them from outside too)."""
    found: set[str] = set()
    todo = [package]
    while todo:
        depends = run("dpkg-query", "-W", "-f", "${Depends},${Pre-Depends}", todo.pop()).stdout
        for alternatives in depends.split(","):
            for name in (a.split()[0].split(":")[0] for a in alternatives.split("|")
                         if a.strip()):
                if (name.startswith("python3-") and name not in found
                        and name not in ("python3-minimal", "python3-distutils")
                        and run("dpkg-query", "-W", name, check=False).returncode == 0):
                    found.add(name)
                    todo.append(name)
    return found


def package_bytes() -> int:
    """dpkg's Installed-Size (KiB) of the package and of the Python libraries beneath it."""
    names = [PACKAGE, *sorted(python_depends(PACKAGE))]
    sizes = run("dpkg-query", "-W", "-f", "${Installed-Size}\n", *names).stdout.split()
    progress(f"package: {len(names)} packages: {' '.join(names)}")
    return sum(int(s) for s in sizes) * 1024


def venv_bytes(work: Path) -> int:
    """The project and its PyPI dependencies in a fresh venv (Debian's python3)."""
    venv = work / "venv"
    run("/usr/bin/python3", "-m", "venv", str(venv))
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(REPO)], check=True, capture_output=True, timeout=600)
    (site,) = venv.glob("lib/python3*/site-packages")
    return sum(tree_bytes(p) if p.is_dir() else p.stat().st_size for p in site.iterdir()
               if not p.name.startswith(NOT_COUNTED))


def start_once(machine: Machine, notify: NotifySocket, exec_start: list[str] | None
               ) -> tuple[float, float]:
    """(seconds to READY=1, daemon RSS in MB right after), then stopped."""
    started = time.monotonic()
    gateway = machine.start_gateway(notify.path, exec_start)
    try:
        datagram = notify.wait_for(has("READY", gateway.pid), READY_TIMEOUT_S, "READY=1",
                                   lambda: None if gateway.popen.poll() is None
                                   else gateway.log.read_text()[-2000:])
        return datagram.at - started, rss_mb(gateway.pid)
    finally:
        if gateway.stop() != 0:
            raise RuntimeError(f"the daemon did not stop cleanly:\n{gateway.log.read_text()}")


def measure_sync(workdir: Path, quick: bool) -> list[Figure]:
    if installed():
        raise RuntimeError(f"{PACKAGE} is installed here already; this benchmark installs "
                           "and purges it, so it leaves an existing install alone")
    builds = build_both(workdir / "deb")
    venv_size = venv_bytes(workdir)
    short = short_workdir()
    machine = Machine(short)
    try:
        notify = NotifySocket(short / "notify")
        notify.path.chmod(0o777)
        try:
            machine.install(builds.current)
            deb_size = package_bytes()
            venv_start = [str(REPO / ".venv" / "bin" / "home-gateway"), "run", "--config",
                          "/etc/home-gateway/gateway.toml"]
            start_once(machine, notify, None)  # the first start makes keys and certificates
            results: dict[str, list[tuple[float, float]]] = {"deb": [], "venv": []}
            for i in range(QUICK_ROUNDS if quick else ROUNDS):
                results["deb"].append(start_once(machine, notify, None))
                results["venv"].append(start_once(machine, notify, venv_start))
                progress(f"package: round {i + 1}: deb {results['deb'][-1][0]:.2f} s, "
                         f"venv {results['venv'][-1][0]:.2f} s")
        finally:
            notify.close()
            machine.close()
    finally:
        shutil.rmtree(short, ignore_errors=True)
    ready = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    rss = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    n = len(results["deb"])
    return [
        Figure("installed size (MB; base: venv from PyPI)", deb_size / 1e6, venv_size / 1e6),
        Figure(f"start -> READY (s, median of {n}; base: venv)", ready["deb"], ready["venv"]),
        Figure(f"daemon RSS at READY (MB, median of {n}; base: venv)", rss["deb"],
               rss["venv"]),
    ]


async def measure(workdir: Path, quick: bool) -> list[Figure]:
    return await asyncio.to_thread(measure_sync, workdir, quick)
