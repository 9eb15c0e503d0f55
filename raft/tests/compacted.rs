//! A compacted partition's key view and log compaction, through openraft's state machine
//! interface on a real RocksDB: the view follows the latest record of each key (tombstones
//! delete), compaction keeps exactly those records at their offsets, a snapshot carries them
//! to a fresh replica that rebuilds the same view, and a partition that is not compacted
//! ignores compaction.

mod common;

use chat4all_raft::sm::partition::{PartitionKind, PartitionStateMachine};
use chat4all_raft::types::{
    AppendBatch, Command, CommandResponse, Entry, PartitionCommand, PartitionResponse,
};
use chat4all_storage::{Payload, PayloadFormat, StoredRecord};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

use common::{open, replica_of};

fn record(key: &str, value: &str) -> StoredRecord {
    let (format, bytes) = match value {
        "null" => (PayloadFormat::Json, b"null".to_vec()),
        v => (PayloadFormat::Text, v.as_bytes().to_vec()),
    };
    StoredRecord {
        timestamp_ms: 1,
        key: Some(Payload {
            format: PayloadFormat::Text,
            bytes: key.as_bytes().to_vec(),
        }),
        value: Payload { format, bytes },
        headers: Vec::new(),
    }
}

fn entry(index: u64, cmd: PartitionCommand) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Partition(cmd)),
    }
}

/// Offsets 0..6: a=a0, b=b1, a=a2, c=c3, c=null (tombstone), a=a5.
fn appends() -> Vec<Entry> {
    let kv = [
        ("a", "a0"),
        ("b", "b1"),
        ("a", "a2"),
        ("c", "c3"),
        ("c", "null"),
        ("a", "a5"),
    ];
    kv.iter()
        .enumerate()
        .map(|(i, (k, v))| {
            entry(
                i as u64 + 1,
                PartitionCommand::Append(AppendBatch {
                    producer: None,
                    records: vec![record(k, v)],
                }),
            )
        })
        .collect()
}

fn view(sm: &PartitionStateMachine) -> Vec<(String, u64, String)> {
    sm.latest_with_prefix(b"")
        .expect("view")
        .into_iter()
        .map(|(k, off, r)| {
            (
                String::from_utf8_lossy(&k).to_string(),
                off,
                String::from_utf8_lossy(&r.value.bytes).to_string(),
            )
        })
        .collect()
}

fn offsets(sm: &PartitionStateMachine) -> Vec<u64> {
    sm.read(0, 100, u64::MAX)
        .expect("read")
        .expect("in range")
        .records
        .into_iter()
        .map(|(o, _)| o)
        .collect()
}

#[tokio::test]
async fn compaction_keeps_the_latest_record_of_each_key_and_a_snapshot_carries_it() {
    let (_dir, mut sm) = open(PartitionKind::Compacted);
    sm.apply(appends()).await.expect("apply");
    let latest = vec![("a".into(), 5, "a5".into()), ("b".into(), 1, "b1".into())];
    assert_eq!(view(&sm), latest);
    assert_eq!(offsets(&sm), [0, 1, 2, 3, 4, 5]);

    // Compacting below 5 keeps b@1 (its latest) and everything from 5 on.
    let r = sm
        .apply([entry(7, PartitionCommand::Compact { below: 5 })])
        .await
        .expect("compact");
    assert_eq!(
        r,
        [CommandResponse::Partition(PartitionResponse::Compacted {
            removed: 4
        })]
    );
    assert_eq!(offsets(&sm), [1, 5]);
    assert_eq!(view(&sm), latest);
    let state = sm.state();
    assert_eq!((state.log_start_offset, state.next_offset), (0, 6));
    assert_eq!(state.total_bytes, ("b".len() + 2 + "a".len() + 2) as u64);

    // A fresh replica installs the snapshot and has the same records and view.
    let (_dir2, mut other) = replica_of(&mut sm, PartitionKind::Compacted).await;
    assert_eq!(offsets(&other), [1, 5]);
    assert_eq!(view(&other), latest);
    // Appends continue at the same next offset.
    let r = other
        .apply([entry(
            8,
            PartitionCommand::Append(AppendBatch {
                producer: None,
                records: vec![record("b", "b6")],
            }),
        )])
        .await
        .expect("append");
    assert!(
        matches!(
            r.as_slice(),
            [CommandResponse::Partition(PartitionResponse::Appended {
                base_offset: 6,
                ..
            })]
        ),
        "{r:?}"
    );
    assert_eq!(view(&other)[1], ("b".into(), 6, "b6".into()));
}

#[tokio::test]
async fn a_partition_that_is_not_compacted_keeps_everything() {
    let (_dir, mut sm) = open(PartitionKind::Log);
    sm.apply(appends()).await.expect("apply");
    let r = sm
        .apply([entry(7, PartitionCommand::Compact { below: 6 })])
        .await
        .expect("compact");
    assert_eq!(
        r,
        [CommandResponse::Partition(PartitionResponse::Compacted {
            removed: 0
        })]
    );
    assert_eq!(offsets(&sm), [0, 1, 2, 3, 4, 5]);
    assert!(view(&sm).is_empty());
}
