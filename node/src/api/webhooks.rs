//! Platform webhooks (no token: the platform proves itself with a secret token or a body
//! signature): `GET` answers the subscription handshake, `POST` checks the signature over the
//! raw body before anything else, stores the parsed events in `chat.inbound` (a majority has
//! them when we answer 200) and leaves the rest to the `inbound` workers, so the platform gets
//! its answer in one replicated write.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chat4all_connectors::{Connector, InboundEvent, Platform, RemoteStatus};
use chat4all_raft::sm::directory::Channel;
use chat4all_storage::StoredRecord;
use serde_json::json;

use super::channels::channel_not_found;
use super::{ApiError, AppState};
use crate::channels::{INBOUND_TOPIC, delivery_key, from_directory};
use crate::chat::event;
use crate::error::ServiceError;
use crate::partitioner::partition_for_key;
use crate::retention::now_ms;
use crate::service::Service;

/// The channel named in the path, if it is of the path's platform, and its connector.
async fn channel(
    svc: &Service,
    platform: &str,
    name: &str,
) -> Result<(Channel, Arc<dyn Connector>), ApiError> {
    // This node's copy first: a webhook is answered fast, and a channel is rarely new.
    let found = match svc.channel_local(name)? {
        Some(c) => Some(c),
        None => svc.channel_synced(name).await?,
    };
    let Some(c) = found.filter(|c| Platform::parse(platform) == Some(from_directory(c.platform)))
    else {
        svc.metrics()
            .connector_webhooks
            .with_label_values(&["", "unknown_channel"])
            .inc();
        return Err(channel_not_found(name));
    };
    let connector = svc.channels().connector(&c).map_err(|e| {
        ApiError::from(ServiceError::Unavailable(format!(
            "channel `{name}` cannot be used on this node: {e}"
        )))
    })?;
    Ok((c, connector))
}

/// `GET /v1/webhooks/{platform}/{channel}?hub.mode=subscribe&hub.verify_token=&hub.challenge=`
/// → 200 with the challenge as the body, or 403.
pub async fn get_webhook(
    State(svc): State<AppState>,
    Path((platform, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (_, connector) = channel(&svc, &platform, &name).await?;
    let q: BTreeMap<String, String> = q.into_iter().collect();
    match connector.handshake(&q) {
        Ok(challenge) => Ok((StatusCode::OK, challenge).into_response()),
        Err(e) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            e.code(),
            e.to_string(),
        )),
    }
}

/// The record stored for one event, keyed by its contact.
fn inbound_record(channel: &Channel, e: &InboundEvent, at: i64) -> (String, StoredRecord) {
    let platform = from_directory(channel.platform).as_str();
    let (contact, v) = match e {
        InboundEvent::Message(m) => (
            m.contact_id.clone(),
            json!({
                "type": "inbound_message",
                "channel": channel.name,
                "platform": platform,
                "platform_message_id": m.platform_message_id,
                "contact_id": m.contact_id,
                "contact_name": m.contact_name,
                "text": m.text,
                "attachment": m.attachment,
                "timestamp_ms": m.timestamp_ms,
                "reply_to": m.reply_to,
            }),
        ),
        InboundEvent::Status(s) => (
            s.contact_id.clone(),
            json!({
                "type": "inbound_status",
                "channel": channel.name,
                "platform": platform,
                "remote_id": s.remote_id,
                "contact_id": s.contact_id,
                "status": match s.status {
                    RemoteStatus::Sent => "SENT",
                    RemoteStatus::Delivered => "DELIVERED",
                    RemoteStatus::Read => "READ",
                    RemoteStatus::Failed => "FAILED",
                },
                "callback_data": s.callback_data,
                "timestamp_ms": s.timestamp_ms,
                "error": s.error,
            }),
        ),
    };
    let key = delivery_key(&channel.name, &contact);
    (key.clone(), event(&key, at, &v))
}

/// `POST /v1/webhooks/{platform}/{channel}`: 401 for a bad signature or secret token (nothing
/// is stored), 400 for a body that is not the platform's JSON, 200 once the events are stored.
pub async fn post_webhook(
    State(svc): State<AppState>,
    Path((platform, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let (c, connector) = channel(&svc, &platform, &name).await?;
    let count = |outcome: &str| {
        svc.metrics()
            .connector_webhooks
            .with_label_values(&[&c.name, outcome])
            .inc()
    };
    if let Err(e) = connector.authenticate_webhook(&headers, &body) {
        count("bad_signature");
        tracing::warn!(channel = %c.name, "webhook refused: {e}");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            e.code(),
            e.to_string(),
        ));
    }
    let events = connector.parse_webhook(&body).map_err(|e| {
        count("bad_payload");
        ApiError::bad_request(e.code(), e.to_string())
    })?;
    if !events.is_empty() {
        let partitions = svc.inbound_topic().await?.partitions.len() as u32;
        let at = now_ms();
        let mut by_partition: BTreeMap<u32, Vec<StoredRecord>> = BTreeMap::new();
        for e in &events {
            let (key, record) = inbound_record(&c, e, at);
            let p = partition_for_key(key.as_bytes(), partitions);
            by_partition.entry(p).or_default().push(record);
        }
        let writes = by_partition
            .into_iter()
            .map(|(p, records)| svc.append(INBOUND_TOPIC, p, records));
        futures::future::try_join_all(writes).await?;
    }
    count("accepted");
    Ok(axum::Json(json!({"ok": true, "events": events.len()})).into_response())
}
