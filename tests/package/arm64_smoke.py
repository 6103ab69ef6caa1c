"""`./dev.sh smoke-arm64`: the .deb built on this machine, installed with apt in an arm64
Debian trixie root under qemu-user-static, and run as its unit says: READY, the admin
page, a device login and a command round trip, then purged. Not part of `./dev.sh test`
(it takes minutes); not collected there either (its name does not start with test_).

Under qemu-user the daemon runs as the unit's user with its one capability,
NoNewPrivileges and ProtectSystem=strict, but without MemoryDenyWriteExecute,
SystemCallFilter and RestrictAddressFamilies (see `Machine.start_gateway`): the package
tests check those natively on both releases.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator

import pytest

from tests.integration.daemon_proc import NotifySocket
from tests.package.harness import Machine, add_device, installed, new_machine
from tests.package.test_deb import (
    admin_page_answers,
    command_round_trip,
    credential_works,
    wait_ready,
)

pytestmark = pytest.mark.package


@pytest.fixture
def machine() -> Iterator[Machine]:
    assert installed(), "dev.sh installs the .deb with apt before this test runs"
    with new_machine() as machine:  # purges the package at the end
        yield machine


def test_the_package_runs_on_arm64(machine: Machine) -> None:
    assert platform.machine() == "aarch64", platform.machine()
    assert os.environ.get("HG_DEB", "").endswith("_all.deb")
    notify = NotifySocket(machine.work / "notify")
    notify.path.chmod(0o777)
    try:
        started = time.monotonic()
        gateway = machine.start_gateway(notify.path, filters=False)
        wait_ready(gateway, notify)
        print(f"\nREADY after {time.monotonic() - started:.1f} s under qemu-user")
        admin_page_answers()
        username, password = add_device("arm-plug")
        credential_works("arm-plug", username, password)
        command_round_trip(machine)
        assert gateway.stop() == 0
    finally:
        notify.close()
