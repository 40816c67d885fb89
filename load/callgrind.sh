#!/usr/bin/env bash
# Instructions the server executes per durable reservation, counted by callgrind: a
# repeatable figure on a noisy machine (wall-clock throughput is not).
#
# Starts the server under `valgrind --tool=callgrind` on a temporary data directory and a
# free 127.0.0.1 port, loads the reserve workload's catalog (10,000 SKUs x 2 locations),
# zeroes the counters (`callgrind_control -z`), runs a fixed number of reservations
#   omnistock-load run --workload reserve -c 8 --depth 4 --batch 256 --ops N --no-catalog \
#     --no-check --warmup 0
# dumps the counters (`callgrind_control -d`), stops the server, and prints the dump's total
# instructions (Ir) divided by the reservations answered: instructions per durable reserve.
# The end-of-run check is skipped (--no-check) because its snapshots (a read of every SKU
# before and after) would be counted too. The top 25 functions of
# `callgrind_annotate --inclusive=yes` (and of the self cost) go to files whose paths it
# prints. (In the self list, the frames already running when the counters were zeroed --
# thread starts, the runtimes' loops -- show their inclusive cost: skip them.)
#
# omnistock runs with its default durability (fsync group commit); with --target redis the
# same Lua reserve workload runs against `valgrind redis-server --appendonly yes
# --appendfsync always --save ''` instead.
#
# Usage: load/callgrind.sh [options]
#   -t, --target T       omnistock or redis                    (env TARGET, default omnistock)
#   -n, --ops N          reservations measured                 (env OPS, default 200000)
#   -b, --bin-dir DIR    omnistock and omnistock-load          (env BIN_DIR, default <repo>/target/release)
#   -o, --out-dir DIR    callgrind files, logs, annotations    (env OUT_DIR, default a new /tmp/omnistock-callgrind.*)
#       --redis-server P redis-server binary                   (env REDIS_SERVER, default redis-server)
#   -f, --flags "F"      the run's workload flags instead of the batched scenario's
#                        (env RUN_FLAGS, default "--workload reserve -c 8 --depth 4 --batch 256")
#       --start-timeout S seconds to wait for the server under valgrind (env START_TIMEOUT, default 300)
#       --stockout-hours H after the catalog, a stockout-projection threshold of H hours on
#                        every channel (ctl set-stockout-threshold; omnistock only)
#                                                              (env STOCKOUT_HOURS, default 0: none)
#   -h, --help
# Needs valgrind (callgrind_control, callgrind_annotate), curl, redis-cli for Redis, jq.
# Only ever targets 127.0.0.1; every step is bounded in time.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${TARGET:-omnistock}
OPS=${OPS:-200000}
BIN_DIR=${BIN_DIR:-$REPO/target/release}
OUT_DIR=${OUT_DIR:-}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
START_TIMEOUT=${START_TIMEOUT:-300}
STOCKOUT_HOURS=${STOCKOUT_HOURS:-0}
read -r -a RUN_FLAGS <<<"${RUN_FLAGS:---workload reserve -c 8 --depth 4 --batch 256}"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { echo "callgrind.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -t|--target) TARGET=${2:?}; shift 2 ;;
    -n|--ops) OPS=${2:?}; shift 2 ;;
    -b|--bin-dir) BIN_DIR=${2:?}; shift 2 ;;
    -o|--out-dir) OUT_DIR=${2:?}; shift 2 ;;
    -f|--flags) read -r -a RUN_FLAGS <<<"${2:?}"; shift 2 ;;
    --redis-server) REDIS_SERVER=${2:?}; shift 2 ;;
    --start-timeout) START_TIMEOUT=${2:?}; shift 2 ;;
    --stockout-hours) STOCKOUT_HOURS=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
done

