"""Pure renderers: the embedded Mosquitto's config and its dynamic-security file.

Both are derived state: rendered from the config and the database before every broker
start, never edited in place (Mosquitto 2.0.11 writes the plugin file non-atomically).
"""

from __future__ import annotations

import glob
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.credentials.pki import TLS12_CIPHERS
from gateway.credentials.secrets import PasswordHash
from gateway.devices.topics import device_acls, enrollment_acls
from gateway.store import Credential, Enrollment

GATEWAY_USERNAME = "home-gateway"
GATEWAY_ROLE = "gateway"
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
PLUGIN_GLOB = "/usr/lib/*/mosquitto_dynamic_security.so"


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def dynsec(self) -> Path:
        return self.directory / "dynamic-security.json"

    @property
    def gateway_secret(self) -> Path:
        return self.directory / "gateway.secret"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def openssl_conf(self) -> Path:
        return self.directory / "openssl.cnf"


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    address: str
    port: int
    tls: bool


def find_plugin() -> str:
    found = sorted(glob.glob(PLUGIN_GLOB))
    if not found:
        raise FileNotFoundError(
            "mosquitto_dynamic_security.so not found under /usr/lib/*/ (install mosquitto >= 2.0)"
        )
    return found[0]


# Each listener's share of the broker's descriptors (the unit's LimitNOFILE=8192 holds four
# listeners at this limit and Mosquitto's own files); one over it is accepted and closed at
# once. One host's share of it is bounded by the firewall (docs/SECURITY.md).
MAX_CONNECTIONS_PER_LISTENER = 1000


def render_mosquitto_conf(files: BrokerFiles, listeners: Sequence[ListenerSpec],
                          max_packet_size: int, plugin: str, run_as_root: bool) -> str:
    lines = [
        "# Rendered by home-gateway at every broker start; edits here are overwritten.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"max_packet_size {max_packet_size}",
        "persistence true",
        f"persistence_location {files.directory}/",
        "autosave_interval 300",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        # Connection lines let the gateway audit refused logins (wrong, expired or used
        # credentials); it reads them from the broker's stderr and does not log them all.
        "log_type notice",
        "connection_messages true",
        "set_tcp_nodelay true",
        f"plugin {plugin}",
        f"plugin_opt_config_file {files.dynsec}",
    ]
    if run_as_root:
        # Mosquitto drops to the "mosquitto" user when started as root, which cannot read a
        # root-owned state dir. The packaged service runs as its own unprivileged user.
        lines.append("user root")
    for listener in listeners:
        lines += [f"listener {listener.port} {listener.address}",
                  f"max_connections {MAX_CONNECTIONS_PER_LISTENER}"]
        if listener.tls:
            lines += [f"certfile {files.server_cert}", f"keyfile {files.server_key}",
                      "tls_version tlsv1.2", f"ciphers {TLS12_CIPHERS}"]
    return "\n".join(lines) + "\n"


def certificate_addresses(listeners: Sequence[ListenerSpec]) -> list[str]:
    """IP addresses a TLS listener's certificate must name: each specific listen address,
    and loopback (where the gateway itself connects to a wildcard listener)."""
    addresses = {"127.0.0.1", "::1"}
    for listener in listeners:
        if listener.tls and not ipaddress.ip_address(listener.address).is_unspecified:
            addresses.add(listener.address)
    return sorted(addresses)


def client_address(listener: ListenerSpec) -> str:
    """Where the gateway itself connects to reach `listener` (wildcards -> loopback)."""
    address = ipaddress.ip_address(listener.address)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def gateway_acls() -> list[dict[str, object]]:
    # '#' does not match topics starting with '$', so $CONTROL needs its own entries.
    acls: list[dict[str, object]] = []
    for topic in ("#", "$CONTROL/dynamic-security/#"):
        acls.append({"acltype": "publishClientSend", "topic": topic, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
        acls.append({"acltype": "subscribePattern", "topic": topic, "allow": True})
    return acls


def login_role(username: str) -> str:
    """Every login has a role of its own: two logins of one device differ in their ack."""
    return f"login:{username}"


def enrollment_username(token_id: str) -> str:
    # ':' never occurs in a device login (<id>.<n>), so the two cannot collide.
    return f"enroll:{token_id}"


def enrollment_client_id(token_id: str) -> str:
    """The one client id a token's login may use (its username again), so a token holder
    cannot take over the gateway's or a device's session by connecting with its id. A ':'
    never occurs in a device id, so no device's pinned id can be a token's."""
    return enrollment_username(token_id)


def _client(username: str, role: str, password: PasswordHash,
            clientid: str | None = None) -> dict[str, object]:
    client: dict[str, object] = {
        "username": username,
        "password": password.hash,
        "salt": password.salt,
        "iterations": password.iterations,
        "roles": [{"rolename": role}],
    }
    if clientid is not None:
        client["clientid"] = clientid
    return client


def render_dynsec(gateway_password: PasswordHash, credentials: Sequence[Credential],
                  enrollments: Sequence[Enrollment] = (),
                  gateway_username: str = GATEWAY_USERNAME,
                  others: Sequence[tuple[str, PasswordHash, list[dict[str, object]]]] = (),
                  ) -> str:
    """The plugin's file: the gateway's admin client, each device login (active and
    pending), each live enrollment token and each other login (username, password, ACLs:
    Home Assistant's), every one with a role of its own."""
    clients = [_client(gateway_username, GATEWAY_ROLE, gateway_password)]
    roles: list[dict[str, object]] = [{"rolename": GATEWAY_ROLE, "acls": gateway_acls()}]
    for cred in credentials:
        role = login_role(cred.username)
        roles.append({"rolename": role, "acls": device_acls(cred.device_id, cred.version)})
        # Pinned to the device id: no other login can take over (and so cut off) a
        # device's MQTT session by connecting with its client id.
        clients.append(_client(cred.username, role, cred.password, clientid=cred.device_id))
    for enrollment in enrollments:
        username = enrollment_username(enrollment.id)
        role = login_role(username)
        roles.append({"rolename": role, "acls": enrollment_acls(enrollment.id)})
        clients.append(_client(username, role, enrollment.password,
                               clientid=enrollment_client_id(enrollment.id)))
    for username, password, acls in others:
        roles.append({"rolename": login_role(username), "acls": acls})
        clients.append(_client(username, login_role(username), password))
    document = {
        "clients": clients,
        "groups": [],
        "roles": roles,
        # Deny by default, receiving included: a role must name every topic it may use.
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


# -- live changes, as dynamic-security commands ------------------------------------------

def create_login_commands(username: str, password: str, acls: list[dict[str, object]],
                          clientid: str | None = None) -> list[dict[str, object]]:
    role = login_role(username)
    client: dict[str, object] = {"command": "createClient", "username": username,
                                 "password": password, "roles": [{"rolename": role}]}
    if clientid is not None:
        client["clientid"] = clientid
    return [{"command": "createRole", "rolename": role, "acls": acls}, client]


def create_device_login_commands(device_id: str, username: str,
                                 password: str) -> list[dict[str, object]]:
    version = int(username.rsplit(".", 1)[1])
    return create_login_commands(username, password, device_acls(device_id, version),
                                 clientid=device_id)


def delete_login_commands(usernames: Sequence[str]) -> list[dict[str, object]]:
    """Deleting a client ends any session using it at once."""
    commands: list[dict[str, object]] = []
    for username in usernames:
        commands.append({"command": "deleteClient", "username": username})
        commands.append({"command": "deleteRole", "rolename": login_role(username)})
    return commands
