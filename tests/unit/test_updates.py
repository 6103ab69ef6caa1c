"""Pending upgrades: the parsers (pure) on real apt and dpkg text, and the service against the
real `apt-get` pointed (APT_CONFIG) at a fake apt/dpkg tree: an old home-gateway, a library
it needs, an unrelated package, and newer versions in a stable and a security archive. No
root, no network: the list files are written where `apt-get update` would put them."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.updates import (
    NICE,
    Check,
    UpdateService,
    Upgrade,
    dependency_closure,
    installed_packages,
    parse_simulation,
    relations,
)
from tests.polling import eventually

# As apt 2.6 prints it (bookworm, LC_ALL=C), run by a user without root: the note, the
# summary, Inst lines (one origin or several, " []" after those with broken dependencies
# on the way, a new install, a foreign architecture, an epoch), Conf and Remv lines.
SIMULATION = """\
NOTE: This is only a simulation!
      apt-get needs root privileges for real execution.
      Keep also in mind that locking is deactivated,
      so don't depend on the relevance to the real current situation!
Reading package lists...
Building dependency tree...
Reading state information...
Calculating upgrade...
The following NEW packages will be installed:
  foo
The following packages will be upgraded:
  libcap2 libgcrypt20-dev libnss-systemd libssl3 libc6:i386 foo
5 upgraded, 1 newly installed, 1 to remove and 0 not upgraded.
Remv oldthing [0.9-1]
Inst libcap2 [1:2.66-4+deb12u2+b2] (1:2.66-4+deb12u3+b1 Debian:12.15/oldstable [amd64])
Inst libnss-systemd [252.38-1~deb12u1] (252.39-1~deb12u2 Debian:12.15/oldstable [amd64]) []
Inst libgcrypt20-dev [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, \
Debian-Security:12/oldstable-security [amd64]) []
Inst libssl3 [3.0.11-1~deb12u1] (3.0.13-1~deb12u2 Debian-Security:12/stable-security [amd64])
Inst libc6:i386 [2.36-9+deb12u4] (2.36-9+deb12u7 Debian:12.5/stable [i386]) \
[libc6:amd64 on libc6:i386]
Inst foo (1.2 Debian:12.5/stable [all])
Inst bar [1.0] (1.1 [all])
Conf libcap2 (1:2.66-4+deb12u3+b1 Debian:12.15/oldstable [amd64])
Conf libssl3 (3.0.13-1~deb12u2 Debian-Security:12/stable-security [amd64])
Conf foo (1.2 Debian:12.5/stable [all])
"""


def test_parse_simulation_reads_every_inst_line() -> None:
    assert parse_simulation(SIMULATION) == [
        Upgrade("libcap2", "1:2.66-4+deb12u2+b2", "1:2.66-4+deb12u3+b1",
                "Debian:12.15/oldstable", False),
        Upgrade("libnss-systemd", "252.38-1~deb12u1", "252.39-1~deb12u2",
                "Debian:12.15/oldstable", False),
        Upgrade("libgcrypt20-dev", "1.10.1-3", "1.10.1-3+deb12u1",
                "Debian:12.15/oldstable, Debian-Security:12/oldstable-security", True),
        Upgrade("libssl3", "3.0.11-1~deb12u1", "3.0.13-1~deb12u2",
                "Debian-Security:12/stable-security", True),
        Upgrade("libc6:i386", "2.36-9+deb12u4", "2.36-9+deb12u7", "Debian:12.5/stable", False),
        Upgrade("foo", None, "1.2", "Debian:12.5/stable", False),  # a new install
        Upgrade("bar", "1.0", "1.1", "", False),  # a list without a Release file's names
    ]


def test_parse_simulation_of_nothing_to_do_and_of_garbage() -> None:
    assert parse_simulation("Reading package lists...\n0 upgraded, 0 newly installed, "
                            "0 to remove and 0 not upgraded.\n") == []
    assert parse_simulation("") == []
    assert parse_simulation("Inst\nInst x\nInst x [1]\nInst x (1.0\n Inst y (1 a [all])\n"
                            "Conf z (1 Debian:12/stable [all])\n") == []


# What dpkg writes (trimmed): multi-line fields, Pre-Depends, alternatives, version
# constraints, arch qualifiers, a virtual package, a dependency cycle (libc6, libgcc-s1),
# a held package, packages removed but for their config files or half-installed.
STATUS = """\
Package: home-gateway
Status: install ok installed
Priority: optional
Section: net
Installed-Size: 812
Maintainer: Home Gateway developers <dev@home-gateway.invalid>
Architecture: all
Version: 0.1.0-1
Depends: mosquitto (>= 2.0.11), nftables, python3-aiohttp (>= 3.8), python3:any,
 python3-asyncio-mqtt | python3-aiomqtt, python3-cryptography, mail-transport-agent
