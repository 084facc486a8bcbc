#!/usr/bin/env bash
# Installs everything the suite needs into .venv (and Debian's chromium for the browser tests), then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: /usr/bin/chromium is missing (apt-get install chromium); browser tests will be skipped" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
exec .venv/bin/python -m pytest "$@"
