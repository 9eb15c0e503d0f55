//! Delivery to the platforms: one consumer group per channel (`deliver.<channel>`), a member
//! on every node, reading `chat.deliveries`. A channel's member sends each of its records
//! through the channel's connector, in order per contact, with retries (exponential backoff
//! with jitter, honouring the platform's `retry_after`), a circuit breaker and a send rate
//! limit of its own, so a platform that is down or slow holds up only its channels.
//!
//! Outcomes: accepted → the message is SENT (reported by the recipient's user); a definite
//! rejection or the last failed attempt → a `chat.deliveries.dlq` entry and FAILED; an
//! answer that leaves the outcome unknown (a timeout after the request left, a 5xx to a send)
//! → a dead letter marked `outcome_unknown` and no resend: the platforms take no idempotency
//! key, so only a person (or a WhatsApp status webhook) can tell whether it arrived.
//!
//! A record's position is committed right after its outcome is stored, so a node that dies
//! repeats at most the record it was sending (at least once, see the README per platform).
//! Nothing else is committed for it: a partition revoked in a rebalance is released with its
//! last commit, and given up at once, even the record waiting to retry, so its next owner
//! sends each of its records once and in order.

mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat4all_connectors::ConnectorError;
use chat4all_raft::sm::chat::MessageStatus;
use chat4all_raft::sm::directory::Channel;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::rfc3339;
use crate::channels::retry::{CircuitBreaker, TokenBucket};
use crate::channels::{
    DELIVERIES_TOPIC, DLQ_TOPIC, PARTS_SENT_HEADER, REMOTE_NOTE_PREFIX, USER_HEADER,
    from_directory, split_delivery_key,
};
use crate::chat::{event, set_status};
use crate::consumer::{Consumed, Consumer};
use crate::error::ServiceError;
use crate::groups::model::Tp;
use crate::partitioner::partition_for_key;
use crate::retention::now_ms;
use crate::service::Service;

/// Consumer groups are `deliver.<channel>`.
pub const GROUP_PREFIX: &str = "deliver.";
/// How often the supervisor looks for channels made or removed.
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// The wait after a failed poll, commit or write before trying again.
pub(super) const PAUSE: Duration = Duration::from_millis(250);

/// Runs a delivery worker for every channel until `shutdown`: started when a channel
/// appears in this node's directory, stopped when it is removed.
pub async fn run(service: Arc<Service>, shutdown: CancellationToken) {
    let mut running: HashMap<String, (i64, CancellationToken, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut tick = tokio::time::interval(SCAN_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let channels = match service.channels_local() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("delivery: {e}");
                continue;
            }
        };
        running.retain(|name, (created, stop, _)| {
            let keep = channels
                .iter()
                .any(|c| &c.name == name && c.created_at_ms == *created);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for c in channels {
            if running.contains_key(&c.name) {
                continue;
            }
            let stop = shutdown.child_token();
            let name = c.name.clone();
            let created = c.created_at_ms;
            let worker = ChannelWorker::new(service.clone(), c, stop.clone());
            running.insert(name, (created, stop, tokio::spawn(worker.run())));
        }
    }
    for (_, (_, stop, handle)) in running {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), handle).await;
    }
}

/// What became of one delivery.
enum Outcome {
    Sent(Vec<String>),
    Failed {
        error: ConnectorError,
        attempts: u32,
        parts_sent: usize,
    },
}

/// One channel's member of its delivery group on this node.
struct ChannelWorker {
    service: Arc<Service>,
    channel: Channel,
    stop: CancellationToken,
    breaker: CircuitBreaker,
    bucket: TokenBucket,
    /// The partition of the record being handled.
    in_hand: Option<Tp>,
}

impl ChannelWorker {
    fn new(service: Arc<Service>, channel: Channel, stop: CancellationToken) -> ChannelWorker {
        let cfg = service.channels().config();
        let breaker = CircuitBreaker::new(
            cfg.breaker_failures,
            Duration::from_millis(cfg.breaker_open_ms),
        );
        let rate = cfg.rate_per_s(from_directory(channel.platform));
        let bucket = TokenBucket::new(rate, Instant::now());
        ChannelWorker {
            service,
            channel,
            stop,
            breaker,
            bucket,
            in_hand: None,
        }
    }

    fn count(&self, outcome: &str) {
        self.service
            .metrics()
            .connector_deliveries
            .with_label_values(&[&self.channel.name, outcome])
            .inc();
    }

