//! `GET /v1/events`: the caller's events as Server-Sent Events: new messages, status changes
//! and conversation changes of the conversations they are in. Each event's `id` is the
//! stream's cursor after it: the next offset to read in each `chat.messages` partition,
//! joined by `-` (such as `12-0-7`). A client that reconnects, to any node, with
//! `Last-Event-ID` (or `?cursor=`) gets every event after it, once, each conversation's in
//! order; `cursor=0` starts from the beginning, and no cursor with the events that arrive
//! after the stream opened.
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

/// Events read per partition per stream read.
const BATCH: usize = 100;
/// How long one stream read waits for an event before asking again (the stream stays open).
const POLL_MS: u64 = 10_000;

struct Cursor {
    svc: Arc<Service>,
    user: String,
    /// The next offset to read in each `chat.messages` partition.
    from: Vec<u64>,
    /// Events read and not yet sent: `(partition, offset, record)`.
    pending: VecDeque<(u32, u64, StoredRecord)>,
}

/// The cursor's text form: the positions joined by `-`.
fn cursor_text(from: &[u64]) -> String {
    let parts: Vec<String> = from.iter().map(u64::to_string).collect();
    parts.join("-")
}

fn parse_cursor(text: &str) -> Option<Vec<u64>> {
    text.trim()
        .split('-')
        .map(|p| p.parse::<u64>().ok())
        .collect()
}

/// An event's JSON as sent: the stored event with the stream's `cursor` after it.
fn event_data(cursor: &str, record: &StoredRecord) -> Value {
    let mut data: Value = serde_json::from_slice(&record.value.bytes).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut data {
        m.insert("cursor".into(), Value::from(cursor));
    }
    data
}

fn sse_event(cursor: &str, record: &StoredRecord) -> Event {
    let data = event_data(cursor, record);
    let kind = data["type"].as_str().unwrap_or("event").to_string();
    Event::default()
        .id(cursor)
        .event(kind)
        .data(data.to_string())
}

/// Where a stream starts: `Last-Event-ID` or `?cursor=`, checked; then the first read, which
/// answers at once, so an unreadable stream is an HTTP error rather than an empty stream.
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
        Some(c) => Some(parse_cursor(&c).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_CURSOR",
                "Last-Event-ID / `cursor` must be an event id this stream sent, or 0",
            )
        })?),
    };
    let first = svc.stream_read(&caller.user_id, cursor, BATCH, 0).await?;
    Ok(Cursor {
        svc: svc.clone(),
        user: caller.user_id.clone(),
        from: first.from,
        pending: first.events.into(),
    })
}

impl Cursor {
    /// The next event and the cursor after it, waiting for one; `None` when the stream cannot
    /// be read (the client reconnects from its last event id and loses nothing).
    async fn next(&mut self) -> Option<(String, StoredRecord)> {
        loop {
            if let Some((p, offset, record)) = self.pending.pop_front() {
                if let Some(f) = self.from.get_mut(p as usize) {
                    *f = offset + 1;
                }
                return Some((cursor_text(&self.from), record));
            }
            match self
                .svc
                .stream_read(&self.user, Some(self.from.clone()), BATCH, POLL_MS)
                .await
            {
                Ok(page) => self.pending.extend(page.events),
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
        let (cursor, record) = st.next().await?;
        Some((Ok(sse_event(&cursor, &record)), st))
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

/// Sends events until the client goes or the stream cannot be read; answers pings.
async fn pump(mut socket: WebSocket, mut cursor: Cursor) {
    loop {
        tokio::select! {
            next = cursor.next() => {
                let Some((cursor, record)) = next else { break };
                let data = event_data(&cursor, &record);
                let frame = json!({"id": cursor, "event": data["type"], "data": data});
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
