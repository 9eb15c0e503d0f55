//! Chat and inbox partitions through openraft's state machine interface on a real RocksDB:
//! a repeated `message_id` is stored once even within one apply call, a refused command
//! appends nothing, accepted events carry their recipients and are in their streams (waking
//! those readers only), an inbox (a delivery queue) takes each event once per user, also when
//! a router delivers it again, and a snapshot carries the rows to a fresh replica that then
//! decides alike.

mod common;

use chat4all_raft::sm::chat::{
    ChatCommand, ChatResponse, Conversation, ConversationKind, MessageStatus, Participant,
    recipients,
};
use chat4all_raft::sm::partition::{PartitionKind, PartitionStateMachine};
use chat4all_raft::types::{Command, CommandResponse, Entry, PartitionCommand, PartitionResponse};
use chat4all_storage::{Payload, PayloadFormat, StoredRecord};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

use common::{open, replica_of};

fn record(text: &str) -> StoredRecord {
    StoredRecord {
        timestamp_ms: 1,
        key: None,
        value: Payload {
            format: PayloadFormat::Text,
            bytes: text.as_bytes().to_vec(),
        },
        headers: Vec::new(),
    }
}

fn conversation(id: &str, users: &[&str]) -> ChatCommand {
    ChatCommand::CreateConversation {
        conversation: Conversation {
            id: id.into(),
            kind: ConversationKind::Group,
            title: None,
            primary_channel: None,
            created_by: users[0].into(),
            created_at_ms: 1,
            participants: users
                .iter()
                .map(|u| Participant {
                    user_id: u.to_string(),
                    joined_offset: 0,
                    joined_at_ms: 1,
                })
                .collect(),
            message_count: 0,
            last_message_at_ms: None,
            last_offset: 0,
        },
        record: record("created"),
    }
}

fn send(id: &str, sender: &str) -> ChatCommand {
    ChatCommand::Send {
        message_id: id.into(),
        conversation_id: "c".into(),
        sender_id: sender.into(),
        at_ms: 2,
        status: MessageStatus::Pending,
        record: record(id),
    }
}

fn deliver(partition: u32, offset: u64, users: &[&str]) -> ChatCommand {
    ChatCommand::Deliver {
        source_partition: partition,
        source_offset: offset,
        users: users.iter().map(|u| u.to_string()).collect(),
        record: record(&format!("{partition}/{offset}")),
    }
}

