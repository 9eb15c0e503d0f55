//! The `corrupt` fault: a node's files damaged, the node restarted on them and expected to
//! refuse to start, the outcome recorded for the verdict; and the rebuild of a damaged node
//! from empty data at heal.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::{Applied, Nemesis, blocking, lock};
use crate::api::Answer;
use crate::corrupt;
use crate::hosts::Hosts;
use crate::schedule::NodeId;

/// How long a node restarted on damaged data has to exit by itself.
const REFUSAL_LIMIT: Duration = Duration::from_secs(20);

/// What one `corrupt` fault found: whether a file was damaged and whether the node then
/// refused to start (exited by itself, non-zero, within [`REFUSAL_LIMIT`], saying why).
#[derive(Clone, Debug, Serialize)]
pub struct CorruptionOutcome {
    /// The step of the schedule.
    pub step: usize,
    /// The damaged node.
    pub node: NodeId,
    /// Whether a file was damaged at all.
    pub damaged: bool,
    /// Whether the node refused to start on it.
    pub refused: bool,
    /// What happened, in words.
    pub detail: String,
}

impl Nemesis {
    /// SIGKILLs `node`, damages its files and restarts it, then waits (up to
    /// [`REFUSAL_LIMIT`]) for it to refuse to start: exit by itself, non-zero, saying the data
    /// is damaged. Records the outcome; the heal rebuilds the node empty.
    pub(super) async fn corrupt(
        &self,
        step: usize,
        node: NodeId,
        held: &BTreeSet<NodeId>,
        done: &mut Applied,
    ) -> anyhow::Result<Value> {
        if held.contains(&node) {
            return Ok(json!({ "skipped (already paused or killed)": [node] }));
        }
        // Leader or follower: the partitions it leads as another node sees it.
        let led: Value = match self.topic(&BTreeSet::from([node])).await {
            Ok(topic) => json!(
                topic["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, p)| p["leader"].as_u64() == Some(u64::from(node)))
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>()
            ),
            Err(e) => json!(format!("unknown: {e:#}")),
        };
        // From here on the heal rebuilds it, whatever happens next.
        done.damaged = vec![node];
        lock(&self.unrepaired).insert(node, step);
        let hosts = self.hosts.clone();
        let (mut value, damaged, refused, mut detail) = blocking(move || {
            let was_running = hosts.kill(node)?;
            let damage = corrupt::damage(&hosts.data_dir(node).join("db"))?;
            let log_path = hosts.log_path(node);
            let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            let mut value = json!({
                "node": node,
                "killed": was_running,
                "damage": damage,
            });
            if !damage.damaged() {
                hosts.start(node)?;
                let detail = format!("n{node}: nothing damaged ({damage:?}); restarted as is");
                return Ok(json!([value, false, false, detail]));
            }
            let started = Instant::now();
            let status = hosts.start_expecting_exit(node, REFUSAL_LIMIT)?;
            let waited = started.elapsed().as_secs_f64();
            let line = corrupt::damaged_line(&read_from(&log_path, log_start));
            value["log"] = json!(line);
            value["exited"] = json!(status.map(|s| format!("{s} after {waited:.1} s")));
            let (refused, detail) = match status {
                Some(status) if !status.success() && line.is_some() => (
                    true,
                    format!("n{node} refused to start on damaged data: {status} after {waited:.1} s"),
                ),
                Some(status) if status.success() => (
                    false,
                    format!("n{node} exited with success ({waited:.1} s) on damaged data"),
                ),
                Some(status) => (
                    false,
                    format!(
                        "n{node} exited ({status} after {waited:.1} s) but its log does not say the data is damaged"
                    ),
                ),
                None => (
                    false,
                    format!("n{node} still running {waited:.1} s after its restart on damaged data"),
                ),
            };
            Ok(json!([value, true, refused, detail]))
        })
        .await
        .and_then(|v| Ok(serde_json::from_value::<(Value, bool, bool, String)>(v)?))?;
        if damaged && !refused && !self.hosts.dead().contains(&node) {
            // Still running on damaged data: does it say it is ready to serve?
            let ready = matches!(
                self.api.probe(node, "/ready", Duration::from_secs(2)).await,
                Answer::Ok(_)
            );
            value["ready"] = json!(ready);
            detail.push_str(if ready {
                " and answering /ready (serving)"
            } else {
                " and not answering /ready (neither refused nor serving)"
            });
        }
        value["led"] = led;
        value["refused"] = json!(refused);
        if damaged && !refused {
            tracing::error!("{detail}");
        }
        lock(&self.corruptions).push(CorruptionOutcome {
            step,
            node,
            damaged,
            refused,
            detail,
        });
        Ok(value)
    }
}

/// Rebuilds damaged node `id`: stops it if it runs (it should have refused to), moves its data
/// directory to `data/nK.damaged-step<step>` (kept as evidence) and starts it empty; its peers
/// bring it up to date. Returns where the data went.
pub(super) fn rebuild(hosts: &Hosts, id: NodeId, step: usize) -> anyhow::Result<PathBuf> {
    hosts.kill(id)?;
    let data = hosts.data_dir(id);
    let mut to = data.with_file_name(format!("n{id}.damaged-step{step}"));
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = data.with_file_name(format!("n{id}.damaged-step{step}-{n}"));
    }
    if data.exists() {
        std::fs::rename(&data, &to)?;
    }
    hosts.start(id)?;
    Ok(to)
}

/// The text of `path` from byte `offset` on (empty if unreadable).
fn read_from(path: &std::path::Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
