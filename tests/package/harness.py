"""The Debian package on this machine: build it, install and purge it with apt, and start
the installed daemon the way its systemd unit says. Used by the package tests and by
bench/package.py.

systemd is not PID 1 here, so `Machine.start_gateway` does what the unit asks of systemd:
the unit's ExecStart as its User= with its AmbientCapabilities= (and nothing else), its
LimitNOFILE, NoNewPrivileges, MemoryDenyWriteExecute, SystemCallFilter,
RestrictAddressFamilies, ProtectSystem=strict with PrivateTmp and ProtectHome, its
StateDirectory/RuntimeDirectory with their modes, its UMask, and a NOTIFY_SOCKET of the
caller's. (Not emulated: the other Protect* settings, TasksMax, the memory limits and the
rest of the sandbox.) Every process is ended by its PID and the
package purged in `Machine.close`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "home-gateway"
USER = "_home-gateway"
UNIT = "home-gateway.service"
UNIT_DIR = Path("/usr/lib/systemd/system")  # DEP17: not /lib
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's Python builds it, not pyenv's
TOOLS = ("dpkg-buildpackage", "dpkg-scanpackages", "lintian", "apt-get", "systemd-analyze",
         "setpriv", "unshare", "nft")
SOURCES = Path("/etc/apt/sources.list.d")
LISTS = Path("/var/lib/apt/lists")
CONFIG = Path("/etc/home-gateway/gateway.toml")
STATE = Path("/var/lib/home-gateway")
RUNTIME = Path("/run/home-gateway")
BROKER_PORT, ADMIN_URL = 1884, "http://127.0.0.1:8080/"  # the shipped config's


# The unit's MemoryDenyWriteExecute=yes (PR_SET_MDWE, Linux 6.3+), SystemCallFilter= (an
# allow list; other calls kill the process with SIGSYS, systemd's default) and
# RestrictAddressFamilies= (socket() of another family fails with EAFNOSUPPORT), set up the
# way systemd does just before it executes the command; all inherited by Mosquitto.
RESTRICT = r"""
import ctypes, errno, os, sys
mdwe, syscalls, families, argv = sys.argv[1] == "yes", sys.argv[2], sys.argv[3], sys.argv[4:]
if mdwe and ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0):
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
if syscalls:
    import seccomp
    allow = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    names = set(syscalls.split(","))
    if families:  # socket() only for these; the others fail as under systemd
        names.discard("socket")
        permitted = {int(f) for f in families.split(",")}
        refuse = seccomp.ERRNO(errno.EAFNOSUPPORT)
        for family in range(64):
            rule = seccomp.ALLOW if family in permitted else refuse
            allow.add_rule(rule, "socket", seccomp.Arg(0, seccomp.EQ, family))
        allow.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.GE, 64))
    for name in names:
        try:
            allow.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            pass  # not a system call of this architecture
    allow.load()
os.execv(argv[0], argv)
"""


def system_calls(group: str) -> set[str]:
    """The system calls of a systemd filter group such as @system-service, expanded."""
    if not group.startswith("@"):
        return {group}
    lines = run("systemd-analyze", "syscall-filter", group).stdout.splitlines()[1:]
    names: set[str] = set()
    for line in (x.strip() for x in lines):
        if line and not line.startswith("#"):
            names |= system_calls(line)
    return names


def restricted(unit: str, command: list[str]) -> list[str]:
    """`command` under the MemoryDenyWriteExecute=, SystemCallFilter= and
    RestrictAddressFamilies= (an allow list) of the unit file whose text is `unit`."""
    allowed: set[str] = set()
    for value in unit_value(unit, "SystemCallFilter"):
        if value.startswith("~"):
            raise CommandFailed(f"SystemCallFilter={value}: deny lists are not emulated")
        for group in value.split():
            allowed |= system_calls(group)
    mdwe = "yes" if unit_value(unit, "MemoryDenyWriteExecute") == ["yes"] else "no"
    families = [str(int(socket.AddressFamily[name])) for value in
                unit_value(unit, "RestrictAddressFamilies") for name in value.split()]
    return ["/usr/bin/python3", "-c", RESTRICT, mdwe, ",".join(sorted(allowed)),
            ",".join(families), *command]


# ProtectSystem=strict, PrivateTmp and ProtectHome, as systemd builds them: in a mount
# namespace of its own, the state and runtime directories stay writable, every other mount
# but /dev, /proc and /sys becomes read-only, /tmp and /var/tmp are empty and private, the
# home directories are hidden. Then `argv` runs (as root still: setpriv drops to the user).
SANDBOX = r"""
import os, subprocess, sys
writable, argv = sys.argv[1].split(":"), sys.argv[2:]
def mount(*args):
    subprocess.run(["mount", *args], check=True)
for path in writable:
    mount("--bind", path, path)
for line in open("/proc/self/mountinfo"):
    target = line.split()[4].replace("\\040", " ")
    if target not in writable and target.split("/")[1] not in ("dev", "proc", "sys"):
        mount("-o", "remount,bind,ro", target)
