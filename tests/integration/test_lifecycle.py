"""The daemon as systemd sees it: a real `python -m gateway run` process with a real
Mosquitto child, a real sd_notify datagram socket, real signals and the real CLI.

Every test starts its own gateway on a free loopback port with its state in `tmp_path`;
the short paths (notify socket, control socket) live in a fresh folder under /tmp because
AF_UNIX paths are limited to 108 bytes. Whatever happens, the daemon and the Mosquitto it
started are killed by PID at the end of the test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from typing import Any

import pytest

from gateway.mqtt import login_refused
from tests.integration.daemon_proc import (
    EXIT_TIMEOUT_S,
    LEVELS,
    MOSQUITTO,
    WATCHDOG_USEC,
    Gateway,
    accepts_tcp,
    brokers_using,
    cmdline,
    has,
    mqtt_connect,
    process_state,
    sha256,
)
from tests.polling import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not MOSQUITTO.exists(), reason=f"{MOSQUITTO} is not installed"),
]


# --- the tests ------------------------------------------------------------------------------------


def test_ready_only_once_the_broker_accepts_the_gateway_credential(gateway: Gateway) -> None:
    ready = gateway.start()
    # Straight away, one attempt, no retry: READY must mean "usable now".
    started = time.monotonic()
    assert mqtt_connect(gateway.gateway_endpoint(), "lifecycle-probe") is None
    assert time.monotonic() - started < 3.0

    status = ready.fields.get("STATUS", "")
    assert re.search(r"[A-Za-z]{3,} ", status), f"STATUS should be a sentence: {ready.fields}"
    assert status.startswith("Running"), ready.fields

    refused = mqtt_connect(gateway.endpoint(), "lifecycle-anonymous")
    assert refused is not None, "an anonymous client was let in"
    assert login_refused(refused), refused

    secret = gateway.state_dir / "broker" / "gateway.secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_only_the_daemon_talks_to_systemd(gateway: Gateway) -> None:
    gateway.start()
    gateway.signal(signal.SIGTERM)
    assert gateway.proc is not None
    assert gateway.proc.wait(EXIT_TIMEOUT_S) == 0
    gateway.notify.collect(0.1)
    strangers = [d for d in gateway.notify.received if d.pid != gateway.pid]
    assert strangers == [], [(d.pid, d.fields) for d in strangers]


def test_watchdog_pings_at_half_the_timeout(gateway: Gateway) -> None:
    gateway.start()
    pings = [d for d in gateway.notify.collect(2.0) if d.fields.get("WATCHDOG") == "1"]
    expected = WATCHDOG_USEC / 2 / 1e6
    assert 6 <= len(pings) <= 14, f"{len(pings)} pings in 2 s, expected ~{2 / expected:.0f}"
    gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
    assert 0.1 <= statistics.median(gaps) <= 0.35, gaps
    assert {d.pid for d in pings} == {gateway.pid}, "pings must come from the main process"


def test_sigterm_stops_cleanly_and_takes_the_broker_along(gateway: Gateway) -> None:
    gateway.start()
    broker_pid = gateway.status()["broker"]["pid"]
    assert broker_pid in brokers_using(gateway.state_dir)

    gateway.signal(signal.SIGTERM)
    gateway.notify.wait_for(has("STOPPING", gateway.pid), EXIT_TIMEOUT_S, "STOPPING=1")
    assert gateway.proc is not None
    assert gateway.proc.wait(EXIT_TIMEOUT_S) == 0, gateway.stderr()

    # Stopped and reaped by the daemon before it exited: not running, not a zombie.
    assert process_state(broker_pid) is None, cmdline(broker_pid)
    assert brokers_using(gateway.state_dir) == []
    assert not accepts_tcp(gateway.port)


def test_sighup_rejects_an_invalid_config_and_applies_a_valid_one(gateway: Gateway) -> None:
    # `status` must read a config to find the control socket, and the live file is about
    # to be broken: keep a valid copy pointing at the same state and runtime dirs.
    status_config = gateway.write_config(path=gateway.root / "status.toml")
    gateway.start()

    valid = gateway.text()
    assert valid.endswith("\n")
    bad_line = valid.count("\n") + 1
    gateway.config.write_text(valid + "[[devices]\n")
    gateway.reload()

    assert gateway.proc is not None and gateway.proc.poll() is None
    problem = [line for line in gateway.stderr().splitlines()
               if "TOML syntax error" in line and f"line {bad_line}," in line]
    assert problem, gateway.stderr()
    assert str(gateway.config) in problem[0]
    assert gateway.status(status_config)["healthy"] is True

    gateway.write_config('\n[[devices]]\nid = "hall-sensor"\nkind = "sensor"\n')
    gateway.reload()

    def hall_sensor() -> dict[str, Any] | None:
        done = gateway.device("list", "--json")
        assert done.returncode == 0, done.stderr
        return next((d for d in json.loads(done.stdout) if d["id"] == "hall-sensor"), None)

    device = wait_until(hall_sensor, 5, "hall-sensor in `device list`")
    assert device["status"] == "adopted", device
    assert device["kind"] == "sensor"
    assert gateway.status()["healthy"] is True


PROBLEM = re.compile(
    r"^(?P<path>.+?):(?P<key>[\w.\[\]]+): (?P<problem>.+) \(expected (?P<exp>.+)\)$")


def test_check_config_and_run_report_every_problem(gateway: Gateway) -> None:
    done = gateway.cli("check-config", "--config", str(gateway.config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{gateway.config}: OK"

    bad = gateway.root / "bad.toml"
    bad.write_text(gateway.text().replace(f"port = {gateway.port}", "port = 70000")
                   .replace("[gateway]\n", '[gateway]\ncolour = "blue"\n'))
    checked = gateway.cli("check-config", "--config", str(bad))
    assert checked.returncode == 2
    lines = checked.stderr.splitlines()
    matches = [PROBLEM.match(line) for line in lines]
    assert all(matches), lines
    assert {m["path"] for m in matches if m} == {str(bad)}
    by_key = {m["key"]: m for m in matches if m}
    assert set(by_key) == {"broker.listeners[0].port", "gateway.colour"}, lines
    assert "70000" in by_key["broker.listeners[0].port"]["problem"]
    assert "65535" in by_key["broker.listeners[0].port"]["exp"]
    assert "state_dir" in by_key["gateway.colour"]["exp"]

    run = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(bad)],
                         env=gateway.daemon_env(), cwd=gateway.root, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 2
    assert run.stderr.splitlines() == lines
    # Started nothing: no notification, no state, no broker, nothing listening.
    assert gateway.notify.collect(0.2) == []
    assert not gateway.state_dir.exists()
    assert brokers_using(gateway.state_dir) == []
    assert not accepts_tcp(gateway.port)


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "terminal"])
def test_log_lines_leave_timestamps_to_the_journal(gateway: Gateway, journal: bool) -> None:
    gateway.start(journal=journal)
    gateway.signal(signal.SIGTERM)
    assert gateway.proc is not None
    assert gateway.proc.wait(EXIT_TIMEOUT_S) == 0

    lines = [line for line in gateway.stderr().splitlines() if line.strip()]
    assert any("gateway ready" in line for line in lines), lines
    stamp = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} "
    pattern = re.compile(("" if journal else stamp) + LEVELS + r" \S+: ")
    assert [line for line in lines if not pattern.match(line)] == []


def test_a_store_from_a_newer_version_is_refused_untouched(gateway: Gateway) -> None:
    gateway.state_dir.mkdir(mode=0o700)
    db = gateway.state_dir / "gateway.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executescript("CREATE TABLE schema_version(version INTEGER);"
                           "INSERT INTO schema_version VALUES (999);")
    before = sha256(db)

    run = subprocess.run([sys.executable, "-m", "gateway", "run", "--config",
                          str(gateway.config)], env=gateway.daemon_env(), cwd=gateway.root,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert "newer" in run.stderr, run.stderr
    assert sha256(db) == before
    assert not any(d.fields.get("READY") == "1" for d in gateway.notify.collect(0.2))
    assert brokers_using(gateway.state_dir) == []


def test_device_add_and_remove_through_the_running_daemon(gateway: Gateway) -> None:
    gateway.start()
    added = gateway.device("add", "kitchen-plug", "--kind", "plug")
    assert added.returncode == 0, added.stderr
    shown = dict(re.findall(r"^(username|password): *(\S+)$", added.stdout, re.MULTILINE))
    assert set(shown) == {"username", "password"}, added.stdout
    plug = gateway.endpoint(shown["username"], shown["password"])

    accepted = gateway.status()["messages"]["accepted"]
    assert mqtt_connect(plug, "kitchen-plug",
                        publish=("devices/kitchen-plug/telemetry", b'{"power_w": 5}')) is None
    wait_until(lambda: gateway.status()["messages"]["accepted"] > accepted, 5,
               "the gateway to accept the plug's telemetry")

    removed = gateway.device("remove", "kitchen-plug")
    assert removed.returncode == 0, removed.stderr
    refused = mqtt_connect(plug, "kitchen-plug")
    assert refused is not None, "a removed device's credential still works"
    assert login_refused(refused), refused


def test_device_subcommands_accept_config_after_them(gateway: Gateway) -> None:
    # No daemon needed: `device list` reads the store.
    done = gateway.cli("device", "list", "--json", "--config", str(gateway.config))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
