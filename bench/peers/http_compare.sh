#!/usr/bin/env bash
# HTTP side by side: wrk against examples/hello_http (urge) and against a Go
# net/http hello server (bench/peers/go-http), alternately, and the medians.
#
#   bench/peers/http_compare.sh [--build DIR] [--runs N] [--duration 10s]
#                               [--procs 2] [--port 18080]
#
# DIR is the meson build directory holding examples/hello_http (default
# build-release; the script runs ninja on it first). The Go server is built
# into DIR/bench/peers/go_http. Both servers get the same number of Ps
# (URGE_MAXPROCS / GOMAXPROCS = --procs); URGE_DEBUG passes through, so
# URGE_DEBUG=netpoll=epoll measures urge's epoll backend. Each run is
#
#   wrk -t2 -c64 -d<duration> --latency http://127.0.0.1:<port>/
#
# and the table shows requests/s and p99 latency per side (median over the
# runs) and urge/Go. Targets (issue 6): requests/s >= 1.3x Go, p99 <= Go's.
# wrk runs on the same machine and competes with the server for its cores;
# that is the same for both sides. Needs wrk (Debian package wrk) and go.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="$ROOT/build-release"
RUNS=3
DURATION=10s
PROCS=2
PORT=18080

while (($#)); do
  case "$1" in
    --build) BUILD="$(cd "$2" && pwd)"; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --procs) PROCS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "http_compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v wrk >/dev/null || { echo "http_compare.sh: wrk not found (apt-get install -y wrk)" >&2; exit 1; }
GO=$(command -v go || echo /usr/bin/go)
[[ -x "$GO" ]] || { echo "http_compare.sh: go not found" >&2; exit 1; }

ninja -C "$BUILD" examples/hello_http >/dev/null
URGE_SERVER="$BUILD/examples/hello_http"
GO_SERVER="$BUILD/bench/peers/go_http"
mkdir -p "$BUILD/bench/peers"
(cd "$ROOT/bench/peers/go-http" &&
  GOCACHE="$BUILD/bench/peers/gocache" GOFLAGS=-mod=mod GOTOOLCHAIN=local GOPROXY=off \
  GOSUMDB=off GOTELEMETRY=off GOPATH="${GOPATH:-$BUILD/bench/peers/gopath}" \
  "$GO" build -o "$GO_SERVER" .)

ADDR="127.0.0.1:$PORT"
URL="http://$ADDR/"
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; true; }
trap cleanup EXIT

# start NAME: starts that server on ADDR and waits until it answers.
start() {
  case "$1" in
    urge) URGE_MAXPROCS=$PROCS "$URGE_SERVER" "$ADDR" >/dev/null & ;;
    go) GOMAXPROCS=$PROCS "$GO_SERVER" "$ADDR" >/dev/null & ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    if [[ "$(curl -s --max-time 1 "$URL" 2>/dev/null)" == "Hello, World!" ]]; then return 0; fi
    sleep 0.05
  done
  echo "http_compare.sh: the $1 server did not answer on $URL" >&2
  exit 1
}

# stop: kills the server and waits until its port is free. A process killed
# with an io_uring multishot accept in flight leaves the listening socket to
# the kernel's asynchronous ring teardown, which may still hold it for a
# moment after the process is gone; the next server's bind would then fail.
stop() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  for _ in $(seq 100); do
    if ! ss -Hltn "sport = :$PORT" | grep -q .; then return 0; fi
    sleep 0.05
  done
  echo "http_compare.sh: $ADDR is still in use after the server exited" >&2
  exit 1
}

# wrk's latency ("1.23ms", "850.00us", "1.02s") in ms.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
  if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -a rps_go rps_urge p99_go p99_urge
echo "wrk -t2 -c64 -d$DURATION --latency $URL, $RUNS run(s) per side, $PROCS Ps each" \
  "(urge backend: ${URGE_DEBUG:-default})"
for ((i = 1; i <= RUNS; i++)); do
  for side in go urge; do
    start "$side"
    out=$(wrk -t2 -c64 -d"$DURATION" --latency "$URL")
    stop
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(grep -E "Socket errors|Non-2xx" <<<"$out" || true)
    printf '  run %d %-4s  %10.0f req/s  p99 %8.3f ms%s\n' "$i" "$side" "$rps" "$p99" \
      "${errors:+  ($errors)}"
    if [[ $side == go ]]; then rps_go+=("$rps"); p99_go+=("$p99"); else rps_urge+=("$rps"); p99_urge+=("$p99"); fi
  done
done

g_rps=$(median "${rps_go[@]}"); u_rps=$(median "${rps_urge[@]}")
g_p99=$(median "${p99_go[@]}"); u_p99=$(median "${p99_urge[@]}")
echo
awk -v gr="$g_rps" -v ur="$u_rps" -v gp="$g_p99" -v up="$u_p99" 'BEGIN {
  printf "%-14s %12s %12s %8s %8s %4s\n", "metric", "Go", "urge", "urge/Go", "target", "met"
  r = ur / gr; printf "%-14s %12.0f %12.0f %8.2f %8s %4s\n", "requests/s", gr, ur, r, ">= 1.3", (r >= 1.3 ? "yes" : "no")
  r = up / gp; printf "%-14s %12.3f %12.3f %8.2f %8s %4s\n", "p99 ms", gp, up, r, "<= 1", (r <= 1 ? "yes" : "no")
}'
echo "(medians of $RUNS run(s) per side; Go and urge runs alternate)"
