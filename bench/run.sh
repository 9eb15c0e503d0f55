#!/usr/bin/env bash
# The benchmark report's numbers in one run, on one machine: a local 3-node chat4all cluster
# (cluster.toml's ports 8081-8083 / 7081-7083) and the NATS JetStream R3 peer
# (../shared/peers/nats), same record size and in-flight levels, interleaved; then leader
# failover times. Builds nothing of ours; natsbench is built per its README (into /tmp).
#
#   bench/run.sh          # JSON lines to stdout and to bench/results/<UTC date-time>.jsonl
#
# Knobs (environment):
#   CHAT4ALL_BIN   default /var/cache/chat4all/target/release/chat4all
#   RECORDS=20000 SIZE=1024 INFLIGHTS="256 16" PARTITIONS=3 KILLS=10
#   CONNECT        any | leader; default leader with PARTITIONS=1, else any (natsbench can
#                  only publish straight to the leader with one stream)
#   NATS=1         0 skips the NATS peer;  NATS_SYNCS="default always" (see its README)
#   IDEMPOTENT=1   0 skips the second chat4all run per level with idempotent producers
#   NATS_DIR       default ../shared/peers/nats next to the repository (read-only: only run)
#   QUIET_MAX=20 QUIET_WAIT=300   before each measurement wait (bounded) until the machine
#                  is at most QUIET_MAX % busy; the busy % seen goes into the label
#
# Each in-flight level gets a fresh chat4all cluster (as natsbench gets a fresh NATS cluster),
# so one level's compactions never count as the next one's disk writes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CHAT4ALL_BIN:-/var/cache/chat4all/target/release/chat4all}
NATS_DIR=${NATS_DIR:-$(cd "$here/.." && pwd)/shared/peers/nats}
RECORDS=${RECORDS:-20000}
SIZE=${SIZE:-1024}
INFLIGHTS=${INFLIGHTS:-"256 16"}
PARTITIONS=${PARTITIONS:-3}
KILLS=${KILLS:-10}
if [ "$PARTITIONS" = 1 ]; then CONNECT=${CONNECT:-leader}; else CONNECT=${CONNECT:-any}; fi
NATS=${NATS:-1}
IDEMPOTENT=${IDEMPOTENT:-1}
NATS_SYNCS=${NATS_SYNCS:-"default always"}
QUIET_MAX=${QUIET_MAX:-20}
QUIET_WAIT=${QUIET_WAIT:-300}
export NATS_BIN_DIR=${NATS_BIN_DIR:-/tmp/nats-bin}
export NATS_RUN_DIR=${NATS_RUN_DIR:-/tmp/nats-cluster}
NATSBENCH_TARGET=/tmp/natsbench-target
APIS=(127.0.0.1:8081 127.0.0.1:8082 127.0.0.1:8083)

log() { echo "bench/run.sh: $*" >&2; }
[ -x "$BIN" ] || { log "no chat4all binary at $BIN (set CHAT4ALL_BIN)"; exit 1; }

out="$here/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ).jsonl"
mkdir -p "$(dirname "$out")"
run=$(mktemp -d "${TMPDIR:-/tmp}/chat4all-bench.XXXXXX")
pids=()
nats_started=0

