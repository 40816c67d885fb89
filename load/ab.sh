#!/usr/bin/env bash
# Side-by-side A/B of one server binary under two settings: rounds of A then B, a fresh
# server (temporary data directory, free 127.0.0.1 ports) for every run, stopped
# afterwards. A and B differ by the server's environment (`--a-env`, `--b-env`, e.g.
# OMNISTOCK_INTELLIGENCE=on) and by extra flags of `omnistock-load run` (`--a-load`,
# `--b-load`, e.g. `--subscribers 100`). Prints, per run, reserves/s, their p99, the
# subscribers' events/s (when any), and the server's CPU (utime + stime from
# /proc/PID/stat, sampled over the middle of the measured window) per reserve. Wall clock
# on a shared machine is noisy: read the per-round pairs, not one number.
#
# Usage: load/ab.sh [options]
#   --a-name N, --b-name N   labels                        (default A, B)
#   --a-env "K=V ...", --b-env "K=V ..."   server environment of A, of B
#   --a-load "F", --b-load "F"             extra omnistock-load run flags of A, of B
#   -d, --duration S   measured seconds per run   (env DURATION, default 10)
#   -w, --warmup S     warm-up seconds per run    (env WARMUP, default 2)
#   -r, --rounds N     rounds (A, B per round)    (env ROUNDS, default 3)
#   -b, --bin-dir DIR  omnistock, omnistock-load  (env BIN_DIR, default <repo>/target/release)
#   -f, --flags "F"    workload flags of both     (env RUN_FLAGS, default "--workload reserve -c 8 --depth 4 --batch 256")
#   -h, --help
# Needs jq and curl. Only ever targets 127.0.0.1; every run is bounded in time.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
BIN_DIR=${BIN_DIR:-$REPO/target/release}
read -r -a RUN_FLAGS <<<"${RUN_FLAGS:---workload reserve -c 8 --depth 4 --batch 256}"
A_NAME=A B_NAME=B A_ENV="" B_ENV="" A_LOAD="" B_LOAD=""

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { echo "ab.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --a-name) A_NAME=${2:?}; shift 2 ;;
    --b-name) B_NAME=${2:?}; shift 2 ;;
    --a-env) A_ENV=${2?}; shift 2 ;;
    --b-env) B_ENV=${2?}; shift 2 ;;
    --a-load) A_LOAD=${2?}; shift 2 ;;
    --b-load) B_LOAD=${2?}; shift 2 ;;
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
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 3 ]] || die "--duration must be a whole number of seconds, at least 3"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "--warmup must be a whole number of seconds"
for kv in $A_ENV $B_ENV; do [[ $kv == *=* ]] || die "environment entries are K=V, not $kv"; done
OMNI=$BIN_DIR/omnistock
LOAD=$BIN_DIR/omnistock-load
[[ -x $OMNI && -x $LOAD ]] || die "no omnistock / omnistock-load in $BIN_DIR"
INIT_FLAG=""
if [[ $("$OMNI" serve --help) == *--init* ]]; then INIT_FLAG=--init; fi
for tool in jq curl; do command -v "$tool" >/dev/null || die "$tool not found"; done
TICKS=$(getconf CLK_TCK)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/omnistock-ab.XXXXXX")
SERVER_PID=
LOAD_PID=
# shellcheck source=load/lib.sh
source "$REPO/load/lib.sh"
stop_all_on_exit 30 "$WORK"

# utime + stime of a process, in clock ticks (fields 14 and 15; the name may hold spaces).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# run_one LABEL ROUND "ENV" "LOAD FLAGS": prints "reserves/s p99_us events/s cpu_us_per_reserve".
run_one() {
  local dir=$WORK/$1.$2 port admin rc=0 i limit t0 t1 c0 c1 window
  local -a env_kv load_extra
  read -r -a env_kv <<<"$3"
  read -r -a load_extra <<<"$4"
  mkdir -p "$dir"
  port=$(free_port)
  admin=$(free_port)
  env ${env_kv[@]+"${env_kv[@]}"} "$OMNI" serve ${INIT_FLAG:+"$INIT_FLAG"} --data-dir "$dir/data" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  for ((i = 0; i < 300; i++)); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || {
      echo "server exited: $(tail -n 1 "$dir/server.log")" >&2
      SERVER_PID=
      echo "- - - -"
      return 0
    }
    sleep 0.2
  done
  limit=$((DURATION + WARMUP + 180))
  timeout --kill-after=10 "$limit" "$LOAD" run --target omnistock --addr "127.0.0.1:$port" \
    "${RUN_FLAGS[@]}" ${load_extra[@]+"${load_extra[@]}"} --duration "$DURATION" --warmup "$WARMUP" \
    --json --quiet >"$dir/report.json" 2>"$dir/load.err" &
  LOAD_PID=$!
  # The catalog load comes first: wait until the run's progress begins (the measured
  # window starts WARMUP s after the first reserve), then sample the middle of it.
  for ((i = 0; i < 600; i++)); do
    curl -sf "http://127.0.0.1:$admin/metrics" 2>/dev/null \
      | awk '/^omnistock_requests_total\{/ && /op="reserve"/ && /status="ok"/ && $NF > 0 { f = 1 } END { exit !f }' && break
    kill -0 "$LOAD_PID" 2>/dev/null || break
    sleep 0.1
  done
  sleep "$((WARMUP + 1))"
  window=$((DURATION - 2))
  c0=$(cpu_ticks "$SERVER_PID"); t0=$(date +%s.%N)
  sleep "$window"
  c1=$(cpu_ticks "$SERVER_PID"); t1=$(date +%s.%N)
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=
  stop_server
  jq -r --argjson cpu "$(awk -v a="$c0" -v b="$c1" -v k="$TICKS" -v s="$t0" -v e="$t1" 'BEGIN { printf "%.6f", (b - a) / k / (e - s) }')" \
    '([.ops[] | select(.op == "reserve")][0]) as $r
     | "\($r.per_second | floor) \($r.p99_us) \((.feed.events_per_second // 0) | floor) \(if $r.per_second > 0 then ($cpu * 1e6 / $r.per_second * 100 | floor) / 100 else "-" end)"' \
    "$dir/report.json" 2>/dev/null || echo "- - - -"
  [[ $rc -eq 0 || $rc -eq 3 ]] || echo "  load exit $rc: $(tail -n 1 "$dir/load.err")" >&2
  rm -rf "$dir"
}

echo "# $A_NAME vs $B_NAME, $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $OMNI; ${RUN_FLAGS[*]}; ${DURATION}s after ${WARMUP}s warm-up; $ROUNDS round(s)"
echo "# $A_NAME: env '${A_ENV}' load '${A_LOAD}'; $B_NAME: env '${B_ENV}' load '${B_LOAD}'"
echo "| round | $A_NAME reserves/s | p99 us | events/s | server CPU us/reserve | $B_NAME reserves/s | p99 us | events/s | server CPU us/reserve | $A_NAME / $B_NAME |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for ((r = 1; r <= ROUNDS; r++)); do
  read -r a ap ae ac < <(run_one a "$r" "$A_ENV" "$A_LOAD")
  read -r b bp be bc < <(run_one b "$r" "$B_ENV" "$B_LOAD")
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')
  echo "| $r | $a | $ap | $ae | $ac | $b | $bp | $be | $bc | $ratio |"
done
