#!/usr/bin/env bash
# Set up a Debian (bookworm or trixie) machine for home-gateway, then run the demo or the tests.
#   ./dev.sh demo [demo options]   a working gateway with its own broker and simulated devices
#   ./dev.sh test [pytest options] every check: ruff, mypy, and the suite in three dependency
#                                  worlds (PyPI, this release's Debian, the other release's)
#   ./dev.sh smoke-arm64           the .deb installed and run in an arm64 trixie root (qemu)
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script too (debian_root runs there)
cd "$(dirname "$0")"

# System packages: the broker and firewall the gateway drives, Debian's Python and the
# Debian builds of the runtime libraries (the Debian worlds run against them), and
# Debian's chromium for the browser tests (Playwright never downloads a browser here);
# dnsmasq-base and udhcpc give the netns tests a real DHCP server and client; openssl
# checks the admin page CA's name constraints as browsers do.
SYSTEM_PACKAGES=(
  mosquitto nftables iproute2 python3 python3-venv python3-pip
  python3-aiohttp python3-asyncio-mqtt python3-paho-mqtt python3-zeroconf python3-sdnotify
  python3-cryptography python3-jinja2 python3-argon2 python3-pyotp python3-segno
  python3-dnspython conntrack iperf3 dnsmasq-base udhcpc openssl
  chromium fonts-dejavu-core
)
# Only for the tests: Debian's packaging tools build, lint and install the .deb;
# debootstrap builds the other release's root (the third world).
PACKAGING_PACKAGES=(
  build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
  lintian systemd util-linux python3-seccomp debootstrap
)
PY=/usr/bin/python3            # Debian's Python, never a pyenv or other Python on PATH
TEST_TOOLS=(pytest pytest-asyncio hypothesis playwright "schemathesis>=4.0" "opendp>=0.10" "jsonschema>=4")
# Debian roots (the other release's test world, the arm64 smoke), kept between runs on this
# machine and rebuilt when their package list changes; CI clones the project afresh.
ROOTS=/var/cache/home-gateway-dev
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# step LABEL COMMAND...: run COMMAND under a heading, then say how long it took.
step() {
  local label=$1 started=$SECONDS; shift
  echo "==> $label"
  "$@"
  echo "    ($label: $(( SECONDS - started )) s)"
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

setup_system() {  # setup_system PACKAGE...: install those not installed yet
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# make_venv DIR STAMP-KEY CREATE-ARGS... -- INSTALL-ARGS...: (re)build a venv when its inputs change.
make_venv() {
  local dir=$1 key=$2; shift 2
  local create=() install=()
  while [ "$1" != "--" ]; do create+=("$1"); shift; done; shift
  install=("$@")
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$key" ]; then return; fi
  echo "==> building $dir"
  rm -rf "$dir"
  "$PY" -m venv "${create[@]}" "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "${install[@]}"
  echo "$key" > "$dir/.stamp"
}

venv_key() { cat pyproject.toml dev.sh | sha256sum | cut -c1-16; }

# A Debian world: this system's own libraries (--system-site-packages); only the test tools
# come from PyPI, the project itself is installed without dependencies.
make_debian_venv() {
  local dir=$1
  make_venv "$dir" "$(venv_key)" --system-site-packages -- "${TEST_TOOLS[@]}"
  "$dir/bin/pip" install -q --disable-pip-version-check --no-deps -e .
}

setup_python() {
  # World 1: the newest libraries from PyPI (aiomqtt 2.x, ...).
  make_venv .venv "$(venv_key)" -- -e ".[test]"
  # World 2: this release's Debian libraries (bookworm: asyncio-mqtt 0.16, aiohttp 3.8, ...).
  make_debian_venv .venv-debian
}

versions() {  # versions VENV: what a test world runs on, in one line
  local py=$1/bin/python
  "$py" -c 'import importlib, platform, gateway.mqtt as m
found = [f"Python {platform.python_version()}", m.LIBRARY]
for name in ("aiohttp", "zeroconf", "cryptography"):
    found.append(f"{name} {importlib.import_module(name).__version__}")
print(", ".join(found), end="")'
  printf ', mosquitto %s, %s, lintian %s\n' \
    "$(dpkg-query -W -f='${Version}' mosquitto 2>/dev/null || echo none)" \
    "$(nft --version 2>/dev/null | cut -d' ' -f1-2 || echo 'nftables none')" \
    "$(dpkg-query -W -f='${Version}' lintian 2>/dev/null || echo none)"
}

# -- Debian roots -----------------------------------------------------------------------------

this_release() { . /etc/os-release && echo "$VERSION_CODENAME"; }

other_release() {  # the release the third world runs on: both are always proven
  case "$(this_release)" in
    bookworm) echo trixie ;;
    trixie) echo bookworm ;;
    *) echo "dev.sh: this is $(this_release), not Debian bookworm or trixie" >&2; return 2 ;;
  esac
}

