//! Chat commands and reads, on the leader of the conversation's `chat.messages` partition,
//! forwarded there from any node. Reads confirm the leadership with a quorum first, so they
//! see every write acknowledged before them; event stream reads, which follow a cursor, are
//! served by any replica in touch with its leader (see [`Service::stream_read`]).

use std::time::{Duration, Instant};

use chat4all_raft::groups::Group;
use chat4all_raft::sm::chat::{ChatCommand, ChatResponse, Conversation, HistoryPage, MessageState};
use chat4all_raft::types::{
    Command, CommandResponse, PartitionCommand, PartitionResponse, TopicMeta,
};
use chat4all_storage::StoredRecord;
use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};

use super::{ForwardRequest, ForwardResponse, Proposed, Service};
use crate::chat::MESSAGES_TOPIC;
use crate::error::ServiceError;
use crate::partitioner::partition_for_key;

/// A request to a chat partition's leader. Crosses the wire when forwarded.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ChatOp {
    /// Propose a command.
    Write(Box<ChatCommand>),
    /// A conversation by id.
    Conversation(String),
    /// A message's state by id.
    Message(String),
    /// A page of a conversation's history, with each message's record.
    History {
        /// The conversation.
        conversation: String,
        /// Which page.
        page: HistoryPage,
        /// No offset below this (the reader joined there).
        floor: u64,
        /// At most this many.
        limit: usize,
    },
    /// A user's events in one partition from offset `from` on (`None`: from the replica's
    /// high watermark, so only new events), waiting up to `max_wait_ms` for one.
    StreamRead {
        /// The user.
        user: String,
        /// The first offset to read.
        from: Option<u64>,
        /// At most this many.
        limit: usize,
        /// Long-poll time.
        max_wait_ms: u64,
    },
    /// A note of an inbox-kind partition (`ChatCommand::Note`).
    Note {
        /// Its owner.
        owner: String,
        /// Its name.
        name: String,
    },
    /// The conversations a user is in, by id after `after`.
    ConversationsOf {
        /// The user.
        user: String,
        /// Exclusive lower bound on the id.
        after: Option<String>,
        /// At most this many.
        limit: usize,
    },
}

/// Answers to [`ChatOp`]s.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ChatReply {
    /// The command's result.
    Written(ChatResponse),
    /// A conversation, if it exists.
    Conversation(Option<Conversation>),
    /// A message's state and record, if it exists.
    Message(Option<(MessageState, Option<StoredRecord>)>),
    /// History entries: each message's state and record (absent if retention removed it).
    History(Vec<(MessageState, Option<StoredRecord>)>),
    /// Conversations, by id.
    Conversations(Vec<Conversation>),
    /// A note's value, if it is set.
    Note(Option<String>),
    /// A user's events in one partition, `(offset, record)`, and where the read began.
    Stream {
        /// The first offset read (the request's, or the high watermark then).
        from: u64,
        /// The events, in offset order.
        events: Vec<(u64, StoredRecord)>,
    },
}

impl Service {
    /// The `chat.messages` topic, created with `[chat] partitions` at the first chat request.
    pub async fn chat_topic(&self) -> Result<TopicMeta, ServiceError> {
        self.ensure_internal_topic(MESSAGES_TOPIC, self.chat_config.partitions)
            .await
    }

    /// The `chat.messages` partition of a conversation (Kafka's partitioner on its id).
    pub async fn chat_partition(&self, conversation_id: &str) -> Result<u32, ServiceError> {
        let topic = self.chat_topic().await?;
        Ok(partition_for_key(
            conversation_id.as_bytes(),
            topic.partitions.len() as u32,
        ))
    }

