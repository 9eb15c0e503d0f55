//! How groups live in `__consumer_offsets`: one record per group (key `g/<group>`, value the
//! whole [`Group`] as JSON) and one per committed offset (key `o/<group>/<topic>/<partition>`).
//! The topic is compacted, so the latest record of each key is one lookup; JSON keeps the
//! records readable with an ordinary fetch. Names cannot contain `/`, so keys are unambiguous.

use chat4all_storage::{Payload, PayloadFormat, StoredRecord};
use serde::{Deserialize, Serialize};

use super::model::{Group, Tp};

/// A committed offset as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to read.
    pub offset: u64,
    /// The client's metadata string.
    pub metadata: Option<String>,
    /// When it was committed, ms since the epoch.
    pub committed_at_ms: i64,
}

/// Prefix of every group record.
pub const GROUP_PREFIX: &str = "g/";

/// The key of a group's record.
pub fn group_key(group: &str) -> String {
    format!("{GROUP_PREFIX}{group}")
}

/// The prefix of a group's offset records.
pub fn offsets_prefix(group: &str) -> String {
    format!("o/{group}/")
}

/// The key of one committed offset.
pub fn offset_key(group: &str, (topic, partition): &Tp) -> String {
    format!("o/{group}/{topic}/{partition}")
}

/// The topic and partition of an offset key of `group`.
pub fn parse_offset_key(group: &str, key: &[u8]) -> Option<Tp> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(&offsets_prefix(group))?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some((topic.to_string(), partition.parse().ok()?))
}

/// A record of `__consumer_offsets`.
pub fn record(key: String, value: &impl Serialize, now_ms: i64) -> Result<StoredRecord, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    Ok(StoredRecord {
        timestamp_ms: now_ms,
        key: Some(Payload {
            format: PayloadFormat::Text,
            bytes: key.into_bytes(),
        }),
        value: Payload {
            format: PayloadFormat::Json,
            bytes,
        },
        headers: Vec::new(),
    })
}

/// Decodes a group record's value.
pub fn decode_group(r: &StoredRecord) -> Result<Group, String> {
    serde_json::from_slice(&r.value.bytes).map_err(|e| format!("bad group record: {e}"))
}

/// Decodes an offset record's value.
pub fn decode_offset(r: &StoredRecord) -> Result<Committed, String> {
    serde_json::from_slice(&r.value.bytes).map_err(|e| format!("bad offset record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_keys_round_trip_and_stay_in_their_group() {
        let tp: Tp = ("chat.messages".into(), 12);
        let k = offset_key("router", &tp);
        assert_eq!(parse_offset_key("router", k.as_bytes()), Some(tp));
        assert_eq!(parse_offset_key("route", k.as_bytes()), None);
        assert!(!k.starts_with(&offsets_prefix("router2")));
    }

    #[test]
    fn group_records_round_trip() {
        let g = Group::default();
        let r = record(group_key("x"), &g, 5).expect("encode");
        assert_eq!(decode_group(&r), Ok(g));
    }
}