archive() {  # archive debian|debian-security: the URL this machine's apt already uses
  local want=$1 url
  # (either file may be missing: grep then fails, and so does the pipeline, output or not)
  url=$(grep -hoE "^(URIs:|deb)\s+\S+" /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | awk '{print $2}' | grep -E "/${want}/?\$" | head -n 1) || true
  echo "${url:-http://deb.debian.org/$want}"
}

# in_root ROOT COMMAND...: COMMAND inside the Debian root ROOT, as root, sharing this
# machine's network. The root becomes the / of mount and PID namespaces of its own
# (pivot_root, not chroot: inside a chroot the kernel refuses new user namespaces, which
# `unshare -rn` and so the firewall's check need), with its own /proc, /run and /tmp, so
# network namespaces and the package tests work there as on a machine of that release.
in_root() {
  local root=$1; shift
  # This machine's resolver and trust store (the registries may be reached through a proxy
  # whose certificate only this machine's store holds).
  as_root cp /etc/resolv.conf "$root/etc/resolv.conf"
  if [ -f "$root/etc/ssl/certs/ca-certificates.crt" ]; then
    as_root cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  as_root unshare --mount --pid --fork --propagation private -- /bin/sh -euc '
    root=$1; shift
    mount --bind "$root" "$root"
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
    mount -t proc proc "$root/proc"
    for dir in run tmp; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/$dir"; done
    chmod 0755 "$root/run"
    mkdir -p "$root/run/lock" "$root/.old-root"
    cd "$root"
    pivot_root . .old-root
    exec /usr/sbin/chroot . /bin/sh -c "umount -l /.old-root && rmdir /.old-root && exec \"\$@\"" sh "$@"
  ' sh "$root" env -i PATH="$CLEAN_PATH" HOME=/root LANG=C.UTF-8 CI="${CI:-}" \
      DEBIAN_FRONTEND=noninteractive "$@"
}

failed() {  # failed LOG WHAT: the end of LOG, then what failed; returns 1
  tail -n 30 "$1" >&2
  echo "dev.sh: $2 failed (log: $1)" >&2
  return 1
}

# debian_root RELEASE ARCH PACKAGE...: the path of a Debian RELEASE root for ARCH with those
# packages installed (debootstrap from the archive this machine's apt uses, then apt),
# built once and kept in $ROOTS under the hash of its inputs, upgraded once a week.
debian_root() {
  local release=$1 arch=$2; shift 2
  local key dir log main security
  main=$(archive debian) security=$(archive debian-security)
  key=$(printf '%s\n' "$release" "$arch" "$main" "$security" "$@" | sha256sum | cut -c1-12)
  dir=$ROOTS/$release-$arch-$key
  log=$ROOTS/$release-$arch.log
  if [ -f "$dir/.ready" ]; then
    # A week old: take the release's updates first (what a Pi would have by now).
    if [ -n "$(find "$dir/.ready" -mtime +6)" ]; then
      echo "==> upgrading the Debian $release ($arch) root (last upgraded over a week ago)" >&2
      in_root "$dir" sh -c 'apt-get update -qq && apt-get dist-upgrade -y -qq' >>"$log" 2>&1 \
        || failed "$log" "upgrading the $release root"
      as_root touch "$dir/.ready"
    fi
    echo "$dir"; return
  fi
  echo "==> building a Debian $release ($arch) root in $dir (log: $log)" >&2
  as_root mkdir -p "$ROOTS"
  as_root rm -rf "$ROOTS/$release-$arch-"*
  as_root debootstrap --variant=minbase --arch="$arch" "$release" "$dir" "$main" >"$log" 2>&1 \
    || failed "$log" "debootstrap $release"
  # No service starts while packages install (no init runs here; policy-rc.d says so).
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$dir/usr/sbin/policy-rc.d" >/dev/null
  as_root chmod 0755 "$dir/usr/sbin/policy-rc.d"
  as_root tee "$dir/etc/apt/sources.list" >/dev/null <<SOURCES
deb $main $release main
deb $main $release-updates main
deb $security $release-security main
SOURCES
  in_root "$dir" sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"' \
    sh ca-certificates "$@" >>"$log" 2>&1 || failed "$log" "installing packages in the $release root"
  as_root touch "$dir/.ready"
  echo "$dir"
}

