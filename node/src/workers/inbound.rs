//! The `inbound` consumer group: a member on every node turns the webhook events stored in
//! `chat.inbound` into chat: a contact's message becomes a RECEIVED message in the
//! conversation the channel has with that contact (the user and the conversation are made on
//! first contact), and a platform's delivery report moves our message's status.
//!
//! Every id it writes is derived from the platform's (the contact's user from the identity,
//! the conversation from channel and contact, the message from the platform message id), so
//! reading an event twice, after a crash or because the platform sent it twice, changes
//! nothing the second time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chat4all_connectors::Platform;
use chat4all_raft::sm::chat::{ChatCommand, ChatResponse, ConversationKind, MessageStatus};
use chat4all_raft::sm::directory::{Channel, DirectoryCommand, DirectoryResponse, User, UserType};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::rfc3339;
use crate::channels::{
    DELIVERIES_TOPIC, INBOUND_TOPIC, LAST_INBOUND_NOTE, REMOTE_NOTE_PREFIX,
    contact_conversation_id, contact_user_id, delivery_key, from_directory, inbound_message_id,
    to_directory,
};
use crate::chat::{
    MAX_CONTENT_CHARS, MessageContent, NewConversation, create_conversation, event, message_event,
    set_status,
};
use crate::consumer::Consumer;
use crate::error::ServiceError;
use crate::retention::now_ms;
use crate::service::Service;

/// The consumer group.
pub const GROUP: &str = "inbound";
const PAUSE: Duration = Duration::from_millis(250);

