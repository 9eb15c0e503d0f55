# Sourced by bench/run.sh and bench/chat.sh. wait_quiet waits (bounded by QUIET_WAIT seconds)
# until the machine is at most QUIET_MAX % busy, measured by the NATS peer's cpu_busy.py in
# NATS_DIR, and prints the busy % last seen ("?" without the tool). Needs a `log` function.
wait_quiet() {
  local deadline=$((SECONDS + QUIET_WAIT)) busy
  [ -r "$NATS_DIR/tools/cpu_busy.py" ] || { echo "?"; return; }
  while :; do
    busy=$(python3 "$NATS_DIR/tools/cpu_busy.py" --seconds 2)
    [ "$busy" -le "$QUIET_MAX" ] && break
    if [ $SECONDS -ge $deadline ]; then log "machine still ${busy}% busy; running anyway"; break; fi
    log "machine ${busy}% busy (other processes); waiting"
    sleep 10
  done
  echo "$busy"
}