async fn apply(
    sm: &mut PartitionStateMachine,
    first: u64,
    cmds: Vec<ChatCommand>,
) -> Vec<ChatResponse> {
    let entries: Vec<Entry> = cmds
        .into_iter()
        .enumerate()
        .map(|(i, c)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), first + i as u64),
            payload: EntryPayload::Normal(Command::Partition(PartitionCommand::Chat(Box::new(c)))),
        })
        .collect();
    sm.apply(entries)
        .await
        .expect("apply")
        .into_iter()
        .map(|r| match r {
            CommandResponse::Partition(PartitionResponse::Chat(c)) => c,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_message_id_is_stored_once_and_refusals_append_nothing() {
    let (_d, mut sm) = open(PartitionKind::Chat);
    let r = apply(
        &mut sm,
        1,
        vec![
            conversation("c", &["ann", "ben"]),
            send("m1", "ann"),
            send("m1", "ann"),
            send("m2", "zed"),
            deliver(0, 0, &["ann"]),
        ],
    )
    .await;
    assert!(
        matches!(&r[1], ChatResponse::Message { duplicate: false, state } if state.offset == 1)
    );
    assert!(matches!(&r[2], ChatResponse::Message { duplicate: true, state } if state.offset == 1));
    assert_eq!(r[3], ChatResponse::NotParticipant);
    assert_eq!(
        r[4],
        ChatResponse::NotChat,
        "a delivery has no place in a chat partition"
    );
    // Two records: the conversation and one message, each stamped with its recipients.
    assert_eq!(sm.state().next_offset, 2);
    let read = sm.read(0, 10, u64::MAX).expect("read").expect("in range");
    for (_, rec) in &read.records {
        assert_eq!(recipients(rec), vec!["ann".to_string(), "ben".to_string()]);
    }
    let history = sm
        .chat()
        .history(
            "c",
            chat4all_raft::sm::chat::HistoryPage::Before(None),
            0,
            10,
        )
        .expect("history");
    assert_eq!(history, vec![(1, "m1".to_string())]);
}

/// A `Many` entry (the router's batches) answers and stores exactly what the same writes in
/// entries of their own do, a message id repeated within the entry included.
#[tokio::test]
async fn writes_in_one_many_entry_act_as_in_entries_of_their_own() {
    let cmds = || {
        vec![
            conversation("c", &["ann", "ben"]),
            send("m1", "ann"),
            send("m1", "ann"),
            send("m2", "zed"),
            send("m3", "ben"),
        ]
    };
    let (_d1, mut alone) = open(PartitionKind::Chat);
    let separate = apply(&mut alone, 1, cmds()).await;
    let (_d2, mut together) = open(PartitionKind::Chat);
    let batched = apply(&mut together, 1, vec![ChatCommand::Many(cmds())]).await;
    assert_eq!(batched, vec![ChatResponse::Many(separate)]);
    let records = |sm: &PartitionStateMachine| {
        sm.read(0, 10, u64::MAX)
            .expect("read")
            .expect("in range")
            .records
    };
    assert_eq!(records(&together), records(&alone));
    assert_eq!(together.state().next_offset, 3);
}

fn set_status(id: &str, status: MessageStatus, by: Option<&str>) -> ChatCommand {
    ChatCommand::SetStatus {
        message_id: id.into(),
        status,
        by: by.map(str::to_string),
        at_ms: 3,
        record: record(&format!("{id} {status:?}")),
    }
}

#[tokio::test]
async fn a_status_change_goes_to_the_sender_and_the_reporting_recipient_only() {
    let (_d, mut sm) = open(PartitionKind::Chat);
    let r = apply(
        &mut sm,
        1,
        vec![
            conversation("c", &["ann", "ben", "cat"]),
            send("m1", "ann"),
            set_status("m1", MessageStatus::Sent, None),
            set_status("m1", MessageStatus::Read, Some("ben")),
            // Not a change (READ does not move back): no event at all.
            set_status("m1", MessageStatus::Delivered, Some("cat")),
        ],
    )
    .await;
    assert!(
        matches!(&r[3], ChatResponse::Status { changed: true, .. }),
        "{:?}",
        r[3]
    );
    assert!(matches!(&r[4], ChatResponse::Status { changed: false, .. }));
    let read = sm.read(0, 10, u64::MAX).expect("read").expect("in range");
    let stamped: Vec<Vec<String>> = read.records.iter().map(|(_, r)| recipients(r)).collect();
    let users = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        stamped,
        vec![
            users(&["ann", "ben", "cat"]), // the conversation
            users(&["ann", "ben", "cat"]), // the message
            users(&["ann"]),               // SENT: the sender's concern
            users(&["ann", "ben"]),        // READ by ben: the sender, and ben's other devices
        ]
    );
}

#[tokio::test]
async fn an_inbox_takes_each_event_once_and_a_snapshot_keeps_it_that_way() {
    let (_d, mut sm) = open(PartitionKind::Inbox);
    let r = apply(
        &mut sm,
        1,
        vec![
            deliver(0, 5, &["u1", "u2"]),
            // The router read offset 5 again after a restart, and an older one.
            deliver(0, 5, &["u1", "u2"]),
            deliver(0, 3, &["u1"]),
            deliver(1, 0, &["u1"]),
            send("m", "u1"),
        ],
    )
    .await;
    assert_eq!(
        r[0],
        ChatResponse::Delivered(vec![("u1".into(), 1), ("u2".into(), 1)])
    );
    assert_eq!(r[1], ChatResponse::Delivered(vec![]));
    assert_eq!(r[2], ChatResponse::Delivered(vec![]));
    assert_eq!(r[3], ChatResponse::Delivered(vec![("u1".into(), 2)]));
    assert_eq!(r[4], ChatResponse::NotChat);
    assert_eq!(sm.state().next_offset, 3);
    let inbox = sm.chat();
    assert_eq!(
        inbox.inbox("u1", 0, 10).expect("inbox"),
        vec![(1, 0), (2, 2)]
    );
    assert_eq!(inbox.inbox("u1", 1, 10).expect("inbox"), vec![(2, 2)]);
    assert_eq!(inbox.inbox_last_seq("u2").expect("seq"), 1);
    // Each inbox record is keyed by its user.
    let read = sm.read(0, 10, u64::MAX).expect("read").expect("in range");
    let keys: Vec<String> = read
        .records
        .iter()
        .map(|(_, r)| String::from_utf8_lossy(&r.key.as_ref().expect("key").bytes).into_owned())
        .collect();
    assert_eq!(keys, vec!["u1", "u2", "u1"]);

    let (_d2, mut replica) = replica_of(&mut sm, PartitionKind::Inbox).await;
    assert_eq!(
        replica.chat().inbox("u1", 0, 10).expect("inbox"),
        vec![(1, 0), (2, 2)]
    );
    let r = apply(
        &mut replica,
        6,
        vec![deliver(1, 0, &["u1"]), deliver(1, 1, &["u1"])],
    )
    .await;
    assert_eq!(r[0], ChatResponse::Delivered(vec![]));
    assert_eq!(r[1], ChatResponse::Delivered(vec![("u1".into(), 3)]));
}

#[tokio::test]
async fn notes_live_in_inbox_partitions_only_append_nothing_and_survive_a_snapshot() {
    let note = |owner: &str, name: &str, value: &str| ChatCommand::Note {
        owner: owner.into(),
        name: name.into(),
        value: value.into(),
    };
    let (_d, mut sm) = open(PartitionKind::Inbox);
    let r = apply(
        &mut sm,
        1,
        vec![
            note("tg/111", "last_inbound", "5"),
            note("tg/111", "last_inbound", "9"),
            note("tg/1110", "last_inbound", "7"),
        ],
    )
    .await;
    assert!(r.iter().all(|a| *a == ChatResponse::Noted), "{r:?}");
    assert_eq!(sm.state().next_offset, 0, "a note appends no record");
    let read = |sm: &PartitionStateMachine, owner: &str| {
        sm.chat().note(owner, "last_inbound").expect("note")
    };
    assert_eq!(read(&sm, "tg/111").as_deref(), Some("9"));
    assert_eq!(read(&sm, "tg/1110").as_deref(), Some("7"));
    assert_eq!(read(&sm, "tg/11"), None);

    let (_d2, replica) = replica_of(&mut sm, PartitionKind::Inbox).await;
    assert_eq!(read(&replica, "tg/111").as_deref(), Some("9"));

    // A chat partition refuses notes.
    let (_d3, mut chat) = open(PartitionKind::Chat);
    let r = apply(&mut chat, 1, vec![note("tg/111", "x", "y")]).await;
    assert_eq!(r, vec![ChatResponse::NotChat]);
}

#[tokio::test]
async fn a_users_stream_holds_the_events_stamped_for_them_and_wakes_them_only() {
    let (_d, mut sm) = open(PartitionKind::Chat);
    let ann = sm.watch_user("ann");
    let mut cy = sm.watch_user("cy");
    // Offsets: 0 created (ann, ben), 1 m1, 2 m2.
    apply(
        &mut sm,
        1,
        vec![
            conversation("c", &["ann", "ben"]),
            send("m1", "ann"),
            send("m2", "ben"),
        ],
    )
    .await;
    assert!(ann.has_changed().expect("open"));
    assert!(
        !cy.has_changed().expect("open"),
        "cy woken by others' events"
    );
    let chat = sm.chat();
    assert_eq!(chat.stream("ann", 0, 10).expect("read"), vec![0, 1, 2]);
    assert_eq!(chat.stream("ben", 2, 10).expect("read"), vec![2]);
    assert_eq!(chat.stream("ann", 0, 2).expect("read"), vec![0, 1]);
    assert_eq!(chat.stream("an", 0, 10).expect("read"), Vec::<u64>::new());
    assert_eq!(chat.stream("cy", 0, 10).expect("read"), Vec::<u64>::new());

    // A refused send (cy is not in it) indexes nothing; a repeat adds nothing; cy joins and
    // sees events from then on, not before.
    let r = apply(
        &mut sm,
        4,
        vec![
            send("m3", "cy"),
            send("m1", "ann"),
            ChatCommand::AddParticipant {
                conversation_id: "c".into(),
                user_id: "cy".into(),
                by: Some("ann".into()),
                at_ms: 3,
                record: record("joined"),
            },
            send("m4", "cy"),
        ],
    )
    .await;
    assert_eq!(r[0], ChatResponse::NotParticipant);
    assert!(cy.has_changed().expect("open"));
    cy.mark_unchanged();
    assert_eq!(sm.chat().stream("cy", 0, 10).expect("read"), vec![3, 4]);
    assert_eq!(sm.chat().stream("ann", 3, 10).expect("read"), vec![3, 4]);

    // The index travels in a snapshot.
    let (_d2, replica) = replica_of(&mut sm, PartitionKind::Chat).await;
    assert_eq!(
        replica.chat().stream("ann", 0, 10).expect("read"),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(
        replica.chat().stream("cy", 0, 10).expect("read"),
        vec![3, 4]
    );
}
