//! `GET /v1/events`: the caller's inbox as Server-Sent Events. Each event's `id` is its
//! sequence number in the caller's inbox (1, 2, 3, ...); a client that reconnects, to any
//! node, with `Last-Event-ID` (or `?cursor=`) gets every event after it, once, in order.
//! Without a cursor the stream starts with the events that arrive after it opened.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use chat4all_storage::StoredRecord;
use futures::Stream;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::service::Service;

/// Events read per inbox request.
const BATCH: usize = 100;
/// How long one inbox read waits for an event before asking again (the stream stays open).
const POLL_MS: u64 = 10_000;

struct Cursor {
    svc: Arc<Service>,
    user: String,
    after: u64,
    pending: VecDeque<(u64, StoredRecord)>,
}

fn sse_event(seq: u64, record: &StoredRecord) -> Event {
    let mut data: Value = serde_json::from_slice(&record.value.bytes).unwrap_or(Value::Null);
    let kind = data["type"].as_str().unwrap_or("event").to_string();
    if let Value::Object(m) = &mut data {
        m.insert("cursor".into(), Value::from(seq));
    }
    Event::default()
        .id(seq.to_string())
        .event(kind)
        .data(data.to_string())
}

pub async fn get_events(
    State(svc): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require("messages:read")?;
    let given = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("cursor").cloned())
        .filter(|c| !c.is_empty());
    let cursor = match given {
        None => None,
        Some(c) => Some(c.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "INVALID_CURSOR",
                "Last-Event-ID / `cursor` must be an event id this stream sent",
            )
        })?),
    };
    // The first read answers now, so an unreachable inbox is an HTTP error, not an empty
    // stream; it also fixes where a stream without a cursor starts.
    let (after, first) = svc.inbox_read(&caller.user_id, cursor, BATCH, 0).await?;
    let state = Cursor {
        svc: svc.clone(),
        user: caller.user_id,
        after,
        pending: first.into(),
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some((seq, record)) = st.pending.pop_front() {
                st.after = seq;
                return Some((Ok(sse_event(seq, &record)), st));
            }
            match st
                .svc
                .inbox_read(&st.user, Some(st.after), BATCH, POLL_MS)
                .await
            {
                Ok((_, events)) => st.pending.extend(events),
                Err(e) => {
                    // End the stream: the client reconnects with its Last-Event-ID (to this
                    // node or another) and loses nothing.
                    tracing::debug!(user = %st.user, "event stream ends: {e}");
                    return None;
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
