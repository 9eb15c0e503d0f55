//! The router: a member of the `router` consumer group on every node. It reads `chat.messages`
//! and delivers each message to the `chat.deliveries` queue of every recipient with an
//! identity on a configured channel. Users of the API need no copy: the apply that stores an
//! event indexes it in the streams of the users it stamped on it ([`RECIPIENTS_HEADER`]), so
//! a message is in its recipients' streams once committed. A message with no external
//! recipient is then marked SENT (itself an event) while reading goes on, at the next
//! [`TICK`], in one write per partition with the others read in that tick; one with external
//! recipients is marked SENT by the delivery worker when a platform accepts it. A delivery is
//! decided in the queue partition's apply, which drops an event it already has, so a router
//! that restarts and reads an event again adds nothing: each delivery queue holds each event
//! once, in its conversation's order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat4all_raft::sm::chat::{
    ChatCommand, ChatResponse, MessageStatus, RECIPIENTS_HEADER, recipients,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::channels::{DELIVERIES_TOPIC, USER_HEADER, delivery_key};
use crate::chat::{MESSAGES_TOPIC, set_status};
use crate::consumer::{Consumed, Consumer};
use crate::error::ServiceError;
use crate::groups::model::Tp;
use crate::retention::now_ms;
use crate::service::Service;