[[ $TARGET == omnistock || $TARGET == redis ]] || die "--target must be omnistock or redis"
[[ $OPS =~ ^[1-9][0-9]*$ ]] || die "--ops must be a positive integer"
[[ $START_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--start-timeout must be a positive integer"
[[ $STOCKOUT_HOURS =~ ^[0-9]+$ ]] || die "--stockout-hours must be a non-negative integer"
OMNI=$BIN_DIR/omnistock
# Builds before the data-directory identity (2026-12-01) have no --init: only pass it when known.
INIT_FLAG=""
if [[ "$("$OMNI" serve --help 2>/dev/null)" == *--init* ]]; then INIT_FLAG=--init; fi
LOAD=$BIN_DIR/omnistock-load
[[ -x $LOAD ]] || die "no omnistock-load in $BIN_DIR (build it or pass --bin-dir)"
[[ $TARGET == redis || -x $OMNI ]] || die "no omnistock in $BIN_DIR"
tools=(valgrind callgrind_control callgrind_annotate jq curl)
[[ $TARGET == redis ]] && tools+=(redis-cli "$REDIS_SERVER")
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

if [[ -z $OUT_DIR ]]; then
  OUT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/omnistock-callgrind.$TARGET.XXXXXX")
else
  mkdir -p "$OUT_DIR"
fi
DATA=$(mktemp -d "${TMPDIR:-/tmp}/omnistock-callgrind-data.XXXXXX")
CG=$OUT_DIR/callgrind.out
rm -f "$CG" "$CG".[0-9]*
SERVER_PID=
LOAD_PID=

# shellcheck source=load/lib.sh
source "$REPO/load/lib.sh"
# valgrind is slow to shut down (it writes the final profile): up to 120 s.
stop_all_on_exit 120 "$DATA"

# bounded LIMIT_S COMMAND...: runs COMMAND in the background (so signals reach the traps) with
# a time limit; returns its status.
bounded() {
  local limit=$1 rc=0
  shift
  timeout --kill-after=10 "$limit" "$@" &
  LOAD_PID=$!
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=
  return "$rc"
}

log() { echo "[$(date +%T)] $*" >&2; }

port=$(free_port)
VG=(valgrind --tool=callgrind "--callgrind-out-file=$CG" --dump-instr=no)
if [[ $TARGET == omnistock ]]; then
  admin=$(free_port)
  log "starting ${VG[*]} $OMNI serve on 127.0.0.1:$port (admin $admin)"
  "${VG[@]}" "$OMNI" serve ${INIT_FLAG:+"$INIT_FLAG"} --data-dir "$DATA/data" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" >"$OUT_DIR/server.log" 2>&1 &
  SERVER_PID=$!
  ready() { curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz"; }
  TARGET_FLAGS=(--target omnistock --addr "127.0.0.1:$port")
else
  log "starting ${VG[*]} $REDIS_SERVER on 127.0.0.1:$port ($("$REDIS_SERVER" --version | awk '{ print $3 }'))"
  "${VG[@]}" "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --dir "$DATA" --daemonize no \
    --appendonly yes --appendfsync always --save '' >"$OUT_DIR/server.log" 2>&1 &
  SERVER_PID=$!
  ready() { [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; }
  TARGET_FLAGS=(--target redis --redis-url "redis://127.0.0.1:$port")
fi

for ((i = 0; ; i++)); do
  if ready; then break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$OUT_DIR/server.log" >&2; die "server exited during start-up"; }
  ((i < START_TIMEOUT * 2)) || die "server not ready after $START_TIMEOUT s (log: $OUT_DIR/server.log)"
  sleep 0.5
done
log "server ready (pid $SERVER_PID); loading the reserve catalog"
bounded 1200 "$LOAD" catalog "${TARGET_FLAGS[@]}" --workload reserve >&2 \
  || die "catalog load failed"
if [[ $TARGET == omnistock && $STOCKOUT_HOURS != 0 ]]; then
  CTL=("$OMNI" ctl --addr "127.0.0.1:$port")
  channels=$(timeout 120 "${CTL[@]}" --json channels | jq -r '.channels[].id') \
    || die "ctl channels failed"
  for ch in $channels; do
    log "stockout threshold $STOCKOUT_HOURS h on $ch"
    timeout 120 "${CTL[@]}" set-stockout-threshold "$ch" "$STOCKOUT_HOURS" >&2 \
      || die "ctl set-stockout-threshold $ch failed"
  done
fi

log "callgrind_control -z"
callgrind_control -z "$SERVER_PID" >"$OUT_DIR/callgrind_control.log" 2>&1 \
  || die "callgrind_control -z failed (see $OUT_DIR/callgrind_control.log)"

RUN=("$LOAD" run "${TARGET_FLAGS[@]}" "${RUN_FLAGS[@]}" --ops "$OPS" --no-catalog --no-check
  --warmup 0 --duration 3500 --json --quiet)
log "running ${RUN[*]}"
start=$(date +%s.%N)
rc=0
bounded 3600 "${RUN[@]}" >"$OUT_DIR/run.json" 2>"$OUT_DIR/run.err" || rc=$?
end=$(date +%s.%N)
[[ $rc -eq 0 ]] || { cat "$OUT_DIR/run.err" >&2; die "load run failed (exit $rc)"; }

log "callgrind_control -d"
callgrind_control -d "$SERVER_PID" >>"$OUT_DIR/callgrind_control.log" 2>&1 \
  || die "callgrind_control -d failed (see $OUT_DIR/callgrind_control.log)"
dump=
for ((i = 0; i < 120; i++)); do
  dump=$(find "$OUT_DIR" -maxdepth 1 -name 'callgrind.out.[0-9]*' | sort -t. -k3,3n | tail -n 1)
  [[ -n $dump ]] && grep -q '^summary:' "$dump" 2>/dev/null && break
  sleep 0.5
done
if [[ -z $dump ]] || ! grep -q '^summary:' "$dump"; then die "no callgrind dump in $OUT_DIR"; fi
log "stopping the server"
stop_server 120

answered=$(jq -r '[.ops[] | select(.op == "reserve")][0].count' "$OUT_DIR/run.json")
okc=$(jq -r '[.ops[] | select(.op == "reserve")][0].ok' "$OUT_DIR/run.json")
errors=$(jq -r '[.ops[] | select(.op == "reserve")][0].errors' "$OUT_DIR/run.json")
rate=$(jq -r '[.ops[] | select(.op == "reserve")][0].per_second | floor' "$OUT_DIR/run.json")
ir=$(awk '/^summary:/ { print $2; exit }' "$dump")
per_op=$(awk -v a="$ir" -v n="$answered" 'BEGIN { printf "%.0f", a / n }')
per_n=$(awk -v a="$ir" -v n="$OPS" 'BEGIN { printf "%.0f", a / n }')

TOP=$OUT_DIR/annotate-inclusive-top25.txt
SELF=$OUT_DIR/annotate-self-top25.txt
callgrind_annotate --inclusive=yes "$dump" >"$OUT_DIR/annotate-inclusive.txt" 2>/dev/null
callgrind_annotate --threshold=100 "$dump" >"$OUT_DIR/annotate-self.txt" 2>/dev/null
# The header up to the function list, then its first 25 lines.
top25() { awk '/file:function/ { h = NR } { print } h && NR >= h + 26 { exit }' "$1"; }
top25 "$OUT_DIR/annotate-inclusive.txt" >"$TOP"
top25 "$OUT_DIR/annotate-self.txt" >"$SELF"

echo "target:                $TARGET ($([[ $TARGET == omnistock ]] && echo "$OMNI" || echo "$REDIS_SERVER"))"
echo "workload:              ${RUN_FLAGS[*]} --ops $OPS (catalog: reserve preset, 10000 SKUs x 2 locations)"
echo "reservations answered: $answered (ok $okc, errors $errors) in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s under valgrind ($rate/s)"
echo "instructions (Ir):     $ir ($dump)"
echo "Ir per reservation:    $per_op   (Ir / $OPS requested: $per_n)"
echo "top 25 inclusive:      $TOP"
echo "top 25 self:           $SELF"
if [[ $answered != "$OPS" ]]; then
  echo "warning: $answered reservations answered, not $OPS: the figure uses the answered count" >&2
fi
