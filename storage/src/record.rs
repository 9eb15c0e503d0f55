//! The record as stored in a partition log.

use serde::{Deserialize, Serialize};

/// How a payload's bytes were given by the producer, so a fetch can give them back the same way.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    /// A UTF-8 string.
    Text,
    /// A JSON value other than a string, stored as its compact serialization.
    Json,
    /// Arbitrary bytes (sent base64-encoded over REST).
    Binary,
}

/// A key or value: bytes plus the format they arrived in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// How to render `bytes` back to a client.
    pub format: PayloadFormat,
    /// The payload itself.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// One record of a partition log, at its offset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Milliseconds since the Unix epoch, assigned by the leader when it proposed the batch, so
    /// every replica stores the same value.
    pub timestamp_ms: i64,
    /// The record key, if any.
    pub key: Option<Payload>,
    /// The record value.
    pub value: Payload,
    /// Headers in the order given (Kafka allows repeated names).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl StoredRecord {
    /// Bytes the record accounts for in size-based retention: key, value and headers.
    pub fn size_bytes(&self) -> u64 {
        let key = self.key.as_ref().map_or(0, |k| k.bytes.len());
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (key + self.value.bytes.len() + headers) as u64
    }
}
