#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for dbaccess development: the database servers and
# clients, a Secret Service, Node.js for the test identity provider, and a virtualenv in
# .venv with dbaccess and its dev dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(postgresql postgresql-client mariadb-server mariadb-client gnome-keyring dbus
          procps
          # tests/test_deploy.py: promtool checks the alert rules, systemd-analyze the units
          prometheus systemd
          # tests/e2e/test_web_browser.py: the approval pages in a real headless browser
          chromium chromium-driver fonts-liberation)
command -v node >/dev/null 2>&1 || packages+=(nodejs npm)
python3 -m venv --help >/dev/null 2>&1 || packages+=(python3-venv)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # policy-rc.d keeps the packages' own servers from starting: tests start private ones.
  $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
echo "setup: done"
