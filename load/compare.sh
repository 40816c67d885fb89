#!/usr/bin/env bash
# Side-by-side throughput of omnistock and Redis 7 (Lua reserve script, AOF fsync always)
# on this machine, in one run, alternating omnistock / Redis for each scenario and round.
#
# Every server is started fresh (temporary data directory, free 127.0.0.1 port) for each
# scenario and round and stopped afterwards; everything is stopped on exit. omnistock runs
# with its default durability (fsync group commit); Redis with
# `--appendonly yes --appendfsync always --save ''`.
#
# Usage: load/compare.sh [options]
#   -d, --duration S     measured seconds per run              (env DURATION, default 8)
#   -w, --warmup S       warm-up seconds per run               (env WARMUP, default 2)
#   -r, --rounds N       rounds (omnistock, Redis per round)   (env ROUNDS, default 2)
#   -b, --bin-dir DIR    omnistock and omnistock-load          (env BIN_DIR, default <repo>/target/release)
#   -s, --scenarios L    comma-separated numbers or names      (env SCENARIOS, default all)
#   -o, --out-dir DIR    keep raw reports and logs there       (env OUT_DIR, default: temporary, removed)
#       --redis-server P redis-server binary                   (env REDIS_SERVER, default redis-server)
#   -h, --help
#
# Scenarios (flags to `omnistock-load run`):
#   1 reserve          --workload reserve -c 50
#   2 reserve-depth16  --workload reserve -c 50 --depth 16
#   3 batch256         --workload reserve -c 8 --depth 4 --batch 256
#   4 flash-sale       --workload flash-sale --skus 1 --clients 1000 -c 50
#   5 cart3            --workload reserve --cart-lines 3 -c 50 --depth 4 --batch 64
#
# Throughput is the reserve operation's answered per second (a batch counts each reservation
# in it; omnistock's flash-sale preset also fulfils every reservation while Redis only
# reserves, but the 10,000 units sell out during the warm-up, so both measure rejections);
# p99 is the reserve latency. The check
# column is the load generator's end-of-run verdict (exit status 3 = a check failed).
# Needs jq, curl and redis-cli. Only ever targets 127.0.0.1; every run is bounded in time.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
BIN_DIR=${BIN_DIR:-$REPO/target/release}
SCENARIOS=${SCENARIOS:-1,2,3,4,5}
OUT_DIR=${OUT_DIR:-}
REDIS_SERVER=${REDIS_SERVER:-redis-server}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { echo "compare.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -d|--duration) DURATION=${2:?}; shift 2 ;;
    -w|--warmup) WARMUP=${2:?}; shift 2 ;;
    -r|--rounds) ROUNDS=${2:?}; shift 2 ;;
    -b|--bin-dir) BIN_DIR=${2:?}; shift 2 ;;
    -s|--scenarios) SCENARIOS=${2:?}; shift 2 ;;
    -o|--out-dir) OUT_DIR=${2:?}; shift 2 ;;
    --redis-server) REDIS_SERVER=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
