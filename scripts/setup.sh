#!/usr/bin/env bash
# Installs what `make demo` (scripts/setup.sh demo) or `make test` (scripts/setup.sh test, the
# default) needs on a fresh Debian machine with Python 3: Debian packages (as root, only those
# missing), a virtual environment in .venv, and this project (the demo: alone; the tests: with
# the test extra). Safe to run again: it only adds what is missing. pip's output goes to
# .venv/pip.log and is shown only when pip fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-test}

# the demo runs on the embedded SQLite: Python's venv module is all it needs from Debian
DEMO_PACKAGES=(python3-venv)
# the tests: everything
DEB_PACKAGES=(
  python3-venv sqlite3
  systemd
  gearman-job-server gearman-tools libgearman-client-perl
  libtheschwartz-perl libdbd-sqlite3-perl libdbd-pg-perl libdbd-mysql-perl
  postgresql mariadb-server
  procps lsb-base logrotate
  chromium chromium-driver
)
case "$PART" in
  demo) PACKAGES=("${DEMO_PACKAGES[@]}"); TARGET="." ;;
  test) PACKAGES=("${DEB_PACKAGES[@]}"); TARGET=".[test]" ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install Debian packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep package installs from starting system-wide servers: the tests run private instances.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_quietly() {
  if ! .venv/bin/python -m pip "$@" >>.venv/pip.log 2>&1; then
    echo "setup: pip $* failed; its output:" >&2
    tail -n 40 .venv/pip.log >&2
    exit 1
  fi
}
: >.venv/pip.log
.venv/bin/python -m pip install -q --upgrade pip >>.venv/pip.log 2>&1 || true
pip_quietly install -q -e "$TARGET"
