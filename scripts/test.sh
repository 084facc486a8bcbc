#!/usr/bin/env bash
# Installs everything the suite needs into .venv (Debian's chromium for the browser tests, PostgreSQL for the
# store tests), then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: /usr/bin/chromium is missing (apt-get install chromium); browser tests will be skipped" >&2
  fi
fi
# PostgreSQL: the store tests also run against a throwaway server the tests start themselves
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: PostgreSQL is missing (apt-get install postgresql); its store tests will be skipped" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
exec .venv/bin/python -m pytest "$@"
