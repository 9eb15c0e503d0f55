//! Workers that run inside every node as members of consumer groups: adding a node adds a
//! member, and partitions move to it.

pub mod copy;
pub mod delivery;
pub mod inbound;
pub mod router;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// Waits until this node's metadata has `topic` (workers of topics made on first use start
/// then); false if `shutdown` came first.
pub async fn topic_exists(
    service: &Arc<Service>,
    topic: &str,
    shutdown: &CancellationToken,
) -> bool {
    let mut metadata = service.controller().subscribe();
    loop {
        if metadata.borrow_and_update().topics.contains_key(topic) {
            return true;
        }
        tokio::select! {
            changed = metadata.changed() => if changed.is_err() { return false },
            _ = shutdown.cancelled() => return false,
        }
    }
}