for path in ("/tmp", "/var/tmp"):
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", path)
for path in ("/root", "/home", "/run/user"):
    if os.path.isdir(path):
        mount("-t", "tmpfs", "-o", "ro,mode=0755", "tmpfs", path)
os.execvp(argv[0], argv)
"""


def short_workdir() -> Path:
    """A fresh folder for notify sockets and logs: short (AF_UNIX paths are), readable by
    the service user, and outside /tmp, which the unit's PrivateTmp hides."""
    work = Path(tempfile.mkdtemp(prefix="hg-pkg-", dir="/run"))
    work.chmod(0o755)
    return work


class CommandFailed(RuntimeError):
    pass


def run(*cmd: str, check: bool = True, timeout: float = 300, cwd: Path | str = "/"
        ) -> subprocess.CompletedProcess[str]:
    """A command with a clean environment; CommandFailed (with its output) on failure."""
    env = {"PATH": CLEAN_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd, check=False)
    if check and done.returncode != 0:
        raise CommandFailed(f"{shlex.join(cmd)} exited {done.returncode}:\n"
                            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t, path=CLEAN_PATH) is None]


def installed() -> bool:
    done = run("dpkg-query", "-W", "-f", "${Status}", PACKAGE, check=False)
    return done.stdout.strip() == "install ok installed"


def known_to_dpkg() -> bool:
    """Installed, or removed with its config files left."""
    return run("dpkg-query", "-W", PACKAGE, check=False).returncode == 0


# -- building ------------------------------------------------------------------------------


def ignored_names(tree: Path) -> list[str]:
    """The tree's .gitignore patterns as names to leave out at any depth (all of this
    project's are plain names or globs), and .git itself."""
    lines = (tree / ".gitignore").read_text().splitlines()
    return [".git", *(x.strip().strip("/") for x in lines if x.strip() and x[0] != "#")]


def source_tree(target: Path, tree: Path = REPO) -> Path:
    """The files of `tree` (a checkout or an exported tree: git is not needed) copied to
    `target`, without what .gitignore leaves out (venvs, caches, build output)."""
    shutil.copytree(tree, target, symlinks=True,
                    ignore=shutil.ignore_patterns(*ignored_names(tree)))
    return target


def changelog_version(tree: Path) -> str:
    return run("dpkg-parsechangelog", "-S", "Version", cwd=tree).stdout.strip()


def make_older(tree: Path) -> str:
    """Put an older version on top of the tree's changelog ("~" sorts before anything)."""
    version = changelog_version(tree) + "~prev1"
    changelog = tree / "debian" / "changelog"
    entry = (f"{PACKAGE} ({version}) unstable; urgency=medium\n\n  * The build an upgrade "
             "starts from (package tests).\n\n -- Home Gateway developers "
             "<dev@home-gateway.invalid>  Tue, 01 Dec 2026 12:00:00 +0000\n\n")
    changelog.write_text(entry + changelog.read_text())
    return version


def build(tree: Path) -> Path:
    """dpkg-buildpackage -us -uc -b; the .deb (beside the tree)."""
    run("dpkg-buildpackage", "-us", "-uc", "-b", cwd=tree, timeout=600)
    (deb,) = tree.parent.glob(f"{PACKAGE}_{changelog_version(tree)}_all.deb")
    return deb


@dataclass(frozen=True)
class Builds:
    current: Path  # the .deb of this tree
    previous: Path  # the same tree as an older version, to upgrade from
    changes: Path  # the current build's .changes, for lintian
    version: str  # of the current build


def build_both(root: Path) -> Builds:
    current = source_tree(root / "current" / PACKAGE)
    previous = source_tree(root / "previous" / PACKAGE)
    make_older(previous)
    deb = build(current)
    (changes,) = deb.parent.glob(f"{PACKAGE}_*.changes")
    return Builds(deb, build(previous), changes, changelog_version(current))


# -- running what is installed ------------------------------------------------------------------


def unit_value(text: str, key: str) -> list[str]:
    """Every value of `key=` in a unit file's text."""
    return [line.split("=", 1)[1].strip() for line in text.splitlines()
            if line.startswith(f"{key}=")]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def mosquittos_of(user: str) -> list[int]:
    """Live mosquitto processes running as `user`."""
    try:
        uid = str(pwd.getpwnam(user).pw_uid)
    except KeyError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = proc_status(int(entry.name))
            if (status.get("Name") == "mosquitto" and status["Uid"].split()[0] == uid
                    and not status["State"].startswith("Z")):
                found.append(int(entry.name))
    return found


