//! `GET /v1/events`: the caller's inbox as Server-Sent Events. Each event's `id` is its
//! sequence number in the caller's inbox (1, 2, 3, ...); a client that reconnects, to any
//! node, with `Last-Event-ID` (or `?cursor=`) gets every event after it, once, in order.
//! Without a cursor the stream starts with the events that arrive after it opened.
//! `GET /v1/ws` is the same stream over a WebSocket: one text frame per event,
//! `{"id","event","data"}`, resumed with `?cursor=`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use chat4all_storage::StoredRecord;
use futures::Stream;
use serde_json::{Value, json};

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

/// Where a stream starts: `Last-Event-ID` or `?cursor=`, checked; then the first read, which
/// answers at once, so an unreachable inbox is an HTTP error rather than an empty stream.
async fn open(
    svc: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Cursor, ApiError> {
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
    let (after, first) = svc.inbox_read(&caller.user_id, cursor, BATCH, 0).await?;
    Ok(Cursor {
        svc: svc.clone(),
        user: caller.user_id.clone(),
        after,
        pending: first.into(),
    })
}

impl Cursor {
    /// The next event, waiting for one; `None` when the inbox cannot be read (the client
    /// reconnects from its last event id and loses nothing).
    async fn next(&mut self) -> Option<(u64, StoredRecord)> {
        loop {
            if let Some((seq, record)) = self.pending.pop_front() {
                self.after = seq;
                return Some((seq, record));
            }
            match self
                .svc
                .inbox_read(&self.user, Some(self.after), BATCH, POLL_MS)
                .await
            {
                Ok((_, events)) => self.pending.extend(events),
                Err(e) => {
                    tracing::debug!(user = %self.user, "event stream ends: {e}");
                    return None;
                }
            }
        }
    }
}

pub async fn get_events(
    State(svc): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let state = open(&svc, &caller, &headers, &q).await?;
    let stream = futures::stream::unfold(state, |mut st| async move {
        let (seq, record) = st.next().await?;
        Some((Ok(sse_event(seq, &record)), st))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /v1/ws`: the stream over a WebSocket.
pub async fn get_ws(
    State(svc): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let cursor = open(&svc, &caller, &headers, &q).await?;
    Ok(upgrade.on_upgrade(move |socket| pump(socket, cursor)))
}

/// Sends events until the client goes or the inbox cannot be read; answers pings.
async fn pump(mut socket: WebSocket, mut cursor: Cursor) {
    loop {
        tokio::select! {
            next = cursor.next() => {
                let Some((seq, record)) = next else { break };
                let data: Value = serde_json::from_slice(&record.value.bytes).unwrap_or(Value::Null);
                let frame = json!({"id": seq, "event": data["type"], "data": data});
                if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Ping(p))) => {
                    if socket.send(Message::Pong(p)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