done

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $DURATION =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--duration must be a number of seconds"
[[ $WARMUP =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--warmup must be a number of seconds"
OMNI=$BIN_DIR/omnistock
# Builds before the data-directory identity (2026-12-01) have no --init: only pass it when known.
INIT_FLAG=""
if [[ "$("$OMNI" serve --help 2>/dev/null)" == *--init* ]]; then INIT_FLAG=--init; fi
LOAD=$BIN_DIR/omnistock-load
[[ -x $OMNI && -x $LOAD ]] || die "no omnistock / omnistock-load in $BIN_DIR (build them or pass --bin-dir)"
for tool in jq curl redis-cli "$REDIS_SERVER"; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

NAMES=(reserve reserve-depth16 batch256 flash-sale cart3)
FLAGS=(
  "--workload reserve -c 50"
  "--workload reserve -c 50 --depth 16"
  "--workload reserve -c 8 --depth 4 --batch 256"
  "--workload flash-sale --skus 1 --clients 1000 -c 50"
  "--workload reserve --cart-lines 3 -c 50 --depth 4 --batch 64"
)
SELECTED=()
IFS=',' read -r -a wanted <<<"$SCENARIOS"
for w in "${wanted[@]}"; do
  found=
  for i in "${!NAMES[@]}"; do
    if [[ $w == "$((i + 1))" || $w == "${NAMES[$i]}" ]]; then SELECTED+=("$i"); found=1; fi
  done
  [[ -n $found ]] || die "unknown scenario: $w (1-5 or ${NAMES[*]})"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/omnistock-compare.XXXXXX")
if [[ -n $OUT_DIR ]]; then mkdir -p "$OUT_DIR"; RAW=$OUT_DIR; else RAW=$WORK/raw; mkdir -p "$RAW"; fi
SERVER_PID=
LOAD_PID=

# shellcheck source=load/lib.sh
source "$REPO/load/lib.sh"
stop_all_on_exit 30 "$WORK"

# wait_ready NAME TIMEOUT_S COMMAND...: polls COMMAND until it succeeds while the server lives.
wait_ready() {
  local name=$1 timeout=$2 i
  shift 2
  for ((i = 0; i < timeout * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$name exited during start-up" >&2; return 1; }
    sleep 0.2
  done
  echo "$name not ready after $timeout s" >&2
  return 1
}

redis_pong() { [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]; }

# run_one TARGET SCENARIO_INDEX ROUND: starts the server, runs the load, records the result
# in $RAW/<name>.<target>.<round>.{json,err,rc,server.log}.
run_one() {
  local target=$1 s=$2 round=$3
  local name=${NAMES[$s]} tag="${NAMES[$s]}.$1.$3"
  local dir=$WORK/$tag port admin rc
  local -a flags target_flags
  read -r -a flags <<<"${FLAGS[$s]}"
  mkdir -p "$dir"
  port=$(free_port)
  if [[ $target == omnistock ]]; then
    admin=$(free_port)
    "$OMNI" serve ${INIT_FLAG:+"$INIT_FLAG"} --data-dir "$dir/data" --listen "127.0.0.1:$port" \
      --admin-listen "127.0.0.1:$admin" >"$RAW/$tag.server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready omnistock 60 curl -sf "http://127.0.0.1:$admin/readyz" || { stop_server; return 1; }
    target_flags=(--target omnistock --addr "127.0.0.1:$port")
  else
    "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize no \
      --appendonly yes --appendfsync always --save '' >"$RAW/$tag.server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready redis 30 redis_pong "$port" || { stop_server; return 1; }
    redis-cli -h 127.0.0.1 -p "$port" flushall >/dev/null
    target_flags=(--target redis --redis-url "redis://127.0.0.1:$port")
  fi
  local limit
  limit=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 180 }')
  printf '  [%s] round %s %-9s %-16s load %s ... ' "$(date +%T)" "$round" "$target" "$name" \
    "$(cut -d' ' -f1 /proc/loadavg)"
  rc=0
  # In the background and waited for, so that a signal reaches the traps at once.
  timeout --kill-after=10 "$limit" "$LOAD" run "${target_flags[@]}" "${flags[@]}" \
    --duration "$DURATION" --warmup "$WARMUP" --json --quiet \
    >"$RAW/$tag.json" 2>"$RAW/$tag.err" &
  LOAD_PID=$!
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=
  echo "$rc" >"$RAW/$tag.rc"
  stop_server
  rm -rf "$dir"
  if jq -e '.ops' "$RAW/$tag.json" >/dev/null 2>&1; then
    jq -r '(.ops[] | select(.op == "reserve") | "\(.per_second | floor)/s p99 \(.p99_us) us")' \
      "$RAW/$tag.json" | tr '\n' ' '
  fi
  echo "exit $rc"
  if [[ $rc -ne 0 && $rc -ne 3 ]]; then tail -n 3 "$RAW/$tag.err" | sed 's/^/    /' >&2; fi
}

# field TAG JQ: a value of the reserve op (or '-').
field() {
  local f=$RAW/$1.json
  if jq -e '.ops' "$f" >/dev/null 2>&1; then
    jq -r "[.ops[] | select(.op == \"reserve\")][0] | ($2) // \"-\"" "$f"
  else
    echo -
  fi
}

# verdict TAG: PASS / FAIL(n) / ERROR(rc) from the exit status and the report.
verdict() {
  local rc errors
  rc=$(cat "$RAW/$1.rc" 2>/dev/null || echo "?")
  case $rc in
    0) if [[ $(jq -r '.check' "$RAW/$1.json" 2>/dev/null) == null ]]; then echo -n skipped; else echo -n PASS; fi ;;
    3) echo -n "FAIL($(jq -r '.check.failure_count // "?"' "$RAW/$1.json" 2>/dev/null || echo '?'))" ;;
    124|137) echo -n "TIMEOUT" ;;
    *) echo -n "ERROR($rc)" ;;
  esac
  errors=$(field "$1" '.errors')
  if [[ $errors != - && $errors != 0 ]]; then echo -n " ${errors}err"; fi
  echo
}