    async fn run(mut self) {
        while let Err(e) = self.service.deliveries_topic().await {
            tracing::debug!(channel = %self.channel.name, "{DELIVERIES_TOPIC} not ready: {e}");
            if self.pause(PAUSE).await.is_err() {
                return;
            }
        }
        let group = format!("{GROUP_PREFIX}{}", self.channel.name);
        let instance = format!("{group}-node-{}", self.service.node_id());
        let mut consumer = Consumer::new(
            self.service.clone(),
            &group,
            &[DELIVERIES_TOPIC.to_string()],
            Some(instance),
        )
        .with_own_commits();
        tracing::info!(channel = %self.channel.name, "delivery worker started");
        while !self.stop.is_cancelled() {
            if let Err(e) = self.step(&mut consumer).await {
                tracing::debug!(channel = %self.channel.name, "delivery: {e}");
                consumer.rewind();
                if self.pause(PAUSE).await.is_err() {
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
    }

    /// Sleeps `d`, or fails at once when the worker is stopped.
    async fn pause(&self, d: Duration) -> Result<(), ServiceError> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.stop.cancelled() => Err(ServiceError::Unavailable("shutting down".into())),
        }
    }

    /// Waits `d` while keeping the group membership alive (a platform's `retry_after` can be
    /// longer than the session timeout), then fails if the partition of the record in hand
    /// was revoked meanwhile (or the member fenced): the record is its next owner's to send,
    /// and sending it here too would send it twice, and out of order.
    async fn wait(&self, consumer: &mut Consumer, d: Duration) -> Result<(), ServiceError> {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.pause(left.min(Duration::from_secs(1))).await?;
            if let Err(e) = consumer.heartbeat().await {
                tracing::debug!(channel = %self.channel.name, "heartbeat: {e}");
            }
            if let Some(tp) = self.in_hand.as_ref().filter(|tp| !consumer.owns(tp)) {
                return Err(ServiceError::MemberFenced(format!(
                    "{}/{} was revoked while its record waited",
                    tp.0, tp.1
                )));
            }
        }
    }

    async fn step(&mut self, consumer: &mut Consumer) -> Result<(), ServiceError> {
        let records = consumer.poll(50, Duration::from_secs(1)).await?;
        let prefix = format!("{}/", self.channel.name);
        for r in &records {
            let key = r
                .record
                .key
                .as_ref()
                .map(|k| k.bytes.as_slice())
                .unwrap_or_default();
            if !key.starts_with(prefix.as_bytes()) {
                continue;
            }
            // Sends can take a while (the rate limit, retries, a slow platform): a session
            // that ran out would give the partitions to another member, who would send again
            // what this one sends.
            if let Err(e) = consumer.heartbeat_if_due().await {
                tracing::debug!(channel = %self.channel.name, "heartbeat: {e}");
            }
            // A partition revoked since the poll: its next owner reads it from the last
            // commit, and this member must not send what that one sends.
            let tp = r.tp();
            if !consumer.owns(&tp) {
                continue;
            }
            self.in_hand = Some(tp);
            self.handle(consumer, r).await?;
            // The send is done: a failed commit must not make this member send it again
            // (a rewind would). Only a fenced member gives up; the new owner repeats it.
            loop {
                match consumer
                    .commit_at(&r.topic, r.partition, r.offset + 1)
                    .await
                {
                    Ok(()) => break,
                    Err(e @ ServiceError::MemberFenced(_)) => return Err(e),
                    Err(e) => {
                        tracing::debug!(channel = %self.channel.name, "commit: {e}");
                        self.pause(PAUSE).await?;
                    }
                }
            }
        }
        // Other channels' records: one commit for the whole poll.
        consumer.commit().await
    }

