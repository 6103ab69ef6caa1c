"""The admin page's CA: people import it into their browsers, so it may vouch for the
home's names and addresses only. Checked with OpenSSL's own verifier, which enforces
name constraints as browsers do."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509

from gateway.credentials.pki import Pki, ensure_ca, home_constraints, issue_server_cert, permits

NAMES = ["pi", "pi.local", "localhost"]
ADDRESSES = ["127.0.0.1", "192.168.50.1", "2001:db8:5::1"]  # the last: outside the ranges


def _verify(ca: Pki, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca.ca_cert), "-purpose",
                           "sslserver", str(cert)], capture_output=True, text=True, check=False)


def _issue(ca: Pki, tmp_path: Path, names: list[str], addresses: list[str]) -> Path:
    cert = tmp_path / f"{'-'.join(names + addresses) or 'none'}.crt".replace(":", "_")
    issue_server_cert(ca, cert, tmp_path / "leaf.key", names, addresses)
    return cert


def test_the_pages_own_certificate_verifies(tmp_path: Path) -> None:
    ca = Pki(tmp_path / "web")
    ensure_ca(ca, home_constraints(NAMES, ADDRESSES), "admin page CA")
    done = _verify(ca, _issue(ca, tmp_path, NAMES, ADDRESSES))
    assert done.returncode == 0, done.stdout + done.stderr
    done = _verify(ca, _issue(ca, tmp_path, ["kitchen.local"], ["10.1.2.3", "fd00::9"]))
    assert done.returncode == 0, done.stdout + done.stderr


def test_it_cannot_vouch_for_anyone_else(tmp_path: Path) -> None:
    ca = Pki(tmp_path / "web")
    ensure_ca(ca, home_constraints(NAMES, ADDRESSES), "admin page CA")
    for names, addresses in ((["www.bank.example"], []), (["pi.local"], ["8.8.8.8"]),
                             (["localhost.example"], []), ([], ["2001:db8:6::1"])):
        done = _verify(ca, _issue(ca, tmp_path, names, addresses))
        assert done.returncode != 0, (names, addresses)
        assert "subtree violation" in done.stdout + done.stderr, done.stdout + done.stderr


def test_permits_says_when_the_ca_must_be_made_anew(tmp_path: Path) -> None:
    ca = Pki(tmp_path / "web")
    cert, _ = ensure_ca(ca, home_constraints(NAMES, ADDRESSES), "admin page CA")
    assert cert.extensions.get_extension_for_class(x509.NameConstraints).critical
    assert permits(cert, NAMES, ADDRESSES)
    assert permits(cert, ["other.local"], ["10.9.9.9"])
    assert not permits(cert, ["renamed-pi"], [])  # a new host name
    assert not permits(cert, NAMES, ["203.0.113.9"])  # a new address outside the ranges
    unconstrained, _ = ensure_ca(Pki(tmp_path / "devices"))
    assert not permits(unconstrained, NAMES, [])  # the devices' CA is never used for it
