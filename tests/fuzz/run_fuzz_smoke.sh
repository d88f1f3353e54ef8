#!/usr/bin/env bash
# The fuzz smoke test (ctest label "fuzz"): configures and builds tests/fuzz with clang in
# <build dir>/fuzz, then runs rcknn_fuzz_requests for a bounded time over the seed corpus.
# Fails on any crash, sanitizer report or broken invariant.
# Usage: tests/fuzz/run_fuzz_smoke.sh <main build dir> [seconds, default 20]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build_dir=${1:?usage: run_fuzz_smoke.sh <main build dir> [seconds]}
seconds=${2:-20}
fuzz_dir="$build_dir/fuzz"

compiler=clang++-14
if ! command -v "$compiler" >/dev/null; then
  echo "run_fuzz_smoke.sh: $compiler not found; install clang-14 and libfuzzer-14-dev" >&2
  exit 1
fi
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
if [[ ! -f "$fuzz_dir/CMakeCache.txt" ]]; then
  cmake -S "$here" -B "$fuzz_dir" "${generator[@]}" -DCMAKE_CXX_COMPILER="$compiler" >/dev/null
fi
cmake --build "$fuzz_dir" -j2 --target rcknn_fuzz_requests

# New inputs go to a scratch corpus, never into the source tree; the seeds are read only.
work="$fuzz_dir/smoke_corpus"
rm -rf "$work"
mkdir -p "$work" "$fuzz_dir/artifacts"
"$fuzz_dir/rcknn_fuzz_requests" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
  -print_final_stats=1 -artifact_prefix="$fuzz_dir/artifacts/" "$work" "$here/corpus"
