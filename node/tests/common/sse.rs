//! A Server-Sent Events client for the tests: `GET /v1/events` and its frames.

use std::time::Duration;

use serde_json::Value;

use super::Cluster;

/// One event as the client sees it.
#[derive(Debug, Clone)]
pub struct Sse {
    /// The stream's cursor after this event.
    pub id: String,
    pub kind: String,
    pub data: Value,
}

/// An open `GET /v1/events` stream and the bytes not yet parsed.
pub struct EventStream {
    response: reqwest::Response,
    buf: String,
}

impl EventStream {
    /// Opens the stream of the user with access `token` through `node`, after `last_id`.
    pub async fn open(
        c: &Cluster,
        node: u64,
        token: &str,
        last_id: Option<&str>,
    ) -> Option<EventStream> {
        let mut req = c
            .http
            .get(format!("{}/v1/events", c.api(node)))
            .header("authorization", format!("Bearer {token}"));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let response = req.send().await.ok()?;
        (response.status() == 200).then(|| EventStream::from_response(response))
    }

    /// Reads the stream a request already opened.
    pub fn from_response(response: reqwest::Response) -> EventStream {
        EventStream {
            response,
            buf: String::new(),
        }
    }

    /// The next event; `None` when the stream ends, breaks, or sends nothing for `idle`.
    pub async fn next(&mut self, idle: Duration) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                match id {
                    Some(id) => {
                        return Some(Sse {
                            id,
                            kind,
                            data: serde_json::from_str(&data).unwrap_or(Value::Null),
                        });
                    }
                    None => continue, // a keep-alive comment
                }
            }
            let chunk = tokio::time::timeout(idle, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}

/// Whether the cursor `next` is one event past `prev`: one partition's position moved forward
/// and no other moved (so no event was repeated or skipped backwards).
pub fn advances(prev: &str, next: &str) -> bool {
    let parse =
        |c: &str| -> Vec<u64> { c.split('-').map(|p| p.parse().expect("a cursor")).collect() };
    let (a, b) = (parse(prev), parse(next));
    a.len() == b.len()
        && a.iter().zip(&b).filter(|(x, y)| x != y).count() == 1
        && a.iter().zip(&b).all(|(x, y)| y >= x)
}
