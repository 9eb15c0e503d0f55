//! Consumer groups: the coordinator's rules ([`model`]) and how a group is stored in the
//! compacted `__consumer_offsets` topic ([`stored`]). The coordinator itself, which runs on
//! the leader of the group's `__consumer_offsets` partition, is `service::groups`.

pub mod model;
pub mod stored;

use chat4all_raft::sm::partition::PartitionKind;

use crate::error::ServiceError;
use crate::partitioner::{murmur2, to_positive};

/// The internal topic holding every group's state and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Topics whose names start with `__` or `chat.` belong to the node; clients may read them,
/// not write or create them.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__") || name.starts_with("chat.")
}

/// What a topic's partitions keep besides the log.
pub fn partition_kind(name: &str) -> PartitionKind {
    match name {
        OFFSETS_TOPIC => PartitionKind::Compacted,
        crate::chat::MESSAGES_TOPIC => PartitionKind::Chat,
        // Outbound work is an inbox per channel recipient: each event in it once. `chat.inbox`
        // held users' events before streams read `chat.messages`; nothing writes it now, but
        // a cluster from before replays its log alike on every replica.
        crate::channels::DELIVERIES_TOPIC | "chat.inbox" => PartitionKind::Inbox,
        _ => PartitionKind::Log,
    }
}

/// The `__consumer_offsets` partition of a group (Kafka uses the group id's hash too).
pub fn offsets_partition(group: &str, partitions: u32) -> u32 {
    to_positive(murmur2(group.as_bytes())) as u32 % partitions.max(1)
}

/// Group names follow topic names' rules: 1-249 of `a-z A-Z 0-9 . _ -`.
pub fn validate_group_name(name: &str) -> Result<(), ServiceError> {
    if crate::api::is_legal_name(name) {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "INVALID_GROUP_NAME",
            format!("group name {name:?} must be 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_and_partitions() {
        assert!(validate_group_name("router").is_ok());
        assert!(validate_group_name("a/b").is_err());
        assert!(validate_group_name("").is_err());
        for g in ["router", "status", "x"] {
            assert!(offsets_partition(g, 6) < 6);
        }
        assert_eq!(offsets_partition("anything", 1), 0);
        assert!(is_internal_topic(OFFSETS_TOPIC) && is_internal_topic("chat.messages"));
        assert!(!is_internal_topic("orders") && !is_internal_topic("chat"));
        assert_eq!(partition_kind("chat.messages"), PartitionKind::Chat);
        assert_eq!(partition_kind(OFFSETS_TOPIC), PartitionKind::Compacted);
        assert_eq!(partition_kind("orders"), PartitionKind::Log);
    }
}