/// Runs the inbound worker until `shutdown`; it starts once `chat.inbound` exists (the first
/// channel makes it).
pub async fn run(service: Arc<Service>, shutdown: CancellationToken) {
    if !super::topic_exists(&service, INBOUND_TOPIC, &shutdown).await {
        return;
    }
    let instance = format!("{GROUP}-node-{}", service.node_id());
    let mut consumer = Consumer::new(
        service.clone(),
        GROUP,
        &[INBOUND_TOPIC.to_string()],
        Some(instance),
    );
    tracing::info!("inbound worker started");
    loop {
        let step = tokio::select! {
            s = step(&service, &mut consumer) => s,
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = step {
            tracing::debug!("inbound: {e}");
            consumer.rewind();
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
}

async fn step(service: &Arc<Service>, consumer: &mut Consumer) -> Result<(), ServiceError> {
    let records = consumer.poll(100, Duration::from_secs(1)).await?;
    if records.is_empty() {
        return Ok(());
    }
    let channels = service.channels_local()?;
    let mut batch = Batch::default();
    for r in &records {
        let ev: Value = serde_json::from_slice(&r.record.value.bytes).unwrap_or(Value::Null);
        let name = ev["channel"].as_str().unwrap_or_default();
        let Some(channel) = channels.iter().find(|c| c.name == name) else {
            tracing::warn!(
                channel = name,
                "inbound event of an unknown channel dropped"
            );
            continue;
        };
        match ev["type"].as_str() {
            Some("inbound_message") => message(service, channel, &ev, &mut batch).await?,
            Some("inbound_status") => status(service, channel, &ev, &mut batch).await?,
            _ => {}
        }
    }
    batch.write(service).await?;
    consumer.commit().await
}

/// The writes of one poll, one Raft entry per partition: notes in `chat.deliveries` first
/// (so that an answer to a stored message finds its contact's window open), then the chat
/// commands, in record order per `chat.messages` partition (a conversation's events keep
/// their order; a conversation opened and written to in one entry is applied in order).
#[derive(Default)]
struct Batch {
    notes: BTreeMap<u32, Vec<ChatCommand>>,
    chat: BTreeMap<u32, Vec<ChatCommand>>,
}

impl Batch {
    async fn write(self, service: &Service) -> Result<(), ServiceError> {
        let notes = self.notes.into_iter().map(|(p, cmds)| async move {
            match service
                .deliver_write(DELIVERIES_TOPIC, p, ChatCommand::Many(cmds))
                .await?
            {
                ChatResponse::Many(_) => Ok(()),
                other => Err(ServiceError::Internal(format!("notes answered {other:?}"))),
            }
        });
        futures::future::try_join_all(notes).await?;
        let chat = self.chat.into_iter().map(|(p, cmds)| async move {
            match service.chat_write_to(p, ChatCommand::Many(cmds)).await? {
                ChatResponse::Many(answers) => {
                    answers.into_iter().try_for_each(|a| check(service, a))
                }
                other => Err(ServiceError::Internal(format!(
                    "inbound batch answered {other:?}"
                ))),
            }
        });
        futures::future::try_join_all(chat).await.map(|_| ())
    }
}

/// Whether an answer in an inbound batch is one that reading the event again would not
/// change (then it is done), or a fault (then the poll is read again).
fn check(service: &Service, answer: ChatResponse) -> Result<(), ServiceError> {
    match answer {
        ChatResponse::Message { duplicate, state } => {
            if !duplicate {
                service.metrics().chat_messages_accepted.inc();
            }
            tracing::trace!(message_id = %state.message_id, "inbound stored");
            Ok(())
        }
        ChatResponse::Conversation { .. }
        | ChatResponse::ConversationExists(_)
        | ChatResponse::Status { .. }
        | ChatResponse::UnknownMessage
        | ChatResponse::UnknownConversation => Ok(()),
        // The contact was removed from the conversation by an agent (or a report names a
        // user no longer in it): there is nowhere for it to go, and reading it again will not
        // change that.
        ChatResponse::NotParticipant => {
            tracing::warn!("an inbound event from a user no longer in the conversation dropped");
            Ok(())
        }
        other => Err(ServiceError::Internal(format!("inbound: {other:?}"))),
    }
}

/// The user of a contact, made on first contact.
async fn contact(
    service: &Service,
    platform: Platform,
    contact_id: &str,
    name: Option<&str>,
) -> Result<User, ServiceError> {
    // A known contact is in this node's directory: no controller write.
    let local = service.directory_local(|d| d.resolve(to_directory(platform), contact_id))?;
    if let Some(u) = local {
        return Ok(u);
    }
    let user = User {
        id: contact_user_id(platform, contact_id),
        display_name: name
            .map(str::to_string)
            .unwrap_or_else(|| format!("{platform} {contact_id}")),
        user_type: UserType::Customer,
        email: None,
        password_hash: None,
        metadata_json: None,
        admin: false,
        created_at_ms: now_ms(),
        identities: Vec::new(),
    };
    let cmd = DirectoryCommand::EnsureContact {
        user,
        platform: to_directory(platform),
        platform_user_id: contact_id.to_string(),
    };
    match service.directory_write(cmd).await? {
        DirectoryResponse::User(u) => Ok(u),
        other => Err(ServiceError::Internal(format!(
            "contact {contact_id}: directory answered {other:?}"
        ))),
    }
}

/// A contact's message → a RECEIVED message in the channel's conversation with them.
async fn message(
    service: &Service,
    channel: &Channel,
    ev: &Value,
    batch: &mut Batch,
) -> Result<(), ServiceError> {
    let platform = from_directory(channel.platform);
    let contact_id = ev["contact_id"].as_str().unwrap_or_default();
    let user = contact(service, platform, contact_id, ev["contact_name"].as_str()).await?;
    let conversation_id = contact_conversation_id(&channel.name, contact_id);
    let at = now_ms();
    let mut participants = vec![user.id.clone()];
    participants.extend(channel.agents.iter().filter(|a| **a != user.id).cloned());
    let new = NewConversation {
        id: conversation_id.clone(),
        kind: ConversationKind::Group,
        title: Some(user.display_name.clone()),
        primary_channel: Some(platform.as_str().to_string()),
        created_by: user.id.clone(),
    };
    let p = service.chat_partition(&conversation_id).await?;
    let commands = batch.chat.entry(p).or_default();
    commands.push(create_conversation(new, &participants, at));
    let platform_message_id = ev["platform_message_id"].as_str().unwrap_or_default();
    let message_id = inbound_message_id(&channel.name, platform_message_id);
    let text = ev["text"]
        .as_str()
        .or(ev["attachment"].as_str())
        .unwrap_or_default();
    let content = MessageContent {
        content: text.chars().take(MAX_CONTENT_CHARS).collect(),
        content_type: "TEXT".into(),
        file_ids: Vec::new(),
        channel: Some(platform.as_str().to_string()),
        metadata: json!({
            "platform": platform.as_str(),
            "channel": channel.name,
            "platform_message_id": platform_message_id,
            "attachment": ev["attachment"],
            "reply_to": ev["reply_to"],
            "sent_at": ev["timestamp_ms"].as_i64().map(rfc3339),
        }),
    };
    let record = event(
        &conversation_id,
        at,
        &message_event(&message_id, &conversation_id, &user.id, at, &content),
    );
    commands.push(ChatCommand::Send {
        message_id,
        conversation_id,
        sender_id: user.id.clone(),
        at_ms: at,
        status: MessageStatus::Received,
        record,
    });
    // Where free text has a window (WhatsApp's 24 hours), it opens now: the delivery workers
    // look this up before each send.
    let restricts = service
        .channels()
        .connector(channel)
        .is_ok_and(|c| !c.free_text_allowed(None));
    if restricts {
        let sent_at = ev["timestamp_ms"].as_i64().unwrap_or(at);
        let key = delivery_key(&channel.name, contact_id);
        let p = service.deliveries_partition(&key).await?;
        batch.notes.entry(p).or_default().push(ChatCommand::Note {
            owner: key,
            name: LAST_INBOUND_NOTE.to_string(),
            value: sent_at.to_string(),
        });
    }
    Ok(())
}

/// A platform's report on a message we sent → a status move, reported by the contact's user.
/// The report names our message through the callback data we sent with it (WhatsApp);
/// reports without it (Instagram reads) cannot be matched yet and are dropped.
async fn status(
    service: &Service,
    channel: &Channel,
    ev: &Value,
    batch: &mut Batch,
) -> Result<(), ServiceError> {
    let contact_id = ev["contact_id"].as_str().unwrap_or_default();
    let remote_id = ev["remote_id"].as_str().unwrap_or_default();
    let cb = match ev["callback_data"].as_str() {
        Some(cb) => cb.to_string(),
        // Reported by the platform's id only (Instagram): what we noted when it was sent.
        None => {
            let key = delivery_key(&channel.name, contact_id);
            let name = format!("{REMOTE_NOTE_PREFIX}{remote_id}");
            match service.delivery_note_read(&key, &name).await? {
                Some(cb) => cb,
                None => {
                    tracing::debug!(channel = %channel.name, remote_id, "a report on a message we did not send dropped");
                    return Ok(());
                }
            }
        }
    };
    let mut parts = cb.splitn(3, '|');
    let (Some(conversation_id), Some(message_id), Some(user)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Ok(());
    };
    let status = match ev["status"].as_str() {
        Some("SENT") => MessageStatus::Sent,
        Some("DELIVERED") => MessageStatus::Delivered,
        Some("READ") => MessageStatus::Read,
        Some("FAILED") => MessageStatus::Failed,
        _ => return Ok(()),
    };
    let at = ev["timestamp_ms"].as_i64().unwrap_or_else(now_ms);
    let cmd = set_status(message_id, conversation_id, status, Some(user), at);
    let p = service.chat_partition(conversation_id).await?;
    batch.chat.entry(p).or_default().push(cmd);
    Ok(())
}
