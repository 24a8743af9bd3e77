#!/usr/bin/env bash
# Make sure the system programs the tests use are on this machine:
#   - PostgreSQL server binaries (initdb, pg_ctl): the tests start a throwaway cluster;
#   - Chromium: the end-to-end test opens the MLflow UI in a headless browser.
# Debian/Ubuntu as root: installs what is missing with apt-get. Elsewhere: says what to install.
set -euo pipefail
missing=()
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null && ! command -v initdb > /dev/null; then
  missing+=(postgresql)
fi
if ! command -v chromium > /dev/null && ! command -v chromium-browser > /dev/null; then
  missing+=(chromium)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get > /dev/null; then
  echo "installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
  exit 0
fi
echo "missing system packages: ${missing[*]}. Install them (Debian: apt-get install ${missing[*]};" \
     "macOS: brew install postgresql chromium)" >&2
exit 1
