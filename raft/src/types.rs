//! The replicated types: openraft's type configuration, group and node identities, and the
//! commands every replica applies. These are the wire and log format: change them only by
//! adding enum variants at the end, so entries written by an older binary still decode.

use std::fmt;

use crate::sm::chat::{ChatCommand, ChatResponse};
use crate::sm::directory::{DirectoryCommand, DirectoryResponse};
use chat4all_storage::StoredRecord;
use serde::{Deserialize, Serialize};

/// A node's id in the cluster (from `cluster.toml`).
pub type NodeId = u64;

/// Identifies one Raft group. Group 0 is the controller; every topic-partition gets its own.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The controller group: cluster metadata.
    pub const CONTROLLER: GroupId = GroupId(0);
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// Where a node can be reached.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// QUIC address for Raft and forwarded requests, `host:port`.
    pub raft_addr: String,
    /// HTTP API address, `host:port`.
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// Chat4All's openraft type configuration, shared by the controller and partition groups.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        SnapshotData = crate::snapshot::SnapshotData,
);

/// A log entry of any group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A running Raft instance of any group.
pub type Raft = openraft::Raft<TypeConfig>;
/// openraft's storage error, as our stores return it.
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// A command proposed to a group and applied by every replica in log order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    /// For the controller group.
    Controller(ControllerCommand),
    /// For a partition group.
    Partition(PartitionCommand),
}

/// What a replica's apply returned for one entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub enum CommandResponse {
    /// Blank and membership entries answer nothing.
    #[default]
    None,
    /// A controller command's result.
    Controller(ControllerResponse),
    /// A partition command's result.
    Partition(PartitionResponse),
}

/// Commands of the controller group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ControllerCommand {
    /// Creates a topic with the replica assignment chosen by the proposer. The apply refuses a
    /// name that exists, so two racing creations cannot both win.
    CreateTopic(TopicSpec),
    /// Allocates a new idempotent producer id (epoch 0), or with `bump` raises the epoch of an
    /// existing id, fencing every older session of it.
    AllocateProducer {
        /// The producer id whose epoch to raise.
        bump: Option<i64>,
    },
    /// Changes the directory (users, identities, API keys).
    Directory(DirectoryCommand),
}

/// A topic as requested, with its assignment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TopicSpec {
    /// The topic name.
    pub name: String,
    /// Replicas of each partition, in partition order.
    pub assignments: Vec<Vec<NodeId>>,
    /// Delete records older than this many milliseconds.
    pub retention_ms: Option<i64>,
    /// Delete the oldest records while the partition holds more than this many bytes.
    pub retention_bytes: Option<i64>,
    /// When the topic was created, ms since the epoch (set by the proposer).
    pub created_at_ms: i64,
}

/// Results of controller commands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ControllerResponse {
    /// The topic now exists with these partition groups.
    TopicCreated(TopicMeta),
    /// A topic with that name exists already.
    TopicExists,
    /// A producer id and its current epoch.
    Producer {
        /// The producer id.
        id: i64,
        /// Its epoch after this command.
        epoch: i16,
    },
    /// `bump` named a producer id that was never allocated.
    UnknownProducer,
    /// The epoch cannot be raised further.
    EpochExhausted,
    /// A directory command's result.
    Directory(DirectoryResponse),
}

/// A topic as the controller stores it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TopicMeta {
    /// The topic name.
    pub name: String,
    /// Its partitions, index = partition number.
    pub partitions: Vec<PartitionMeta>,
    /// Time-based retention.
    pub retention_ms: Option<i64>,
    /// Size-based retention per partition.
    pub retention_bytes: Option<i64>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
}

impl TopicMeta {
    /// The replication factor (replicas per partition).
    pub fn replication_factor(&self) -> usize {
        self.partitions.first().map_or(0, |p| p.replicas.len())
    }
}

/// One partition's Raft group and replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PartitionMeta {
    /// Its Raft group.
    pub group: GroupId,
    /// The nodes holding a replica.
    pub replicas: Vec<NodeId>,
}

/// Commands of a partition group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum PartitionCommand {
    /// Appends records at the next offsets (subject to idempotent-producer checks).
    Append(AppendBatch),
    /// Several batches in one Raft entry (the leader's group commit): applied in order, each
    /// exactly as if it were its own `Append`; answered by `Many` with one response per batch.
    AppendMany(Vec<AppendBatch>),
    /// Moves the log start offset forward (retention), deleting the records below it.
    AdvanceLogStart {
        /// The new log start offset; never moved past the high watermark.
        offset: u64,
    },
    /// Log compaction of a compacted partition: deletes every record below `below` that is
    /// not the latest of its key (and every tombstone below it), so the partition holds one
    /// record per live key. Offsets stay as they were (the log becomes sparse, as a compacted
    /// Kafka topic's). Ignored by a partition that is not compacted.
    Compact {
        /// Records at or above this offset are kept.
        below: u64,
    },
    /// A chat command (a `chat.messages` partition only): decided in the apply, and when
    /// accepted, its event record is appended at the next offset.
    Chat(Box<ChatCommand>),
}

/// A batch of records to append.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AppendBatch {
    /// Idempotent producer identity, if the batch has one.
    pub producer: Option<ProducerBatch>,
    /// The records, each with the leader's timestamp.
    pub records: Vec<StoredRecord>,
}

/// The idempotent-producer fields of a batch (Kafka's producerId, producerEpoch, baseSequence).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    /// Producer id from the controller.
    pub id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence number of the batch's first record.
    pub base_sequence: i32,
}

/// Results of partition commands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum PartitionResponse {
    /// The batch is in the log at `base_offset..base_offset + count`. With `duplicate` it was
    /// already there (a retry of one of the producer's last batches) and nothing was written.
    Appended {
        /// Offset of the first record.
        base_offset: u64,
        /// Number of records.
        count: u32,
        /// Whether this was a retried duplicate.
        duplicate: bool,
    },
    /// The batch's sequence does not follow the producer's last one.
    OutOfOrderSequence {
        /// The sequence the partition expected next.
        expected: i32,
    },
    /// The batch's epoch is older than the producer's current one.
    Fenced {
        /// The producer's current epoch on this partition.
        current_epoch: i16,
    },
    /// The responses to an `AppendMany`, in its order.
    Many(Vec<PartitionResponse>),
    /// The log start offset after an advance.
    LogStartAdvanced {
        /// The log start offset now.
        log_start_offset: u64,
    },
    /// What a compaction removed.
    Compacted {
        /// Records deleted.
        removed: u64,
    },
    /// A chat command's result.
    Chat(ChatResponse),
}
