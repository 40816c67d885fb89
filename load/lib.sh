# Shared by load/ab.sh, load/compare.sh and load/callgrind.sh (sourced, not run): stopping
# the server and the load they started (at exit too: stop_all_on_exit), and picking free 127.0.0.1 ports. The sourcing
# script defines `die` and sets SERVER_PID / LOAD_PID.

# stop_server [SECONDS]: SIGTERM to $SERVER_PID, SIGKILL if it still runs after SECONDS
# (default 30); clears SERVER_PID.
stop_server() {
  local pid=$SERVER_PID limit=${1:-30} i
  SERVER_PID=
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < limit * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "  server $pid still running after $limit s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# stop_load: SIGTERM to $LOAD_PID and wait for it; clears LOAD_PID.
stop_load() {
  if [[ -n ${LOAD_PID:-} ]]; then
    kill -TERM "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
  fi
  LOAD_PID=
}

# free_port: a random port on 127.0.0.1 nothing listens on (and not in `taken`, for the
# ports a caller picked in its own shell without binding them yet).
taken=" "
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    [[ $taken == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      taken+="$p "
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

# stop_all_on_exit [SECONDS] [DIR]: when the script exits (or on INT / TERM, exit 130),
# stops the load and the server (stop_server SECONDS, default 30) and removes DIR if given.
stop_all_on_exit() {
  _STOP_SECS=${1:-30}
  _RM_DIR=${2:-}
  trap _stop_all EXIT
  trap 'exit 130' INT TERM
}
_stop_all() {
  stop_load
  stop_server "$_STOP_SECS"
  if [[ -n $_RM_DIR ]]; then rm -rf "$_RM_DIR"; fi
}
