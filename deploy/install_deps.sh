#!/usr/bin/env bash
# Installs every Debian 12 package that building and testing rcknn needs, skipping apt-get
# entirely when all are present, then the npm tools of tools/package.json (buf, and
# kubernetes-models for the Kubernetes schemas of tests/metrics/check_kustomize.py; pinned by
# tools/package-lock.json) into tools/node_modules with `npm ci`, skipped when the pinned versions
# are there already. Called by tests/run.sh and deploy/quickstart.sh.
#
# Usage: deploy/install_deps.sh [--no-npm-tools]
#   --no-npm-tools  Debian packages only (what building and running the server needs; buf is for
#                   the proto tests). Also implied when tools/package.json is absent (a Docker
#                   build stage copies only this script).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
npm_tools=1
for arg in "$@"; do
  case "$arg" in
    --no-npm-tools) npm_tools=0 ;;
    *) echo "usage: $0 [--no-npm-tools]" >&2; exit 2 ;;
  esac
done

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libeigen3-dev libtbb-dev libabsl-dev libxxhash-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-grpcio python3-protobuf python3-yaml
  python3-numpy python3-scipy python3-tqdm python3-venv python3-pip python3-setuptools python3-wheel
  prometheus
  clang-14 libfuzzer-14-dev openssl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm: Debian's package, unless a Node.js install (NodeSource's nodejs, say) already brings one.
if [ "$npm_tools" = 1 ] && [ -f "$root/tools/package.json" ] && ! command -v npm >/dev/null; then
  missing+=(npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update
  "${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ "$npm_tools" = 1 ] && [ -f "$root/tools/package.json" ]; then
  pinned() { sed -n "s|.*\"$1\": \"\\([^\"]*\\)\".*|\\1|p" "$root/tools/package.json"; }
  buf_version=$(pinned @bufbuild/buf)
  models_version=$(pinned kubernetes-models)
  models_installed=$(sed -n 's|^  "version": "\([^"]*\)".*|\1|p' \
    "$root/tools/node_modules/kubernetes-models/package.json" 2>/dev/null || true)
  if [ "$("$root/tools/node_modules/.bin/buf" --version 2>/dev/null || true)" != "$buf_version" ] ||
     [ "$models_installed" != "$models_version" ]; then
    echo "install_deps: installing buf $buf_version and kubernetes-models $models_version into" \
      "tools/node_modules (npm ci)"
    npm ci --prefix "$root/tools" --no-audit --no-fund
  fi
fi