@dataclass
class Running:
    """A process started here, ended by its PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


@dataclass
class Machine:
    """What was put on this machine, so that `close` can take it all back."""

    work: Path  # from short_workdir()
    processes: list[Running] = field(default_factory=list)

    def install(self, deb: Path) -> subprocess.CompletedProcess[str]:
        return run("apt-get", "install", "-y", "--no-install-recommends", str(deb),
                   timeout=900)

    def offer(self, deb: Path) -> None:
        """Make `deb` an upgrade apt knows of: a local repository holding it, in apt's
        sources, its list fetched (only that list: the machine's others stay as they are)."""
        repo = self.work / "repo"
        repo.mkdir(exist_ok=True)
        shutil.copy(deb, repo)
        packages = run("dpkg-scanpackages", "--multiversion", ".", cwd=repo).stdout
        (repo / "Packages").write_text(packages)
        source = self.source_file()
        source.write_text(f"deb [trusted=yes] file:{repo} ./\n")
        run("apt-get", "update", "-o", f"Dir::Etc::SourceList={source}", "-o",
            "Dir::Etc::SourceParts=-", "-o", "APT::Get::List-Cleanup=0")

    def source_file(self) -> Path:
        return SOURCES / f"{self.work.name}.list"

    def start_stock_mosquitto(self) -> Running:
        """Debian's mosquitto.service as its unit file says (ExecStartPre, ExecStart)."""
        text = (UNIT_DIR / "mosquitto.service").read_text()
        for line in unit_value(text, "ExecStartPre"):
            run(*shlex.split(line))
        (start,) = unit_value(text, "ExecStart")
        return self._spawn("mosquitto.service", shlex.split(start), {"PATH": CLEAN_PATH})

    def start_gateway(self, notify_socket: Path, exec_start: list[str] | None = None,
                      netns: str | None = None, filters: bool = True) -> Running:
        """The installed unit's ExecStart (or `exec_start` in its place) as the unit runs it,
        in the network namespace `netns` when given. `filters=False` leaves out its
        MemoryDenyWriteExecute, SystemCallFilter and RestrictAddressFamilies, which cannot
        be emulated under qemu-user (its translator writes code and runs it; a seccomp filter
        would see the host's system calls, not the emulated ones)."""
        unit = (UNIT_DIR / UNIT).read_text()
        (user,) = unit_value(unit, "User")
        (caps,) = unit_value(unit, "AmbientCapabilities")
        (umask,) = unit_value(unit, "UMask")
        for directory, key in ((STATE, "StateDirectoryMode"), (RUNTIME, "RuntimeDirectoryMode")):
            directory.mkdir(exist_ok=True)
            shutil.chown(directory, user, user)
            directory.chmod(int(unit_value(unit, key)[0], 8))
        command = exec_start or shlex.split(unit_value(unit, "ExecStart")[0])
        if filters:
            command = restricted(unit, command)
        cap = caps.lower().removeprefix("cap_")
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                f"--inh-caps=-all,+{cap}", f"--ambient-caps=-all,+{cap}",
                f"--bounding-set=-all,+{cap}", "--no-new-privs", "--",
                "sh", "-c", f'umask {umask} && exec "$@"', "sh", *command]
        (nofile,) = unit_value(unit, "LimitNOFILE")
        argv = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *argv]
        if unit_value(unit, "ProtectSystem") == ["strict"]:
            argv = ["unshare", "--mount", "--propagation", "private", "--",
                    "/usr/bin/python3", "-c", SANDBOX, f"{STATE}:{RUNTIME}", *argv]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "NOTIFY_SOCKET": str(notify_socket),
               "WATCHDOG_USEC": "30000000", "STATE_DIRECTORY": str(STATE),
               "RUNTIME_DIRECTORY": str(RUNTIME), "CONFIGURATION_DIRECTORY": str(CONFIG.parent)}
        return self._spawn(UNIT, argv, env)

    def spawn(self, name: str, argv: list[str]) -> Running:
        """`argv` as root with a clean environment, ended in `close`."""
        return self._spawn(name, argv, {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"})

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Running:
        log = self.work / f"{name}.{len(self.processes)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd="/")
        running = Running(name, popen, log)
        self.processes.append(running)
        return running

    def close(self) -> None:
        """End every process started here, purge the package, drop its nft table and the
        local repository's apt source."""
        for process in reversed(self.processes):
            process.stop(signal.SIGKILL if process.name == UNIT else signal.SIGTERM)
        for pid in mosquittos_of(USER):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if known_to_dpkg():
            run("apt-get", "purge", "-y", PACKAGE, check=False, timeout=600)
        run("nft", "delete", "table", "inet", "home_gateway", check=False)
        self.source_file().unlink(missing_ok=True)
        for path in LISTS.glob(f"*{self.work.name.replace('_', '%5f')}*"):  # apt's quoting
            path.unlink()


@contextlib.contextmanager
def new_machine() -> Iterator[Machine]:
    """A Machine with a fresh work folder; what it put on this machine is taken back at the
    end, also after a failure."""
    work = short_workdir()
    machine = Machine(work)
    try:
        yield machine
    finally:
        try:
            machine.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `home-gateway` command, as root."""
    return run("/usr/bin/home-gateway", *args, timeout=60)


def add_device(device_id: str, kind: str = "plug") -> tuple[str, str]:
    """`home-gateway device add`: the device's broker username and password."""
    out = cli("device", "add", device_id, "--kind", kind).stdout
    username = re.search(r"^username:\s*(\S+)", out, re.M)
    password = re.search(r"^password:\s*(\S+)", out, re.M)
    if not (username and password):
        raise CommandFailed(f"no credential in:\n{out}")
    return username[1], password[1]
