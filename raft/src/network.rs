//! openraft's network for one group, over the node's QUIC transport: each RPC is one stream
//! whose header names the group, so every group shares one connection per peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sm::snapshot_err;
use crate::snapshot::{self, SnapshotData};
use crate::transport::{PROTOCOL_VERSION, RpcClient, RpcHeader, RpcKind, TransportError};
use crate::types::{GroupId, NodeId, NodeInfo, TypeConfig};

/// The answer to a Raft RPC as it crosses the wire.
#[derive(Serialize, Deserialize, Debug)]
pub enum RaftReply<T, E> {
    /// The local Raft instance answered.
    Ok(T),
    /// The local Raft instance refused.
    Err(E),
    /// The target does not (yet) run this group, e.g. it has not applied the topic's creation.
    UnknownGroup,
    /// The request could not be decoded.
    BadRequest(String),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Bytes, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map(Bytes::from)
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard()).map(|(v, _)| v)
}

/// Resolves `host:port`: IP literals directly, names through the system resolver (a container's
/// peers are known by name, and their addresses may change when they restart).
pub async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Creates per-peer clients for one group.
#[derive(Clone)]
pub struct GroupNetwork {
    transport: Option<Arc<dyn RpcClient>>,
    group: GroupId,
}

impl GroupNetwork {
    /// The network of `group` over `transport`.
    pub fn new(transport: Option<Arc<dyn RpcClient>>, group: GroupId) -> GroupNetwork {
        GroupNetwork { transport, group }
    }
}

/// Sends one group's RPCs to one peer.
pub struct GroupClient {
    transport: Option<Arc<dyn RpcClient>>,
    group: GroupId,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> GroupClient {
        GroupClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("bad peer address {0}")]
    Addr(String),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("peer does not run group {0} yet")]
    UnknownGroup(GroupId),
    #[error("peer refused the request: {0}")]
    BadRequest(String),
    #[error("this node has no transport (single-node cluster)")]
    NoTransport,
}

impl ClientError {
    /// Errors after which the peer should be treated as unreachable (openraft backs off for
    /// 500 ms). Not [`TransportError::NotSent`]: a handshake or stream that is merely slower
    /// than one heartbeat's deadline says the peer is busy or far, and backing off from it
    /// would stop that group's heartbeats for long enough to depose a live leader.
    fn unreachable(&self) -> bool {
        match self {
            ClientError::Transport(t) => {
                matches!(t, TransportError::Connect(_) | TransportError::Closed)
            }
            ClientError::Addr(_) | ClientError::UnknownGroup(_) | ClientError::NoTransport => true,
            _ => false,
        }
    }
}

impl GroupClient {
    async fn call<Req: Serialize, T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        kind: RpcKind,
        req: &Req,
        deadline: Duration,
    ) -> Result<Result<T, E>, ClientError> {
        let addr = resolve(&self.addr)
            .await
            .map_err(|e| ClientError::Addr(format!("{}: {e}", self.addr)))?;
        let header = RpcHeader {
            version: PROTOCOL_VERSION,
            group: self.group.0,
            kind,
            deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
        };
        let transport = self.transport.as_ref().ok_or(ClientError::NoTransport)?;
        let body = transport.call(addr, header, encode(req)?, deadline).await?;
        match decode::<RaftReply<T, E>>(&body)? {
            RaftReply::Ok(t) => Ok(Ok(t)),
            RaftReply::Err(e) => Ok(Err(e)),
            RaftReply::UnknownGroup => Err(ClientError::UnknownGroup(self.group)),
            RaftReply::BadRequest(m) => Err(ClientError::BadRequest(m)),
        }
    }

    fn rpc_error<E: std::error::Error>(&self, e: ClientError) -> RPCError<NodeId, NodeInfo, E> {
        if e.unreachable() {
            RPCError::Unreachable(Unreachable::new(&e))
        } else {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

impl RaftNetwork<TypeConfig> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        match self
            .call(RpcKind::AppendEntries, &rpc, option.hard_ttl())
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        match self.call(RpcKind::Vote, &rpc, option.hard_ttl()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let SnapshotData::Source(source) = *snapshot.snapshot else {
            return Err(StreamingError::StorageError(snapshot_err(
                std::io::Error::other("asked to send a snapshot that has no data"),
            )));
        };
        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(snapshot::DEFAULT_CHUNK_BYTES);
        let send =
            self.stream_snapshot(vote, snapshot.meta, source, chunk_bytes, option.hard_ttl());
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = send => res,
        }
    }
}

/// How fast a follower is assumed to install a snapshot at least (bytes/s), for the deadline
/// of the last chunk, whose answer waits for the install: every row is written to RocksDB.
const INSTALL_BYTES_PER_SEC: u64 = 16 << 20;

impl GroupClient {
    /// Sends a snapshot chunk by chunk, each chunk read off the runtime and answered before
    /// the next is read, so a transfer holds one chunk in memory on either side.
    async fn stream_snapshot(
        &self,
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, NodeInfo>,
        source: Arc<snapshot::SnapshotSource>,
        chunk_bytes: usize,
        deadline: Duration,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut reader = source.reader(chunk_bytes);
        let mut sent = 0u64;
        let mut seq = 0;
        loop {
            let (back, next) = tokio::task::spawn_blocking(move || {
                let next = reader.next_chunk();
                (reader, next)
            })
            .await
            .map_err(|e| StreamingError::StorageError(snapshot_err(e)))?;
            reader = back;
            let Some((data, done)) = next? else {
                return Err(StreamingError::StorageError(snapshot_err(
                    std::io::Error::other("a snapshot ended without its last chunk"),
                )));
            };
            sent += data.len() as u64;
            let deadline = if done {
                deadline + Duration::from_secs(sent / INSTALL_BYTES_PER_SEC)
            } else {
                deadline
            };
            let req = snapshot::ChunkRequest {
                vote,
                meta: meta.clone(),
                seq,
                done,
                data,
            };
            match self
                .call::<_, SnapshotResponse<NodeId>, Fatal<NodeId>>(
                    RpcKind::SnapshotChunk,
                    &req,
                    deadline,
                )
                .await
            {
                // Before the last chunk, a follower answers with its vote: a higher one ends
                // the transfer (openraft then steps this leader down).
                Ok(Ok(resp)) if done || resp.vote > vote => return Ok(resp),
                Ok(Ok(_)) => seq += 1,
                Ok(Err(fatal)) => {
                    return Err(StreamingError::RemoteError(RemoteError::new(
                        self.target,
                        fatal,
                    )));
                }
                Err(e) if e.unreachable() => {
                    return Err(StreamingError::Unreachable(Unreachable::new(&e)));
                }
                Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
            }
        }
    }
}
