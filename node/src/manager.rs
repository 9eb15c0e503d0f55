//! Starts this node's partition groups as the controller creates them, and says when the node
//! is ready.

use std::collections::BTreeMap;
use std::sync::Arc;

use chat4all_raft::groups::Groups;
use chat4all_raft::sm::controller::ControllerStateMachine;
use chat4all_raft::types::{GroupId, NodeId, NodeInfo};
use tokio_util::sync::CancellationToken;

/// Watches the controller's metadata and starts every partition group this node replicates.
pub struct PartitionManagerWorker {
    /// The node's groups.
    pub groups: Arc<Groups>,
    /// The controller state machine to watch.
    pub controller: ControllerStateMachine,
    /// Every node of the cluster.
    pub members: BTreeMap<NodeId, NodeInfo>,
}

impl PartitionManagerWorker {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let me = self.groups.node_id();
        let mut rx = self.controller.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            for topic in state.topics.values() {
                for (i, p) in topic.partitions.iter().enumerate() {
                    if !p.replicas.contains(&me) || self.groups.get(p.group).is_some() {
                        continue;
                    }
                    let replicas: BTreeMap<NodeId, NodeInfo> = p
                        .replicas
                        .iter()
                        .filter_map(|id| self.members.get(id).map(|n| (*id, n.clone())))
                        .collect();
                    // The first replica listed leads first: replicas lists rotate over the
                    // nodes, so new partitions' leaders are spread.
                    let preferred = p.replicas.first().copied();
                    match self
                        .groups
                        .start_partition(
                            p.group,
                            replicas,
                            preferred,
                            crate::groups::partition_kind(&topic.name),
                        )
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(topic = %topic.name, partition = i, group = %p.group, "partition started")
                        }
                        Err(e) => {
                            tracing::error!(topic = %topic.name, partition = i, group = %p.group, "cannot start partition: {e}")
                        }
                    }
                }
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Why the node is not ready, or `None` when it is: it has a controller leader, runs every
/// partition it replicates, and each of them has a leader.
pub fn not_ready_reason(groups: &Groups, controller: &ControllerStateMachine) -> Option<String> {
    let me = groups.node_id();
    let Some(ctrl) = groups.get(GroupId::CONTROLLER) else {
        return Some("controller not started".into());
    };
    if ctrl.leader().is_none() {
        return Some("the controller has no leader".into());
    }
    let state = controller.state();
    for topic in state.topics.values() {
        for (i, p) in topic.partitions.iter().enumerate() {
            if !p.replicas.contains(&me) {
                continue;
            }
            match groups.get(p.group) {
                None => return Some(format!("partition {}/{i} not started", topic.name)),
                Some(g) if g.leader().is_none() => {
                    return Some(format!("partition {}/{i} has no leader", topic.name));
                }
                Some(_) => {}
            }
        }
    }
    None
}