Recommends: conntrack, dnsmasq-base
Conffiles:
 /etc/home-gateway/gateway.toml 0123456789abcdef0123456789abcdef
Description: IoT gateway: device firewall, per-device MQTT logins, cloud relay
 Home Gateway sits between a household's IoT devices and everything else.
 .
 Depends: not-a-field (this is the description)

Package: mosquitto
Status: install ok installed
Architecture: amd64
Version: 2.0.11-1.2+deb12u1
Pre-Depends: adduser (>= 3.10)
Depends: libc6 (>= 2.34), libmosquitto1 (= 2.0.11-1.2+deb12u1), libssl3 (>= 3.0.0)

Package: nftables
Status: hold ok installed
Architecture: amd64
Version: 1.0.6-2+deb12u2
Depends: libnftables1 (= 1.0.6-2+deb12u2), libc6 (>= 2.34)

Package: libnftables1
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 1.0.6-2+deb12u2
Depends: libc6 (>= 2.34), libjansson4 (>= 2.14)

Package: python3-aiohttp
Status: install ok installed
Architecture: amd64
Version: 3.8.4-1
Depends: python3 (<< 3.12), python3 (>= 3.11~), python3-multidict, libc6 (>= 2.4)

Package: python3
Status: install ok installed
Architecture: amd64
Multi-Arch: allowed
Version: 3.11.2-1+b1
Pre-Depends: python3-minimal (= 3.11.2-1+b1)
Depends: python3.11 (>= 3.11.2-1~)
Provides: python3-profiler

Package: python3-minimal
Status: install ok installed
Architecture: amd64
Version: 3.11.2-1+b1
Pre-Depends: python3.11-minimal (>= 3.11.2-1~)

Package: python3.11-minimal
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u1
Pre-Depends: libc6 (>= 2.36)

Package: python3.11
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u1
Depends: python3.11-minimal (= 3.11.2-6+deb12u1), media-types | mime-support

Package: media-types
Status: install ok installed
Architecture: all
Version: 10.0.0

Package: python3-multidict
Status: install ok installed
Architecture: amd64
Version: 6.0.4-1+b1
Depends: python3 (<< 3.12), python3 (>= 3.11~), python3:any, libc6 (>= 2.4)

Package: python3-asyncio-mqtt
Status: install ok installed
Architecture: all
Version: 0.16.1-1
Depends: python3-paho-mqtt, python3:any

Package: python3-paho-mqtt
Status: install ok installed
Architecture: all
Version: 1.6.1-1
Depends: python3:any

Package: python3-cryptography
Status: install ok installed
Architecture: amd64
Version: 38.0.4-3
Depends: python3-cffi-backend-api-min (<= 9729), python3-cffi-backend-api-max (>= 9729),
 python3 (<< 3.12), python3 (>= 3.11~), libc6 (>= 2.14), libssl3 (>= 3.0.0)

Package: python3-cffi-backend
Status: install ok installed
Architecture: amd64
Version: 1.15.1-5+b1
Provides: python3-cffi-backend-api-9729, python3-cffi-backend-api-max (= 10495),
 python3-cffi-backend-api-min (= 9729)
Depends: python3 (<< 3.12), python3 (>= 3.11~), libc6 (>= 2.14), libffi8 (>= 3.4)