stop_cluster() {
  local p
  for p in "${pids[@]+"${pids[@]}"}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]+"${pids[@]}"}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  stop_cluster
  [ "$nats_started" = 1 ] && "$NATS_DIR/stop-cluster.sh" --wipe >/dev/null 2>&1 || true
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/quiet.sh
. "$here/bench/quiet.sh"

start_cluster() {
  local api n
  for api in "${APIS[@]}"; do
    if curl -s -o /dev/null --max-time 1 "http://$api/health"; then
      log "something already answers on $api; not starting a cluster over it"; exit 1
    fi
  done
  rm -rf "${run:?}/node" && mkdir -p "$run/node" && cp "$here/cluster.toml" "$run/node/"
  # The produce benchmark writes without credentials, as to a Kafka listener without SASL.
  printf '\n[auth]\nlog_api = "open"\n' >>"$run/node/cluster.toml"
  for n in 1 2 3; do
    (cd "$run/node" && exec "$BIN" serve --config cluster.toml --node-id "$n" 2>"node$n.log") &
    pids+=($!)
  done
  local deadline=$((SECONDS + 60))
  for api in "${APIS[@]}"; do
    until curl -sf -o /dev/null --max-time 2 "http://$api/ready"; do
      if [ $SECONDS -ge $deadline ]; then
        log "$api not ready after 60 s; node logs:"; tail -n 20 "$run"/node/node*.log >&2 || true
        exit 1
      fi
      sleep 0.2
    done
  done
}

{
  echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ) kernel: $(uname -sr) cpus: $(nproc) mem: $(free -g | awk '/^Mem:/{print $2}') GiB"
  echo "# chat4all: $("$BIN" --version) ($(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?'))"
} | tee "${out%.jsonl}.info" >&2

if [ "$NATS" = 1 ]; then
  NATS_BIN=$("$NATS_DIR/get-nats.sh" | tail -1)
  export NATS_BIN
  echo "# $("$NATS_BIN" --version)" | tee -a "${out%.jsonl}.info" >&2
  # The peer's directory is read-only: cargo only reads it (--locked) and writes to /tmp.
  (cd "$NATS_DIR/bench" && CARGO_TARGET_DIR=$NATSBENCH_TARGET cargo build --release --locked -q)
fi

for inflight in $INFLIGHTS; do
  bg=$(wait_quiet)
  start_cluster
  "$BIN" bench produce --url "$(printf 'http://%s,' "${APIS[@]}" | sed 's/,$//')" \
    --topic "bench-$inflight" --partitions "$PARTITIONS" --replication-factor 3 \
    --records "$RECORDS" --size "$SIZE" --inflight "$inflight" --batch 1 --connect "$CONNECT" \
    --pids "$(IFS=,; echo "${pids[*]}")" --label "chat4all fsync-per-write bg_cpu=$bg%" \
    | tee -a "$out"
  if [ "$IDEMPOTENT" = 1 ]; then
    # Same cluster, new topic: every worker an idempotent producer (the jepsen workloads' and
    # Kafka's default mode), which adds the controller epoch check to each batch.
    bg=$(wait_quiet)
    "$BIN" bench produce --url "$(printf 'http://%s,' "${APIS[@]}" | sed 's/,$//')" \
      --topic "bench-idem-$inflight" --partitions "$PARTITIONS" --replication-factor 3 \
      --records "$RECORDS" --size "$SIZE" --inflight "$inflight" --batch 1 --connect "$CONNECT" \
      --idempotent --pids "$(IFS=,; echo "${pids[*]}")" \
      --label "chat4all idempotent fsync-per-write bg_cpu=$bg%" | tee -a "$out"
  fi
  stop_cluster

  [ "$NATS" = 1 ] || continue
  for sync in $NATS_SYNCS; do
    bg=$(wait_quiet)
    nats_started=1
    "$NATS_DIR/start-cluster.sh" "$sync"
    npids=$(cat "$NATS_RUN_DIR"/n*/nats.pid | paste -sd, -)
    # natsbench exits 3 when a publish failed; keep its line and go on.
    "$NATSBENCH_TARGET/release/natsbench" --records "$RECORDS" --size "$SIZE" \
      --inflight "$inflight" --replicas 3 --streams "$PARTITIONS" --connect "$CONNECT" \
      --watch-pids "$npids" --label "nats sync=$sync bg_cpu=$bg%" \
      | tee -a "$out" || log "natsbench failed (sync=$sync inflight=$inflight)"
    "$NATS_DIR/stop-cluster.sh" --wipe
    nats_started=0
  done
done

wait_quiet >/dev/null
"$BIN" bench failover --binary "$BIN" --nodes 3 --kills "$KILLS" --size "$SIZE" | tee -a "$out"
log "results: $out"
