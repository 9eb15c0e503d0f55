//! The `inbound` consumer group: a member on every node turns the webhook events stored in
//! `chat.inbound` into chat: a contact's message becomes a RECEIVED message in the
//! conversation the channel has with that contact (the user and the conversation are made on
//! first contact), and a platform's delivery report moves our message's status.
//!
//! Every id it writes is derived from the platform's (the contact's user from the identity,
//! the conversation from channel and contact, the message from the platform message id), so
//! reading an event twice, after a crash or because the platform sent it twice, changes
//! nothing the second time.

use std::sync::Arc;
use std::time::Duration;

use chat4all_connectors::Platform;
use chat4all_raft::sm::chat::{ChatCommand, ChatResponse, ConversationKind, MessageStatus};
use chat4all_raft::sm::directory::{Channel, DirectoryCommand, DirectoryResponse, User, UserType};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::rfc3339;
use crate::channels::{
    INBOUND_TOPIC, LAST_INBOUND_NOTE, REMOTE_NOTE_PREFIX, contact_conversation_id, contact_user_id,
    delivery_key, from_directory, inbound_message_id, to_directory,
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
            Some("inbound_message") => message(service, channel, &ev).await?,
            Some("inbound_status") => status(service, channel, &ev).await?,
            _ => {}
        }
    }
    consumer.commit().await
}

/// The user of a contact, made on first contact.
async fn contact(
    service: &Service,
    platform: Platform,
    contact_id: &str,
    name: Option<&str>,
) -> Result<User, ServiceError> {
    // A known contact is in this node's directory: no controller write.
    let local = service
        .controller()
        .directory()
        .resolve(to_directory(platform), contact_id)
        .map_err(|e| ServiceError::Internal(format!("directory read: {e}")))?;
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
async fn message(service: &Service, channel: &Channel, ev: &Value) -> Result<(), ServiceError> {
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
    let cmd = create_conversation(new, &participants, at);
    match service.chat_write(&conversation_id, cmd).await? {
        ChatResponse::Conversation { .. } | ChatResponse::ConversationExists(_) => {}
        other => {
            return Err(ServiceError::Internal(format!(
                "opening {conversation_id}: {other:?}"
            )));
        }
    }
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
    let cmd = ChatCommand::Send {
        message_id: message_id.clone(),
        conversation_id: conversation_id.clone(),
        sender_id: user.id.clone(),
        at_ms: at,
        status: MessageStatus::Received,
        record,
    };
    // Where free text has a window (WhatsApp's 24 hours), it opens now: the delivery workers
    // look this up before each send. Noted before the message is stored, so an answer to
    // the message always finds it.
    let restricts = service
        .channels()
        .connector(channel)
        .is_ok_and(|c| !c.free_text_allowed(None));
    if restricts {
        let sent_at = ev["timestamp_ms"].as_i64().unwrap_or(at);
        let key = delivery_key(&channel.name, contact_id);
        service
            .delivery_note(&key, LAST_INBOUND_NOTE, sent_at.to_string())
            .await?;
    }
    match service.chat_write(&conversation_id, cmd).await? {
        ChatResponse::Message { duplicate, .. } => {
            if !duplicate {
                service.metrics().chat_messages_accepted.inc();
            }
            Ok(())
        }
        // The contact was removed from the conversation by an agent: the message has nowhere
        // to go, and reading it again will not change that.
        ChatResponse::NotParticipant => {
            tracing::warn!(%conversation_id, %message_id, "inbound message from a removed contact dropped");
            Ok(())
        }
        other => Err(ServiceError::Internal(format!(
            "storing inbound {message_id}: {other:?}"
        ))),
    }
}

/// A platform's report on a message we sent → a status move, reported by the contact's user.
/// The report names our message through the callback data we sent with it (WhatsApp);
/// reports without it (Instagram reads) cannot be matched yet and are dropped.
async fn status(service: &Service, channel: &Channel, ev: &Value) -> Result<(), ServiceError> {
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
    match service.chat_write(conversation_id, cmd).await? {
        ChatResponse::Status { .. }
        | ChatResponse::UnknownMessage
        | ChatResponse::UnknownConversation
        | ChatResponse::NotParticipant => Ok(()),
        other => Err(ServiceError::Internal(format!(
            "status of {message_id}: {other:?}"
        ))),
    }
}
