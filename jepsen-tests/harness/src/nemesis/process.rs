//! The faults on the node processes: kill and pause (SIGKILL, SIGSTOP), and the power cut
//! (SIGKILL, then every file reverted to its last fsync by the node's `c4aj-lazyfs`).

use std::collections::BTreeSet;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::{Applied, Nemesis, blocking, lock};
use crate::schedule::NodeId;

impl Nemesis {
    /// SIGKILLs or SIGSTOPs `nodes`, except those in `held`; notes in `done` which it stopped.
    pub(super) async fn stop(
        &self,
        nodes: Vec<NodeId>,
        signal: Signal,
        held: &BTreeSet<NodeId>,
        done: &mut Applied,
    ) -> anyhow::Result<Value> {
        let (skipped, targets): (Vec<NodeId>, Vec<NodeId>) =
            nodes.into_iter().partition(|n| held.contains(n));
        let hosts = self.hosts.clone();
        if signal == Signal::SIGKILL {
            // A target that had already exited (a crash, or a kill from outside the harness) is
            // not running afterwards either: the heal restarts it with the others.
            done.killed = targets.clone();
        }
        let stopped = blocking(move || {
            let mut stopped = Vec::new();
            for id in targets {
                let running = if signal == Signal::SIGKILL {
                    hosts.kill(id)?
                } else {
                    hosts.signal(id, signal)?
                };
                if running {
                    stopped.push(id);
                }
            }
            Ok(json!(stopped))
        })
        .await?;
        let stopped: Vec<NodeId> = serde_json::from_value(stopped)?;
        let verb = if signal == Signal::SIGKILL {
            "killed"
        } else {
            done.paused = stopped.clone();
            "paused"
        };
        let not_running: Vec<NodeId> = done
            .killed
            .iter()
            .copied()
            .filter(|n| !stopped.contains(n))
            .collect();
        let mut value = json!({ verb: stopped });
        if !not_running.is_empty() {
            value["not running already (restarted at heal)"] = json!(not_running);
        }
        if !skipped.is_empty() {
            value["skipped (already paused or killed)"] = json!(skipped);
        }
        Ok(value)
    }

    /// Cuts the power of `nodes` (except those in `held`): SIGKILLs them all first, then has
    /// each one's `c4aj-lazyfs` revert every file to its last fsync. The heal restarts them.
    pub(super) async fn powercut(
        &self,
        step: usize,
        nodes: Vec<NodeId>,
        held: &BTreeSet<NodeId>,
        done: &mut Applied,
    ) -> anyhow::Result<Value> {
        let (skipped, targets): (Vec<NodeId>, Vec<NodeId>) =
            nodes.into_iter().partition(|n| held.contains(n));
        // Restarted at heal whatever happens from here on.
        done.killed = targets.clone();
        let hosts = self.hosts.clone();
        let powercuts = self.powercuts.clone();
        blocking(move || {
            let mut killed = Vec::new();
            for &id in &targets {
                if hosts.kill(id)? {
                    killed.push(id);
                }
            }
            let mut reverted = serde_json::Map::new();
            let mut line = format!("step {step}: powercut");
            for &id in &targets {
                let files = hosts.cut(id)?;
                let bytes: u64 = files.iter().map(|(b, _)| b).sum();
                line.push_str(&format!(
                    " n{id}: {bytes} unsynced bytes in {} files reverted;",
                    files.len()
                ));
                reverted.insert(
                    format!("n{id}"),
                    json!({
                        "bytes": bytes,
                        "files": files
                            .iter()
                            .map(|(b, f)| json!([f, b]))
                            .collect::<Vec<_>>(),
                    }),
                );
            }
            if targets.is_empty() {
                line.push_str(" nothing cut;");
            }
            lock(&powercuts).push(line.trim_end_matches(';').to_owned());
            let mut value = json!({"killed": killed, "reverted": reverted});
            if !skipped.is_empty() {
                value["skipped (already paused or killed)"] = json!(skipped);
            }
            Ok(value)
        })
        .await
    }
}
