"""The gateway's own certificate authority and the server certificates it issues.

The CA key never leaves the state dir (mode 0600). Devices and browsers pin the CA, so a
server certificate is cheap to re-issue: it is rendered anew at every broker start for the
addresses the broker listens on.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.credentials.secrets import write_private

CA_YEARS = 20
SERVER_DAYS = 90  # short-lived, and renewed while running once RENEW_DAYS are left
RENEW_DAYS = 30
# Mozilla's "intermediate" TLS profile: TLS 1.2 and 1.3 (1.3's suites are all in it), these
# TLS 1.2 suites (no CBC), the groups X25519, P-256 and P-384 (not P-521 or X448).
TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305"))
TLS_GROUPS = "X25519:P-256:P-384"
# The address ranges a home network uses: loopback, private, shared (CGNAT), link-local, ULA.
HOME_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10"))


@dataclass(frozen=True, slots=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (and checks host names)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context in Mozilla's "intermediate" profile. Python before 3.14 can set
    one group only (set_ecdh_curve): P-256, which every TLS client offers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.set_ecdh_curve("prime256v1")
    context.load_cert_chain(cert, key)
    return context


def openssl_conf() -> str:
    """An OpenSSL configuration (for OPENSSL_CONF) holding a program that has no option
    for them (Mosquitto 2.0) to the same profile: versions, TLS 1.2 suites and groups."""
    return "\n".join([
        "# Rendered by home-gateway: Mozilla's intermediate TLS profile for Mosquitto.",
        "openssl_conf = home_gateway", "[home_gateway]", "ssl_conf = ssl_section",
        "[ssl_section]", "system_default = tls_profile", "[tls_profile]",
        "MinProtocol = TLSv1.2", f"CipherString = {TLS12_CIPHERS}", f"Groups = {TLS_GROUPS}",
        ""])


def renewal_due(cert_path: Path, now: datetime.datetime | None = None) -> bool:
    """Does this server certificate end within RENEW_DAYS (or not exist, or not parse)?"""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    return validity(cert)[1] - (now or _now()) < datetime.timedelta(days=RENEW_DAYS)


def validity(cert: x509.Certificate) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after), aware UTC: cryptography 42+ names them *_utc; bookworm's 38
    has only the naive ones."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return (cert.not_valid_before.replace(tzinfo=datetime.UTC),
            cert.not_valid_after.replace(tzinfo=datetime.UTC))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def home_constraints(names: Iterable[str], addresses: Iterable[str]) -> x509.NameConstraints:
    """Name constraints for a CA that people import into their browsers: it may vouch for
    the gateway's own names (anything under .local, localhost, a bare host name) and for
    the home's address ranges plus each address given outside them, and for nothing else
    (a stolen key cannot impersonate a bank). RFC 5280 §4.2.1.10."""
    dns = {"local", "localhost"} | {n.lower() for n in names
                                     if not n.lower().endswith(".local")}
    ips = {ipaddress.ip_network(a) for a in addresses
           if not any(ipaddress.ip_address(a) in r for r in HOME_RANGES)}
    permitted: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(dns)]
    permitted += [x509.IPAddress(n) for n in (*HOME_RANGES, *sorted(ips, key=str))]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def permits(cert: x509.Certificate, names: Iterable[str], addresses: Iterable[str]) -> bool:
    """Does this CA's NameConstraints allow every name and address? (False without any.)"""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return False
    subtrees = constraints.permitted_subtrees or []
    dns = [s.value.lower() for s in subtrees if isinstance(s, x509.DNSName)]
    nets = [s.value for s in subtrees if isinstance(s, x509.IPAddress)
            and isinstance(s.value, ipaddress.IPv4Network | ipaddress.IPv6Network)]
    return (all(any(n.lower() == d or n.lower().endswith("." + d) for d in dns)
                for n in names)
            and all(any(ipaddress.ip_address(a) in net for net in nets) for a in addresses))


def ensure_ca(pki: Pki, constraints: x509.NameConstraints | None = None,
              purpose: str = "CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA, creating it on first use (with `constraints`, when given)."""
    if pki.ca_cert.exists() and pki.ca_key.exists():
        cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Home Gateway"),
        x509.NameAttribute(NameOID.COMMON_NAME,
                           f"Home Gateway {purpose} on {socket.gethostname()}"),
    ])
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    pki.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(pki.ca_key, _pem_key(key))
    pki.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue_server_cert(pki: Pki, cert_path: Path, key_path: Path,
                      names: Iterable[str], addresses: Iterable[str]) -> None:
    """A fresh server certificate for these DNS names and IP addresses, signed by the CA."""
    ca_cert, ca_key = ensure_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    dns = sorted(set(names))
    ips = sorted({ipaddress.ip_address(a) for a in addresses}, key=str)
    san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ip) for ip in ips]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns
                                                    else str(ips[0]))]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                          + ca_cert.public_bytes(serialization.Encoding.PEM))


def host_names() -> list[str]:
    """The names a client on the home network may use for the gateway."""
    host = socket.gethostname().split(".")[0]
    return [host, f"{host}.local", "localhost"]


def ca_fingerprint(pki: Pki) -> str:
    """SHA-256 of the CA certificate (DER), for a device to pin, created on first use."""
    cert, _ = ensure_ca(pki)
    return cert.fingerprint(hashes.SHA256()).hex(":")
