#!/usr/bin/env bash
# Checks ServerMetrics' text exposition with promtool (Debian package `prometheus`): it must parse
# as the Prometheus text format and pass promtool's lint rules. A missing promtool is a failure.
# Usage: check_exposition.sh path/to/rcknn-metrics-dump
set -euo pipefail
dump=${1:?usage: check_exposition.sh path/to/rcknn-metrics-dump}
if ! command -v promtool >/dev/null; then
  echo "check_exposition.sh: promtool not found (apt-get install prometheus)" >&2
  exit 1
fi
"$dump" | promtool check metrics
echo "check_exposition.sh: exposition OK"