Package: exim4-daemon-light
Status: install ok installed
Architecture: amd64
Version: 4.96-15+deb12u4
Provides: mail-transport-agent
Depends: exim4-base (>= 4.96)

Package: postfix
Status: deinstall ok config-files
Architecture: amd64
Version: 3.7.10-0+deb12u1
Provides: mail-transport-agent
Depends: libc6 (>= 2.34)

Package: exim4-base
Status: install ok installed
Architecture: amd64
Version: 4.96-15+deb12u4

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u4
Depends: libgcc-s1

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 2.36-9+deb12u4
Depends: libgcc-s1, libidn2-0

Package: libgcc-s1
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 12.2.0-14
Depends: gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)

Package: gcc-12-base
Status: install ok installed
Architecture: amd64
Version: 12.2.0-14

Package: libidn2-0
Status: install ok half-configured
Architecture: i386
Version: 2.3.3-1+b1

Package: libssl3
Status: install ok installed
Architecture: amd64
Version: 3.0.11-1~deb12u1
Depends: libc6 (>= 2.34)

Package: libffi8
Status: install ok installed
Architecture: amd64
Version: 3.4.4-1

Package: libjansson4
Status: install ok installed
Architecture: amd64
Version: 2.14-2

Package: libmosquitto1
Status: install ok installed
Architecture: amd64
Version: 2.0.11-1.2+deb12u1
Depends: libc6 (>= 2.34), libcjson1 (>= 1.7.10)

Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134

Package: cowsay
Status: install ok installed
Architecture: all
Version: 3.03+dfsg2-8
Depends: perl

Package: perl
Status: install ok installed
Architecture: amd64
Version: 5.36.0-7+deb12u1
"""

NEEDED = {
    "home-gateway", "mosquitto", "adduser", "libmosquitto1", "libssl3", "libc6", "libgcc-s1",
    "gcc-12-base", "nftables", "libnftables1", "libjansson4", "python3-aiohttp", "python3",
    "python3-minimal", "python3.11-minimal", "python3.11", "media-types",
    "python3-multidict", "python3-asyncio-mqtt", "python3-paho-mqtt",
    "python3-cryptography", "python3-cffi-backend", "libffi8", "exim4-daemon-light",
    "exim4-base",
}


def test_dependency_closure_follows_every_kind_of_relation() -> None:
    # Not in it: cowsay and perl (nothing needs them); postfix and libidn2-0 (not installed:
    # config files only, half-configured); libcjson1 and mime-support (not installed at all);
    # Recommends (conntrack); words in a description.
    assert dependency_closure(STATUS, "home-gateway") == NEEDED


def test_dependency_closure_of_a_leaf_a_cycle_and_a_missing_root() -> None:
    assert dependency_closure(STATUS, "media-types") == {"media-types"}
    assert dependency_closure(STATUS, "libgcc-s1") == {"libgcc-s1", "libc6", "gcc-12-base"}
    assert dependency_closure(STATUS, "postfix") == set()  # config files only
    assert dependency_closure(STATUS, "not-there") == set()
    assert dependency_closure("", "home-gateway") == set()


def test_installed_packages_and_relations() -> None:
    packages = installed_packages(STATUS)
    assert packages["home-gateway"].version == "0.1.0-1"
    assert packages["nftables"].version == "1.0.6-2+deb12u2"  # held: installed all the same
    assert "postfix" not in packages and "libidn2-0" not in packages
    assert packages["python3"].depends == (("python3-minimal",), ("python3.11",))
    assert relations("a (>= 1) | b:any, c:amd64 (<< 2~),, d [amd64] | e <!nocheck>") == [
        ("a", "b"), ("c",), ("d", "e")]


# -- the service against the real apt-get --------------------------------------------------

APT_GET = shutil.which("apt-get")
needs_apt = pytest.mark.skipif(APT_GET is None, reason="apt-get is not installed")

STABLE = "deb.example.invalid_debian_dists_bookworm"
SECURITY = "security.example.invalid_debian-security_dists_bookworm-security"
FAKE_STATUS = """\
Package: home-gateway
Status: install ok installed
Priority: optional
Section: net
Installed-Size: 100
Maintainer: Home Gateway developers <dev@home-gateway.invalid>
Architecture: all
Version: 0.1.0-1
Depends: libfoo1 (>= 1.0), python3:any
Description: IoT gateway