    /// Reads `user`'s event stream from `from` (the next offset to read in each
    /// `chat.messages` partition, or `[0]` for all from the start; `None`: from now on): what
    /// every partition has now, or, when none has anything, what the first one to get an
    /// event has, waiting up to `max_wait_ms`. Each partition is read on this node's replica
    /// when it has one in touch with the leader, else on the leader.
    ///
    /// No quorum round confirms the leadership first, unlike the other chat reads: a stream
    /// is read by offset after a cursor the reader holds, and every replica applies only
    /// committed entries, in log order, so any replica answers with events that will never be
    /// lost or change, in their order, and none the reader had. A replica behind the leader
    /// answers late, never wrong; one out of touch (cut off, or a leader that lost its
    /// majority) is not asked. A reader without a cursor starts at the replica's high
    /// watermark, which may be a few events before the leader's.
    pub async fn stream_read(
        &self,
        user: &str,
        from: Option<Vec<u64>>,
        limit: usize,
        max_wait_ms: u64,
    ) -> Result<StreamPage, ServiceError> {
        let partitions = self.chat_topic().await?.partitions.len();
        let given: Vec<Option<u64>> = match from {
            Some(f) if f.len() == partitions => f.into_iter().map(Some).collect(),
            // `0` alone: from the beginning.
            Some(f) if f == [0] => vec![Some(0); partitions],
            Some(f) => {
                return Err(ServiceError::Invalid {
                    code: "INVALID_CURSOR".into(),
                    message: format!(
                        "the cursor has {} positions; chat.messages has {partitions} partitions",
                        f.len()
                    ),
                });
            }
            None => vec![None; partitions],
        };
        let read = |p: usize, from: Option<u64>, max_wait_ms: u64| {
            let op = ChatOp::StreamRead {
                user: user.to_string(),
                from,
                limit,
                max_wait_ms,
            };
            async move { (p, self.stream_read_in(p as u32, op).await) }
        };
        let mut from = vec![0; partitions];
        let mut found = vec![Vec::new(); partitions];
        for (p, r) in futures::future::join_all((0..partitions).map(|p| read(p, given[p], 0))).await
        {
            (from[p], found[p]) = r?;
        }
        if max_wait_ms > 0 && found.iter().all(Vec::is_empty) {
            // Wait in every partition; the first to answer with events ends the wait (the
            // others' reads are dropped, which ends a local wait at once, and a forwarded one
            // as soon as the serving node sees its request stream stopped).
            let mut waits: futures::stream::FuturesUnordered<_> = (0..partitions)
                .map(|p| read(p, Some(from[p]), max_wait_ms))
                .collect();
            while let Some((p, r)) = futures::StreamExt::next(&mut waits).await {
                let (_, events) = r?;
                if !events.is_empty() {
                    found[p] = events;
                    break;
                }
            }
        }
        Ok(StreamPage {
            from,
            events: merge_by_time(found),
        })
    }

    async fn stream_read_in(
        &self,
        p: u32,
        op: ChatOp,
    ) -> Result<(u64, Vec<(u64, StoredRecord)>), ServiceError> {
        let meta = self.partition_synced(MESSAGES_TOPIC, p).await?;
        let local = self.groups.get(meta.group).filter(|g| g.in_contact());
        let reply = match local {
            Some(g) => read_applied(&g, op).await?,
            None => self.chat_call(MESSAGES_TOPIC, p, op, 0).await?,
        };
        match reply {
            ChatReply::Stream { from, events } => Ok((from, events)),
            other => Err(ServiceError::Internal(format!(
                "stream read answered {other:?}"
            ))),
        }
    }

    /// Proposes `cmd` in the partition of `conversation_id` and returns the apply's decision.
    pub async fn chat_write(
        &self,
        conversation_id: &str,
        cmd: ChatCommand,
    ) -> Result<ChatResponse, ServiceError> {
        let p = self.chat_partition(conversation_id).await?;
        self.chat_write_to(p, cmd).await
    }

    /// Proposes `cmd` in `chat.messages` partition `partition`.
    pub async fn chat_write_to(
        &self,
        partition: u32,
        cmd: ChatCommand,
    ) -> Result<ChatResponse, ServiceError> {
        self.chat_write_in(MESSAGES_TOPIC, partition, cmd).await
    }

    /// Proposes `cmd` in partition `partition` of `topic` and returns the apply's decision.
    pub(super) async fn chat_write_in(
        &self,
        topic: &str,
        partition: u32,
        cmd: ChatCommand,
    ) -> Result<ChatResponse, ServiceError> {
        match self
            .chat_call(topic, partition, ChatOp::Write(Box::new(cmd)), 0)
            .await?
        {
            ChatReply::Written(r) => Ok(r),
            other => Err(ServiceError::Internal(format!(
                "write to {topic} answered {other:?}"
            ))),
        }
    }

    /// Reads `op` (not a write) from the partition of `conversation_id`.
    pub async fn chat_read(
        &self,
        conversation_id: &str,
        op: ChatOp,
    ) -> Result<ChatReply, ServiceError> {
        let p = self.chat_partition(conversation_id).await?;
        self.chat_call(MESSAGES_TOPIC, p, op, 0).await
    }

