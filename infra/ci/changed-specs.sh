#!/usr/bin/env bash
# Print the adapter spec files (YAML under the given folders) added or modified between two
# commits, one per line; deleted specs are skipped. Used by the CI workflow beside this file.
#   infra/ci/changed-specs.sh BASE HEAD [FOLDER ...]     (folders default to: examples specs)
# BASE may be the all-zero SHA GitHub sends for a new branch: then every spec at HEAD counts.
set -euo pipefail
base=${1:?usage: changed-specs.sh BASE HEAD [FOLDER ...]}
head=${2:?usage: changed-specs.sh BASE HEAD [FOLDER ...]}
shift 2
folders=("$@")
[ ${#folders[@]} -gt 0 ] || folders=(examples specs)
patterns=()
for folder in "${folders[@]}"; do
  patterns+=("$folder/*.yaml" "$folder/*.yml")
done
if [[ "$base" =~ ^0+$ ]] || ! git cat-file -e "$base^{commit}" 2>/dev/null; then
  # ls-tree takes folders, not globs: filter the names instead.
  git ls-tree -r --name-only "$head" -- "${folders[@]}" | grep -E '^[^/]+/[^/]+\.ya?ml$' || true
else
  git diff --name-only --diff-filter=AMR "$base" "$head" -- "${patterns[@]}"
fi
