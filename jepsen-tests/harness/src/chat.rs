//! The chat workload: users send messages to their conversations through random nodes while
//! the nemesis works; after the heal every conversation's whole history is read through every
//! node, and the `chat` checker judges it (`chat4all_jepsen::checker::chat`).
//!
//! ```text
//!  setup ── admin token (retried) ─► users (+ passwords) ─► their tokens ─► conversations
//!           (a direct one per neighbouring pair of users, one group of everybody)
//!  client ── chat-send {conversation, message_id (UUID)} ─► any node
//!              ├─► 202, or 200 (a retry: the original)  ok, next message
//!              ├─► 429                                  fail (wrote nothing), retry the SAME id
//!              ├─► other 4xx (first attempt)            fail, next message
//!              └─► timeout, 503 (any code), 5xx         info: retire the process, retry the
//!                                                       SAME id under a new one
//!  read  ── chat-read: GET …/messages?after=<cursor>&limit=200 paged with next_cursor, per
//!           node, again (1 s apart) until every node returns the same history or 30 s passed
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use chat4all_jepsen::{
    Call, ChatEvent, ChatEvents, ChatMessage, ChatRead, ChatSend, OpType, Process, Recorder,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::api::{Answer, Api};
use crate::schedule::NodeId;

/// The first admin, given to every node in its environment.
pub const ADMIN_EMAIL: &str = "admin@jepsen.test";
/// Its password.
pub const ADMIN_PASSWORD: &str = "jepsen-admin-secret";
/// The token signing key, the same on every node (so no node needs the replicated one first).
pub const JWT_SECRET: &str = "c4aj-jepsen-jwt-secret-0123456789abcdef";
/// Attempts of one message before its client gives up on it (it stays unknown).
const MAX_ATTEMPTS: u32 = 30;
/// Messages per history page.
const PAGE: u32 = 200;
/// Pages of one history read, at most.
const MAX_PAGES: u32 = 500;
/// How long the final reads may try to see one history on every node.
const CONVERGE: Duration = Duration::from_secs(30);
/// How long a user's event stream is read, at most (it stops once every message came).
const STREAM_LIMIT: Duration = Duration::from_secs(45);
/// A stream that sends nothing for this long is stopped.
const STREAM_IDLE: Duration = Duration::from_secs(10);

/// The environment every node needs for this workload.
pub fn node_env() -> [(&'static str, &'static str); 3] {
    [
        ("CHAT4ALL_ADMIN_EMAIL", ADMIN_EMAIL),
        ("CHAT4ALL_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("CHAT4ALL_JWT_SECRET", JWT_SECRET),
    ]
}

/// A user of the workload.
#[derive(Clone, Debug)]
pub struct User {
    /// Its id.
    pub id: String,
    /// Its access token (15 min: longer than a run).
    pub token: String,
}

/// A conversation and its participants (indexes into the users).
#[derive(Clone, Debug)]
pub struct Conversation {
    /// Its id.
    pub id: String,
    /// Who may send to it and read it.
    pub members: Vec<usize>,
}

/// What the chat clients share.
pub struct Chat {
    api: Api,
    recorder: Arc<Recorder>,
    nodes: u32,
    seed: u64,
    deadline: Instant,
    /// The users.
    pub users: Vec<User>,
    /// The conversations.
    pub conversations: Vec<Conversation>,
    next_process: AtomicU64,
    rate_limited: AtomicU64,
    retried_ok: AtomicU64,
    given_up: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Chat {
    /// Creates `users` users and their conversations through any node (retrying until
    /// `setup_deadline`); set the clients' deadline with [`Chat::with_deadline`].
    pub async fn setup(
        api: Api,
        recorder: Arc<Recorder>,
        nodes: u32,
        users: usize,
        seed: u64,
        setup_deadline: Instant,
    ) -> anyhow::Result<Chat> {
        let mut node = 1;
        let admin = login(
            &api,
            &mut node,
            nodes,
            ADMIN_EMAIL,
            ADMIN_PASSWORD,
            setup_deadline,
        )
        .await?;
        let mut made = Vec::new();
        for k in 0..users {
            let (email, password) = (format!("user{k}@jepsen.test"), format!("jepsen-user-{k}"));
            let body = json!({
                "display_name": format!("User {k}"),
                "user_type": if k % 2 == 0 { "AGENT" } else { "CUSTOMER" },
                "email": email,
                "password": password,
            });
            retry(setup_deadline, &mut node, nodes, |n| {
                let (api, body, token) = (api.clone(), body.clone(), admin.token.clone());
                async move {
                    match api.post_as(n, "/v1/users", &body, &token).await {
                        // A retry of a creation that took effect finds the email taken.
                        Answer::Definite { code, .. } if code == "EMAIL_TAKEN" => {
                            Answer::Ok(Value::Null)
                        }
                        other => other,
                    }
                }
            })
            .await?;
            made.push(login(&api, &mut node, nodes, &email, &password, setup_deadline).await?);
        }
        // A direct conversation per neighbouring pair (a ring), and one group of everybody.
        let mut plan: Vec<(Vec<usize>, Value)> = Vec::new();
        for k in 0..users {
            let other = (k + 1) % users;
            if other != k && !(users == 2 && k == 1) {
                plan.push((
                    vec![k, other],
                    json!({"type": "direct", "participants": [made[other].id]}),
                ));
            }
        }
        let everybody: Vec<&str> = made[1..].iter().map(|u| u.id.as_str()).collect();
        plan.push((
            (0..users).collect(),
            json!({"type": "group", "participants": everybody, "title": "jepsen"}),
        ));
        let mut conversations = Vec::new();
        for (members, body) in plan {
            let token = made[members[0]].token.clone();
            let reply = retry(setup_deadline, &mut node, nodes, |n| {
                let (api, body, token) = (api.clone(), body.clone(), token.clone());
                async move { api.post_as(n, "/v1/conversations", &body, &token).await }
            })
            .await?;
            let Some(id) = reply["id"].as_str() else {
                bail!("conversation created without an id: {reply}");
            };
            conversations.push(Conversation {
                id: id.to_owned(),
                members,
            });
        }
        Ok(Chat {
            api,
            recorder,
            nodes,
            seed,
            deadline: setup_deadline,
            users: made,
            conversations,
            next_process: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            retried_ok: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            notes: Mutex::new(Vec::new()),
        })
    }

    /// The same, with the clients' deadline moved to `deadline` (once the setup is done).
    pub fn with_deadline(mut self, deadline: Instant) -> Chat {
        self.deadline = deadline;
        self
    }

    fn new_process(&self) -> Process {
        Process::Client(self.next_process.fetch_add(1, Ordering::SeqCst))
    }

    fn record(&self, process: Process, kind: OpType, call: Call, error: Option<String>) {
        let result = match kind {
            OpType::Invoke => self.recorder.invoke(process, call),
            _ => self.recorder.complete(process, kind, call, error),
        };
        if let Err(e) = result {
            tracing::error!("cannot record: {e}");
        }
    }

    fn note(&self, note: String) {
        tracing::warn!("{note}");
        self.notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(note);
    }

    /// What the clients saw, for the notes.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "chat: {} users, {} conversations; {} answers 429 RATE_LIMITED (retried), {} retries \
             of an unknown outcome answered 200 with the original, {} messages given up unknown",
            self.users.len(),
            self.conversations.len(),
            self.rate_limited.load(Ordering::SeqCst),
            self.retried_ok.load(Ordering::SeqCst),
            self.given_up.load(Ordering::SeqCst),
        )];
        notes.extend(
            self.notes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        notes
    }

    /// One client, as user `client % users`: sends messages one at a time to the user's
    /// conversations until the deadline, each message's attempts with one `message_id`.
    pub async fn client(self: Arc<Self>, client: u64) {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (client + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let user = client as usize % self.users.len();
        let mine: Vec<&Conversation> = self
            .conversations
            .iter()
            .filter(|c| c.members.contains(&user))
            .collect();
        if mine.is_empty() {
            return;
        }
        let token = self.users[user].token.clone();
        let mut process = self.new_process();
        let mut n = 0u64;
        while Instant::now() < self.deadline {
            let conversation = mine[rng.random_range(0..mine.len())].id.clone();
            let message_id = uuid(&mut rng);
            let body = json!({
                "message_id": message_id,
                "content": format!("client {client} message {n}"),
            });
            n += 1;
            let path = format!("/v1/conversations/{conversation}/messages");
            let call = |node: NodeId, offset: Option<u64>| {
                Call::ChatSend(ChatSend {
                    conversation: conversation.clone(),
                    message_id: message_id.clone(),
                    client,
                    offset,
                    node: Some(node),
                })
            };
            let mut unknown = false;
            let mut settled = false;
            for attempt in 0..MAX_ATTEMPTS {
                if attempt > 0 && Instant::now() >= self.deadline {
                    break;
                }
                let node = rng.random_range(1..=self.nodes);
                self.record(process, OpType::Invoke, call(node, None), None);
                match self.api.post_as(node, &path, &body, &token).await {
                    Answer::Ok(reply) => {
                        let offset = reply["offset"].as_u64();
                        if reply["message_id"].as_str() != Some(message_id.as_str()) {
                            self.note(format!(
                                "message {message_id}: n{node} acknowledged with another id: {reply}"
                            ));
                        }
                        self.record(process, OpType::Ok, call(node, offset), None);
                        if unknown {
                            self.retried_ok.fetch_add(1, Ordering::SeqCst);
                        }
                        settled = true;
                        break;
                    }
                    Answer::Definite { status: 429, code } => {
                        self.rate_limited.fetch_add(1, Ordering::SeqCst);
                        let error = Some(format!("n{node}: 429 {code}"));
                        self.record(process, OpType::Fail, call(node, None), error);
                        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
                    }
                    Answer::Definite { status, code } if status != 503 && !unknown => {
                        let error = format!("n{node}: {status} {code}");
                        self.note(format!("message {message_id}: refused: {error}"));
                        self.record(process, OpType::Fail, call(node, None), Some(error));
                        settled = true;
                        break;
                    }
                    // 503 (any code), anything after an unknown outcome, timeouts, 5xx.
                    other => {
                        let error = format!("n{node}: {}", other.describe());
                        self.record(process, OpType::Info, call(node, None), Some(error));
                        process = self.new_process();
                        unknown = true;
                        tokio::time::sleep(crate::queue::backoff(&mut rng)).await;
                    }
                }
            }
            if !settled {
                self.given_up.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// After the heal: reads every conversation's history through every node, again until
    /// every node returns the same one (or [`CONVERGE`] passed). True if every conversation
    /// got a complete read from every node; and each conversation's message ids as the lowest
    /// node returned them.
    pub async fn read_all(&self) -> (bool, BTreeMap<String, Vec<String>>) {
        let mut histories = BTreeMap::new();
        let process = self.new_process();
        let give_up = Instant::now() + CONVERGE;
        let mut complete = true;
        for conversation in &self.conversations {
            let token = &self.users[conversation.members[0]].token;
            let mut last: BTreeMap<NodeId, Vec<ChatMessage>> = BTreeMap::new();
            loop {
                for node in 1..=self.nodes {
                    if let Some(messages) =
                        self.read_once(process, &conversation.id, node, token).await
                    {
                        last.insert(node, messages);
                    }
                }
                let agree = last.len() == self.nodes as usize
                    && last.values().all(|m| Some(m) == last.values().next());
                if agree || Instant::now() >= give_up {
                    if !agree {
                        self.note(format!(
                            "conversation {}: the nodes' histories still differ (or some were \
                             unreadable) after {CONVERGE:?}: {:?}",
                            conversation.id,
                            last.iter().map(|(n, m)| (n, m.len())).collect::<Vec<_>>()
                        ));
                    }
                    complete &= last.len() == self.nodes as usize;
                    if let Some(messages) = last.values().next() {
                        histories.insert(
                            conversation.id.clone(),
                            messages.iter().map(|m| m.id.clone()).collect(),
                        );
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        (complete, histories)
    }

    /// After the reads: every user's event stream from cursor 0 (`GET /v1/events?cursor=0`),
    /// through node `user % nodes + 1` (the next one if that fails), read until every message
    /// of `histories` in the user's conversations came, [`STREAM_IDLE`] passed without an
    /// event, or [`STREAM_LIMIT`]. True if every user's stream could be read.
    pub async fn read_streams(&self, histories: &BTreeMap<String, Vec<String>>) -> bool {
        let process = self.new_process();
        let mut complete = true;
        for (u, user) in self.users.iter().enumerate() {
            let conversations: Vec<String> = self
                .conversations
                .iter()
                .filter(|c| c.members.contains(&u))
                .map(|c| c.id.clone())
                .collect();
            let expected: usize = conversations
                .iter()
                .filter_map(|c| histories.get(c))
                .map(Vec::len)
                .sum();
            let mut done = false;
            for k in 0..self.nodes {
                let node = (u as u32 + k) % self.nodes + 1;
                let value = ChatEvents {
                    user: user.id.clone(),
                    node,
                    after: "0".into(),
                    conversations: conversations.clone(),
                    events: Vec::new(),
                };
                self.record(
                    process,
                    OpType::Invoke,
                    Call::ChatEvents(value.clone()),
                    None,
                );
                match self.stream(node, &user.token, expected).await {
                    Ok((events, why)) => {
                        let got = events.iter().filter(|e| e.message_id.is_some()).count();
                        if got < expected {
                            self.note(format!(
                                "user {}: the stream from n{node} stopped ({why}) after {got} of                                  {expected} messages",
                                user.id
                            ));
                        }
                        let value = ChatEvents { events, ..value };
                        self.record(process, OpType::Ok, Call::ChatEvents(value), None);
                        done = true;
                        break;
                    }
                    Err(error) => {
                        let error = format!("n{node}: {error}");
                        self.record(process, OpType::Fail, Call::ChatEvents(value), Some(error));
                    }
                }
            }
            complete &= done;
        }
        complete
    }

    /// Reads one event stream from cursor 0 until `expected` message events came (or it idles
    /// or runs too long): the events, and why it stopped.
    async fn stream(
        &self,
        node: NodeId,
        token: &str,
        expected: usize,
    ) -> Result<(Vec<ChatEvent>, &'static str), String> {
        let mut response = self
            .api
            .open_stream(node, "/v1/events?cursor=0", token, STREAM_LIMIT)
            .await?;
        let end = Instant::now() + STREAM_LIMIT;
        let mut buffer = String::new();
        let mut events = Vec::new();
        let mut messages = 0;
        loop {
            if messages >= expected {
                return Ok((events, "every message came"));
            }
            let wait = STREAM_IDLE.min(end.saturating_duration_since(Instant::now()));
            let chunk = match tokio::time::timeout(wait, response.chunk()).await {
                Err(_) => return Ok((events, "idle or time limit")),
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Err(format!("stream ended after {} events", events.len())),
                Ok(Err(e)) => return Err(format!("after {} events: {e}", events.len())),
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(at) = buffer.find("\n\n") {
                let block: String = buffer.drain(..at + 2).collect();
                if let Some(event) = parse_event(&block) {
                    messages += usize::from(event.message_id.is_some());
                    events.push(event);
                }
            }
        }
    }

    /// One `chat-read` of a whole history through `node`, page after page (`fail` if any
    /// page fails: a read changes nothing).
    async fn read_once(
        &self,
        process: Process,
        conversation: &str,
        node: NodeId,
        token: &str,
    ) -> Option<Vec<ChatMessage>> {
        let mut read = ChatRead {
            conversation: conversation.to_owned(),
            node,
            messages: Vec::new(),
        };
        self.record(process, OpType::Invoke, Call::ChatRead(read.clone()), None);
        let mut after = 0u64;
        for _ in 0..MAX_PAGES {
            let path =
                format!("/v1/conversations/{conversation}/messages?after={after}&limit={PAGE}");
            let page = match self.api.get_as(node, &path, token).await {
                Answer::Ok(page) => page,
                other => {
                    let error = format!("n{node} after={after}: {}", other.describe());
                    read.messages.clear();
                    self.record(process, OpType::Fail, Call::ChatRead(read), Some(error));
                    return None;
                }
            };
            for m in page["messages"].as_array().into_iter().flatten() {
                match (m["message_id"].as_str(), m["offset"].as_u64()) {
                    (Some(id), Some(offset)) => read.messages.push(ChatMessage {
                        id: id.to_owned(),
                        offset,
                    }),
                    _ => self.note(format!(
                        "n{node}: a history entry without id or offset: {m}"
                    )),
                }
            }
            match page["next_cursor"]
                .as_str()
                .and_then(|c| c.parse::<u64>().ok())
                .or(page["next_cursor"].as_u64())
            {
                Some(next) if next > after => after = next,
                Some(next) => {
                    let error = format!("n{node}: next_cursor {next} does not move past {after}");
                    self.note(error.clone());
                    read.messages.clear();
                    self.record(process, OpType::Fail, Call::ChatRead(read), Some(error));
                    return None;
                }
                None => {
                    let messages = read.messages.clone();
                    self.record(process, OpType::Ok, Call::ChatRead(read), None);
                    return Some(messages);
                }
            }
        }
        read.messages.clear();
        let error = format!("n{node}: more than {MAX_PAGES} pages");
        self.record(process, OpType::Fail, Call::ChatRead(read), Some(error));
        None
    }
}

/// Logs `email` in through any node until `deadline`.
async fn login(
    api: &Api,
    node: &mut NodeId,
    nodes: u32,
    email: &str,
    password: &str,
    deadline: Instant,
) -> anyhow::Result<User> {
    let body = json!({"grant_type": "password", "username": email, "password": password});
    let reply = retry(deadline, node, nodes, |n| {
        let (api, body) = (api.clone(), body.clone());
        async move { api.post(n, "/v1/auth/token", &body).await }
    })
    .await?;
    match (reply["user_id"].as_str(), reply["access_token"].as_str()) {
        (Some(id), Some(token)) => Ok(User {
            id: id.to_owned(),
            token: token.to_owned(),
        }),
        _ => bail!("token for {email} without user_id or access_token: {reply}"),
    }
}

/// Sends a setup request to one node after the other until one answers 2xx or `deadline`.
async fn retry<F, Fut>(
    deadline: Instant,
    node: &mut NodeId,
    nodes: u32,
    mut request: F,
) -> anyhow::Result<Value>
where
    F: FnMut(NodeId) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let mut last = String::new();
    while Instant::now() < deadline {
        match request(*node).await {
            Answer::Ok(value) => return Ok(value),
            other => last = format!("n{node}: {}", other.describe()),
        }
        *node = *node % nodes + 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("chat setup did not succeed in time: {last}")
}

/// One SSE block (`id:`, `event:`, `data:` lines) as an event; `None` for comments
/// (keep-alives) and blocks without an id.
fn parse_event(block: &str) -> Option<ChatEvent> {
    let (mut id, mut kind, mut data) = (None, String::new(), String::new());
    for line in block.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        } else if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
    let text = |field: &str| data[field].as_str().map(str::to_owned);
    Some(ChatEvent {
        cursor: id?,
        message_id: if kind == "message" {
            text("message_id")
        } else {
            None
        },
        kind,
        conversation: text("conversation_id"),
    })
}

/// A random (version 4) UUID from the client's seeded generator.
fn uuid(rng: &mut StdRng) -> String {
    let bits: u128 = rng.random();
    let bits = (bits & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_become_events() {
        let block = "id: 7-0-2\nevent: message\ndata: {\"type\":\"message\",\"message_id\":\"m\",\"conversation_id\":\"d-1\",\"cursor\":\"7-0-2\"}\n\n";
        assert_eq!(
            parse_event(block),
            Some(ChatEvent {
                cursor: "7-0-2".into(),
                kind: "message".into(),
                conversation: Some("d-1".into()),
                message_id: Some("m".into()),
            })
        );
        let status =
            "id: 8\nevent: status\ndata: {\"message_id\":\"m\",\"conversation_id\":\"d-1\"}\n\n";
        assert_eq!(parse_event(status).and_then(|e| e.message_id), None);
        assert_eq!(parse_event(":keep-alive\n\n"), None);
    }

    #[test]
    fn message_ids_are_version_4_uuids_and_differ() {
        let mut rng = StdRng::seed_from_u64(1);
        let (a, b) = (uuid(&mut rng), uuid(&mut rng));
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 36);
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('4'), "{id}");
            assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{id}");
        }
    }
}