    /// Runs `op` on every chat partition, in partition order.
    pub async fn chat_read_all(&self, op: ChatOp) -> Result<Vec<ChatReply>, ServiceError> {
        let topic = self.chat_topic().await?;
        let calls = (0..topic.partitions.len() as u32)
            .map(|p| self.chat_call(MESSAGES_TOPIC, p, op.clone(), 0));
        futures::future::try_join_all(calls).await
    }

    /// Runs `op` on the leader of partition `partition` of `topic` (`chat.messages` or
    /// `chat.deliveries`).
    pub(super) async fn chat_call(
        &self,
        topic: &str,
        partition: u32,
        op: ChatOp,
        hops: u8,
    ) -> Result<ChatReply, ServiceError> {
        let meta = self.partition_synced(topic, partition).await?;
        let wait = match &op {
            ChatOp::StreamRead { max_wait_ms, .. } => (*max_wait_ms).min(super::fetch::MAX_WAIT_MS),
            _ => 0,
        };
        let deadline = Instant::now() + Duration::from_millis(self.limits.write_timeout_ms + wait);
        let local = |g: chat4all_raft::groups::Group| {
            let op = op.clone();
            async move { self.chat_local(&g, op, deadline).await }
        };
        let remote = |n: chat4all_raft::types::NodeId| {
            let req = ForwardRequest::Chat {
                topic: topic.to_string(),
                partition,
                op: op.clone(),
                hops: hops + 1,
            };
            async move {
                match self.forward(n, meta.group, req, hops, deadline).await? {
                    ForwardResponse::Chat(r) => Ok(r),
                    other => Err(ServiceError::Internal(format!(
                        "unexpected forward answer {other:?}"
                    ))),
                }
            }
        };
        if let Some(r) = self
            .on_leader(meta.group, &meta.replicas, hops, deadline, local, remote)
            .await?
        {
            return Ok(r);
        }
        Err(ServiceError::Unavailable(format!(
            "partition {partition} of {topic} keeps changing leader; retry"
        )))
    }

    async fn chat_local(
        &self,
        g: &Group,
        op: ChatOp,
        deadline: Instant,
    ) -> Result<Proposed<ChatReply>, ServiceError> {
        super::partition_sm(g)?;
        if let ChatOp::Write(cmd) = op {
            let cmd = Command::Partition(PartitionCommand::Chat(cmd));
            return Ok(match self.propose(g, cmd, deadline).await? {
                Proposed::Done(CommandResponse::Partition(PartitionResponse::Chat(r))) => {
                    Proposed::Done(ChatReply::Written(r))
                }
                Proposed::Done(other) => {
                    return Err(ServiceError::Internal(format!(
                        "chat command answered {other:?}"
                    )));
                }
                Proposed::NotLeader(l) => Proposed::NotLeader(l),
            });
        }
        if matches!(op, ChatOp::StreamRead { .. }) {
            // No quorum round for a stream read (see `stream_read`).
            return Ok(Proposed::Done(read_applied(g, op).await?));
        }
        // A read: confirm the leadership with a quorum and wait until everything committed
        // before it is applied here.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, g.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                return Ok(Proposed::NotLeader(f.leader_id));
            }
            Ok(Err(e)) => {
                return Err(ServiceError::Unavailable(format!(
                    "chat group {} cannot confirm its leader: {e}",
                    g.id
                )));
            }
            Err(_) => {
                return Err(ServiceError::Unavailable(format!(
                    "chat group {} cannot confirm its leader (no majority reachable?)",
                    g.id
                )));
            }
        }
        Ok(Proposed::Done(read_applied(g, op).await?))
    }
}

