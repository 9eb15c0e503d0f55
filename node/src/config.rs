//! Configuration: `cluster.toml` (the same file on every node), `--node-id`, and `CHAT4ALL_*`
//! environment overrides. With no file at all the embedded default is a single-node cluster with
//! data in `./data` and the API on 127.0.0.1:8080.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chat4all_raft::groups::RaftSettings;
use chat4all_raft::types::{NodeId, NodeInfo};
use serde::Deserialize;

/// The whole `cluster.toml`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every node of the cluster.
    pub nodes: Vec<NodeConfig>,
    /// Mutual TLS between nodes. Required when the cluster has more than one node.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Background work.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Raft timing and log compaction.
    #[serde(default)]
    pub raft: RaftConfig,
    /// The node's RocksDB.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Consumer groups.
    #[serde(default)]
    pub groups: GroupsConfig,
    /// Workers every node runs as consumer group members.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// Tokens and rate limits of the chat API.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The chat topics.
    #[serde(default)]
    pub chat: ChatConfig,
    /// The messaging platforms' APIs and the delivery retry policy.
    #[serde(default)]
    pub connectors: crate::channels::ConnectorsConfig,
}

/// The chat topics, created at the first chat request with these settings.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// Partitions of `chat.messages` (fixed once created). Each is a Raft group; a
    /// conversation's messages are ordered within its partition.
    #[serde(default = "default_chat_partitions")]
    pub partitions: u32,
    /// Partitions of the channel topics `chat.deliveries`, `chat.dlq` and `chat.inbound`
    /// (fixed once created). Before 2026-12 this was `inbox_partitions`, still accepted.
    #[serde(default = "default_chat_partitions", alias = "inbox_partitions")]
    pub channel_partitions: u32,
    /// Run a member of the `router` consumer group on this node, which marks messages SENT
    /// and hands them to the channels. Every node runs one by default; turning it off
    /// everywhere leaves messages PENDING and undelivered to platforms (they are still
    /// stored and streamed to API users).
    #[serde(default = "default_true")]
    pub router: bool,
}

fn default_chat_partitions() -> u32 {
    6
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            partitions: default_chat_partitions(),
            channel_partitions: default_chat_partitions(),
            router: true,
        }
    }
}

/// Tokens and per-user rate limits. Secrets are never in this file: the token signing key
/// comes from `CHAT4ALL_JWT_SECRET` or `CHAT4ALL_JWT_SECRET_FILE` (the same on every node), or
/// is made once by the cluster and kept in its replicated metadata.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of an access token, in seconds.
    #[serde(default = "default_access_ttl_s")]
    pub access_token_ttl_s: u64,
    /// Lifetime of a refresh token, in seconds.
    #[serde(default = "default_refresh_ttl_s")]
    pub refresh_token_ttl_s: u64,
    /// Requests per second each user may make through one node (0 turns limiting off).
    #[serde(default = "default_rate_per_s")]
    pub rate_limit_per_s: u32,
    /// How many requests a user may make at once above the steady rate.
    #[serde(default = "default_rate_burst")]
    pub rate_limit_burst: u32,
    /// The log API (`/v1/topics`, `/v1/producers`, `/v1/groups`): `token` (an `admin` token
    /// or API key on every request, the default) or `open`.
    #[serde(default)]
    pub log_api: LogApiAuth,
}

/// Who may use the log API.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogApiAuth {
    /// Anyone who reaches the port, as a Kafka listener without SASL: for a trusted network.
    Open,
    /// Only requests with credentials holding the `admin` scope (the default).
    #[default]
    Token,
}

fn default_access_ttl_s() -> u64 {
    900
}

fn default_refresh_ttl_s() -> u64 {
    7 * 24 * 3600
}

fn default_rate_per_s() -> u32 {
    50
}

fn default_rate_burst() -> u32 {
    100
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_token_ttl_s: default_access_ttl_s(),
            refresh_token_ttl_s: default_refresh_ttl_s(),
            rate_limit_per_s: default_rate_per_s(),
            rate_limit_burst: default_rate_burst(),
            log_api: LogApiAuth::Token,
        }
    }
}

/// Workers every node runs, each a member of its consumer group.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// `[[workers.copy]]`: copy every record of one topic to another, at least once.
    #[serde(default)]
    pub copy: Vec<CopyWorkerConfig>,
}

