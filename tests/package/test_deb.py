"""The Debian package for real: built, linted, installed with apt, run as its unit says,
upgraded and purged on this machine (see harness.py for how).

The package is built twice from this tree with `dpkg-buildpackage` under a clean PATH:
as the version in debian/changelog and as an older one to upgrade from. Debian's stock
mosquitto.service is started beside the gateway, as its own unit file says, to show that
the two brokers do not clash.

This installs home-gateway system-wide and purges it at the end, also after a failure; it
refuses to touch a machine that already has the package. Needs root and Debian's
packaging tools (./dev.sh installs them): skipped without, failed when CI=true. ./dev.sh
runs it once, after the two test worlds.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.mqtt import Endpoint
from tests.integration.daemon_proc import NotifySocket, has, mqtt_connect
from tests.needs import unavailable
from tests.package.harness import (
    ADMIN_URL,
    BROKER_PORT,
    CONFIG,
    PACKAGE,
    REPO,
    RUNTIME,
    STATE,
    UNIT,
    UNIT_DIR,
    USER,
    Builds,
    Machine,
    Running,
    add_device,
    build_both,
    cli,
    installed,
    missing_tools,
    mosquittos_of,
    new_machine,
    proc_status,
    restricted,
    run,
)

pytestmark = pytest.mark.package

READY_TIMEOUT_S = 60.0
UPDATES_TIMEOUT_S = 120.0
SIM_TIMEOUT_S = 60.0
ARTIFACTS = REPO / "artifacts" / "deb"
EXPOSURE_LIMIT = 2.5  # systemd-analyze security: "OK" and better
CAP_NET_ADMIN = 1 << 12
# What the daemon imports from Debian's packages (never pip): module -> package prefix.
LIBRARIES = ("aiohttp", "cryptography", "zeroconf", "jinja2", "argon2", "pyotp", "segno",
             "dns", "paho")


def require_packaging() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "the package tests install a .deb: they need root"
    elif missing := missing_tools():
        problem = f"the package tests need {', '.join(missing)} (./dev.sh installs them)"
    if problem is not None:
        unavailable(problem)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    require_packaging()
    built = build_both(tmp_path_factory.mktemp("deb"))
    # Kept for ./dev.sh, which lints it with the other release's lintian too.
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    shutil.copy(built.current, ARTIFACTS)
    return built


def test_the_package_builds_and_lintian_is_clean(builds: Builds) -> None:
    fields = run("dpkg-deb", "-f", str(builds.current), "Architecture", "Depends",
                 "Recommends").stdout
    assert "Architecture: all" in fields
    depends = fields.split("Depends:", 1)[1].split("Recommends:", 1)[0]
    for needed in ("mosquitto (>= 2.0.11)", "nftables", "python3-aiohttp",
                   "python3-asyncio-mqtt", "python3-zeroconf", "python3-cryptography"):
        assert needed in depends, fields
    assert "dnsmasq-base" in fields.split("Recommends:", 1)[1]
    done = run("lintian", "--fail-on", "error,warning", "--pedantic", str(builds.changes),
               check=False)
    problems = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert done.returncode == 0 and problems == [], done.stdout + done.stderr


def test_the_unit_scores_ok_with_systemd_analyze(builds: Builds, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", str(builds.current), str(tmp_path))
    (unit,) = tmp_path.glob(f"**/systemd/system/{UNIT}")
    copy = tmp_path / UNIT  # systemd-analyze names the unit after its file
    shutil.copy(unit, copy)
    done = run("systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert match, done.stdout[-2000:]
    assert float(match[1]) <= EXPOSURE_LIMIT and match[2] == "OK", done.stdout
    text = unit.read_text()
    for directive in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure",
                      f"User={USER}", "StateDirectory=home-gateway", "ProtectSystem=strict",
                      "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_NET_ADMIN\n",
                      "SystemCallFilter=@system-service"):
        assert directive in text, directive


def test_the_emulated_sandbox_has_teeth(builds: Builds, tmp_path: Path) -> None:
    """What the lifecycle test below runs the daemon under really refuses: chroot is not a
    @system-service call (SIGSYS), no memory may turn writable and executable, and no
    packet socket may be opened (RestrictAddressFamilies), even by root."""
    run("dpkg-deb", "-x", str(builds.current), str(tmp_path))
    (unit,) = tmp_path.glob(f"**/systemd/system/{UNIT}")
    text = unit.read_text()
    python = ["/usr/bin/python3", "-c"]
    fine = subprocess.run(restricted(text, [*python, "import os; os.getpid()"]), check=False)
    assert fine.returncode == 0
    chroot = subprocess.run(restricted(text, [*python, "import os; os.chroot('/')"]),
                            check=False)
    assert chroot.returncode == -signal.SIGSYS
    wx = ("import mmap; m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | "
          "mmap.PROT_EXEC)")
    refused = subprocess.run(restricted(text, [*python, wx]), capture_output=True, text=True,
                             check=False)
    assert refused.returncode == 1 and "PermissionError" in refused.stderr, refused.stderr
    packet = "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)"  # root may
    refused = subprocess.run(restricted(text, [*python, packet]), capture_output=True,
                             text=True, check=False)
    assert "Address family not supported" in refused.stderr, refused.stderr


@pytest.fixture
def machine(builds: Builds) -> Iterator[Machine]:
    if installed():
        pytest.fail(f"{PACKAGE} is already installed here: the package test installs and "
                    "purges it, so it leaves an existing install alone", pytrace=False)
    with new_machine() as machine:
        yield machine


def wait_ready(gateway: Running, notify: NotifySocket) -> None:
    def died() -> str | None:
        if gateway.popen.poll() is None:
            return None
        return f"exited {gateway.popen.returncode}:\n{gateway.log.read_text()[-4000:]}"
    notify.wait_for(has("READY", gateway.pid), READY_TIMEOUT_S, "READY=1", died)


def credential_works(device_id: str, username: str, password: str) -> None:
    endpoint = Endpoint("127.0.0.1", BROKER_PORT, username, password)
    assert mqtt_connect(endpoint, device_id, (f"devices/{device_id}/telemetry",
                                              b'{"power_w": 12.5}')) is None
    wrong = Endpoint("127.0.0.1", BROKER_PORT, username, password + "x")
    assert mqtt_connect(wrong, device_id) is not None  # refused


def admin_page_answers() -> None:
    with urllib.request.urlopen(ADMIN_URL, timeout=10) as response:
        assert response.status == 200
        assert "Home Gateway" in response.read().decode()


def command_round_trip(machine: Machine) -> None:
    """The package's own simulated plug, on a login of its own, answers a command sent with
    the command line: the whole path through the installed daemon and its broker."""
    sim = machine.spawn("sim devices", ["/usr/bin/home-gateway", "sim", "devices", "--count",
                                        "1", "--kinds", "plug", "--duration", "600"])
    deadline = time.monotonic() + SIM_TIMEOUT_S
    while True:  # until the simulator has registered its plug and the plug is online
        done = run("/usr/bin/home-gateway", "device", "command", "sim-plug-1", "set_power",
                   '{"on": true}', check=False, timeout=60)
        if done.returncode == 0 or time.monotonic() > deadline or sim.popen.poll() is not None:
            break
        time.sleep(0.5)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{sim.log.read_text()[-3000:]}"
    assert json.loads(done.stdout)["status"] == "ok", done.stdout
    assert sim.stop() == 0, sim.log.read_text()[-3000:]


def checked_updates() -> dict[str, Any]:
    """The running daemon's pending-upgrades check, once it has checked (it runs
    `apt-get -s dist-upgrade` at start, in the background)."""
    deadline = time.monotonic() + UPDATES_TIMEOUT_S
    while True:
        updates: dict[str, Any] = json.loads(cli("status").stdout)["updates"]
        if updates["checked_at"] is not None and not updates["checking"]:
            return updates
        assert time.monotonic() < deadline, f"no pending-upgrades check: {updates}"
        time.sleep(0.5)


def library_files() -> dict[str, str]:
    """Module -> the file Debian's Python imports it from (the MQTT client whichever
    generation the release has)."""
    code = ("import importlib, json\n"
            f"found = {{n: importlib.import_module(n).__file__ for n in {list(LIBRARIES)!r}}}\n"
            "try:\n    import aiomqtt as m\n"
            "except ImportError:\n    import asyncio_mqtt as m\n"
            "found[m.__name__] = m.__file__\n"
            "print(json.dumps(found))\n")
    result: dict[str, str] = json.loads(run("/usr/bin/python3", "-c", code).stdout)
    return result


def test_install_run_upgrade_and_purge(builds: Builds, machine: Machine) -> None:
    # -- install the previous build with apt: every library comes from Debian ----------
    done = machine.install(builds.previous)
    assert installed(), done.stdout
    for module, path in library_files().items():
        assert path.startswith("/usr/lib/python3/dist-packages/"), (module, path)
        assert run("dpkg", "-S", path).stdout.startswith("python3-"), (module, path)
    code = run("/usr/bin/python3", "-c", "import gateway; print(gateway.__file__)").stdout
    assert run("dpkg", "-S", code.strip()).stdout.startswith(f"{PACKAGE}:")

    # -- what the first install set up ----------------------------------------------------
    user = pwd.getpwnam(USER)
    assert user.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin"), user
    assert grp.getgrgid(user.pw_gid).gr_name == USER
    assert Path(f"/etc/systemd/system/multi-user.target.wants/{UNIT}").is_symlink()  # enabled
    assert str(CONFIG) in run("dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE).stdout
    assert 'mode = "enforce"' in CONFIG.read_text()
    run("systemd-analyze", "verify", str(UNIT_DIR / UNIT))
    assert cli("check-config").returncode == 0
    listed = set(run("dpkg", "-L", PACKAGE).stdout.split())

    # -- the current build is in a repository apt knows: an upgrade is pending -------------
    machine.offer(builds.current)

    # -- Debian's own mosquitto.service runs beside it ----------------------------------
    stock = machine.start_stock_mosquitto()
    time.sleep(1)
    assert stock.popen.poll() is None, stock.log.read_text()

    # -- run it as the unit says ------------------------------------------------------------
    notify = NotifySocket(machine.work / "notify")
    notify.path.chmod(0o777)
    try:
        gateway = machine.start_gateway(notify.path)
        wait_ready(gateway, notify)
        status = proc_status(gateway.pid)
        assert status["Uid"].split()[0] == str(user.pw_uid), status["Uid"]
        assert int(status["CapEff"], 16) == CAP_NET_ADMIN, status["CapEff"]
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"  # the system-call filter is on
        mountinfo = Path(f"/proc/{gateway.pid}/mountinfo").read_text().splitlines()
        mounts = [line.split() for line in mountinfo]
        assert {m[4]: m[5].split(",")[0] for m in mounts}["/"] == "ro"  # ProtectSystem=strict
        brokers = mosquittos_of(USER)
        assert brokers, "the embedded Mosquitto does not run as the service user"
        assert stock.popen.poll() is None  # both brokers run
        # secrets made on first start, private to the service user
        secret = STATE / "broker" / "gateway.secret"
        for path, mode in ((STATE, 0o700), (secret, 0o600)):
            assert (path.stat().st_mode & 0o777, path.stat().st_uid) == (mode, user.pw_uid)
        # the setup code: in the log (the journal) and from the command
        assert re.search(r"setup code \S{6,}", gateway.log.read_text()), gateway.log.read_text()
        assert "setup code" in cli("setup-code").stdout.lower()
        admin_page_answers()
        # a device credential works on its broker
        username, password = add_device("pkg-plug")
        credential_works("pkg-plug", username, password)
        assert "pkg-plug" in cli("device", "list").stdout
        command_round_trip(machine)
        # anyone else is told plainly (the control socket is the service user's)
        done = run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                   "/usr/bin/home-gateway", "status", check=False)
        assert done.returncode == 4, done
        assert done.stderr.strip() == (f"home-gateway: {RUNTIME}/control.sock: permission "
                                       "denied (run it as root, e.g. with sudo)"), done.stderr
        # the unprivileged daemon read apt's state: the gateway's own upgrade is pending
        updates = checked_updates()
        assert updates["state"] == "pending" and updates["installed"] != builds.version
        assert (PACKAGE, builds.version) in {(u["package"], u["candidate"])
                                             for u in updates["pending"]}, updates
        assert gateway.stop() == 0
        notify.collect(0.5)
        assert any(d.fields.get("STOPPING") == "1" for d in notify.received)

        # -- upgrade: the household's config change and the state are kept ------------------
        edited = CONFIG.read_text().replace('log_level = "info"', 'log_level = "debug"')
        assert edited != CONFIG.read_text()
        CONFIG.write_text(edited)
        database = STATE / "gateway.db"
        inode = database.stat().st_ino
        machine.install(builds.current)
        assert run("dpkg-query", "-W", "-f", "${Version}", PACKAGE).stdout == builds.version
        assert CONFIG.read_text() == edited
        assert database.stat().st_ino == inode and secret.exists()
        gateway = machine.start_gateway(notify.path)
        wait_ready(gateway, notify)
        assert "DEBUG" in gateway.log.read_text()  # the kept config is the one in use
        credential_works("pkg-plug", username, password)
        updates = checked_updates()  # no longer pending (Debian's own may be)
        assert updates["installed"] == builds.version
        assert PACKAGE not in {u["package"] for u in updates["pending"]}, updates
        assert gateway.stop() == 0

        # -- its one capability at work: the firewall, in a namespace of its own --------------
        netns = f"hg-pkg-{secrets.token_hex(3)}"
        run("ip", "netns", "add", netns)
        try:
            run("ip", "-n", netns, "link", "set", "lo", "up")
            for link, address in (("wan0", "198.51.100.2/24"), ("iot0", "192.168.50.1/24")):
                run("ip", "-n", netns, "link", "add", link, "type", "veth", "peer", "name",
                    f"{link}p")
                run("ip", "-n", netns, "addr", "add", address, "dev", link)
                run("ip", "-n", netns, "link", "set", link, "up")
            CONFIG.write_text(edited.replace("\n[network]\n", '\n[network]\nuplink = "wan0"\n'
                                             'iot = "iot0"\niot_subnets = ["192.168.50.0/24"]\n'))
            gateway = machine.start_gateway(notify.path, netns=netns)
            wait_ready(gateway, notify)
            status = json.loads(cli("firewall", "status", "--json").stdout)
            assert (status["mode"], status["healthy"]) == ("enforce", True), status
            table = run("ip", "netns", "exec", netns, "nft", "list", "table", "inet",
                        "home_gateway").stdout
            assert "iot0" in table and "wan0" in table, table[:2000]
            assert gateway.stop() == 0
        finally:
            run("ip", "netns", "del", netns, check=False)
            CONFIG.write_text(edited)
    finally:
        notify.close()
    stock.stop()

    # -- remove keeps the config, the state and the user ----------------------------------------
    listed |= set(run("dpkg", "-L", PACKAGE).stdout.split())
    run("apt-get", "remove", "-y", PACKAGE, timeout=600)
    status = run("dpkg-query", "-W", "-f", "${Status}", PACKAGE).stdout
    assert status == "deinstall ok config-files", status
    assert not Path("/usr/bin/home-gateway").exists()
    assert CONFIG.read_text() == edited and database.exists() and secret.exists()
    pwd.getpwnam(USER)

    # -- purge: no file, user or nft table is left ------------------------------------------
    run("nft", "add", "table", "inet", "home_gateway")  # as the daemon's firewall leaves it
    run("apt-get", "purge", "-y", PACKAGE, timeout=600)
    assert run("dpkg-query", "-W", PACKAGE, check=False).returncode != 0  # not even conffiles
    left = sorted(p for p in listed if Path(p).exists() and not Path(p).is_dir())
    left += [str(p) for p in (CONFIG.parent, STATE, RUNTIME) if p.exists()]
    if USER in {u.pw_name for u in pwd.getpwall()}:
        left.append(f"user {USER}")
    if USER in {g.gr_name for g in grp.getgrall()}:
        left.append(f"group {USER}")
    if run("nft", "list", "table", "inet", "home_gateway", check=False).returncode == 0:
        left.append("nft table inet home_gateway")
    assert left == [], left
