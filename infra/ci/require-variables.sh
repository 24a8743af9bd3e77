#!/usr/bin/env bash
# Fail, naming each one, if any of the given environment variables is unset or blank. Used by the
# CI workflow beside this file before it builds: a repository secret that is not set (a fork's
# pull request, a secret renamed) arrives as an empty string, and adapterops takes an empty
# ADAPTEROPS_REGISTRY_URL as unset: the build would train, register and "promote" into a new
# registry on the runner, and the job would pass with nothing in the team's registry.
#   infra/ci/require-variables.sh NAME [NAME ...]
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: require-variables.sh NAME [NAME ...]" >&2; exit 2; }
missing=0
for name in "$@"; do
  value=${!name:-}
  if [ -z "${value//[[:space:]]/}" ]; then
    # GitHub Actions shows ::error:: lines as annotations on the run's page
    echo "::error::$name is empty: set the repository secret $name (see infra/ci/build-adapters.yml)"
    missing=1
  fi
done
exit $missing
