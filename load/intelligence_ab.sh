#!/usr/bin/env bash
# Batched reserve throughput with the demand intelligence on against off
# (`omnistock serve --intelligence on|off`, docs/intelligence.md), alternating on / off
# for each round on the same binary, a fresh server (temporary data directory, free
# 127.0.0.1 ports) for every run, stopped afterwards. Wall clock on a shared machine is
# noisy: read the per-round pairs, not one number.
#
# Usage: load/intelligence_ab.sh [options]
#   -d, --duration S   measured seconds per run   (env DURATION, default 10)
#   -w, --warmup S     warm-up seconds per run    (env WARMUP, default 2)
#   -r, --rounds N     rounds (on, off per round) (env ROUNDS, default 3)
#   -b, --bin-dir DIR  omnistock, omnistock-load  (env BIN_DIR, default <repo>/target/release)
#   -f, --flags "F"    workload flags             (env RUN_FLAGS, default "--workload reserve -c 8 --depth 4 --batch 256")
#   -h, --help
# Needs jq and curl. Only ever targets 127.0.0.1; every run is bounded in time.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
BIN_DIR=${BIN_DIR:-$REPO/target/release}
read -r -a RUN_FLAGS <<<"${RUN_FLAGS:---workload reserve -c 8 --depth 4 --batch 256}"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { echo "intelligence_ab.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -d|--duration) DURATION=${2:?}; shift 2 ;;
    -w|--warmup) WARMUP=${2:?}; shift 2 ;;
    -r|--rounds) ROUNDS=${2:?}; shift 2 ;;
    -b|--bin-dir) BIN_DIR=${2:?}; shift 2 ;;
    -f|--flags) read -r -a RUN_FLAGS <<<"${2:?}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
OMNI=$BIN_DIR/omnistock
LOAD=$BIN_DIR/omnistock-load
[[ -x $OMNI && -x $LOAD ]] || die "no omnistock / omnistock-load in $BIN_DIR"
HELP=$("$OMNI" serve --help)
[[ $HELP == *--intelligence* ]] || die "$OMNI has no --intelligence"
INIT_FLAG=""
if [[ $HELP == *--init* ]]; then INIT_FLAG=--init; fi
for tool in jq curl; do command -v "$tool" >/dev/null || die "$tool not found"; done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/omnistock-intel.XXXXXX")
SERVER_PID=
LOAD_PID=
stop_server() {
  local pid=$SERVER_PID i
  SERVER_PID=
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  if [[ -n $LOAD_PID ]]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; fi
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  die "no free port found"
}

run_one() {
  local mode=$1 round=$2 dir=$WORK/$1.$2 port admin rc=0 i limit
  mkdir -p "$dir"
  port=$(free_port)
  admin=$(free_port)
  OMNISTOCK_INTELLIGENCE=$mode "$OMNI" serve ${INIT_FLAG:+"$INIT_FLAG"} --data-dir "$dir/data" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  for ((i = 0; i < 300; i++)); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || {
      echo "server exited: $(tail -n 1 "$dir/server.log")" >&2
      SERVER_PID=
      echo "- -"
      return 0
    }
    sleep 0.2
  done
  limit=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 180 }')
  timeout --kill-after=10 "$limit" "$LOAD" run --target omnistock --addr "127.0.0.1:$port" \
    "${RUN_FLAGS[@]}" --duration "$DURATION" --warmup "$WARMUP" --json --quiet \
    >"$dir/report.json" 2>"$dir/load.err" &
  LOAD_PID=$!
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=
  stop_server
  jq -r '[.ops[] | select(.op == "reserve")][0] | "\(.per_second | floor) \(.p99_us)"' \
    "$dir/report.json" 2>/dev/null || echo "- -"
  [[ $rc -eq 0 || $rc -eq 3 ]] || echo "  load exit $rc: $(tail -n 1 "$dir/load.err")" >&2
  rm -rf "$dir"
}

echo "# intelligence on vs off, $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $OMNI; ${RUN_FLAGS[*]}; ${DURATION}s after ${WARMUP}s warm-up; $ROUNDS round(s)"
echo "| round | on reserves/s | on p99 us | off reserves/s | off p99 us | on / off |"
echo "|---|---|---|---|---|---|"
for ((r = 1; r <= ROUNDS; r++)); do
  read -r on onp < <(run_one on "$r")
  read -r off offp < <(run_one off "$r")
  ratio=$(awk -v a="$on" -v b="$off" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')
  echo "| $r | $on | $onp | $off | $offp | $ratio |"
done
