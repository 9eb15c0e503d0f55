//! Requests forwarded between nodes over the QUIC transport (`RpcKind::Forward`): the wire
//! shapes, the client side (`Service::forward`) and the server side (`ForwardHandlerImpl`).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat4all_raft::groups::{ForwardHandler, GroupState, known_leader};
use chat4all_raft::network::resolve;
use chat4all_raft::transport::{PROTOCOL_VERSION, RpcHeader, RpcKind, TransportError};
use chat4all_raft::types::{ControllerCommand, ControllerResponse, GroupId, NodeId};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::chat::{ChatOp, ChatReply};
use super::{
    FetchRequest, FetchResult, GroupOp, GroupReply, MAX_HOPS, PartitionStatus, ProduceBatch,
    Service,
};
use crate::error::ServiceError;

/// A request one node asks another to serve.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ForwardRequest {
    /// Append a batch to a partition.
    Produce {
        /// The batch.
        batch: ProduceBatch,
        /// Hops so far.
        hops: u8,
    },
    /// Append several batches, each as if it came alone (see `forward_batch`); answered
    /// with one result per batch, in order.
    ProduceMany {
        /// The batches, in the order they reached the sender.
        batches: Vec<ProduceBatch>,
        /// Hops so far.
        hops: u8,
    },
    /// Read from a partition.
    Fetch {
        /// The read.
        req: FetchRequest,
        /// Hops so far.
        hops: u8,
    },
    /// Propose a controller command.
    Controller {
        /// The command.
        cmd: ControllerCommand,
        /// Hops so far.
        hops: u8,
    },
    /// Describe a partition group the sender does not run.
    Describe {
        /// The group.
        group: GroupId,
    },
    /// The controller's read index (the receiver must lead the controller).
    ControllerReadIndex,
    /// A chat command or read, for the leader of a `chat.messages` partition.
    Chat {
        /// `chat.messages` or `chat.deliveries`.
        topic: String,
        /// The partition.
        partition: u32,
        /// What to do.
        op: ChatOp,
        /// Hops so far.
        hops: u8,
    },
    /// A consumer group request, for the leader of a `__consumer_offsets` partition.
    Group {
        /// The `__consumer_offsets` partition.
        partition: u32,
        /// The group.
        name: String,
        /// What to do.
        op: GroupOp,
        /// Hops so far.
        hops: u8,
    },
}

/// The answers to [`ForwardRequest`]s.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ForwardResponse {
    /// Offsets of the appended batch.
    Produced {
        /// First offset.
        base_offset: u64,
        /// Record count.
        count: u32,
    },
    /// The result of each batch of a `ProduceMany`, in order: its first offset and count.
    ProducedMany(Vec<Result<(u64, u32), ServiceError>>),
    /// Records read.
    Fetched(FetchResult),
    /// A controller command's result.
    Controller(ControllerResponse),
    /// A partition's status, if the receiver runs it.
    Described(Option<PartitionStatus>),
    /// The controller's read index.
    ReadIndex(Option<u64>),
    /// A group coordinator's answer.
    Group(GroupReply),
    /// A chat partition leader's answer.
    Chat(ChatReply),
}

type Wire = Result<ForwardResponse, ServiceError>;

fn encode(w: &Wire) -> Bytes {
    bincode::serde::encode_to_vec(w, bincode::config::standard())
        .map(Bytes::from)
        .unwrap_or_else(|e| {
            tracing::error!("cannot encode a forward reply: {e}");
            Bytes::new()
        })
}