Package: libfoo1
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 100
Maintainer: Foo <foo@example.invalid>
Architecture: amd64
Multi-Arch: same
Version: 1.0-1
Description: the foo library

Package: python3
Status: install ok installed
Priority: optional
Section: python
Installed-Size: 100
Maintainer: Python <python@example.invalid>
Architecture: amd64
Multi-Arch: allowed
Version: 3.11.2-1+b1
Description: interactive high-level object-oriented language

Package: cowsay
Status: install ok installed
Priority: optional
Section: games
Installed-Size: 100
Maintainer: Cow <cow@example.invalid>
Architecture: all
Version: 3.03+dfsg2-8
Description: configurable talking cow
"""


def package(name: str, version: str, arch: str, depends: str = "",
            multi_arch: str = "") -> str:
    """A Packages stanza. What apt hashes to tell builds apart (Installed-Size, Depends,
    Multi-Arch) matches the status file's, else the same version counts as another build."""
    return (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
            + (f"Multi-Arch: {multi_arch}\n" if multi_arch else "")
            + "Maintainer: Someone <someone@example.invalid>\nInstalled-Size: 100\n"
            + (f"Depends: {depends}\n" if depends else "")
            + f"Filename: pool/main/{name[0]}/{name}/{name}_{version}_{arch}.deb\n"
              f"Size: 1000\nSHA256: {'0' * 64}\nSection: misc\nPriority: optional\n"
              f"Description: {name}\n\n")


def release(label: str, suite: str, version: str, codename: str) -> str:
    return (f"Origin: Debian\nLabel: {label}\nSuite: {suite}\nVersion: {version}\n"
            f"Codename: {codename}\nDate: Sat, 10 Feb 2024 10:00:00 UTC\n"
            f"Architectures: amd64 arm64\nComponents: main\n"
            f"Description: {label} {version}\n")


@pytest.fixture
def apt_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A whole apt and dpkg state in tmp_path, made apt's own through APT_CONFIG (apt reads
    nothing of this machine's: not its sources, lists, preferences or apt.conf.d)."""
    root = tmp_path / "apt"
    for folder in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d",
                   "lists/partial", "cache/archives/partial", "dpkg"):
        (root / folder).mkdir(parents=True)
    (root / "dpkg/status").write_text(FAKE_STATUS)
    (root / "etc/sources.list").write_text(
        "deb [trusted=yes] http://deb.example.invalid/debian bookworm main\n"
        "deb [trusted=yes] http://security.example.invalid/debian-security "
        "bookworm-security main\n")
    # Where `apt-get update` would leave them: the Release files give the origin text apt
    # prints (Label:Version/Suite), the Packages files the versions on offer.
    lists = root / "lists"
    (lists / f"{STABLE}_Release").write_text(
        release("Debian", "stable", "12.5", "bookworm"))
    (lists / f"{SECURITY}_Release").write_text(
        release("Debian-Security", "stable-security", "12", "bookworm-security"))
    (lists / f"{STABLE}_main_binary-amd64_Packages").write_text(
        package("home-gateway", "0.2.0-1", "all", "libfoo1 (>= 1.0), python3:any")
        + package("libfoo1", "1.0-1", "amd64", multi_arch="same")
        + package("python3", "3.11.2-1+b1", "amd64", multi_arch="allowed")
        + package("cowsay", "3.03+dfsg2-9", "all"))
    (lists / f"{SECURITY}_main_binary-amd64_Packages").write_text(
        package("libfoo1", "1.0-1+deb12u1", "amd64", multi_arch="same"))
    config = root / "apt.conf"
    config.write_text("\n".join([
        f'Dir "{root}/";',
        f'Dir::State::status "{root}/dpkg/status";',
        f'Dir::State::Lists "{lists}/";',
        f'Dir::Etc::SourceList "{root}/etc/sources.list";',
        f'Dir::Etc::SourceParts "{root}/etc/sources.list.d/";',
        f'Dir::Etc::Parts "{root}/etc/apt.conf.d/";',
        f'Dir::Etc::Main "{root}/etc/apt.conf";',
        f'Dir::Etc::Preferences "{root}/etc/preferences";',
        f'Dir::Etc::PreferencesParts "{root}/etc/preferences.d/";',
        f'Dir::Cache "{root}/cache/";',
        # No cache files: apt trusts one while its lists keep their size and mtime second,
        # which a test's rewritten list can (the daemon's user cannot write one anyway).
        'Dir::Cache::pkgcache "";',
        'Dir::Cache::srcpkgcache "";',
        'APT::Architecture "amd64";',
        'APT::Architectures { "amd64"; };',
        ""]))
    monkeypatch.setenv("APT_CONFIG", str(config))
    return root