/// A worker that copies a topic.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct CopyWorkerConfig {
    /// Its consumer group.
    pub group: String,
    /// The topic to read.
    pub from: String,
    /// The topic to write: a keyed record goes where its key hashes, an unkeyed one to the
    /// same partition number (modulo the partition count).
    pub to: String,
}

/// Consumer groups.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// Partitions of `__consumer_offsets` when the cluster creates it (at the first group
    /// request); fixed from then on. Each is a Raft group whose leader coordinates the groups
    /// that hash to it, so more partitions spread coordination over more nodes.
    #[serde(default = "default_offsets_partitions")]
    pub offsets_partitions: u32,
    /// Session timeout of groups created from now on, in ms (1000..=300000); change one
    /// group's with `PUT /v1/groups/{group}/config`.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How often a coordinator looks for members whose session ran out, in ms. A request to
    /// a group also removes its expired members first, so this only decides how soon the
    /// others learn of it.
    #[serde(default = "default_sweep_interval_ms")]
    pub sweep_interval_ms: u64,
}

fn default_sweep_interval_ms() -> u64 {
    100
}

fn default_session_timeout_ms() -> u64 {
    crate::groups::model::DEFAULT_SESSION_TIMEOUT_MS
}

fn default_offsets_partitions() -> u32 {
    6
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            offsets_partitions: default_offsets_partitions(),
            session_timeout_ms: default_session_timeout_ms(),
            sweep_interval_ms: default_sweep_interval_ms(),
        }
    }
}

/// The node's RocksDB.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Read every stored byte with checksums verified before joining, and refuse to start
    /// when anything is damaged.
    #[serde(default = "default_true")]
    pub verify_on_start: bool,
    /// Memtable size per column family, in MiB (RocksDB's default, 64, when absent).
    #[serde(default)]
    pub memtable_mb: Option<usize>,
    /// The most write-ahead log kept, in MiB (see `DbConfig::max_wal_bytes`): a restart
    /// replays at most this much.
    #[serde(default = "default_max_wal_mb")]
    pub max_wal_mb: u64,
    /// How long opening the database may take before the node gives up and refuses to start,
    /// in ms, plus 1 s per 4 MiB of write-ahead log to replay. RocksDB 11.8 can spin forever
    /// replaying a WAL with a piece cut out of its middle (found by jepsen-tests' corrupt
    /// fault); without a bound such a node would hang at start instead of refusing.
    #[serde(default = "default_open_timeout_ms")]
    pub open_timeout_ms: u64,
}

fn default_max_wal_mb() -> u64 {
    chat4all_storage::DEFAULT_MAX_WAL_BYTES >> 20
}

fn default_open_timeout_ms() -> u64 {
    30_000
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            verify_on_start: true,
            memtable_mb: None,
            max_wal_mb: default_max_wal_mb(),
            open_timeout_ms: default_open_timeout_ms(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// One node's addresses and data directory.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node id (unique, non-zero).
    pub id: NodeId,
    /// Where peers reach this node's QUIC endpoint (`host:port`).
    pub raft_addr: String,
    /// Where clients reach this node's HTTP API (`host:port`).
    pub api_addr: String,
    /// The address to bind QUIC to, if not `raft_addr` (e.g. `0.0.0.0:7000` in a container).
    #[serde(default)]
    pub raft_bind: Option<String>,
    /// The address to bind HTTP to, if not `api_addr`.
    #[serde(default)]
    pub api_bind: Option<String>,
    /// Data directory, relative to the working directory unless absolute.
    pub data_dir: PathBuf,
}

/// Where the cluster's certificates are.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Directory with `ca.pem` and `node-<id>.pem` / `node-<id>.key` (from `chat4all certs`).
    pub dir: PathBuf,
    /// Create the directory's CA and node certificates if it has none. Meant for a local
    /// cluster whose nodes share one working directory; production sets it to false and
    /// distributes certificates made once with `chat4all certs`.
    #[serde(default)]
    pub auto_generate: bool,
}

/// Request limits.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest record (key + value + headers) accepted, in bytes. Kafka's default is 1 MiB.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Largest produce request body, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// How long a produce waits for a majority before answering `OUTCOME_UNKNOWN`, in ms.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
}

