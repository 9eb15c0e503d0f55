#!/usr/bin/env bash
# The chat numbers of the benchmark report in one run: `chat4all bench chat` (its own 3-node
# cluster: send-to-receive latency over the event stream at stepped rates, then the first
# Chat4All's 167 requests/s load test), and in the same run the NATS JetStream R3 peer's
# publish-to-PubAck latency with sync=always at the same concurrency as the chat bench's
# senders (one replicated fsynced write: a chat message is two, plus the stream's read).
#
#   bench/chat.sh         # JSON lines to stdout and to bench/results/chat-<UTC date-time>.jsonl
#
# KIND=webhooks runs `chat4all bench webhooks` instead (signed platform webhooks at stepped
# rates: answer latency, SC-012, and the time until they are messages), with the peer at
# INFLIGHT=10 (a webhook's answer waits for one replicated fsynced write, as a PubAck does).
#
# For chat, a second run on a fresh cluster then holds each of HOLD_RATES for HOLD consecutive
# steps of HOLD_STEP_SECS (`--hold`): its best_rate_p99_under_50ms is the highest rate whose
# every step passed, the sustained rate (short steps hide what a cluster cannot sustain).
#
# Knobs (environment): CHAT4ALL_BIN, KIND=chat|webhooks, RATES=100,150,200,250,500,1000,1500
# (webhooks: 100,250,500,1000) STEP_SECS=10 LOAD_SECS=300 PAIRS=20, HOLD_RATES=250,500,700,1000
# HOLD=3 (0: no sustained run) HOLD_STEP_SECS=20, NATS=1, NATS_DIR, QUIET_MAX=20
# QUIET_WAIT=300 (as bench/run.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CHAT4ALL_BIN:-/var/cache/chat4all/target/release/chat4all}
NATS_DIR=${NATS_DIR:-$(cd "$here/.." && pwd)/shared/peers/nats}
KIND=${KIND:-chat}
STEP_SECS=${STEP_SECS:-10}
LOAD_SECS=${LOAD_SECS:-300}
case "$KIND" in
  chat)
    RATES=${RATES:-100,150,200,250,500,1000,1500}
    PAIRS=${PAIRS:-20}
    run_bench=(bench chat --nodes 3 --pairs "$PAIRS" --rates "$RATES" --step-secs "$STEP_SECS"
      --load-secs "$LOAD_SECS") ;;
  webhooks)
    RATES=${RATES:-100,250,500,1000}
    PAIRS=${INFLIGHT:-10}
    run_bench=(bench webhooks --nodes 3 --rates "$RATES" --step-secs "$STEP_SECS") ;;
  *) echo "bench/chat.sh: KIND is chat or webhooks" >&2; exit 2 ;;
esac
NATS=${NATS:-1}
QUIET_MAX=${QUIET_MAX:-20}
QUIET_WAIT=${QUIET_WAIT:-300}
export NATS_BIN_DIR=${NATS_BIN_DIR:-/tmp/nats-bin}
export NATS_RUN_DIR=${NATS_RUN_DIR:-/tmp/nats-cluster}
NATSBENCH_TARGET=/tmp/natsbench-target

log() { echo "bench/chat.sh: $*" >&2; }
[ -x "$BIN" ] || { log "no chat4all binary at $BIN (set CHAT4ALL_BIN)"; exit 1; }
out="$here/bench/results/$KIND-$(date -u +%Y-%m-%dT%H%M%SZ).jsonl"
mkdir -p "$(dirname "$out")"
nats_started=0
trap '[ "$nats_started" = 1 ] && "$NATS_DIR/stop-cluster.sh" --wipe >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/quiet.sh
. "$here/bench/quiet.sh"

{
  echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ) kernel: $(uname -sr) cpus: $(nproc) mem: $(free -g | awk '/^Mem:/{print $2}') GiB"
  echo "# chat4all: $("$BIN" --version) ($(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?'))"
} | tee "${out%.jsonl}.info" >&2

bg=$(wait_quiet)
log "$KIND bench (machine ${bg}% busy before)"
"$BIN" "${run_bench[@]}" | tee -a "$out"

HOLD=${HOLD:-3}
if [ "$KIND" = chat ] && [ "$HOLD" -gt 0 ]; then
  HOLD_RATES=${HOLD_RATES:-250,500,700,1000}
  HOLD_STEP_SECS=${HOLD_STEP_SECS:-20}
  bg=$(wait_quiet)
  log "sustained chat bench: $HOLD x ${HOLD_STEP_SECS}s at each of $HOLD_RATES msg/s (machine ${bg}% busy before)"
  "$BIN" bench chat --nodes 3 --pairs "$PAIRS" --rates "$HOLD_RATES" --hold "$HOLD" \
    --step-secs "$HOLD_STEP_SECS" --load-secs 0 | tee -a "$out"
fi

if [ "$NATS" = 1 ]; then
  NATS_BIN=$("$NATS_DIR/get-nats.sh" | tail -1)
  export NATS_BIN
  (cd "$NATS_DIR/bench" && CARGO_TARGET_DIR=$NATSBENCH_TARGET cargo build --release --locked -q)
  bg=$(wait_quiet)
  nats_started=1
  "$NATS_DIR/start-cluster.sh" always
  npids=$(cat "$NATS_RUN_DIR"/n*/nats.pid | paste -sd, -)
  nb() {
    "$NATSBENCH_TARGET/release/natsbench" --records 20000 --size 512 --inflight "$PAIRS" \
      --replicas 3 --streams 3 --connect any --watch-pids "$npids" \
      --label "nats sync=always inflight=$PAIRS bg_cpu=$bg%"
  }
  # A publish right after the streams are made can find no stream (seen once): then again.
  line=$(nb || true)
  case "$line" in *'"acked":0,'*) log "natsbench found no stream; again"; line=$(nb || true) ;; esac
  echo "$line" | tee -a "$out"
  "$NATS_DIR/stop-cluster.sh" --wipe
  nats_started=0
fi
log "results: $out"