def service(root: Path, poll_s: float = 60.0) -> UpdateService:
    return UpdateService(status_file=root / "dpkg/status", lists_dir=root / "lists",
                         poll_s=poll_s)


PENDING = [  # in apt's order: what a package needs first
    {"package": "libfoo1", "installed": "1.0-1", "candidate": "1.0-1+deb12u1",
     "origin": "Debian-Security:12/stable-security", "security": True},
    {"package": "home-gateway", "installed": "0.1.0-1", "candidate": "0.2.0-1",
     "origin": "Debian:12.5/stable", "security": False},
]


@needs_apt
async def test_the_real_apt_get_reports_the_gateways_upgrades_only(apt_tree: Path) -> None:
    # apt itself offers three upgrades, the unrelated cowsay among them ...
    done = await asyncio.to_thread(
        subprocess.run, [APT_GET or "apt-get", "-s", "-o", "Debug::NoLocking=1", "dist-upgrade"],
        capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"})
    out = done.stdout
    assert "Inst cowsay [3.03+dfsg2-8] (3.03+dfsg2-9 Debian:12.5/stable [all])" in out
    # ... and the gateway reports the two that concern it, the security one marked.
    updates = service(apt_tree)
    before = time.time()
    result = await updates.check()
    assert result.state == "pending", result
    status = updates.status()
    assert status["pending"] == PENDING
    assert (status["state"], status["installed"], status["security"], status["error"]) == (
        "pending", "0.1.0-1", 1, None)
    assert status["checked_at"] is not None and status["checked_at"] >= before
    assert status["checking"] is False and status["package"] == "home-gateway"


@needs_apt
async def test_a_change_by_apt_is_noticed_and_rechecked(apt_tree: Path) -> None:
    updates = service(apt_tree, poll_s=0.05)
    await updates.start()
    try:
        await eventually(lambda: updates.last.state == "pending", 30, "the first check")
        checks = updates.checks
        await asyncio.sleep(0.3)
        assert updates.checks == checks  # nothing changed: no check before the hour
        # apt upgraded what was pending: dpkg's status file is replaced.
        status = apt_tree / "dpkg/status"
        new = status.with_name("status-new")
        new.write_text(FAKE_STATUS.replace("Version: 0.1.0-1", "Version: 0.2.0-1")
                       .replace("Version: 1.0-1\n", "Version: 1.0-1+deb12u1\n"))
        os.replace(new, status)
        await eventually(lambda: updates.last.state == "current", 30, "a check after the change")
        assert updates.status() == {
            "state": "current", "package": "home-gateway", "installed": "0.2.0-1",
            "checked_at": updates.last.checked_at, "checking": False, "error": None,
            "pending": [], "security": 0}
        # `apt-get update` brought new lists (downloaded into partial/, then moved in):
        # checked again.
        checks = updates.checks
        name = f"{SECURITY}_main_binary-amd64_Packages"
        partial = apt_tree / "lists/partial" / name
        partial.write_text(package("libfoo1", "1.0-1+deb12u2", "amd64", multi_arch="same"))
        os.replace(partial, apt_tree / "lists" / name)
        await eventually(lambda: updates.checks > checks, 30, "a check after the lists changed")
        await eventually(lambda: updates.last.state == "pending", 30, "the new upgrade")
        assert [u.candidate for u in updates.last.pending] == ["1.0-1+deb12u2"]
    finally:
        await updates.stop()


async def test_not_packaged_when_dpkg_does_not_list_the_gateway(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(FAKE_STATUS.replace("home-gateway\nStatus: install ok installed",
                                          "home-gateway\nStatus: deinstall ok config-files"))
    # apt-get is not even run (it is missing here): a source or venv install has nothing
    # for it to upgrade.
    missing = (str(tmp_path / "no-apt-get"),)
    updates = UpdateService(apt_get=missing, status_file=status, lists_dir=tmp_path)
    assert (await updates.check()).state == "not-packaged"
    updates.status_file = tmp_path / "no-dpkg-here"  # not a Debian system at all
    result = await updates.check()
    assert (result.state, result.error, result.pending) == ("not-packaged", None, ())


async def test_failures_are_reported_as_unknown_with_the_reason(tmp_path: Path,
                                                                apt_tree: Path) -> None:
    status = apt_tree / "dpkg/status"
    updates = UpdateService(apt_get=(str(tmp_path / "no-apt-get"),), status_file=status,
                            lists_dir=apt_tree / "lists")
    result = await updates.check()
    assert result.state == "unknown" and result.installed == "0.1.0-1"
    assert result.error == f"{tmp_path / 'no-apt-get'} not found: is apt installed?"
    assert updates.status()["error"] == result.error

    slow = tmp_path / "slow-apt-get"
    slow.write_text("import time\ntime.sleep(30)\n")
    updates = UpdateService(apt_get=(sys.executable, str(slow)), status_file=status,
                            timeout_s=0.5)
    started = time.monotonic()
    result = await updates.check()
    assert time.monotonic() - started < 10
    assert (result.state, result.error) == ("unknown", "apt-get did not finish within 0.5 s")

    unreadable = UpdateService(status_file=tmp_path)  # a folder
    result = await unreadable.check()
    assert result.state == "unknown" and result.error is not None
    assert result.error.startswith(f"cannot read {tmp_path}: ")


@needs_apt
async def test_apts_own_error_is_named(apt_tree: Path) -> None:
    (apt_tree / "etc/sources.list").write_text("deb this is not a source line\n")
    result = await service(apt_tree).check()
    assert result.state == "unknown" and result.error is not None
    assert result.error.startswith("apt-get failed (exit 100): E: "), result.error
    assert "sources.list" in result.error


async def test_one_check_at_a_time_and_a_crash_is_contained(
        tmp_path: Path, apt_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "runs.log"
    fake = tmp_path / "fake-apt-get"
    fake.write_text(f"import os, time\nopen({str(log)!r}, 'a').write('start\\n')\n"
                    f"time.sleep(0.3)\nopen({str(log)!r}, 'a').write('end\\n')\n"
                    f"open({str(tmp_path / 'nice')!r}, 'w').write(str(os.nice(0)))\n"
                    "print('Inst libfoo1 [1.0-1] (1.0-1+deb12u1 Debian-Security:12/"
                    "stable-security [amd64])')\n")
    updates = UpdateService(apt_get=(sys.executable, str(fake)),
                            status_file=apt_tree / "dpkg/status")
    results = await asyncio.gather(*(updates.check() for _ in range(3)))
    assert log.read_text() == "start\nend\n" * 3  # one after the other, never beside
    assert int((tmp_path / "nice").read_text()) >= os.nice(0) + NICE  # a background chore
    assert [r.state for r in results] == ["pending"] * 3
    assert updates.status()["security"] == 1

    def broken(text: str) -> list[Upgrade]:
        raise ValueError("unexpected output")

    monkeypatch.setattr("gateway.updates.parse_simulation", broken)
    result = await updates.check()
    assert (result.state, result.error) == ("unknown", "check failed: unexpected output")
    assert isinstance(updates.last, Check) and updates.last is result
