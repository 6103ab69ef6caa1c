"""The `home-gateway` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from gateway.control import ControlError, request
from gateway.devices.kinds import KINDS
from gateway.devices.registry import DeviceError, Registry
from gateway.logthrottle import Throttle
from gateway.store import StoreError

EXIT_INVALID = 2


def stderr_is_journal() -> bool:
    """True when stderr is the journald stream systemd connected (JOURNAL_STREAM=dev:ino)."""
    try:
        device, inode = os.environ["JOURNAL_STREAM"].split(":")
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (KeyError, ValueError, OSError):
        return False


def setup_logging(level: str = "info") -> None:
    """One line per event on stderr; journald adds its own timestamps."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not stderr_is_journal():
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(Throttle())


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("HOME_GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)


def _load(args: argparse.Namespace) -> Config:
    """Load the config or exit 2, printing one line per problem."""
    try:
        return load_config(_config_path(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"{config.source}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import run_daemon

    config = _load(args)
    setup_logging(config.gateway.log_level)
    os.umask(0o077)  # everything the daemon writes is private unless it says otherwise
    try:
        return run_daemon(config, _config_path(args))
    except StoreError as exc:
        logging.getLogger("gateway").error("%s", exc)
        return 1


def _control(args: argparse.Namespace, op: str, **kwargs: Any) -> Any:
    from gateway.daemon import control_socket

    return request(control_socket(_load(args)), op, **kwargs)


def _print_credential(result: dict[str, Any], config: Config) -> None:
    listener = config.broker.listeners[0] if config.broker.listeners else None
    print(f"device:   {result['id']}")
    if listener is not None:
        print(f"broker:   {listener.address}:{listener.port}")
    print(f"username: {result['username']}")
    print(f"password: {result['password']}")
    print("The password is shown only this once; the gateway keeps only its hash.")


def cmd_device(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        if args.device_command == "list":
            return _device_list(config, args.json)
        if args.device_command == "enroll":
            return _device_enroll(args)
        if args.device_command == "rotate":
            if (args.id is None) == (not args.all):
                print("home-gateway: name one device, or --all", file=sys.stderr)
                return EXIT_INVALID
            result = _control(args, "device.rotate", id=args.id, all=args.all)
            started = result["started"]
            print(f"rotation started for {len(started)} device(s): {', '.join(started) or '-'}")
            print("Each keeps its old login until it proves the new one; "
                  "`home-gateway device list` shows the outcome.")
            return 0
        if args.device_command == "policy":
            result = _control(args, "device.policy", id=args.id, policy=args.policy,
                              profile=args.profile)
            state = "applied" if result["applied"] else "NOT applied"
            print(f"{result['id']}: {result['policy']}"
                  f"{' with profile ' + result['profile'] if result['profile'] else ''}; "
                  f"{state} ({result['firewall']})")
            return 0 if result["applied"] or "RENDER-ONLY" in result["firewall"] else 1
        if args.device_command == "command":
            params = json.loads(args.params) if args.params else {}
            result = _control(args, "device.command", id=args.id, action=args.action,
                              params=params)
            print(json.dumps(result, indent=2))
            return 0 if result.get("status") == "ok" else 1
        op = {"add": "device.add", "remove": "device.remove",
              "credential": "device.credential"}[args.device_command]
        fields = {"id": args.id}
        if args.device_command == "add":
            fields.update(kind=args.kind, name=args.name, mac=args.mac, ip=args.ip)
        try:
            result = _control(args, op, **fields)
        except ConnectionError:
            result = _device_offline(config, args.device_command, fields)
        if args.device_command == "remove":
            print(f"removed {args.id}")
        else:
            _print_credential(result, config)
        return 0
    except (ControlError, DeviceError) as exc:
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 3  # LSB: program is not running
    except json.JSONDecodeError as exc:
        print(f"home-gateway: params are not valid JSON: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _device_enroll(args: argparse.Namespace) -> int:
    """A one-time enrollment token, as text and as a QR code for the terminal."""
    import segno

    from gateway.devices.enrollment import qr_payload

    result = _control(args, "device.enroll", name=args.name, id=args.id,
                      minutes=args.minutes)
    until = time.strftime("%H:%M", time.localtime(result["expires_at"]))
    print(f"enrollment token: {result['token']}")
    print(f"valid until {until}, once; give it to the device with the broker address and CA:")
    for broker in result["brokers"]:
        scheme = "mqtts" if broker["tls"] else "mqtt (plain text)"
        print(f"  broker: {scheme} {broker['host']}:{broker['port']}")
    print(f"  CA: {result['ca_file']}  (SHA-256 {result['ca_sha256']})")
    if args.qr:
        segno.make(qr_payload(result), error="m").terminal(compact=True)
    return 0


def _device_offline(config: Config, command: str, fields: dict[str, Any]) -> dict[str, Any]:
    """No daemon is running: change the store; the broker is rendered from it at start."""
    from gateway.daemon import open_store

    store = open_store(config)
    try:
        registry = Registry(store)
        if command == "add":
            registry.add(fields["id"], fields["kind"], name=fields.get("name"), source="cli",
                         mac=fields.get("mac"), ip=fields.get("ip"))
        if command == "remove":
            registry.remove(fields["id"])
            return {"id": fields["id"]}
        username, secret = registry.issue_credential(fields["id"])
        return {"id": fields["id"], "username": username, "password": secret}
    finally:
        store.close()


def _device_list(config: Config, as_json: bool) -> int:
    from gateway.daemon import open_store

    store = open_store(config)
    try:
        devices = store.devices()
    finally:
        store.close()
    if as_json:
        print(json.dumps([{"id": d.id, "name": d.name, "kind": d.kind, "status": d.status,
                           "mac": d.mac, "ip": d.ip, "last_seen": d.last_seen,
                           "invalid_messages": d.invalid_messages, "state": d.state,
                           "credential_rotated_at": d.rotated_at,
                           "rotation_result": d.rotation_result,
                           "policy": d.policy, "profile": d.profile}
                          for d in devices], indent=2))
        return 0
    now = time.time()
    print(f"{'ID':<24} {'KIND':<11} {'STATUS':<9} {'POLICY':<10} {'INVALID':>7} "
          f"{'CRED AGE':>8}  {'ROTATION':<10} NAME")
    for d in devices:
        age = f"{(now - d.rotated_at) / 86400:.0f} d" if d.rotated_at else "none"
        result = d.rotation_result.split(":")[0] or "-"
        print(f"{d.id:<24} {d.kind:<11} {d.status:<9} {d.policy:<10} {d.invalid_messages:>7} "
              f"{age:>8}  {result:<10} {d.name}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_control(args, "status"), indent=2))
    return 0


def cmd_firewall(args: argparse.Namespace) -> int:
    if args.firewall_command == "render":
        return _firewall_render(_load(args))
    if args.firewall_command == "import-mud":
        return _firewall_import_mud(args)
    status = _control(args, "firewall.status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"mode:        {status['mode']}")
    print(f"state:       {status['summary']}")
    if status["problem"]:
        print(f"problem:     {status['problem']}")
    print(f"last apply:  {_when(status['last_apply'])} ({status['last_reason'] or '-'}, "
          f"{status['last_apply_ms'] or 0:.0f} ms); {status['applies']} applies, "
          f"{status['failures']} failures")
    print(f"drift:       {status['drift_repairs']} repaired"
          + (f"; last: {status['last_drift']} at {_when(status['last_drift_at'])}"
             if status["last_drift"] else ""))
    print(f"ruleset:     {status['rules']} rules, {status['elements']} set elements")
    for warning in status["warnings"]:
        print(f"warning:     {warning}")
    print("dropped (packets since the gateway first counted):")
    for cls, packets in status["dropped"].items():
        print(f"  {cls:<11} {packets:>10}")
    for name, answer in status["dns"].items():
        print(f"dns:         {name} -> {', '.join(answer['addresses']) or 'nothing'} "
              f"(ttl {answer['ttl_s']} s{'' if answer['ok'] else ', lookup failing'})")
    return 0 if status["healthy"] or status["mode"] != "enforce" else 1


def cmd_cloud(args: argparse.Namespace) -> int:
    status = _control(args, "cloud.status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    spool = status["spool"]
    print(f"link:      {status['state']}" + (f" to {status['url']} as {status['gateway_id']}"
                                             if status["url"] else ""))
    if status["last_error"]:
        print(f"error:     {status['last_error']}")
    age = spool["oldest_age_s"]
    print(f"spool:     {spool['messages']} message(s), {spool['bytes']} of "
          f"{spool['max_bytes']} bytes" + (f", oldest {age:.0f} s" if age is not None else ""))
    print(f"signers:   {', '.join(status['signers']) or 'none (signed commands refused)'}")
    return 0 if status["state"] != "offline" else 1


def cmd_privacy(args: argparse.Namespace) -> int:
    if args.privacy_command == "aggregate":
        return _privacy_aggregate(args)
    if args.privacy_command == "consent":
        result = _control(args, "privacy.consent", category=args.category,
                          granted=args.choice == "on")
        print(f"{args.category}: {args.choice}" + (
            f" ({result['purged']} queued report(s) deleted)" if result["purged"] else ""))
        return 0
    if args.privacy_command == "delete-queued":
        result = _control(args, "privacy.delete")
        print(f"deleted {result['purged']} queued report(s) and this week's aggregates")
        return 0
    if args.privacy_command == "preview":
        preview = _control(args, "privacy.preview")
        when = preview["send_after"]
        print(f"{preview['reports']} report(s), {len(preview['body'].encode())} bytes, to "
              f"{preview['sink']}" + (f", leaving after {_when(when)}" if when else "")
              + "; the bytes follow on standard output" if preview["reports"]
              else "nothing is queued: the next export sends nothing", file=sys.stderr)
        sys.stdout.write(preview["body"])
        return 0
    status = _control(args, "privacy.status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"export:    {status['state']} ({status['sink']}, region {status['region']})")
    if status["last_error"] or status["ledger"]["error"]:
        print(f"error:     {status['ledger']['error'] or status['last_error']}")
    for c in status["categories"]:
        print(f"  {c['name']:10} {'on ' if c['granted'] else 'off'}  ε {c['epsilon']} per week")
    budget = status["ledger"]["budget"]
    if budget:
        print(f"budget:    ε {budget['week_spent']} of {budget['week_cap']} spent in "
              f"{budget['week']}, {budget['year_spent']} of {budget['year_cap']} in 365 days")
    queue = status["queue"]
    print(f"queued:    {queue['reports']} report(s), {queue['bytes']} bytes")
    for h in status["history"][:5]:
        print(f"  {_when(h['ts'])}  {h['reports']} report(s) {h['bytes']} B  {h['result']}")
    return 1 if status["state"] == "error" else 0


def cmd_homeassistant(args: argparse.Namespace) -> int:
    if args.ha_command == "rotate":
        result = _control(args, "homeassistant.rotate", actor="cli")
        print(f"new login {result['username']}: enter it in Home Assistant's MQTT integration "
              "(`home-gateway homeassistant status --show-password`); the old login works "
              "until Home Assistant uses the new one")
        return 0
    status = _control(args, "homeassistant.status", reveal=args.show_password)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    if not status["enabled"]:
        print("Home Assistant: off (homeassistant.enabled = false)")
        return 0
    print(f"bridge:     {'connected' if status['connected'] else 'NOT connected'} "
          f"({status['broker']} broker), prefix {status['prefix']!r}")
    for broker in status["brokers"]:
        print(f"broker:     {broker['host']} port {broker['port']} "
              f"{'TLS' if broker['tls'] else 'plain text'}")
    if "username" in status:
        print(f"username:   {status['username']}")
        if "password" in status:
            print(f"password:   {status['password']}")
        print(f"CA:         {status['ca_file']} (SHA-256 {status['ca_sha256'] or 'not yet made'})")
        login = status["login"]
        if login["waiting_for_switch_from"]:
            print(f"rotation:   {login['waiting_for_switch_from']} still works until Home "
                  f"Assistant logs in as {login['username']}")
        last = login["last_login"]
        print(f"last login: {_when(last['at'])} as {last['username']} from {last['address']}"
              if last else "last login: none since the gateway started")
    print(f"entities:   {status['entities']} for {status['devices']} device(s) and the gateway")
    birth = status["last_birth"]
    print(f"birth:      {birth['payload']!r} at {_when(birth['at'])}" if birth
          else "birth:      none seen since the gateway started")
    c = status["commands"]
    print(f"commands:   {c['ok']} relayed, {c['rejected']} rejected, {c['failed']} failed")
    return 0 if status["connected"] else 1


def cmd_discovery(args: argparse.Namespace) -> int:
    if args.discovery_command == "adopt":
        result = _control(args, "discovery.adopt", key=args.key, id=args.id, kind=args.kind,
                          name=args.name)
        print(f"adopted as {result['id']}; its broker login (shown once):")
        print(f"  username: {result['username']}\n  password: {result['password']}")
        return 0
    if args.discovery_command in ("ignore", "unignore"):
        _control(args, "discovery.ignore", key=args.key,
                 ignored=args.discovery_command == "ignore")
        print(f"{args.key}: {args.discovery_command}d")
        return 0
    result = _control(args, "discovery.list")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [r for r in result["discovered"] if args.all or r["status"] == "new"]
    if not rows:
        print("nothing new discovered" + ("" if args.all else " (--all lists ignored and "
                                                                "adopted ones too)"))
    for r in rows:
        what = "DHCP lease" if r["source"] == "dhcp" else f"{r['type']} port {r['port']}"
        match = f", is {r['device']}" if r["device"] else ""
        print(f"{r['status']:8} {r['key']}\n         {what} at {', '.join(r['addresses'])}"
              f"{', MAC ' + r['mac'] if r['mac'] else ''}{match}; last seen "
              f"{_when(r['last_seen'])}{'' if r['present'] else ' (gone)'}")
    return 0


def _when(ts: float | None) -> str:
    """A moment for people, in local time; "never" for none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def _privacy_aggregate(args: argparse.Namespace) -> int:
    from gateway.privacy.aggregate import aggregate, table
    from gateway.privacy.reports import ReportError, validate

    reports, rejected = [], 0
    for path in args.files:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"home-gateway: {path}: cannot read: {exc}", file=sys.stderr)
            return 2
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                report = json.loads(line)
                validate(report)
            except (ValueError, ReportError) as exc:
                rejected += 1
                if rejected <= 20:
                    print(f"{path}:{number}: rejected: {exc}", file=sys.stderr)
                continue
            reports.append(report)
    estimates = aggregate(reports, k=args.k, confidence=args.confidence,
                          by_region=args.by_region)
    print(f"{len(reports)} report(s) used, {rejected} rejected", file=sys.stderr)
    if args.json:
        print(json.dumps([e.as_json() for e in estimates], indent=2))
    else:
        print(table(estimates, args.confidence))
    return 0 if reports else 1


def _firewall_render(config: Config) -> int:
    """The ruleset the daemon would apply now, from the config, the device registry and
    the profiles (DNS names unresolved: their sets fill at run time)."""
    from gateway.firewall.inventory import build_input, profile_dirs
    from gateway.firewall.profiles import ProfileError, load_profiles
    from gateway.firewall.render import RenderError, dns_names, render_ruleset
    from gateway.store import Store

    if config.network.uplink is None:
        print(f"home-gateway: {config.source}: network.uplink is not set, so there is no "
              "firewall to render", file=sys.stderr)
        return EXIT_INVALID
    devices = []
    db = config.gateway.state_dir / "gateway.db"
    if db.exists():
        store = Store(db)
        try:
            devices = store.devices()
        finally:
            store.close()
    try:
        profiles = load_profiles(*profile_dirs(config))
        inventory = build_input(config, devices, profiles, {})
        script = render_ruleset(inventory.input)
    except (ProfileError, RenderError) as exc:
        for problem in exc.problems:
            print(f"home-gateway: {problem}", file=sys.stderr)
        return 1
    for problem in inventory.warnings():
        print(f"# warning: {problem}")
    if not db.exists():
        print(f"# no device registry at {db} yet: only the policy, no devices")
    names = sorted(dns_names(inventory.input))
    if names:
        print(f"# resolved at run time into the dns_* sets: {', '.join(names)}")
    print(script, end="")
    return 0


def _firewall_import_mud(args: argparse.Namespace) -> int:
    """An RFC 8520 MUD file -> a profile file in firewall.profiles_dir (or --output)."""
    from gateway.firewall.mud import MudError, load_mud
    from gateway.firewall.profiles import profile_to_toml

    try:
        imported = load_mud(Path(args.file), args.name)
    except MudError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    header = f"Imported from the MUD file {args.file}\nMUD URL: {imported.mud_url}"
    header += "".join(f"\n{note}" for note in imported.notes)
    text = profile_to_toml(imported.profile, header)
    if args.output == "-":
        print(text, end="")
    else:
        folder = Path(args.output) if args.output else _load(args).firewall.profiles_dir
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{imported.profile.name}.toml"
        target.write_text(text)
        print(f"wrote {target} (profile {imported.profile.name!r}, "
              f"{len(imported.profile.allow)} allowance(s))")
    for note in imported.notes:
        print(note, file=sys.stderr)
    return 0


def cmd_setup_code(args: argparse.Namespace) -> int:
    """A new one-time code for creating the first admin account on the admin page."""
    try:
        result = _control(args, "setup.code")
    except ConnectionError as exc:
        print(f"home-gateway: {exc}; the daemon writes a setup code to its log when it "
              "starts", file=sys.stderr)
        return 3
    except ControlError as exc:
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 1
    until = time.strftime("%H:%M", time.localtime(result["expires"]))
    print(f"setup code: {result['code']}  (single use, valid until {until})")
    for url in result["urls"]:
        print(f"admin page: {url}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.sim.demo import run_demo

    setup_logging("warning")
    return asyncio.run(run_demo(args.state_dir, devices=args.devices, duration=args.duration))


def cmd_sim(args: argparse.Namespace) -> int:
    from gateway.sim.run import run_sim_devices

    config = _load(args)
    setup_logging("info")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        print(f"home-gateway: unknown kind(s) {', '.join(unknown) or '(none)'} "
              f"(expected some of: {', '.join(sorted(KINDS))})", file=sys.stderr)
        return EXIT_INVALID
    try:
        return asyncio.run(run_sim_devices(config, kinds, args.count, args.interval,
                                           args.duration))
    except (ConnectionError, ControlError) as exc:
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 1


def cmd_sim_cloud(args: argparse.Namespace) -> int:
    from gateway.sim.cloud import main as sim_cloud

    setup_logging("warning")
    return sim_cloud(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="home-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="PATH",
                       help=f"config file (default {DEFAULT_CONFIG_PATH})")
        return p

    with_config(sub.add_parser("run", help="run the gateway daemon")).set_defaults(func=cmd_run)
    with_config(sub.add_parser("check-config", help="validate the config; exit 2 if invalid")
                ).set_defaults(func=cmd_check_config)
    with_config(sub.add_parser("status", help="status of the running daemon")
                ).set_defaults(func=cmd_status)

    with_config(sub.add_parser(
        "setup-code", help="print a new one-time code to create the first admin account")
    ).set_defaults(func=cmd_setup_code)
    demo = sub.add_parser("demo", help="a working gateway with simulated devices")
    demo.add_argument("--state-dir", metavar="DIR", help="keep state here (default: temporary)")
    demo.add_argument("--devices", type=int, default=6, help="simulated devices (default 6)")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.set_defaults(func=cmd_demo)

    device = with_config(sub.add_parser("device", help="manage devices"))
    dsub = device.add_subparsers(dest="device_command", required=True)
    add = dsub.add_parser("add", help="register a device and print its broker credential")
    add.add_argument("id")
    add.add_argument("--kind", required=True, choices=sorted(KINDS))
    add.add_argument("--name")
    add.add_argument("--mac")
    add.add_argument("--ip")
    dsub.add_parser("remove", help="remove a device and revoke its credential").add_argument("id")
    dsub.add_parser("credential", help="issue a new credential (the old one stops working)"
                    ).add_argument("id")
    enroll = dsub.add_parser("enroll", help="a one-time token for a new device to enroll with")
    enroll.add_argument("--name", help="the name the device gets")
    enroll.add_argument("--id", help="the device id it gets (default: <kind>-<random>)")
    enroll.add_argument("--minutes", type=int, help="validity (default: "
                        "credentials.enrollment_minutes, 15)")
    enroll.add_argument("--no-qr", dest="qr", action="store_false",
                        help="do not draw the QR code")
    rotate = dsub.add_parser("rotate", help="rotate a device's credential now (or --all)")
    rotate.add_argument("id", nargs="?")
    rotate.add_argument("--all", action="store_true", help="every device with a credential")
    lst = dsub.add_parser("list", help="list devices")
    lst.add_argument("--json", action="store_true")
    policy = dsub.add_parser("policy", help="adopt, quarantine or block a device (firewall)")
    policy.add_argument("id")
    policy.add_argument("policy", choices=["quarantine", "restricted", "open", "blocked"])
    policy.add_argument("--profile", help="the profile for restricted (default: its kind's)")
    command = dsub.add_parser("command", help="send a command and wait for its result")
    command.add_argument("id")
    command.add_argument("action")
    command.add_argument("params", nargs="?", help='JSON object, e.g. \'{"on": true}\'')
    for subparser in dsub.choices.values():  # `device add X --config P` works too
        subparser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)
    device.set_defaults(func=cmd_device)

    firewall = with_config(sub.add_parser("firewall", help="the network guard (nftables)"))
    fsub = firewall.add_subparsers(dest="firewall_command", required=True)
    fsub.add_parser("render", help="print the ruleset the gateway would apply now")
    fstatus = fsub.add_parser("status", help="mode, last apply, drift and drop counters")
    fstatus.add_argument("--json", action="store_true")
    mud = fsub.add_parser("import-mud", help="turn an RFC 8520 MUD file into a profile")
    mud.add_argument("file")
    mud.add_argument("--name", help="profile name (default: from the file name)")
    mud.add_argument("--output", metavar="DIR", help="where to write it (default: "
                     "firewall.profiles_dir; - prints it)")
    for subparser in fsub.choices.values():
        subparser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)
    firewall.set_defaults(func=cmd_firewall)

    cloud = with_config(sub.add_parser("cloud", help="the cloud link"))
    csub = cloud.add_subparsers(dest="cloud_command", required=True)
    cstatus = csub.add_parser("status", help="link state, spool depth and signer keys")
    cstatus.add_argument("--json", action="store_true")
    cstatus.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)
    cloud.set_defaults(func=cmd_cloud)

    privacy = sub.add_parser("privacy", help="the opt-in privacy export")
    psub = privacy.add_subparsers(dest="privacy_command", required=True)
    pstatus = with_config(psub.add_parser(
        "status", help="consents, ε spent and left, the queue and the export history"))
    pstatus.add_argument("--json", action="store_true")
    with_config(psub.add_parser(
        "preview", help="write exactly the bytes the next export would send to stdout"))
    consent = with_config(psub.add_parser("consent", help="turn a category on or off"))
    consent.add_argument("category", choices=("inventory", "usage", "energy", "comfort"))
    consent.add_argument("choice", choices=("on", "off"))
    with_config(psub.add_parser(
        "delete-queued", help="delete the queued reports and this week's aggregates"))
    agg = psub.add_parser("aggregate", help="vendor side: estimates from many households' "
                          "report files (JSON Lines)")
    agg.add_argument("files", nargs="+", metavar="FILE")
    agg.add_argument("--k", type=int, default=10,
                     help="suppress cells behind fewer households than this (default 10)")
    agg.add_argument("--confidence", type=float, default=0.95,
                     help="confidence of the intervals (default 0.95)")
    agg.add_argument("--by-region", action="store_true", help="estimate each region apart")
    agg.add_argument("--json", action="store_true")
    privacy.set_defaults(func=cmd_privacy)

    ha = sub.add_parser("homeassistant", help="the Home Assistant bridge")
    hsub = ha.add_subparsers(dest="ha_command", required=True)
    hstatus = with_config(hsub.add_parser(
        "status", help="what to enter in Home Assistant, entities and the last birth seen"))
    hstatus.add_argument("--json", action="store_true")
    hstatus.add_argument("--show-password", action="store_true",
                         help="also print Home Assistant's broker password")
    with_config(hsub.add_parser(
        "rotate", help="issue Home Assistant's next broker login (the old one works until "
                       "Home Assistant uses the new one)"))
    ha.set_defaults(func=cmd_homeassistant)

    disc = sub.add_parser("discovery", help="what mDNS and DHCP found on the IoT segment")
    dsub2 = disc.add_subparsers(dest="discovery_command", required=True)
    dlist = with_config(dsub2.add_parser("list", help="new sightings (--all: every one)"))
    dlist.add_argument("--all", action="store_true")
    dlist.add_argument("--json", action="store_true")
    adopt = with_config(dsub2.add_parser(
        "adopt", help="register a sighting as a device and print its broker login"))
    adopt.add_argument("key", help='as `discovery list` shows it, e.g. "dhcp:02:…"')
    adopt.add_argument("id")
    adopt.add_argument("kind", choices=sorted(KINDS))
    adopt.add_argument("--name")
    for verb in ("ignore", "unignore"):
        with_config(dsub2.add_parser(verb, help=f"{verb} a sighting")).add_argument("key")
    disc.set_defaults(func=cmd_discovery)

    sim = sub.add_parser("sim", help="simulators")
    ssub = sim.add_subparsers(dest="sim_command", required=True)
    simdev = with_config(ssub.add_parser(
        "devices", help="run simulated devices against a running gateway"))
    simdev.add_argument("--count", type=int, default=6)
    simdev.add_argument("--kinds", default=",".join(KINDS))
    simdev.add_argument("--interval", type=float, help="seconds between readings "
                        "(default: each kind's realistic rate)")
    simdev.add_argument("--duration", type=float, help="stop after this many seconds")
    simdev.set_defaults(func=cmd_sim)
    simcloud = ssub.add_parser(
        "cloud", help="run a simulated vendor cloud (TLS broker + signed commands)")
    simcloud.add_argument("--dir", metavar="DIR", help="its CA, keys and passwords "
                          "(default: a new directory under /tmp, kept)")
    simcloud.add_argument("--address", default="127.0.0.1", help="listen address")
    simcloud.add_argument("--port", type=int, help="listen port (default: a free one)")
    simcloud.add_argument("--gateway-id", default="home-1")
    simcloud.add_argument("--mtls", action="store_true",
                          help="the gateway logs in with a client certificate")
    simcloud.add_argument("--device", action="append", metavar="ID=ACTION:JSONPARAMS",
                          help='a command to send, e.g. plug-1=set:\'{"on": true}\' '
                               "(repeatable; sent in turn)")
    simcloud.add_argument("--every", type=float, default=5.0,
                          help="seconds between commands (default 5)")
    simcloud.add_argument("--duration", type=float, help="stop after this many seconds")
    simcloud.set_defaults(func=cmd_sim_cloud)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except StoreError as exc:
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:  # the daemon's control socket: nobody there
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 3  # LSB: program is not running
    except ControlError as exc:  # the daemon refused
        print(f"home-gateway: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:  # the control socket and state belong to the service
        print(f"home-gateway: {exc.filename or exc}: permission denied (run it as root, "
              "e.g. with sudo)", file=sys.stderr)
        return 4  # LSB: user had insufficient privilege


if __name__ == "__main__":
    sys.exit(main())