/// Retention.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often each leader checks its partitions' retention, in ms.
    #[serde(default = "default_retention_check_ms")]
    pub check_interval_ms: u64,
}

/// Raft timing and log compaction of every group (the defaults suit a LAN or one machine).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// How often leaders send heartbeats, in ms.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Shortest election timeout, in ms.
    #[serde(default = "default_election_min_ms")]
    pub election_timeout_min_ms: u64,
    /// Longest election timeout, in ms; also the leader lease a follower grants. A killed
    /// leader is replaced after about max + rand(min..max).
    #[serde(default = "default_election_max_ms")]
    pub election_timeout_max_ms: u64,
    /// A group is snapshotted every this many log entries (a partition's snapshot is its live
    /// state: taking one writes a marker) and its log purged up to it.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every_entries: u64,
    /// Log entries kept before a snapshot's point for followers a little behind.
    #[serde(default = "default_log_kept")]
    pub log_kept_after_snapshot: u64,
    /// Bytes of rows per message when a snapshot is sent to a follower (1 KiB to 64 MiB).
    #[serde(default = "default_snapshot_chunk_bytes")]
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_ms: default_heartbeat_ms(),
            election_timeout_min_ms: default_election_min_ms(),
            election_timeout_max_ms: default_election_max_ms(),
            snapshot_every_entries: default_snapshot_every(),
            log_kept_after_snapshot: default_log_kept(),
            snapshot_chunk_bytes: default_snapshot_chunk_bytes(),
        }
    }
}

impl RaftConfig {
    /// The settings the Raft groups take.
    pub fn settings(&self) -> RaftSettings {
        RaftSettings {
            heartbeat_ms: self.heartbeat_ms,
            election_min_ms: self.election_timeout_min_ms,
            election_max_ms: self.election_timeout_max_ms,
            snapshot_every: self.snapshot_every_entries,
            log_kept_after_snapshot: self.log_kept_after_snapshot,
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
        }
    }
}

fn default_heartbeat_ms() -> u64 {
    RaftSettings::default().heartbeat_ms
}
fn default_election_min_ms() -> u64 {
    RaftSettings::default().election_min_ms
}
fn default_election_max_ms() -> u64 {
    RaftSettings::default().election_max_ms
}
fn default_snapshot_every() -> u64 {
    RaftSettings::default().snapshot_every
}
fn default_log_kept() -> u64 {
    RaftSettings::default().log_kept_after_snapshot
}
fn default_snapshot_chunk_bytes() -> u64 {
    RaftSettings::default().snapshot_chunk_bytes
}

