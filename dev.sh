#!/usr/bin/env bash
# Set up a Debian (bookworm or trixie) machine for home-gateway, then run the demo or the tests.
#   ./dev.sh demo [demo options]   a working gateway with its own broker and simulated devices
#   ./dev.sh test [pytest options] every check: ruff, mypy, and the suite in two dependency worlds
set -euo pipefail
cd "$(dirname "$0")"

# System packages: the broker and firewall the gateway drives, Debian's Python and the
# Debian builds of the runtime libraries (the second test world runs against them), and
# Debian's chromium for the browser tests (Playwright never downloads a browser here);
# dnsmasq-base and udhcpc give the netns tests a real DHCP server and client.
SYSTEM_PACKAGES=(
  mosquitto nftables iproute2 python3 python3-venv python3-pip
  python3-aiohttp python3-asyncio-mqtt python3-paho-mqtt python3-zeroconf python3-sdnotify
  python3-cryptography python3-jinja2 python3-argon2 python3-pyotp python3-segno
  python3-dnspython conntrack iperf3 dnsmasq-base udhcpc
  chromium fonts-dejavu-core
)
# Only for the tests: Debian's packaging tools build, lint and install the .deb.
PACKAGING_PACKAGES=(
  build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
  lintian systemd util-linux python3-seccomp
)
PY=/usr/bin/python3            # Debian's Python, never a pyenv or other Python on PATH
TEST_TOOLS=(pytest pytest-asyncio hypothesis playwright "schemathesis>=4.0" "opendp>=0.10" "jsonschema>=4")

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

setup_python() {
  local key
  key=$(cat pyproject.toml dev.sh | sha256sum | cut -c1-16)
  # World 1: the newest libraries from PyPI (aiomqtt 2.x, ...).
  make_venv .venv "$key" -- -e ".[test]"
  # World 2: Debian's own libraries (bookworm: asyncio-mqtt 0.16, aiohttp 3.8, ...); only
  # the test tools come from PyPI, the project itself is installed without dependencies.
  if [ ! -f .venv-debian/.stamp ] || [ "$(cat .venv-debian/.stamp)" != "$key" ]; then
    make_venv .venv-debian "$key" --system-site-packages -- "${TEST_TOOLS[@]}"
    .venv-debian/bin/pip install -q --disable-pip-version-check --no-deps -e .
  fi
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
    echo "==> ruff";  .venv/bin/ruff check .
    echo "==> mypy";  .venv/bin/mypy
    echo "==> tests with PyPI libraries ($(.venv/bin/python -c 'import gateway.mqtt as m; print(m.LIBRARY)'))"
    .venv/bin/python -m pytest -q --ignore=tests/package "$@"
    echo "==> tests with Debian's libraries ($(.venv-debian/bin/python -c 'import gateway.mqtt as m; print(m.LIBRARY)'))"
    .venv-debian/bin/python -m pytest -q --ignore=tests/package "$@"
    # Once: the .deb is built, installed with apt, run, upgraded and purged on this machine.
    echo "==> the Debian package"
    .venv/bin/python -m pytest -q tests/package
    ;;
  *)
    echo "usage: ./dev.sh demo|test [options]" >&2
    exit 2
    ;;
esac