ms() { if [[ $1 == - ]]; then echo -; else awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; fi; }
join() { local IFS=$1; shift; echo "$*"; }
median() { printf '%s\n' "$@" | grep -v '^-$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) printf "%.2f\n", a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "# omnistock vs Redis, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# $(nproc) cores, $(free -h | awk '/^Mem:/ { print $2 }') RAM, kernel $(uname -r); $("$REDIS_SERVER" --version | awk '{ print $3 }')"
echo "# work dir $WORK on $(df -PT "$WORK" | awk 'NR == 2 { print $2 }') (fsync is free on tmpfs: use TMPDIR on a disk)"
echo "# binaries: $BIN_DIR; duration ${DURATION}s after ${WARMUP}s warm-up; $ROUNDS round(s); raw: $RAW"
total=$((ROUNDS * ${#SELECTED[@]} * 2))
echo "# $total runs"

# Rounds outermost so slow drift on a shared machine spreads over every scenario; inside a
# round each scenario runs omnistock then Redis back to back.
for ((r = 1; r <= ROUNDS; r++)); do
  echo "round $r/$ROUNDS"
  for s in "${SELECTED[@]}"; do
    # A start can fail when a port picked free was taken meanwhile (other processes on a
    # shared machine): each target gets a second start on new ports.
    for target in omnistock redis; do
      run_one "$target" "$s" "$r" || run_one "$target" "$s" "$r" || echo "exit start-failure"
    done
  done
done

echo
echo "| scenario | omnistock /s per round | Redis /s per round | ratio per round | median ratio | omnistock p99 ms | Redis p99 ms | check omnistock / Redis |"
echo "|---|---|---|---|---|---|---|---|"
for s in "${SELECTED[@]}"; do
  name=${NAMES[$s]}
  o=() rd=() ra=() op=() rp=() ck=()
  for ((r = 1; r <= ROUNDS; r++)); do
    ov=$(field "$name.omnistock.$r" '.per_second | floor')
    rv=$(field "$name.redis.$r" '.per_second | floor')
    o+=("$ov") rd+=("$rv")
    if [[ $ov != - && $rv != - && $rv != 0 ]]; then
      ra+=("$(awk -v a="$ov" -v b="$rv" 'BEGIN { printf "%.2f", a / b }')")
    else
      ra+=(-)
    fi
    op+=("$(ms "$(field "$name.omnistock.$r" '.p99_us')")")
    rp+=("$(ms "$(field "$name.redis.$r" '.p99_us')")")
    ck+=("$(verdict "$name.omnistock.$r") / $(verdict "$name.redis.$r")")
  done
  printf '| %s %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "\`${FLAGS[$s]}\`" \
    "$(join , "${o[@]}" | sed 's/,/, /g')" "$(join , "${rd[@]}" | sed 's/,/, /g')" \
    "$(join , "${ra[@]}" | sed 's/,/, /g')" "$(median "${ra[@]}")" \
    "$(join , "${op[@]}" | sed 's/,/, /g')" "$(join , "${rp[@]}" | sed 's/,/, /g')" \
    "$(join , "${ck[@]}" | sed 's/,/; /g')"
done