fn default_max_record_bytes() -> usize {
    1 << 20
}
fn default_max_request_bytes() -> usize {
    16 << 20
}
fn default_write_timeout_ms() -> u64 {
    10_000
}
fn default_retention_check_ms() -> u64 {
    30_000
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_record_bytes: default_max_record_bytes(),
            max_request_bytes: default_max_request_bytes(),
            write_timeout_ms: default_write_timeout_ms(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            check_interval_ms: default_retention_check_ms(),
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// The content is inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ClusterConfig {
    /// The embedded default: one node, API on 127.0.0.1:8080, data in `./data`, no TLS.
    pub fn single_node() -> ClusterConfig {
        ClusterConfig {
            nodes: vec![NodeConfig {
                id: 1,
                raft_addr: "127.0.0.1:7080".into(),
                api_addr: "127.0.0.1:8080".into(),
                raft_bind: None,
                api_bind: None,
                data_dir: PathBuf::from("data"),
            }],
            tls: None,
            limits: LimitsConfig::default(),
            retention: RetentionConfig::default(),
            raft: RaftConfig::default(),
            storage: StorageConfig::default(),
            groups: GroupsConfig::default(),
            workers: WorkersConfig::default(),
            auth: AuthConfig::default(),
            chat: ChatConfig::default(),
            connectors: Default::default(),
        }
    }

    /// Reads and checks a `cluster.toml`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: ClusterConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ids, addresses and TLS.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::Invalid("no [[nodes]]".into()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if n.id == 0 || !ids.insert(n.id) {
                return Err(ConfigError::Invalid(format!(
                    "node id {} is zero or repeated",
                    n.id
                )));
            }
        }
        if self.nodes.len() > 1 && self.tls.is_none() {
            return Err(ConfigError::Invalid(
                "a cluster of several nodes needs [tls] (run `chat4all certs` and set tls.dir)"
                    .into(),
            ));
        }
        if self.limits.max_record_bytes == 0
            || self.limits.max_record_bytes > self.limits.max_request_bytes
        {
            return Err(ConfigError::Invalid(
                "limits.max_record_bytes must be in 1..=max_request_bytes".into(),
            ));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0
            || r.election_timeout_min_ms <= r.heartbeat_ms
            || r.election_timeout_max_ms <= r.election_timeout_min_ms
        {
            return Err(ConfigError::Invalid(
                "raft timing must satisfy 0 < heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            ));
        }
        if r.snapshot_every_entries == 0 {
            return Err(ConfigError::Invalid(
                "[raft] snapshot_every_entries must be at least 1".into(),
            ));
        }
        if !(1 << 10..=64 << 20).contains(&r.snapshot_chunk_bytes) {
            return Err(ConfigError::Invalid(format!(
                "[raft] snapshot_chunk_bytes must be between 1024 and 67108864 (64 MiB), not {}",
                r.snapshot_chunk_bytes
            )));
        }
        if let Some(mb) = self.storage.memtable_mb
            && !(1..=4096).contains(&mb)
        {
            return Err(ConfigError::Invalid(format!(
                "[storage] memtable_mb must be between 1 and 4096, not {mb}"
            )));
        }
        if !(16..=65_536).contains(&self.storage.max_wal_mb) {
            return Err(ConfigError::Invalid(format!(
                "[storage] max_wal_mb must be between 16 and 65536, not {}",
                self.storage.max_wal_mb
            )));
        }
        if !crate::groups::model::SESSION_TIMEOUT_MS.contains(&self.groups.session_timeout_ms) {
            return Err(ConfigError::Invalid(
                "[groups] session_timeout_ms must be between 1000 and 300000".into(),
            ));
        }
        if !(1..=1000).contains(&self.groups.offsets_partitions) {
            return Err(ConfigError::Invalid(
                "[groups] offsets_partitions must be between 1 and 1000".into(),
            ));
        }
        for c in &self.workers.copy {
            crate::groups::validate_group_name(&c.group)
                .map_err(|e| ConfigError::Invalid(format!("[[workers.copy]] {e}")))?;
            if c.from == c.to {
                return Err(ConfigError::Invalid(format!(
                    "[[workers.copy]] group {:?} copies '{}' onto itself",
                    c.group, c.from
                )));
            }
        }
        Ok(())
    }

    /// This node's entry.
    pub fn node(&self, id: NodeId) -> Result<&NodeConfig, ConfigError> {
        self.nodes.iter().find(|n| n.id == id).ok_or_else(|| {
            let ids: Vec<_> = self.nodes.iter().map(|n| n.id).collect();
            ConfigError::Invalid(format!(
                "node id {id} is not in the configuration (nodes: {ids:?})"
            ))
        })
    }

    /// Every node as Raft membership sees it.
    pub fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    NodeInfo {
                        raft_addr: n.raft_addr.clone(),
                        api_addr: n.api_addr.clone(),
                    },
                )
            })
            .collect()
    }

    /// Applies `CHAT4ALL_*` overrides for this node: `CHAT4ALL_DATA_DIR`, `CHAT4ALL_API_BIND`,
    /// `CHAT4ALL_RAFT_BIND`, `CHAT4ALL_TLS_DIR`, `CHAT4ALL_MAX_RECORD_BYTES`,
    /// `CHAT4ALL_RETENTION_CHECK_MS`.
    pub fn apply_env(
        &mut self,
        id: NodeId,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let num = |k: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| ConfigError::Invalid(format!("{k}={v} is not a number")))
        };
        if let Some(v) = env("CHAT4ALL_MAX_RECORD_BYTES") {
            self.limits.max_record_bytes = num("CHAT4ALL_MAX_RECORD_BYTES", v)? as usize;
        }
        if let Some(v) = env("CHAT4ALL_RETENTION_CHECK_MS") {
            self.retention.check_interval_ms = num("CHAT4ALL_RETENTION_CHECK_MS", v)?;
        }
        if let Some(v) = env("CHAT4ALL_TLS_DIR") {
            match &mut self.tls {
                Some(t) => t.dir = v.into(),
                None => {
                    self.tls = Some(TlsConfig {
                        dir: v.into(),
                        auto_generate: false,
                    })
                }
            }
        }
        let node = self.nodes.iter_mut().find(|n| n.id == id);
        if let Some(node) = node {
            if let Some(v) = env("CHAT4ALL_DATA_DIR") {
                node.data_dir = v.into();
            }
            if let Some(v) = env("CHAT4ALL_API_BIND") {
                node.api_bind = Some(v);
            }
            if let Some(v) = env("CHAT4ALL_RAFT_BIND") {
                node.raft_bind = Some(v);
            }
        }
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_level_cluster_toml_is_a_valid_three_node_cluster() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml");
        let c = ClusterConfig::load(&path).expect("cluster.toml loads");
        let apis: Vec<_> = c.nodes.iter().map(|n| n.api_addr.as_str()).collect();
        assert_eq!(apis, ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]);
        assert!(c.nodes.iter().all(|n| n.data_dir.is_relative()));
    }

    #[test]
    fn the_default_is_one_node_on_8080_with_data_in_dot_data() {
        let c = ClusterConfig::single_node();
        c.validate().expect("valid");
        assert_eq!(c.nodes[0].api_addr, "127.0.0.1:8080");
        assert_eq!(c.nodes[0].data_dir, PathBuf::from("data"));
    }

    #[test]
    fn bad_configurations_are_refused_with_a_reason() {
        let mut c = ClusterConfig::single_node();
        c.nodes.push(c.nodes[0].clone());
        assert!(c.validate().is_err(), "repeated id");
        c.nodes[1].id = 2;
        let err = c.validate().expect_err("two nodes without tls");
        assert!(err.to_string().contains("tls"), "{err}");
        let parse = toml::from_str::<ClusterConfig>("[[nodes]]\nid = 1\nbogus = 2");
        assert!(parse.is_err(), "unknown keys are refused");
        let mut c = ClusterConfig::single_node();
        c.storage.max_wal_mb = 8;
        let err = c.validate().expect_err("a WAL bound under 16 MiB");
        assert!(err.to_string().contains("max_wal_mb"), "{err}");
        c.storage.max_wal_mb = 256;
        c.storage.memtable_mb = Some(0);
        let err = c.validate().expect_err("an empty memtable");
        assert!(err.to_string().contains("memtable_mb"), "{err}");
        let mut c = ClusterConfig::single_node();
        c.raft.snapshot_every_entries = 0;
        let err = c.validate().expect_err("a snapshot every 0 entries");
        assert!(err.to_string().contains("snapshot_every_entries"), "{err}");
        let mut c = ClusterConfig::single_node();
        c.raft.snapshot_chunk_bytes = 100 << 20;
        let err = c.validate().expect_err("chunks over the limit");
        assert!(err.to_string().contains("snapshot_chunk_bytes"), "{err}");
    }

    #[test]
    fn storage_settings_parse_and_default_to_verifying() {
        let nodes =
            "[[nodes]]\nid = 1\nraft_addr = \"a:1\"\napi_addr = \"a:2\"\ndata_dir = \"d\"\n";
        let c: ClusterConfig = toml::from_str(nodes).expect("parse");
        assert!(c.storage.verify_on_start);
        assert_eq!(c.storage.memtable_mb, None);
        let c: ClusterConfig = toml::from_str(&format!(
            "[storage]\nverify_on_start = false\nmemtable_mb = 8\n{nodes}"
        ))
        .expect("parse");
        assert!(!c.storage.verify_on_start);
        assert_eq!(c.storage.memtable_mb, Some(8));
    }

    #[test]
    fn environment_overrides_apply_to_this_node() {
        let mut c = ClusterConfig::single_node();
        let env = |k: &str| match k {
            "CHAT4ALL_DATA_DIR" => Some("/tmp/x".to_string()),
            "CHAT4ALL_MAX_RECORD_BYTES" => Some("2048".to_string()),
            _ => None,
        };
        c.apply_env(1, &env).expect("valid");
        assert_eq!(c.nodes[0].data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.limits.max_record_bytes, 2048);
        let bad = |k: &str| (k == "CHAT4ALL_MAX_RECORD_BYTES").then(|| "lots".to_string());
        assert!(c.apply_env(1, &bad).is_err());
    }
}