impl Service {
    /// Sends `req` to node `to` and returns its answer. Errors from the transport are mapped by
    /// what they mean for the request: a failed connect never delivered it (definite), while a
    /// timeout or a broken stream after sending leaves the outcome unknown.
    pub(super) async fn forward(
        &self,
        to: NodeId,
        group: GroupId,
        req: ForwardRequest,
        hops: u8,
        deadline: Instant,
    ) -> Result<ForwardResponse, ServiceError> {
        if hops >= MAX_HOPS {
            return Err(ServiceError::Unavailable(format!(
                "no leader found for group {group} after {hops} hops"
            )));
        }
        let kind = match &req {
            ForwardRequest::Produce { .. } => "produce",
            ForwardRequest::ProduceMany { .. } => "produce_many",
            ForwardRequest::Fetch { .. } => "fetch",
            ForwardRequest::Controller { .. } => "controller",
            ForwardRequest::Describe { .. } => "describe",
            ForwardRequest::ControllerReadIndex => "read_index",
            ForwardRequest::Group { .. } => "group",
            ForwardRequest::Chat { .. } => "chat",
        };
        let writes = matches!(
            req,
            ForwardRequest::Produce { .. }
                | ForwardRequest::ProduceMany { .. }
                | ForwardRequest::Controller { .. }
                | ForwardRequest::Chat {
                    op: ChatOp::Write(_),
                    ..
                }
                | ForwardRequest::Group {
                    op: GroupOp::Heartbeat(_)
                        | GroupOp::Commit { .. }
                        | GroupOp::Configure { .. }
                        | GroupOp::Delete,
                    ..
                }
        );
        let transport = self.groups.transport().ok_or_else(|| {
            ServiceError::Internal("forwarding needs the cluster transport".into())
        })?;
        let info = self
            .members
            .get(&to)
            .ok_or_else(|| ServiceError::Internal(format!("unknown node {to}")))?;
        let addr = resolve(&info.raft_addr).await.map_err(|e| {
            ServiceError::Unavailable(format!(
                "cannot resolve node {to} ({}): {e}",
                info.raft_addr
            ))
        })?;
        let body = bincode::serde::encode_to_vec(&req, bincode::config::standard())
            .map_err(|e| ServiceError::Internal(format!("encode forward: {e}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let header = RpcHeader {
            version: PROTOCOL_VERSION,
            group: group.0,
            kind: RpcKind::Forward,
            deadline_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
        };
        self.metrics.forwarded.with_label_values(&[kind]).inc();
        let call = transport.call(addr, header, Bytes::from(body), left);
        let answer = tokio::select! {
            answer = call => answer,
            new = self.leader_moved_from(group, to) => {
                // `to` was deposed while it held the request (it died, or was cut off, and a
                // new leader was elected). If it had appended a write, the new leader may yet
                // commit it or drop it: unknown, and waiting for `to` would not tell. Saying
                // so at once instead of at the deadline lets the client retry (idempotently)
                // against the new leader about one election after the fault.
                return Err(if writes {
                    ServiceError::OutcomeUnknown(format!(
                        "node {to} lost the leadership of group {group} to node {new} while \
                         it held this write; it may or may not have been committed"
                    ))
                } else {
                    ServiceError::Unavailable(format!(
                        "node {to} lost the leadership of group {group} to node {new}; retry"
                    ))
                });
            }
        };
        match answer {
            Ok(bytes) => {
                bincode::serde::decode_from_slice::<Wire, _>(&bytes, bincode::config::standard())
                    .map_err(|e| {
                        ServiceError::Internal(format!("decode forward reply from node {to}: {e}"))
                    })?
                    .0
            }
            Err(TransportError::Connect(e)) => Err(ServiceError::Unavailable(format!(
                "node {to} unreachable: {e}"
            ))),
            Err(TransportError::NotSent(e)) => Err(ServiceError::Unavailable(format!(
                "node {to} was not reached in time (the request was not sent): {e}"
            ))),
            Err(e) if writes => Err(ServiceError::OutcomeUnknown(format!(
                "forward to node {to}: {e}"
            ))),
            Err(e) => Err(ServiceError::Unavailable(format!(
                "forward to node {to}: {e}"
            ))),
        }
    }

    /// Completes with the new leader once this node sees group `group` led by a node other
    /// than `from`, if this node runs the group and currently takes `from` for its leader;
    /// never completes otherwise (this node would not see the change, or `from` was not the
    /// leader when the request was sent: a hint, or a non-replica's pick).
    async fn leader_moved_from(&self, group: GroupId, from: NodeId) -> NodeId {
        let Some(g) = self.groups.get(group) else {
            return std::future::pending().await;
        };
        if g.leader() != Some(from) {
            return std::future::pending().await;
        }
        let moved = g
            .raft
            .wait(None)
            .metrics(
                |m| known_leader(m).is_some_and(|l| l != from),
                "leader moved",
            )
            .await;
        match moved.ok().and_then(|m| known_leader(&m)) {
            Some(l) => l,
            // The group stopped on this node: it will not learn of a new leader.
            None => std::future::pending().await,
        }
    }

    /// Serves a request another node forwarded here.
    pub async fn serve_forward(&self, req: ForwardRequest) -> Wire {
        match req {
            ForwardRequest::Produce { batch, hops } => self
                .produce_batch(batch, hops)
                .await
                .map(|(base_offset, count)| ForwardResponse::Produced { base_offset, count }),
            ForwardRequest::ProduceMany { batches, hops } => {
                // Polled in order, so the batches reach each partition's queue in the order
                // they reached the sender (unless one waits for metadata first).
                let appends = batches.into_iter().map(|b| self.produce_batch(b, hops));
                Ok(ForwardResponse::ProducedMany(
                    futures::future::join_all(appends).await,
                ))
            }
            ForwardRequest::Fetch { req, hops } => {
                self.fetch(req, hops).await.map(ForwardResponse::Fetched)
            }
            ForwardRequest::Controller { cmd, hops } => self
                .controller_write(cmd, hops)
                .await
                .map(ForwardResponse::Controller),
            ForwardRequest::Describe { group } => {
                let status = self.groups.get(group).and_then(|g| match &g.state {
                    GroupState::Partition(sm) => {
                        let s = sm.state();
                        Some(PartitionStatus {
                            leader: g.leader(),
                            high_watermark: s.next_offset,
                            log_start_offset: s.log_start_offset,
                        })
                    }
                    GroupState::Controller(_) => None,
                });
                Ok(ForwardResponse::Described(status))
            }
            ForwardRequest::Group {
                partition,
                name,
                op,
                hops,
            } => self
                .group_call(partition, name, op, hops)
                .await
                .map(ForwardResponse::Group),
            ForwardRequest::Chat {
                topic,
                partition,
                op,
                hops,
            } => self
                .chat_call(&topic, partition, op, hops)
                .await
                .map(ForwardResponse::Chat),
            ForwardRequest::ControllerReadIndex => {
                let deadline = Instant::now() + Duration::from_millis(self.limits.write_timeout_ms);
                self.controller_read_index(deadline)
                    .await
                    .map(ForwardResponse::ReadIndex)
            }
        }
    }
}

/// Plugs [`Service::serve_forward`] into the transport. Holds the service weakly: the service
/// owns the groups, which own this handler.
pub struct ForwardHandlerImpl(pub Weak<Service>);

impl ForwardHandler for ForwardHandlerImpl {
    fn handle_forward(&self, body: Bytes) -> BoxFuture<'static, Bytes> {
        let service: Option<Arc<Service>> = self.0.upgrade();
        async move {
            let Some(service) = service else {
                return encode(&Err(ServiceError::Unavailable(
                    "node is shutting down".into(),
                )));
            };
            match bincode::serde::decode_from_slice::<ForwardRequest, _>(
                &body,
                bincode::config::standard(),
            ) {
                Ok((req, _)) => encode(&service.serve_forward(req).await),
                Err(e) => encode(&Err(ServiceError::invalid(
                    "BAD_FORWARD",
                    format!("undecodable forward: {e}"),
                ))),
            }
        }
        .boxed()
    }
}
