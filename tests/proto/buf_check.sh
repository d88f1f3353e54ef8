#!/usr/bin/env bash
# The wire contract's checks: every proto comment sits on its own line(s) above what it
# describes (an end-of-line comment that wraps attaches its second line to the next field in
# generated code and reflection), `buf lint` with buf.yaml's rules, and `buf breaking` against the
# proto of the previous commit (HEAD~1).
#
# Usage: buf_check.sh SOURCE_DIR BUF
# Exit status 77 (a ctest skip) only for the breaking check when there is no previous commit to
# compare with (not a git checkout, or a shallow clone of depth 1); the other checks still ran.
set -euo pipefail
source_dir=$1
buf=$2
cd "$source_dir"

if [ ! -x "$buf" ]; then
  echo "buf_check: $buf not found: run deploy/install_deps.sh (it installs buf from npm)" >&2
  exit 1
fi

status=0
while IFS= read -r file; do
  if grep -nE '[;{}]\s*//' "$file"; then
    echo "buf_check: $file: end-of-line comments above; put each on its own line(s) above its" \
         "field" >&2
    status=1
  fi
done < <(find proto/rcknn -name '*.proto')

echo "== buf lint"
"$buf" lint || status=1

echo "== buf breaking against HEAD~1"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "buf_check: SKIPPED buf breaking: $source_dir is not a git checkout" >&2
  [ "$status" = 0 ] && exit 77
  exit "$status"
fi
if ! git rev-parse --verify --quiet 'HEAD~1^{commit}' >/dev/null; then
  echo "buf_check: SKIPPED buf breaking: no previous commit (HEAD~1) in this clone (shallow?" \
       "git fetch --deepen=1 brings it)" >&2
  [ "$status" = 0 ] && exit 77
  exit "$status"
fi
previous=$(mktemp -d)
trap 'rm -rf "$previous"' EXIT
if git cat-file -e HEAD~1:proto 2>/dev/null; then
  git archive HEAD~1 proto | tar -x -C "$previous"
fi
# The previous commit is read with this commit's buf.yaml: its module layout and exclusions.
"$buf" breaking --against "$previous" --against-config buf.yaml || status=1
exit "$status"
