#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian machine with Python 3:
# Debian packages (as root, only those missing), a virtual environment in .venv, and this
# project with its test extras. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  python3-venv sqlite3
  gearman-job-server gearman-tools libgearman-client-perl
  libtheschwartz-perl libdbd-sqlite3-perl libdbd-pg-perl libdbd-mysql-perl
  postgresql mariadb-server
  procps lsb-base logrotate
  chromium chromium-driver
)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
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
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
