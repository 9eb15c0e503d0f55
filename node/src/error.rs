//! The node's service errors. They cross the wire when a request is forwarded, and only the
//! API edge (`api::ApiError`) turns them into HTTP.

use serde::{Deserialize, Serialize};

/// Why a request failed, each with a stable code.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or a field is invalid; `code` says which rule.
    #[error("{message}")]
    Invalid {
        /// A stable code such as `INVALID_TOPIC_NAME`.
        code: String,
        /// What to fix.
        message: String,
    },
    /// A record is larger than `limits.max_record_bytes`.
    #[error("record {index} is {size} bytes; the limit is {limit}")]
    RecordTooLarge {
        /// Position in the request.
        index: usize,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// No such topic.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// No such partition.
    #[error("topic '{topic}' has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Requested partition.
        partition: u32,
        /// How many it has.
        partitions: u32,
    },
    /// The topic exists already.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// A producer id that was never allocated.
    #[error("producer {0} does not exist; get one from POST /v1/producers")]
    UnknownProducer(i64),
    /// The fetch offset is outside the log.
    #[error(
        "offset {offset} is out of range; valid offsets are {log_start_offset}..={high_watermark}"
    )]
    OffsetOutOfRange {
        /// Requested offset.
        offset: u64,
        /// Lowest valid offset.
        log_start_offset: u64,
        /// High watermark.
        high_watermark: u64,
    },
    /// The batch's sequence does not follow the producer's last batch on this partition.
    #[error("sequence {got} does not follow the producer's last batch; expected {expected}")]
    OutOfOrderSequence {
        /// The batch's first sequence.
        got: i32,
        /// The expected one.
        expected: i32,
    },
    /// The producer epoch is older than the current one.
    #[error("producer epoch {got} is fenced by epoch {current}")]
    Fenced {
        /// The batch's epoch.
        got: i16,
        /// The current epoch.
        current: i16,
    },
    /// Nothing was done and the request can be retried: no leader, no majority, node starting.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been committed (timeout or leader lost after proposing).
    /// Retrying with the same producer sequence is safe.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A bug or a storage failure on the node.
    #[error("internal error: {0}")]
    Internal(String),
    /// A consumer group member that is unknown, stale, or committing a partition it does not
    /// own: it must rejoin with member epoch 0, owning nothing.
    #[error("{0}")]
    MemberFenced(String),
    /// No such consumer group.
    #[error("consumer group '{0}' does not exist")]
    UnknownGroup(String),
    /// The group still has members.
    #[error("{0}")]
    GroupNotEmpty(String),
    /// A write to a topic the node keeps for itself.
    #[error("topic '{0}' is internal: only the node writes to it")]
    InternalTopic(String),
    /// A node a request was forwarded to does not lead the group (any more), and nothing was
    /// written: the forwarding node, which knows whether its client still waits, tries the
    /// leader named here (if known) itself.
    #[error("this node does not lead the group; the leader is {0:?}")]
    NotLeader(Option<chat4all_raft::types::NodeId>),
}

impl ServiceError {
    /// A validation error with its code.
    pub fn invalid(code: &str, message: impl Into<String>) -> ServiceError {
        ServiceError::Invalid {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        match self {
            ServiceError::Invalid { code, .. } => code,
            ServiceError::RecordTooLarge { .. } => "RECORD_TOO_LARGE",
            ServiceError::UnknownTopic(_) => "UNKNOWN_TOPIC",
            ServiceError::UnknownPartition { .. } => "UNKNOWN_PARTITION",
            ServiceError::TopicExists(_) => "TOPIC_EXISTS",
            ServiceError::UnknownProducer(_) => "UNKNOWN_PRODUCER",
            ServiceError::OffsetOutOfRange { .. } => "OFFSET_OUT_OF_RANGE",
            ServiceError::OutOfOrderSequence { .. } => "OUT_OF_ORDER_SEQUENCE",
            ServiceError::Fenced { .. } => "FENCED",
            ServiceError::Unavailable(_) => "UNAVAILABLE",
            ServiceError::OutcomeUnknown(_) => "OUTCOME_UNKNOWN",
            ServiceError::Internal(_) => "INTERNAL",
            ServiceError::MemberFenced(_) => "FENCED",
            ServiceError::UnknownGroup(_) => "GROUP_NOT_FOUND",
            ServiceError::InternalTopic(_) => "INTERNAL_TOPIC",
            ServiceError::GroupNotEmpty(_) => "GROUP_NOT_EMPTY",
            ServiceError::NotLeader(_) => "UNAVAILABLE",
        }
    }

    /// Whether the operation certainly did not take effect, so another node may be tried.
    pub fn is_definite(&self) -> bool {
        !matches!(
            self,
            ServiceError::OutcomeUnknown(_) | ServiceError::Internal(_)
        )
    }
}
