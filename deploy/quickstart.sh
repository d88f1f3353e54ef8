#!/usr/bin/env bash
# The main command: on a fresh Debian 12 machine, installs what is missing, builds in Release,
# starts rcknn-server on 127.0.0.1 (gRPC port 50051, metrics port 9464) and shows the main job end
# to end with the `rcknn` tool: a gold-like data set (32,768 points, d = 3, RBF) is generated,
# uploaded and built, every point gets its 50 most correlated predecessors (the Vecchia neighbour
# sets), and the server then keeps running in the foreground until Ctrl-C (which shuts it down
# gracefully). Indexes are persisted in rcknn-data/ at the top of the repository: a second run
# finds the demo index restored from there, says so, and replaces it with a fresh one.
#
# The script only ever talks to the server it started: it refuses ports that something already
# listens on, waits for its own server's "listening" line, and stops with an error (exit status 1)
# as soon as that server has died.
usage() {
  cat <<'EOF'
Usage: deploy/quickstart.sh [options]
  --port=N           gRPC port of the server, on 127.0.0.1 (default 50051)
  --metrics-port=N   Prometheus /metrics port, on 127.0.0.1 (default 9464)
  --data-dir=DIR     the server's --data_dir (default: rcknn-data/ at the top of the repository)
  --build-dir=DIR    CMake build directory (default: build/ at the top of the repository)
  --jobs=N           parallel build jobs (default: every core, $(nproc))
  --points=N         points of the demo data set (default 32768; at least 512)
  --no-build         use the binaries already in the build directory (no install, no build)
  --stop             shut the server down after the demo instead of serving until Ctrl-C
  -h, --help         this text
Exit status: 0 after the demo (and Ctrl-C), 1 if a port is taken, the server does not come up or
dies, or a demo step fails; 2 for a bad option.
EOF
}
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

port=50051
metrics_port=9464
data_dir="$root/rcknn-data"
build_dir="$root/build"
jobs=$(nproc)
build=1
stop=0
points=32768
for arg in "$@"; do
  case "$arg" in
    --port=*) port=${arg#*=} ;;
    --metrics-port=*) metrics_port=${arg#*=} ;;
    --data-dir=*) data_dir=${arg#*=} ;;
    --build-dir=*) build_dir=${arg#*=} ;;
    --jobs=*) jobs=${arg#*=} ;;
    --points=*) points=${arg#*=} ;;
    --no-build) build=0 ;;
    --stop) stop=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quickstart: unknown option $arg" >&2; usage >&2; exit 2 ;;
  esac
done
for value in "$port" "$metrics_port" "$jobs"; do
  if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "$value" -lt 1 ] || [ "$value" -gt 65535 ]; then
    echo "quickstart: '$value' is not a port or job count (1..65535)" >&2
    exit 2
  fi
done
if ! [[ "$points" =~ ^[0-9]+$ ]] || [ "$points" -lt 512 ]; then
  echo "quickstart: --points must be a number >= 512 (the inducing points), got '$points'" >&2
  exit 2
fi
if [ "$port" = "$metrics_port" ]; then
  echo "quickstart: --port and --metrics-port must differ" >&2
  exit 2
fi
listen=127.0.0.1:$port
metrics_listen=127.0.0.1:$metrics_port

fail() {
  echo "quickstart: $*" >&2
  exit 1
}

if [ "$build" = 1 ]; then
  "$root/deploy/install_deps.sh" --no-npm-tools
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build "$build_dir" -j"$jobs" --target rcknn-server rcknn
fi
server="$build_dir/server/rcknn-server"
rcknn_bin="$build_dir/client/rcknn"
[ -x "$server" ] && [ -x "$rcknn_bin" ] || fail "no $server or $rcknn_bin (run without --no-build)"

# Something answering on a port is another process: never start next to it, never talk to it.
for address in "$listen" "$metrics_listen"; do
  if (exec 3<>"/dev/tcp/${address%:*}/${address##*:}") 2>/dev/null; then
    fail "$address is in use by another process (another rcknn-server?); stop it or choose" \
         "other ports with --port=N --metrics-port=N"
  fi
done

work=$(mktemp -d)
log="$work/server.log"
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Stops the script if the server it started has exited, showing why.
check_server() {
  if ! kill -0 "$server_pid" 2>/dev/null; then
    local code=0
    wait "$server_pid" 2>/dev/null || code=$?
    server_pid=
    fail "rcknn-server (started on $listen) exited with status $code; its log:" \
         "$(printf '\n'; cat "$log")"
  fi
}

# The rcknn tool against our server, which must be alive before and after each step.
rcknn() {
  check_server
  local code=0
  "$rcknn_bin" --server="$listen" "$@" || code=$?
  check_server
  return "$code"
}

echo
echo "== starting rcknn-server on $listen (metrics on $metrics_listen)"
# The log goes to the terminal and to $log, where the "listening" line is looked for.
"$server" --listen="$listen" --metrics_listen="$metrics_listen" --data_dir="$data_dir" \
  > >(tee "$log") 2>&1 &
server_pid=$!
# Ports are never shared (rcknn-server refuses a taken one), so our server's own "listening on
# <listen>" line means that the port is ours.
for _ in $(seq 1 300); do
  check_server
  grep -q "listening on $listen" "$log" 2>/dev/null && break
  sleep 0.1
done
grep -q "listening on $listen" "$log" || fail "rcknn-server did not start listening on $listen in 30 s"

echo
echo "== a gold-like data set: $points points in 3-D, N(0,1)"
rcknn gen --n="$points" --dim=3 --seed=1 --output="$work/points.f64"
check_server
if "$rcknn_bin" --server="$listen" status --index=gold 2>/dev/null; then
  echo "== index gold is back from $data_dir (above); the demo replaces it"
  rcknn delete --index=gold
fi
echo
echo "== create: residual correlation, RBF kernel (variance 1, lengthscale 1), 512 inducing points"
rcknn create --index=gold --dim=3 --kernel=rbf --variance=1 --lengthscale=1 --inducing=512
echo
echo "== upload"
rcknn upload --index=gold --input="$work/points.f64" --dim=3
echo
echo "== build (runs on the server's pool; progress from WatchIndex)"
rcknn build --index=gold
echo
echo "== the Vecchia job: for every point its 50 most correlated predecessors (j < i), one batch"
rcknn search-all --index=gold --k=50 --predecessor --print=5
echo
echo "== out-of-sample prediction points: their 10 nearest training points"
rcknn gen --n=4 --dim=3 --seed=2 --output="$work/new.csv"
rcknn search --index=gold --k=10 --points="$work/new.csv" --print=4
echo
rcknn list
echo
if [ "$stop" = 1 ]; then
  echo "== --stop: shutting rcknn-server down"
  kill -TERM "$server_pid"
  code=0
  wait "$server_pid" || code=$?
  server_pid=
  [ "$code" = 0 ] || fail "rcknn-server exited with status $code on SIGTERM"
  exit 0
fi
echo "== rcknn-server keeps running on $listen (pid $server_pid); Ctrl-C stops it."
trap 'kill -TERM "$server_pid" 2>/dev/null || true' INT TERM
code=0
wait "$server_pid" || code=$?
# A signal interrupts the first wait; the second one collects the server's exit status.
if kill -0 "$server_pid" 2>/dev/null; then
  code=0
  wait "$server_pid" || code=$?
fi
server_pid=
[ "$code" = 0 ] || fail "rcknn-server exited with status $code"