# export_tree DEST: this tree's files as a release would have them (no .git, nothing ignored).
export_tree() {
  as_root rm -rf "$1"
  as_root "$PY" -c 'import sys; from pathlib import Path; from tests.package.harness import source_tree
source_tree(Path(sys.argv[1]))' "$1"
}

# -- the test worlds ----------------------------------------------------------------------------

# debian_world VENV [pytest options]: the suite against this system's Debian libraries, then
# the package layer (built, linted, installed, run, upgraded and purged here).
debian_world() {
  local venv=$1; shift
  make_debian_venv "$venv"
  step "tests with $(this_release)'s Debian libraries ($(versions "$venv"))" \
    "$venv/bin/python" -m pytest -q --ignore=tests/package "$@"
  step "the Debian package, built and installed on $(this_release)" \
    "$venv/bin/python" -m pytest -q tests/package
}

# lint_debs ROOT: each release's lintian on the .deb the other built (the package is built
# once, on either release, and installed on both).
lint_debs() {
  local root=$1 here other
  here=$(ls artifacts/deb/*.deb)
  other=$(ls "$root"/src/home-gateway/artifacts/deb/*.deb)
  step "$(this_release)'s lintian on the .deb built on $(other_release)" \
    lintian --fail-on error,warning --pedantic "$other"
  as_root cp "$here" "$root/var/tmp/this-release.deb"  # (the root's /tmp is its own)
  step "$(other_release)'s lintian on the .deb built on $(this_release)" \
    in_root "$root" lintian --fail-on error,warning --pedantic /var/tmp/this-release.deb
  as_root rm "$root/var/tmp/this-release.deb"
}

# build_deb DIR: the .deb of this tree, built here under a clean PATH (Debian's Python).
build_deb() {
  "$PY" -c 'import sys; from pathlib import Path; from tests.package.harness import build, source_tree
print(build(source_tree(Path(sys.argv[1]) / "home-gateway")))' "$1"
}

# enable_arm64: this machine runs arm64 programs under qemu-user-static (binfmt_misc, with
# the F flag, so that they run inside a root too). Changes the running kernel's binfmt table.
enable_arm64() {
  [ -e /proc/sys/fs/binfmt_misc/status ] || as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || as_root update-binfmts --enable qemu-aarch64
  grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    setup_system "${SYSTEM_PACKAGES[@]}"
    setup_python
    exec .venv/bin/home-gateway demo "$@"
    ;;
  test)
    setup_system "${SYSTEM_PACKAGES[@]}" "${PACKAGING_PACKAGES[@]}"
    setup_python
    step ruff .venv/bin/ruff check .
    step mypy .venv/bin/mypy
    step "tests with PyPI libraries ($(versions .venv))" \
      .venv/bin/python -m pytest -q --ignore=tests/package "$@"
    debian_world .venv-debian "$@"
    # World 3: the other release in a root of its own, from an exported tree (no .git).
    root=$(debian_root "$(other_release)" "$(dpkg --print-architecture)" \
           "${SYSTEM_PACKAGES[@]}" "${PACKAGING_PACKAGES[@]}")
    export_tree "$root/src/home-gateway"
    step "the $(other_release) world (a root of its own)" \
      in_root "$root" /src/home-gateway/dev.sh world "$@"
    lint_debs "$root"
    echo "==> every check passed in $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s"
    ;;
  smoke-arm64)
    setup_system "${PACKAGING_PACKAGES[@]}" qemu-user-static binfmt-support
    enable_arm64
    work=$(mktemp -d)
    trap 'as_root rm -rf "$work"' EXIT
    deb=$(build_deb "$work" | tail -n 1)
    root=$(debian_root trixie arm64 python3-pytest python3-pytest-asyncio util-linux iproute2)
    export_tree "$root/src/home-gateway"
    as_root cp "$deb" "$root/src/home-gateway/"
    name=$(basename "$deb")
    started=$(date +%s)
    echo "==> installing $name in the arm64 trixie root with apt (under qemu: minutes)"
    in_root "$root" apt-get install -y -qq --no-install-recommends "/src/home-gateway/$name" >/dev/null
    echo "==> installed in $(( $(date +%s) - started )) s; running it"
    in_root "$root" sh -c 'cd /src/home-gateway && HG_DEB="$1" python3 -m pytest -q -s -p no:cacheprovider tests/package/arm64_smoke.py' sh "$name"
    echo "==> smoke-arm64 passed on $(date -u +%Y-%m-%d) in $(( $(date +%s) - started )) s"
    ;;
  world)  # inside the other release's root (./dev.sh test calls it there)
    debian_world /opt/home-gateway-venv "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo|test|smoke-arm64 [options]" >&2
    exit 2
    ;;
esac
