#!/usr/bin/env bash
# The one test command: installs what is missing (Debian packages), configures, builds and runs
# every test with ctest. Usage: tests/run.sh [extra ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

deploy/install_deps.sh

build_dir="$root/build"
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j2
cd "$build_dir"
ctest --output-on-failure -j2 "$@"
