//! Channels and their topics through the service: the channel rows of the directory, and the
//! three topics connectors use (`chat.deliveries`, `chat.deliveries.dlq`, `chat.inbound`).

use chat4all_raft::sm::chat::{ChatCommand, ChatResponse};
use chat4all_raft::sm::directory::Channel;
use chat4all_raft::types::TopicMeta;
use chat4all_storage::StoredRecord;

use super::chat::{ChatOp, ChatReply};
use super::{ProduceBatch, Service};
use crate::channels::{DELIVERIES_TOPIC, DLQ_TOPIC, INBOUND_TOPIC};
use crate::error::ServiceError;
use crate::partitioner::partition_for_key;

impl Service {
    /// `chat.deliveries`, with `[chat] channel_partitions`.
    pub async fn deliveries_topic(&self) -> Result<TopicMeta, ServiceError> {
        self.ensure_internal_topic(DELIVERIES_TOPIC, self.chat_config.channel_partitions)
            .await
    }

    /// `chat.deliveries.dlq`.
    pub async fn dlq_topic(&self) -> Result<TopicMeta, ServiceError> {
        self.ensure_internal_topic(DLQ_TOPIC, self.chat_config.channel_partitions)
            .await
    }

    /// `chat.inbound`.
    pub async fn inbound_topic(&self) -> Result<TopicMeta, ServiceError> {
        self.ensure_internal_topic(INBOUND_TOPIC, self.chat_config.channel_partitions)
            .await
    }

    /// Proposes a delivery batch in partition `partition` of `topic` (`chat.deliveries`).
    pub async fn deliver_write(
        &self,
        topic: &str,
        partition: u32,
        cmd: ChatCommand,
    ) -> Result<ChatResponse, ServiceError> {
        self.chat_write_in(topic, partition, cmd).await
    }

    /// The `chat.deliveries` partition of a delivery key.
    pub async fn deliveries_partition(&self, key: &str) -> Result<u32, ServiceError> {
        let partitions = self.deliveries_topic().await?.partitions.len() as u32;
        Ok(partition_for_key(key.as_bytes(), partitions))
    }

    /// Sets a note of a channel's contact (`key` is its delivery key) in its
    /// `chat.deliveries` partition.
    pub async fn delivery_note(
        &self,
        key: &str,
        name: &str,
        value: String,
    ) -> Result<(), ServiceError> {
        let cmd = ChatCommand::Note {
            owner: key.to_string(),
            name: name.to_string(),
            value,
        };
        let p = self.deliveries_partition(key).await?;
        match self.deliver_write(DELIVERIES_TOPIC, p, cmd).await? {
            ChatResponse::Noted => Ok(()),
            other => Err(ServiceError::Internal(format!("a note answered {other:?}"))),
        }
    }

    /// A note of a channel's contact, read on its partition's leader.
    pub async fn delivery_note_read(
        &self,
        key: &str,
        name: &str,
    ) -> Result<Option<String>, ServiceError> {
        let op = ChatOp::Note {
            owner: key.to_string(),
            name: name.to_string(),
        };
        let p = self.deliveries_partition(key).await?;
        match self.chat_call(DELIVERIES_TOPIC, p, op, 0).await? {
            ChatReply::Note(v) => Ok(v),
            other => Err(ServiceError::Internal(format!(
                "a note read answered {other:?}"
            ))),
        }
    }

    /// Every channel, from this node's copy of the directory (a channel made a moment ago
    /// through another node may be missing; the workers look again).
    pub fn channels_local(&self) -> Result<Vec<Channel>, ServiceError> {
        self.directory_local(|d| d.channels())
    }

    /// A channel by name, from this node's copy of the directory (one point read).
    pub fn channel_local(&self, name: &str) -> Result<Option<Channel>, ServiceError> {
        self.directory_local(|d| d.channel(name))
    }

    /// A channel by name, linearizable (channels can be removed, so a local hit could be
    /// stale).
    pub async fn channel_synced(&self, name: &str) -> Result<Option<Channel>, ServiceError> {
        self.directory_synced(|d| d.channel(name)).await
    }

    /// Appends `records` to partition `partition` of an internal topic, once a majority has
    /// them; the first offset.
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<StoredRecord>,
    ) -> Result<u64, ServiceError> {
        let batch = ProduceBatch {
            topic: topic.to_string(),
            partition,
            records,
            producer: None,
        };
        Ok(self.produce_batch(batch, 0).await?.0)
    }
}