/// Answers the read `op` from what this replica of `g` has applied: every write committed
/// before it if the caller confirmed the leadership first, a committed prefix in any case.
async fn read_applied(g: &Group, op: ChatOp) -> Result<ChatReply, ServiceError> {
    let sm = super::partition_sm(g)?;
    let chat = sm.chat();
    let err = |e: chat4all_storage::StorageError| ServiceError::Internal(format!("chat read: {e}"));
    let record = |offset: u64| -> Result<Option<StoredRecord>, ServiceError> {
        let read = sm
            .read(offset, 1, u64::MAX)
            .map_err(|e| ServiceError::Internal(format!("read partition: {e}")))?;
        Ok(read
            .ok()
            .and_then(|b| b.records.into_iter().next())
            .filter(|(o, _)| *o == offset)
            .map(|(_, r)| r))
    };
    let reply = match op {
        ChatOp::Write(_) => unreachable_write()?,
        ChatOp::Conversation(id) => ChatReply::Conversation(chat.conversation(&id).map_err(err)?),
        ChatOp::Message(id) => match chat.message(&id).map_err(err)? {
            Some(m) => {
                let r = record(m.offset)?;
                ChatReply::Message(Some((m, r)))
            }
            None => ChatReply::Message(None),
        },
        ChatOp::History {
            conversation,
            page,
            floor,
            limit,
        } => {
            let mut out = Vec::new();
            for (_, id) in chat
                .history(&conversation, page, floor, limit)
                .map_err(err)?
            {
                if let Some(m) = chat.message(&id).map_err(err)? {
                    let r = record(m.offset)?;
                    out.push((m, r));
                }
            }
            ChatReply::History(out)
        }
        ChatOp::StreamRead {
            user,
            from,
            limit,
            max_wait_ms,
        } => {
            // Subscribe before the first read, so an event applied in between wakes us; only
            // this user's events do.
            let mut woken = sm.watch_user(&user);
            let from = from.unwrap_or_else(|| sm.state().next_offset);
            let until = tokio::time::Instant::now()
                + Duration::from_millis(max_wait_ms.min(super::fetch::MAX_WAIT_MS));
            loop {
                let mut events = Vec::new();
                for offset in chat.stream(&user, from, limit).map_err(err)? {
                    // Absent when retention removed it.
                    if let Some(r) = record(offset)? {
                        events.push((offset, r));
                    }
                }
                if !events.is_empty() || tokio::time::Instant::now() >= until {
                    break ChatReply::Stream { from, events };
                }
                let seen = *woken.borrow_and_update();
                let _ = tokio::time::timeout_at(until, woken.wait_for(|&h| h > seen)).await;
            }
        }
        ChatOp::Note { owner, name } => ChatReply::Note(chat.note(&owner, &name).map_err(err)?),
        ChatOp::ConversationsOf { user, after, limit } => {
            let mut out = Vec::new();
            for id in chat
                .conversations_of(&user, after.as_deref(), limit)
                .map_err(err)?
            {
                if let Some(c) = chat.conversation(&id).map_err(err)? {
                    out.push(c);
                }
            }
            ChatReply::Conversations(out)
        }
    };
    Ok(reply)
}

/// A page of a user's event stream: where it began, and the events, each with its partition
/// and offset.
#[derive(Debug)]
pub struct StreamPage {
    /// The next offset to read in each partition when the page was read.
    pub from: Vec<u64>,
    /// The events: each partition's in offset order, the partitions merged by timestamp.
    pub events: Vec<(u32, u64, StoredRecord)>,
}

/// Merges per-partition event lists into one, keeping each partition's order and otherwise
/// taking the earliest timestamp first (ties: the lower partition).
fn merge_by_time(per_partition: Vec<Vec<(u64, StoredRecord)>>) -> Vec<(u32, u64, StoredRecord)> {
    let total = per_partition.iter().map(Vec::len).sum();
    let mut heads: Vec<_> = per_partition
        .into_iter()
        .map(|v| v.into_iter().peekable())
        .collect();
    let mut out = Vec::with_capacity(total);
    loop {
        let next = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(p, it)| it.peek().map(|(_, r)| (r.timestamp_ms, p)))
            .min();
        let Some((_, p)) = next else { break };
        if let Some((offset, r)) = heads[p].next() {
            out.push((p as u32, offset, r));
        }
    }
    out
}

fn unreachable_write() -> Result<ChatReply, ServiceError> {
    Err(ServiceError::Internal(
        "a chat write reached the read path".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat4all_storage::{Payload, PayloadFormat};

    fn at(ms: i64) -> StoredRecord {
        StoredRecord {
            timestamp_ms: ms,
            key: None,
            value: Payload {
                format: PayloadFormat::Text,
                bytes: Vec::new(),
            },
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_merge_keeps_each_partitions_order_and_otherwise_goes_by_time() {
        // Partition 0's clock went back between its offsets 4 and 5 (a new leader's clock):
        // its order still wins over the timestamps.
        let merged = merge_by_time(vec![
            vec![(4, at(30)), (5, at(10))],
            vec![],
            vec![(0, at(20)), (1, at(40))],
        ]);
        let order: Vec<(u32, u64)> = merged.iter().map(|(p, o, _)| (*p, *o)).collect();
        assert_eq!(order, [(2, 0), (0, 4), (0, 5), (2, 1)]);
        assert!(merge_by_time(vec![vec![], vec![]]).is_empty());
    }
}
