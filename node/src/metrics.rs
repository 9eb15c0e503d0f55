//! Prometheus metrics. Counters and histograms are updated where things happen; per-partition
//! Raft gauges are read from openraft's metrics when `/metrics` is scraped.

use std::sync::Arc;

use chat4all_raft::groups::{GroupState, Groups};
use chat4all_raft::log_store::FsyncObserver;
use chat4all_raft::sm::controller::ControllerState;
use chat4all_storage::Cf;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// `chat4all_produce_requests_total{outcome}`.
    pub produce_requests: IntCounterVec,
    /// `chat4all_produce_latency_seconds`.
    pub produce_latency: Histogram,
    /// `chat4all_fetch_requests_total{outcome}`.
    pub fetch_requests: IntCounterVec,
    /// `chat4all_fetch_latency_seconds`.
    pub fetch_latency: Histogram,
    /// `chat4all_storage_fsync_seconds`.
    pub fsync: Histogram,
    /// `chat4all_runtime_stall_seconds`: how late the async runtime runs a timer that should
    /// fire every 100 ms ([`watch_runtime`]).
    pub runtime_stall: Histogram,
    /// `chat4all_forward_requests_total{kind}`.
    pub forwarded: IntCounterVec,
    /// `chat4all_fetch_waiting`: long polls parked on this node, waiting for records.
    pub fetch_waiting: IntGauge,
    /// `chat4all_consumer_group_lag{group,topic,partition}`: high watermark minus committed
    /// offset, exported by the group's coordinator.
    pub consumer_group_lag: IntGaugeVec,
    /// `chat4all_chat_messages_accepted_total`: messages stored (not repeats), counted by
    /// the node that accepted the request.
    pub chat_messages_accepted: prometheus::IntCounter,
    /// `chat4all_chat_delivery_seconds`: from a message's acceptance to the router reading
    /// it committed, when it is in its recipients' streams (observed by the router).
    pub chat_delivery: Histogram,
    /// `chat4all_connector_deliveries_total{channel,outcome}`: outbound work by outcome
    /// (`sent`, `retried`, `failed`, `dead_lettered`, `unknown`).
    pub connector_deliveries: IntCounterVec,
    /// `chat4all_connector_call_seconds{channel}`: platform call latency.
    pub connector_calls: prometheus::HistogramVec,
    /// `chat4all_connector_circuit_state{channel}`: 0 closed, 1 open, 2 half open.
    pub connector_circuit: IntGaugeVec,
    /// `chat4all_connector_webhooks_total{channel,outcome}`: webhook requests (`accepted`,
    /// `bad_signature`, `bad_payload`, `unknown_channel`).
    pub connector_webhooks: IntCounterVec,
    partition: PartitionGauges,
    storage: StorageGauges,
    /// `chat4all_transport_requests_total{kind}`: requests this node sent its peers over
    /// QUIC, copied from the transport's counters when `/metrics` is scraped.
    transport_requests: IntCounterVec,
    /// Held while the transport's counters are copied, so two scrapes at once add each
    /// request once.
    transport_copy: std::sync::Mutex<()>,
}

/// RocksDB's figures per column family (`cf` label), read when `/metrics` is scraped: what a
/// read or write has to go through, to tell a slowdown under sustained load from its cause.
struct StorageGauges {
    memtable_entries: IntGaugeVec,
    memtable_deletes: IntGaugeVec,
    memtable_bytes: IntGaugeVec,
    l0_files: IntGaugeVec,
    sst_bytes: IntGaugeVec,
    pending_compaction_bytes: IntGaugeVec,
    estimated_keys: IntGaugeVec,
}

