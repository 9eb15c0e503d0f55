//! The storage crate's error type.

/// Failures of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error (I/O, corruption detected by a checksum, ...).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value could not be decoded: the bytes on disk are not what we wrote.
    #[error("corrupt value in {cf} at key {key:02x?}: {reason}")]
    Corrupt {
        /// Column family name.
        cf: &'static str,
        /// The key whose value failed to decode.
        key: Vec<u8>,
        /// The decoder's message.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

impl StorageError {
    /// A stable upper-snake code for logs and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::Rocks(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                "STORAGE_CORRUPT"
            }
            StorageError::Rocks(_) => "STORAGE_IO",
            StorageError::Corrupt { .. } => "STORAGE_CORRUPT",
            StorageError::Encode(_) => "STORAGE_ENCODE",
        }
    }

    /// Whether the node's data can no longer be trusted (it must stop serving and voting).
    pub fn is_corruption(&self) -> bool {
        self.code() == "STORAGE_CORRUPT"
    }
}
