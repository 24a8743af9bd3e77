#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl) are on this machine: the registry tests
# start a throwaway cluster with them. Debian/Ubuntu: installs the `postgresql` package when
# missing (as root); elsewhere, says what to install.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get > /dev/null; then
  echo "installing PostgreSQL server binaries (apt-get install postgresql)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null
  exit 0
fi
echo "PostgreSQL server binaries (initdb, pg_ctl) are missing: install PostgreSQL 15+ " \
     "(Debian: apt-get install postgresql; macOS: brew install postgresql)" >&2
exit 1
