#!/usr/bin/env bash
# The main command: on a fresh Debian 12 machine, installs what is missing, builds in Release,
# starts rcknn-server on 127.0.0.1:50051 and shows the main job end to end with the `rcknn` tool:
# a gold-like data set (32,768 points, d = 3, RBF) is generated, uploaded and built, every point
# gets its 50 most correlated predecessors (the Vecchia neighbour sets), and the server then
# keeps running in the foreground until Ctrl-C (which shuts it down gracefully). Indexes are
# persisted in rcknn-data/ at the top of the repository: a second run finds the demo index
# restored from there, says so, and replaces it with a fresh one.
#
# Usage: deploy/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
listen=127.0.0.1:50051

"$root/deploy/install_deps.sh"

build_dir="$root/build"
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j"$(nproc)" --target rcknn-server rcknn
server="$build_dir/server/rcknn-server"
rcknn=("$build_dir/client/rcknn" --server="$listen")

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo
echo "== starting rcknn-server on $listen"
"$server" --listen="$listen" --data_dir="$root/rcknn-data" &
server_pid=$!
for _ in $(seq 1 100); do
  "${rcknn[@]}" list >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { echo "quickstart: rcknn-server did not start" >&2; exit 1; }
  sleep 0.1
done

echo
echo "== a gold-like data set: 32,768 points in 3-D, N(0,1)"
"${rcknn[@]}" gen --n=32768 --dim=3 --seed=1 --output="$work/points.f64"
if "${rcknn[@]}" status --index=gold 2>/dev/null; then
  echo "== index gold is back from rcknn-data/ (above); the demo replaces it"
  "${rcknn[@]}" delete --index=gold
fi
echo
echo "== create: residual correlation, RBF kernel (variance 1, lengthscale 1), 512 inducing points"
"${rcknn[@]}" create --index=gold --dim=3 --kernel=rbf --variance=1 --lengthscale=1 --inducing=512
echo
echo "== upload"
"${rcknn[@]}" upload --index=gold --input="$work/points.f64" --dim=3
echo
echo "== build (runs on the server's pool; progress from WatchIndex)"
"${rcknn[@]}" build --index=gold
echo
echo "== the Vecchia job: for every point its 50 most correlated predecessors (j < i), one batch"
"${rcknn[@]}" search-all --index=gold --k=50 --predecessor --print=5
echo
echo "== out-of-sample prediction points: their 10 nearest training points"
"${rcknn[@]}" gen --n=4 --dim=3 --seed=2 --output="$work/new.csv"
"${rcknn[@]}" search --index=gold --k=10 --points="$work/new.csv" --print=4
echo
"${rcknn[@]}" list
echo
echo "== rcknn-server keeps running on $listen (pid $server_pid); Ctrl-C stops it."
trap 'kill -TERM "$server_pid" 2>/dev/null || true' INT TERM
wait "$server_pid" || true
wait "$server_pid" 2>/dev/null || true
server_pid=
