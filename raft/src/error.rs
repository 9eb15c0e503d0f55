//! The raft crate's error type.

use openraft::error::{Fatal, InitializeError, RaftError};

use crate::certs::CertError;
use crate::transport::TransportError;
use crate::types::NodeId;

/// Failures of the Raft layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node's storage failed.
    #[error(transparent)]
    Storage(#[from] chat4all_storage::StorageError),
    /// openraft's storage adapter failed while opening a state machine.
    #[error("state machine: {0}")]
    StateMachine(#[from] openraft::StorageError<NodeId>),
    /// A Raft instance stopped (storage failure or shutdown).
    #[error("raft stopped: {0}")]
    Fatal(#[from] Fatal<NodeId>),
    /// A fresh group could not be initialized.
    #[error("initialize: {0}")]
    Initialize(#[from] RaftError<NodeId, InitializeError<NodeId, crate::types::NodeInfo>>),
    /// openraft refused the configuration.
    #[error("raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    /// The QUIC transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl Error {
    /// A stable upper-snake code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Storage(e) => e.code(),
            Error::StateMachine(_) => "STATE_MACHINE",
            Error::Fatal(_) => "RAFT_STOPPED",
            Error::Initialize(_) => "RAFT_INITIALIZE",
            Error::Config(_) => "RAFT_CONFIG",
            Error::Transport(e) => e.code(),
            Error::Cert(e) => e.code(),
        }
    }
}