struct PartitionGauges {
    leader: IntGaugeVec,
    term: IntGaugeVec,
    commit: IntGaugeVec,
    applied: IntGaugeVec,
    lag: IntGaugeVec,
    hw: IntGaugeVec,
    log_start: IntGaugeVec,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ]
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Arc<Metrics>, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets()))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["topic", "partition"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let cf_gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["cf"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let storage = StorageGauges {
            memtable_entries: cf_gauge(
                "chat4all_storage_memtable_entries",
                "Entries (deletions included) in a column family's memtables",
            )?,
            memtable_deletes: cf_gauge(
                "chat4all_storage_memtable_deletes",
                "Point deletions in a column family's memtables",
            )?,
            memtable_bytes: cf_gauge(
                "chat4all_storage_memtable_bytes",
                "Bytes of a column family's memtables",
            )?,
            l0_files: cf_gauge(
                "chat4all_storage_l0_files",
                "SST files in level 0 of a column family",
            )?,
            sst_bytes: cf_gauge(
                "chat4all_storage_sst_bytes",
                "Bytes of a column family's live SST files",
            )?,
            pending_compaction_bytes: cf_gauge(
                "chat4all_storage_pending_compaction_bytes",
                "RocksDB's estimate of the bytes compaction has yet to rewrite in a column family",
            )?,
            estimated_keys: cf_gauge(
                "chat4all_storage_estimated_keys",
                "RocksDB's estimate of the live keys in a column family",
            )?,
        };
        let fetch_waiting = IntGauge::new(
            "chat4all_fetch_waiting",
            "Long-poll fetches parked on this node, waiting for records",
        )?;
        registry.register(Box::new(fetch_waiting.clone()))?;
        let consumer_group_lag = IntGaugeVec::new(
            Opts::new(
                "chat4all_consumer_group_lag",
                "Records a consumer group has not committed yet: high watermark minus committed \
                 offset, exported by the group's coordinator",
            ),
            &["group", "topic", "partition"],
        )?;
        registry.register(Box::new(consumer_group_lag.clone()))?;
        let chat_messages_accepted = prometheus::IntCounter::new(
            "chat4all_chat_messages_accepted_total",
            "Chat messages stored by a majority (repeats of a message_id not counted)",
        )?;
        registry.register(Box::new(chat_messages_accepted.clone()))?;
        let connector_calls = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "chat4all_connector_call_seconds",
                "Latency of calls to a messaging platform, per channel",
            )
            .buckets(latency_buckets()),
            &["channel"],
        )?;
        registry.register(Box::new(connector_calls.clone()))?;
        let connector_circuit = IntGaugeVec::new(
            Opts::new(
                "chat4all_connector_circuit_state",
                "A channel's circuit breaker on this node: 0 closed, 1 open, 2 half open",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(connector_circuit.clone()))?;
        let m = Metrics {
            connector_deliveries: counter(
                "chat4all_connector_deliveries_total",
                "Outbound deliveries by channel and outcome (sent, retried, failed, \
                 dead_lettered, unknown)",
                &["channel", "outcome"],
            )?,
            connector_calls,
            connector_circuit,
            connector_webhooks: counter(
                "chat4all_connector_webhooks_total",
                "Webhook requests by channel and outcome",
                &["channel", "outcome"],
            )?,
            fetch_waiting,
            consumer_group_lag,
            chat_messages_accepted,
            chat_delivery: histogram(
                "chat4all_chat_delivery_seconds",
                "From a message's acceptance to its delivery into its recipients' event streams",
            )?,
            produce_requests: counter(
                "chat4all_produce_requests_total",
                "Produce requests by outcome (ok, error, unknown)",
                &["outcome"],
            )?,
            produce_latency: histogram(
                "chat4all_produce_latency_seconds",
                "Produce latency until a majority fsynced",
            )?,
            fetch_requests: counter(
                "chat4all_fetch_requests_total",
                "Fetch requests by outcome",
                &["outcome"],
            )?,
            fetch_latency: histogram(
                "chat4all_fetch_latency_seconds",
                "Fetch latency, long polls included",
            )?,
            fsync: histogram(
                "chat4all_storage_fsync_seconds",
                "Duration of synchronous (fsynced) RocksDB writes",
            )?,
            runtime_stall: histogram(
                "chat4all_runtime_stall_seconds",
                "How late the node's async runtime runs a 100 ms timer: time its workers were \
                 busy or blocked (Raft heartbeats and QUIC acknowledgements wait as long)",
            )?,
            forwarded: counter(
                "chat4all_forward_requests_total",
                "Requests forwarded to another node, by kind",
                &["kind"],
            )?,
            partition: PartitionGauges {
                leader: gauge(
                    "chat4all_partition_leader",
                    "Leader node id of the partition (0 if unknown), as seen by this replica",
                )?,
                term: gauge(
                    "chat4all_partition_term",
                    "Current Raft term of the partition on this replica",
                )?,
                commit: gauge(
                    "chat4all_partition_commit_index",
                    "Raft log index committed, on this replica",
                )?,
                applied: gauge(
                    "chat4all_partition_apply_index",
                    "Raft log index applied, on this replica",
                )?,
                lag: gauge(
                    "chat4all_partition_replication_lag",
                    "On the leader: entries the slowest follower lacks",
                )?,
                hw: gauge(
                    "chat4all_partition_high_watermark",
                    "High watermark of the partition on this replica",
                )?,
                log_start: gauge(
                    "chat4all_partition_log_start_offset",
                    "Log start offset of the partition on this replica",
                )?,
            },
            storage,
            transport_requests: counter(
                "chat4all_transport_requests_total",
                "Requests this node sent to its peers over QUIC, by kind (append_entries \
                 includes heartbeats; forward counts each forwarded message once)",
                &["kind"],
            )?,
            transport_copy: std::sync::Mutex::new(()),
            registry,
        };
        Ok(Arc::new(m))
    }

    /// Renders every metric in Prometheus text format, refreshing the partition gauges.
    pub fn render(&self, groups: &Groups, meta: &ControllerState) -> String {
        for topic in meta.topics.values() {
            for (i, p) in topic.partitions.iter().enumerate() {
                let Some(g) = groups.get(p.group) else {
                    continue;
                };
                let labels = [topic.name.as_str(), &i.to_string()];
                let m = g.raft.metrics().borrow().clone();
                let gm = &self.partition;
                gm.leader
                    .with_label_values(&labels)
                    .set(chat4all_raft::groups::known_leader(&m).unwrap_or(0) as i64);
                gm.term
                    .with_label_values(&labels)
                    .set(m.current_term as i64);
                gm.applied
                    .with_label_values(&labels)
                    .set(m.last_applied.map_or(0, |l| l.index) as i64);
                // openraft 0.9 has no committed-index metric: on the leader it is the index a
                // majority has matched; on a follower, what it applied is committed.
                let applied = m.last_applied.map_or(0, |l| l.index);
                let committed = m.replication.as_ref().map_or(applied, |r| {
                    let mut matched: Vec<u64> =
                        r.values().map(|l| l.map_or(0, |l| l.index)).collect();
                    if !r.contains_key(&m.id) {
                        matched.push(m.last_log_index.unwrap_or(0));
                    }
                    matched.sort_unstable_by(|a, b| b.cmp(a));
                    matched
                        .get(matched.len() / 2)
                        .copied()
                        .unwrap_or(0)
                        .max(applied)
                });
                gm.commit.with_label_values(&labels).set(committed as i64);
                let lag = m.replication.as_ref().map_or(0, |r| {
                    let last = m.last_log_index.unwrap_or(0);
                    r.values()
                        .map(|matched| last.saturating_sub(matched.map_or(0, |l| l.index)))
                        .max()
                        .unwrap_or(0)
                });
                gm.lag.with_label_values(&labels).set(lag as i64);
                if let GroupState::Partition(sm) = &g.state {
                    let s = sm.state();
                    gm.hw.with_label_values(&labels).set(s.next_offset as i64);
                    gm.log_start
                        .with_label_values(&labels)
                        .set(s.log_start_offset as i64);
                }
            }
        }
        if let Some(t) = groups.transport() {
            let _one_at_a_time = self
                .transport_copy
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (kind, n) in t.requests_sent() {
                let c = self.transport_requests.with_label_values(&[kind.name()]);
                c.inc_by(n.saturating_sub(c.get()));
            }
        }
        let st = &self.storage;
        for cf in Cf::ALL {
            let c = groups.db().cf_stats(cf);
            let l = [cf.name()];
            let set = |g: &IntGaugeVec, v: u64| {
                g.with_label_values(&l)
                    .set(i64::try_from(v).unwrap_or(i64::MAX))
            };
            set(&st.memtable_entries, c.memtable_entries);
            set(&st.memtable_deletes, c.memtable_deletes);
            set(&st.memtable_bytes, c.memtable_bytes);
            set(&st.l0_files, c.l0_files);
            set(&st.sst_bytes, c.sst_bytes);
            set(&st.pending_compaction_bytes, c.pending_compaction_bytes);
            set(&st.estimated_keys, c.estimated_keys);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl FsyncObserver for Metrics {
    fn observe_fsync(&self, seconds: f64) {
        self.fsync.observe(seconds);
    }
}

/// Measures, for ever, how late the async runtime runs a timer due every 100 ms, into
/// `chat4all_runtime_stall_seconds`, and warns when it is half a second late. Raft heartbeats,
/// QUIC acknowledgements and every request wait as long; a stall longer than a follower's lease
/// (400 ms by default) costs elections. (One found this way: whole-partition snapshots built
/// on a runtime worker.)
pub async fn watch_runtime(metrics: Arc<Metrics>) {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);
    loop {
        let due = tokio::time::Instant::now() + EVERY;
        tokio::time::sleep_until(due).await;
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        metrics.runtime_stall.observe(late.as_secs_f64());
        if late >= std::time::Duration::from_millis(500) {
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "the async runtime ran a timer late: its workers were busy or blocked"
            );
        }
    }
}
