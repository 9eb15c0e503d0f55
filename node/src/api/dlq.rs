//! `/v1/dlq` (admin only): deliveries whose last attempt failed. An entry's id is
//! `<partition>-<offset>` in `chat.deliveries.dlq`; redriving appends a `redriven` marker
//! there and puts the delivery back in `chat.deliveries`, with the marker's offset as its
//! source, so one redrive is delivered once however often its write is repeated.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat4all_raft::sm::chat::{ChatCommand, ChatResponse};
use serde_json::{Value, json};

use super::channels::channel_not_found;
use super::{ApiError, AppState, query_limit, rfc3339};
use crate::auth::{ADMIN, Caller};
use crate::channels::{
    DELIVERIES_TOPIC, DLQ_TOPIC, PARTS_SENT_HEADER, REDRIVE_SOURCE, USER_HEADER, delivery_key,
};
use crate::chat::event;
use crate::error::ServiceError;
use crate::partitioner::partition_for_key;
use crate::retention::now_ms;
use crate::service::{FetchRequest, Service};

/// A dead letter and whether it was redriven.
struct Entry {
    id: String,
    value: Value,
    redriven_at: Option<String>,
}

/// Every entry of one DLQ partition, oldest first, with redrive markers applied.
async fn read_partition(svc: &Service, partition: u32) -> Result<Vec<Entry>, ServiceError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut offset = None;
    loop {
        let req = FetchRequest {
            topic: DLQ_TOPIC.to_string(),
            partition,
            offset,
            max_records: 1000,
            max_wait_ms: 0,
        };
        let got = svc.fetch(req, 0).await?;
        let Some((last, _)) = got.records.last() else {
            break;
        };
        offset = Some(last + 1);
        for (o, r) in &got.records {
            let v: Value = serde_json::from_slice(&r.value.bytes).unwrap_or(Value::Null);
            match v["type"].as_str() {
                Some("dead_letter") => {
                    let id = format!("{partition}-{o}");
                    index.insert(id.clone(), entries.len());
                    entries.push(Entry {
                        id,
                        value: v,
                        redriven_at: None,
                    });
                }
                Some("redriven") => {
                    if let Some(i) = v["id"].as_str().and_then(|id| index.get(id)) {
                        entries[*i].redriven_at = v["at"].as_str().map(str::to_string);
                    }
                }
                _ => {}
            }
        }
        if offset >= Some(got.high_watermark) {
            break;
        }
    }
    Ok(entries)
}

fn entry_json(e: &Entry) -> Value {
    let v = &e.value;
    json!({
        "id": e.id,
        "channel": v["channel"],
        "platform": v["platform"],
        "contact_id": v["contact_id"],
        "user_id": v["user_id"],
        "message_id": v["message_id"],
        "conversation_id": v["conversation_id"],
        "content": v["event"]["content"],
        "attempts": v["attempts"],
        "parts_sent": v["parts_sent"],
        "error_code": v["error_code"],
        "last_error": v["error"],
        "outcome_unknown": v["outcome_unknown"],
        "failed_at": v["failed_at"],
        "redriven_at": e.redriven_at,
    })
}

/// `GET /v1/dlq?channel=&limit=&include_redriven=`: dead letters, oldest first; redriven
/// ones only when asked for.
pub async fn list_dlq(
    State(svc): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(ADMIN)?;
    let limit = query_limit(&q, 100, 1000)?;
    let channel = q.get("channel").filter(|c| !c.is_empty());
    let all = q.get("include_redriven").is_some_and(|v| v == "true");
    let topic = svc.dlq_topic().await?;
    let partitions: Vec<u32> = match channel {
        // A channel's dead letters are all in the partition its name hashes to.
        Some(c) => vec![partition_for_key(
            c.as_bytes(),
            topic.partitions.len() as u32,
        )],
        None => (0..topic.partitions.len() as u32).collect(),
    };
    let mut out = Vec::new();
    for p in partitions {
        for e in read_partition(&svc, p).await? {
            if channel.is_some_and(|c| e.value["channel"] != c.as_str()) {
                continue;
            }
            if e.redriven_at.is_some() && !all {
                continue;
            }
            out.push(entry_json(&e));
        }
    }
    out.truncate(limit);
    Ok(axum::Json(json!({ "entries": out })).into_response())
}

fn entry_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "DLQ_ENTRY_NOT_FOUND",
        format!("no dead letter with id `{id}`"),
    )
}

/// `POST /v1/dlq/{id}/redrive[?force=true]` → 202: the delivery is queued again (after the
/// parts of its text that went out). An entry redriven before answers 409 unless forced.
pub async fn post_redrive(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(ADMIN)?;
    let force = q.get("force").is_some_and(|v| v == "true");
    let Some((partition, _)) = id
        .split_once('-')
        .and_then(|(p, o)| Some((p.parse::<u32>().ok()?, o.parse::<u64>().ok()?)))
    else {
        return Err(entry_not_found(&id));
    };
    let topic = svc.dlq_topic().await?;
    if partition as usize >= topic.partitions.len() {
        return Err(entry_not_found(&id));
    }
    let entries = read_partition(&svc, partition).await?;
    let Some(entry) = entries.into_iter().find(|e| e.id == id) else {
        return Err(entry_not_found(&id));
    };
    if let Some(at) = &entry.redriven_at
        && !force
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ALREADY_REDRIVEN",
            format!("dead letter `{id}` was redriven at {at}; add ?force=true to send it again"),
        ));
    }
    let v = &entry.value;
    let channel = v["channel"].as_str().unwrap_or_default().to_string();
    if svc.channel_synced(&channel).await?.is_none() {
        return Err(channel_not_found(&channel));
    }
    let at = now_ms();
    let marker = json!({"type": "redriven", "id": id, "at": rfc3339(at), "by": caller.user_id});
    let marker_offset = svc
        .append(DLQ_TOPIC, partition, vec![event(&channel, at, &marker)])
        .await?;
    let key = delivery_key(&channel, v["contact_id"].as_str().unwrap_or_default());
    let conversation = v["conversation_id"].as_str().unwrap_or_default();
    let mut record = event(conversation, at, &v["event"]);
    let user = v["user_id"].as_str().unwrap_or_default();
    record
        .headers
        .push((USER_HEADER.to_string(), user.as_bytes().to_vec()));
    let parts_sent = v["parts_sent"].as_u64().unwrap_or(0);
    record.headers.push((
        PARTS_SENT_HEADER.to_string(),
        parts_sent.to_string().into_bytes(),
    ));
    let deliveries = svc.deliveries_topic().await?.partitions.len() as u32;
    let cmd = ChatCommand::Deliver {
        source_partition: REDRIVE_SOURCE + partition,
        source_offset: marker_offset,
        users: vec![key.clone()],
        record,
    };
    let p = partition_for_key(key.as_bytes(), deliveries);
    match svc.deliver_write(DELIVERIES_TOPIC, p, cmd).await? {
        ChatResponse::Delivered(_) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"id": id, "redriven_at": rfc3339(at), "channel": channel})),
        )
            .into_response()),
        other => Err(ApiError::from(ServiceError::Internal(format!(
            "redrive answered {other:?}"
        )))),
    }
}