/// The consumer group.
pub const GROUP: &str = "router";
/// How long to wait after an error before trying again.
const BACKOFF: Duration = Duration::from_millis(250);
/// Records per poll.
const MAX_RECORDS: u32 = 200;
/// How long a poll waits for records when nothing is left to do at the next tick.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Runs the router until `shutdown`, then leaves the group.
pub async fn run(service: Arc<Service>, shutdown: CancellationToken) {
    // Start when the first chat request has created `chat.messages` (a cluster that never
    // chats runs no chat partitions).
    if !super::topic_exists(&service, MESSAGES_TOPIC, &shutdown).await {
        return;
    }
    // A static member per node: a node restarting within the session timeout gets its
    // partitions back without moving them twice.
    let instance = format!("{GROUP}-node-{}", service.node_id());
    // Positions are committed once the SENT marks before them are in: a partition moved
    // before then is read again by its next owner (its deliveries are dropped as repeats,
    // its marks are no-ops), rather than counted as routed with its marks unwritten.
    let mut consumer = Consumer::new(
        service.clone(),
        GROUP,
        &[MESSAGES_TOPIC.to_string()],
        Some(instance),
    )
    .with_own_commits();
    tracing::info!("router started");
    let mut pending = Pending {
        marks: BTreeMap::new(),
        moved: false,
        proposed: None,
        last_tick: Instant::now(),
    };
    loop {
        let step = tokio::select! {
            step = step(&service, &mut consumer, &mut pending) => step,
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = step {
            tracing::debug!("router: {e}");
            tokio::select! {
                _ = tokio::time::sleep(BACKOFF) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
}

/// How often the SENT marks of the messages delivered meanwhile are proposed, and the
/// positions before them committed. Delivery waits for neither (each is a replicated write):
/// one mark entry per partition per tick instead of one per poll costs at most this long
/// before a message reads SENT, and the delivery queues drop what a restarted router delivers
/// again, so committing less often only means more repeats after a crash, never a lost or
/// doubled event.
const TICK: Duration = Duration::from_millis(200);

/// Work started but not waited for.
struct Pending {
    /// SENT marks of messages delivered since the last tick, by `chat.messages` partition.
    marks: BTreeMap<u32, Vec<ChatCommand>>,
    /// Whether anything was delivered since the last tick.
    moved: bool,
    /// The marks proposed at the last tick, and the positions after the messages they mark:
    /// committed at the next tick, once the marks are in (a message is not counted as
    /// routed before its SENT mark is).
    proposed: Option<(MarkTask, Vec<(Tp, u64)>)>,
    last_tick: Instant,
}

type MarkTask = tokio::task::JoinHandle<Result<(), ServiceError>>;

/// One poll: every event delivered, in order, and its SENT marks kept for the next tick.
/// At a tick, the last tick's marks are waited for (they had a whole tick to finish) and
/// the positions they cover committed, and the marks since are proposed.
async fn step(
    service: &Arc<Service>,
    consumer: &mut Consumer,
    pending: &mut Pending,
) -> Result<(), ServiceError> {
    // Wait no longer than the next tick while there is something to do at it.
    let idle = pending.marks.is_empty() && !pending.moved && pending.proposed.is_none();
    let wait = if idle {
        IDLE_POLL
    } else {
        TICK.saturating_sub(pending.last_tick.elapsed())
    };
    let records = consumer.poll(MAX_RECORDS, wait).await?;
    if !records.is_empty() {
        match deliver(service, &records).await {
            Ok(marks) => {
                for (p, mut cmds) in marks {
                    pending.marks.entry(p).or_default().append(&mut cmds);
                }
                pending.moved = true;
            }
            Err(e) => {
                // Read them again rather than skip them; the delivery queues drop what they have.
                rewind(consumer, pending);
                return Err(e);
            }
        }
    }
    if pending.last_tick.elapsed() < TICK {
        return Ok(());
    }
    pending.last_tick = Instant::now();
    if let Some((task, positions)) = pending.proposed.take() {
        let marked = match task.await {
            Ok(r) => r,
            Err(e) => Err(ServiceError::Internal(format!(
                "the SENT mark task failed: {e}"
            ))),
        };
        if let Err(e) = marked {
            // Deliver those messages again (the delivery queues drop them) to mark them again.
            rewind(consumer, pending);
            return Err(e);
        }
        consumer.commit_positions(positions).await?;
    }
    if std::mem::take(&mut pending.moved) {
        let marks = std::mem::take(&mut pending.marks);
        let task = tokio::spawn(mark_all(service.clone(), marks));
        pending.proposed = Some((task, consumer.positions()));
    }
    Ok(())
}

/// Goes back to the last committed positions; what was delivered since is delivered, and
/// marked, again.
fn rewind(consumer: &mut Consumer, pending: &mut Pending) {
    consumer.rewind();
    pending.marks.clear();
    pending.moved = false;
    pending.proposed = None;
}

/// Marks delivered messages SENT: one batch per `chat.messages` partition, all at once.
async fn mark_all(
    service: Arc<Service>,
    marks: BTreeMap<u32, Vec<ChatCommand>>,
) -> Result<(), ServiceError> {
    let writes = marks.into_iter().map(|(p, cmds)| {
        let service = &service;
        async move {
            match service.chat_write_to(p, ChatCommand::Many(cmds)).await? {
                ChatResponse::Many(_) => Ok(()),
                other => Err(ServiceError::Internal(format!(
                    "marking SENT answered {other:?}"
                ))),
            }
        }
    });
    futures::future::try_join_all(writes).await.map(|_| ())
}

/// Delivers a poll's messages to their external recipients: one batch per `chat.deliveries`
/// partition, all partitions at once. Returns the SENT marks of the messages with none, by
/// `chat.messages` partition.
async fn deliver(
    service: &Service,
    records: &[Consumed],
) -> Result<BTreeMap<u32, Vec<ChatCommand>>, ServiceError> {
    let mut outbound: BTreeMap<u32, Vec<ChatCommand>> = BTreeMap::new();
    let mut sent: BTreeMap<u32, Vec<ChatCommand>> = BTreeMap::new();
    let mut accepted_at: Vec<i64> = Vec::new();
    let now = now_ms();
    let external = External::load(service).await?;
    for c in records {
        let ev: Value = serde_json::from_slice(&c.record.value.bytes).unwrap_or(Value::Null);
        if ev["type"] != "message" {
            continue;
        }
        accepted_at.push(c.record.timestamp_ms);
        let targets = external.targets(service, &ev, recipients(&c.record))?;
        if targets.is_empty() {
            if let Some(cmd) = mark_sent(&ev, now) {
                sent.entry(c.partition).or_default().push(cmd);
            }
            continue;
        }
        let mut record = c.record.clone();
        record.headers.retain(|(k, _)| k != RECIPIENTS_HEADER);
        for (user, key) in targets {
            let p = external.partition(&key);
            let mut r = record.clone();
            r.headers.push((USER_HEADER.to_string(), user.into_bytes()));
            outbound.entry(p).or_default().push(ChatCommand::Deliver {
                source_partition: c.partition,
                source_offset: c.offset,
                users: vec![key],
                record: r,
            });
        }
    }
    let writes = outbound.into_iter().map(|(p, cmds)| async move {
        match service
            .deliver_write(DELIVERIES_TOPIC, p, ChatCommand::Many(cmds))
            .await?
        {
            ChatResponse::Many(_) => Ok(()),
            other => Err(ServiceError::Internal(format!(
                "{DELIVERIES_TOPIC} delivery answered {other:?}"
            ))),
        }
    });
    futures::future::try_join_all(writes).await?;
    // Read committed, so in the recipients' streams: the delivery latency (observed once the
    // poll's deliveries are written, so a poll that failed and is read again counts once).
    for t in accepted_at {
        let waited = (now - t).max(0) as f64 / 1000.0;
        service.metrics().chat_delivery.observe(waited);
    }
    Ok(sent)
}

/// PENDING → SENT once the message is in its recipients' streams (a no-op if it moved on).
fn mark_sent(ev: &Value, at: i64) -> Option<ChatCommand> {
    let message_id = ev["message_id"].as_str()?;
    let conversation_id = ev["conversation_id"].as_str()?;
    Some(set_status(
        message_id,
        conversation_id,
        MessageStatus::Sent,
        None,
        at,
    ))
}

/// What the router needs to find a message's external recipients: the channels (read once
/// per poll from this node's directory) and the partition count of `chat.deliveries` (made
/// when the first channel is).
struct External {
    channels: Vec<chat4all_raft::sm::directory::Channel>,
    partitions: u32,
}

impl External {
    async fn load(service: &Service) -> Result<External, ServiceError> {
        let channels = service.channels_local()?;
        let partitions = if channels.is_empty() {
            0
        } else {
            service.deliveries_topic().await?.partitions.len() as u32
        };
        Ok(External {
            channels,
            partitions,
        })
    }

    fn partition(&self, key: &str) -> u32 {
        crate::partitioner::partition_for_key(key.as_bytes(), self.partitions)
    }

    /// `(user, delivery key)` for each recipient other than the sender with an identity on
    /// a platform that has a channel (the platform's first channel by name). The message's
    /// `channel` narrows it: `INTERNAL` delivers to no platform, a platform name only there,
    /// `ALL` or none to every platform the recipient is on.
    fn targets(
        &self,
        service: &Service,
        ev: &Value,
        users: Vec<String>,
    ) -> Result<Vec<(String, String)>, ServiceError> {
        if self.channels.is_empty() {
            return Ok(Vec::new());
        }
        let sender = ev["sender_id"].as_str().unwrap_or_default();
        let only = match ev["channel"].as_str() {
            Some("INTERNAL") => return Ok(Vec::new()),
            Some(p) => chat4all_raft::sm::directory::Platform::parse(p),
            None => None,
        };
        let mut out = Vec::new();
        for u in users.into_iter().filter(|u| u != sender) {
            let Some(user) = service.directory_local(|d| d.user(&u))? else {
                continue;
            };
            for id in &user.identities {
                if only.is_some_and(|p| p != id.platform) {
                    continue;
                }
                let channel = self.channels.iter().find(|c| c.platform == id.platform);
                if let Some(c) = channel {
                    out.push((u.clone(), delivery_key(&c.name, &id.platform_user_id)));
                }
            }
        }
        Ok(out)
    }
}