    /// Sends one delivery and stores its outcome. Errors only when the outcome could not be
    /// stored before the worker stopped (the record is then read again).
    async fn handle(&mut self, consumer: &mut Consumer, r: &Consumed) -> Result<(), ServiceError> {
        let key = r
            .record
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(&k.bytes).into_owned());
        let contact = key
            .as_deref()
            .and_then(split_delivery_key)
            .map(|(_, c)| c.to_string())
            .unwrap_or_default();
        let header = |name: &str| {
            r.record
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let user = header(USER_HEADER).unwrap_or_default();
        let skip: usize = header(PARTS_SENT_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ev: Value = serde_json::from_slice(&r.record.value.bytes).unwrap_or(Value::Null);
        let message_id = ev["message_id"].as_str().unwrap_or_default().to_string();
        let conversation_id = ev["conversation_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let text = ev["content"].as_str().unwrap_or_default();
        let span =
            tracing::info_span!("deliver", channel = %self.channel.name, %message_id, %contact);
        let _enter = span.enter();
        let outcome = match self.service.channels().connector(&self.channel) {
            Ok(connector) => match self
                .parts(consumer, connector.as_ref(), &contact, text)
                .await?
            {
                Ok(parts) => {
                    // Our id for the delivery: WhatsApp echoes it in status webhooks.
                    let callback = format!("{conversation_id}|{message_id}|{user}");
                    let c = connector.as_ref();
                    self.send(consumer, c, &contact, &parts, &callback, skip)
                        .await?
                }
                Err(error) => Outcome::Failed {
                    error,
                    attempts: 0,
                    parts_sent: skip,
                },
            },
            Err(error) => Outcome::Failed {
                error,
                attempts: 0,
                parts_sent: skip,
            },
        };
        let at = now_ms();
        match outcome {
            Outcome::Sent(remote_ids) => {
                tracing::debug!(?remote_ids, "sent");
                self.count("sent");
                if self.remembers_remote_ids() {
                    let key = key.unwrap_or_default();
                    let callback = format!("{conversation_id}|{message_id}|{user}");
                    for id in &remote_ids {
                        let name = format!("{REMOTE_NOTE_PREFIX}{id}");
                        self.persist(|s| {
                            let (key, name, cb) = (key.clone(), name.clone(), callback.clone());
                            async move { s.delivery_note(&key, &name, cb).await }
                        })
                        .await?;
                    }
                }
                self.mark(
                    &message_id,
                    &conversation_id,
                    MessageStatus::Sent,
                    &user,
                    at,
                )
                .await
            }
            Outcome::Failed {
                error,
                attempts,
                parts_sent,
            } => {
                tracing::warn!(attempts, "delivery failed: {error}");
                let unknown = error.is_indeterminate();
                self.count(if unknown { "unknown" } else { "failed" });
                let entry = json!({
                    "type": "dead_letter",
                    "channel": self.channel.name,
                    "platform": from_directory(self.channel.platform).as_str(),
                    "contact_id": contact,
                    "user_id": user,
                    "message_id": message_id,
                    "conversation_id": conversation_id,
                    "attempts": attempts,
                    "parts_sent": parts_sent,
                    "error_code": error.code(),
                    "error": error.to_string(),
                    "outcome_unknown": unknown,
                    "failed_at": rfc3339(at),
                    "source": {"partition": r.partition, "offset": r.offset},
                    "event": ev,
                });
                self.dead_letter(entry, at).await?;
                self.count("dead_lettered");
                if unknown {
                    return Ok(());
                }
                self.mark(
                    &message_id,
                    &conversation_id,
                    MessageStatus::Failed,
                    &user,
                    at,
                )
                .await
            }
        }
    }

    /// Moves the message's status, reported by the recipient's user, until it is stored.
    async fn mark(
        &self,
        message_id: &str,
        conversation_id: &str,
        status: MessageStatus,
        user: &str,
        at: i64,
    ) -> Result<(), ServiceError> {
        let cmd = set_status(message_id, conversation_id, status, Some(user), at);
        self.persist(|s| {
            let cmd = cmd.clone();
            let c = conversation_id.to_string();
            async move { s.chat_write(&c, cmd).await.map(|_| ()) }
        })
        .await
    }

    /// Appends a dead letter to `chat.deliveries.dlq` (key: the channel).
    async fn dead_letter(&self, entry: Value, at: i64) -> Result<(), ServiceError> {
        let name = self.channel.name.clone();
        self.persist(|s| {
            let (entry, name) = (entry.clone(), name.clone());
            async move {
                let partitions = s.dlq_topic().await?.partitions.len() as u32;
                let p = partition_for_key(name.as_bytes(), partitions);
                s.append(DLQ_TOPIC, p, vec![event(&name, at, &entry)])
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// Runs `write` until it succeeds or the worker stops. Status moves are idempotent; a
    /// repeated dead letter is listed twice (and redriving both would send twice), which
    /// only an unknown-outcome append can cause.
    async fn persist<F, Fut>(&self, write: F) -> Result<(), ServiceError>
    where
        F: Fn(Arc<Service>) -> Fut,
        Fut: std::future::Future<Output = Result<(), ServiceError>>,
    {
        loop {
            match write(self.service.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(channel = %self.channel.name, "storing an outcome: {e}");
                    self.pause(PAUSE).await?;
                }
            }
        }
    }
}
