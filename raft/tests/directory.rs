//! The directory inside the controller state machine, through openraft's state machine
//! interface on a real RocksDB: uniqueness rules decided in the apply (one email per user, one
//! owner per identity, also between entries of one apply call), audit entries per change, and a
//! snapshot that carries the rows to a fresh replica, replacing whatever it held.

use chat4all_raft::sm::controller::ControllerStateMachine;
use chat4all_raft::sm::directory::{
    AuditAction, Channel, DirectoryCommand, DirectoryResponse, Platform, User, UserType,
};
use chat4all_raft::types::{
    Command, CommandResponse, ControllerCommand, ControllerResponse, Entry,
};
use chat4all_storage::{Db, DbConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};

fn open() -> (tempfile::TempDir, ControllerStateMachine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&DbConfig::new(dir.path())).expect("open db");
    (dir, ControllerStateMachine::open(db).expect("open sm"))
}

fn user(id: &str, email: Option<&str>) -> User {
    User {
        id: id.into(),
        display_name: id.to_uppercase(),
        user_type: UserType::Customer,
        email: email.map(String::from),
        password_hash: None,
        metadata_json: None,
        admin: false,
        created_at_ms: 1,
        identities: Vec::new(),
    }
}

fn link(user_id: &str, pid: &str) -> DirectoryCommand {
    DirectoryCommand::LinkIdentity {
        user_id: user_id.into(),
        platform: Platform::Whatsapp,
        platform_user_id: pid.into(),
        at_ms: 2,
        actor: Some("admin".into()),
    }
}

fn entries(first: u64, cmds: Vec<DirectoryCommand>) -> Vec<Entry> {
    cmds.into_iter()
        .enumerate()
        .map(|(i, c)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), first + i as u64),
            payload: EntryPayload::Normal(Command::Controller(ControllerCommand::Directory(c))),
        })
        .collect()
}

async fn apply(
    sm: &mut ControllerStateMachine,
    first: u64,
    cmds: Vec<DirectoryCommand>,
) -> Vec<DirectoryResponse> {
    sm.apply(entries(first, cmds))
        .await
        .expect("apply")
        .into_iter()
        .map(|r| match r {
            CommandResponse::Controller(ControllerResponse::Directory(d)) => d,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn uniqueness_is_decided_in_the_apply_even_within_one_batch() {
    let (_d, mut sm) = open();
    // One apply call: the second user's email and the second link race the first ones.
    let r = apply(
        &mut sm,
        1,
        vec![
            DirectoryCommand::CreateUser {
                user: user("a", Some("x@example.com")),
                actor: None,
            },
            DirectoryCommand::CreateUser {
                user: user("b", Some("x@example.com")),
                actor: None,
            },
            DirectoryCommand::CreateUser {
                user: user("b", None),
                actor: None,
            },
            link("a", "15550001"),
            link("b", "15550001"),
            link("a", "15550001"),
            link("nobody", "15550002"),
        ],
    )
    .await;
    assert!(matches!(&r[0], DirectoryResponse::User(u) if u.id == "a"));
    assert_eq!(
        r[1],
        DirectoryResponse::EmailTaken {
            user_id: "a".into()
        }
    );
    assert!(matches!(&r[2], DirectoryResponse::User(u) if u.id == "b"));
    assert!(matches!(&r[3], DirectoryResponse::User(u) if u.identities.len() == 1));
    assert_eq!(
        r[4],
        DirectoryResponse::IdentityTaken {
            user_id: "a".into()
        }
    );
    // Linking again to the same user is a no-op, not a second identity or audit entry.
    assert!(matches!(&r[5], DirectoryResponse::User(u) if u.identities.len() == 1));
    assert_eq!(r[6], DirectoryResponse::UnknownUser);

    let dir = sm.directory();
    assert_eq!(
        dir.user_by_email("x@example.com")
            .expect("read")
            .map(|u| u.id),
        Some("a".into())
    );
    assert_eq!(
        dir.resolve(Platform::Whatsapp, "15550001")
            .expect("read")
            .map(|u| u.id),
        Some("a".into())
    );
    let audit = dir.audit("a", None, 100).expect("audit");
    let actions: Vec<_> = audit.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![AuditAction::UserCreated, AuditAction::IdentityLinked]
    );

    // Unlink frees the identity for another user; the audit shows both changes in order.
    let r = apply(
        &mut sm,
        8,
        vec![
            DirectoryCommand::UnlinkIdentity {
                user_id: "b".into(),
                platform: Platform::Whatsapp,
                platform_user_id: "15550001".into(),
                at_ms: 3,
                actor: None,
            },
            DirectoryCommand::UnlinkIdentity {
                user_id: "a".into(),
                platform: Platform::Whatsapp,
                platform_user_id: "15550001".into(),
                at_ms: 3,
                actor: None,
            },
            link("b", "15550001"),
        ],
    )
    .await;
    assert_eq!(r[0], DirectoryResponse::NotLinked);
    assert!(matches!(&r[1], DirectoryResponse::User(u) if u.identities.is_empty()));
    assert!(matches!(&r[2], DirectoryResponse::User(u) if u.identities.len() == 1));
    let audit = dir.audit("a", None, 100).expect("audit");
    assert_eq!(
        audit.last().map(|e| e.action),
        Some(AuditAction::IdentityUnlinked)
    );
    assert!(audit.windows(2).all(|w| w[0].seq < w[1].seq));
    // Paging: after the first entry's seq comes the rest.
    let rest = dir.audit("a", Some(audit[0].seq), 100).expect("audit");
    assert_eq!(rest, audit[1..].to_vec());
    // Users list in id order, paged by the last id.
    let first = dir.users(None, 1).expect("users");
    assert_eq!(
        first.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        vec!["a"]
    );
    let next = dir.users(Some("a"), 10).expect("users");
    assert_eq!(
        next.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
}

#[tokio::test]
async fn a_snapshot_carries_the_directory_and_replaces_what_a_replica_held() {
    let (_d1, mut leader) = open();
    apply(
        &mut leader,
        1,
        vec![
            DirectoryCommand::CreateUser {
                user: user("a", Some("a@example.com")),
                actor: None,
            },
            link("a", "15550001"),
            DirectoryCommand::InitTokenKey { key: vec![7; 32] },
        ],
    )
    .await;
    // As openraft ships one: built (which marks the point), then read as the current one.
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let snap = leader
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot once one is built");
    assert_eq!(snap.meta, built.meta);

    // The replica holds a user the leader's history does not have: the snapshot replaces it.
    let (_d2, mut replica) = open();
    apply(
        &mut replica,
        1,
        vec![DirectoryCommand::CreateUser {
            user: user("stale", Some("s@example.com")),
            actor: None,
        }],
    )
    .await;
    replica
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    let dir = replica.directory();
    assert!(dir.user("stale").expect("read").is_none());
    assert!(dir.user_by_email("s@example.com").expect("read").is_none());
    assert_eq!(
        dir.resolve(Platform::Whatsapp, "15550001")
            .expect("read")
            .map(|u| u.id),
        Some("a".into())
    );
    assert_eq!(dir.audit("a", None, 10).expect("audit").len(), 2);
    assert_eq!(replica.state().directory.token_key, Some(vec![7; 32]));
    // The token key is set once: a second proposal answers the key in force.
    let r = apply(
        &mut replica,
        4,
        vec![DirectoryCommand::InitTokenKey { key: vec![9; 32] }],
    )
    .await;
    assert_eq!(r[0], DirectoryResponse::TokenKey(vec![7; 32]));
    // And the audit sequence continues after the snapshot's.
    let r = apply(&mut replica, 5, vec![link("a", "15550009")]).await;
    assert!(matches!(&r[0], DirectoryResponse::User(_)));
    let audit = dir.audit("a", None, 10).expect("audit");
    assert_eq!(
        audit.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

fn channel(name: &str) -> Channel {
    Channel {
        name: name.into(),
        platform: Platform::Telegram,
        credentials: vec![("bot_token".into(), "123:SECRET".into())],
        webhook_secret: Some("whsec".into()),
        verify_token: None,
        agents: vec!["agent".into()],
        template: None,
        account_id: "123".into(),
        account_name: Some("bot".into()),
        created_at_ms: 5,
        created_by: Some("admin".into()),
    }
}

fn contact(id: &str, pid: &str) -> DirectoryCommand {
    DirectoryCommand::EnsureContact {
        user: user(id, None),
        platform: Platform::Telegram,
        platform_user_id: pid.into(),
    }
}

#[tokio::test]
async fn a_contact_racing_itself_makes_one_user_and_channels_are_unique_by_name() {
    let (_d, mut sm) = open();
    let r = apply(
        &mut sm,
        1,
        vec![
            contact("x-1", "111"),
            // The same contact processed again (another node, or a replay): the first user.
            contact("x-1", "111"),
            // A different proposal for the same identity still finds the owner.
            contact("x-other", "111"),
            DirectoryCommand::PutChannel(Box::new(channel("tg"))),
            DirectoryCommand::PutChannel(Box::new(channel("tg"))),
        ],
    )
    .await;
    for answer in &r[..3] {
        match answer {
            DirectoryResponse::User(u) => {
                assert_eq!(u.id, "x-1");
                assert_eq!(u.identities.len(), 1);
            }
            other => panic!("expected the contact's user, got {other:?}"),
        }
    }
    assert!(matches!(&r[3], DirectoryResponse::Channel(_)));
    assert!(matches!(&r[4], DirectoryResponse::ChannelExists(_)));
    let dir = sm.directory();
    assert!(dir.user("x-other").expect("read").is_none());
    assert_eq!(
        dir.resolve(Platform::Telegram, "111")
            .expect("read")
            .map(|u| u.id),
        Some("x-1".into())
    );
    // Created once, linked once: two audit entries however often it was proposed.
    let actions: Vec<_> = dir
        .audit("x-1", None, 10)
        .expect("audit")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        vec![AuditAction::UserCreated, AuditAction::IdentityLinked]
    );
    assert_eq!(dir.channels().expect("channels").len(), 1);
    // Secrets never reach a log line through Debug.
    let shown = format!("{:?}", dir.channel("tg").expect("read"));
    assert!(
        !shown.contains("SECRET") && !shown.contains("whsec"),
        "{shown}"
    );

    let r = apply(
        &mut sm,
        6,
        vec![
            DirectoryCommand::DeleteChannel {
                name: "tg".into(),
                at_ms: 9,
                actor: None,
            },
            DirectoryCommand::DeleteChannel {
                name: "tg".into(),
                at_ms: 9,
                actor: None,
            },
        ],
    )
    .await;
    assert!(matches!(&r[0], DirectoryResponse::Channel(_)));
    assert_eq!(r[1], DirectoryResponse::UnknownChannel);
    assert!(dir.channel("tg").expect("read").is_none());
    let audit = dir.audit("channel:tg", None, 10).expect("audit");
    assert_eq!(
        audit.iter().map(|e| e.action).collect::<Vec<_>>(),
        vec![AuditAction::ChannelCreated, AuditAction::ChannelDeleted]
    );
}

#[tokio::test]
async fn only_a_directory_that_never_had_an_admin_takes_a_first_admin() {
    let (_d, mut sm) = open();
    let admin = |id: &str| User {
        admin: true,
        ..user(id, Some(&format!("{id}@example.com")))
    };
    // Two nodes race to create the first admin in one apply call: the first wins.
    let r = apply(
        &mut sm,
        1,
        vec![
            DirectoryCommand::CreateUser {
                user: user("plain", None),
                actor: None,
            },
            DirectoryCommand::CreateFirstAdmin { user: admin("n1") },
            DirectoryCommand::CreateFirstAdmin { user: admin("n2") },
        ],
    )
    .await;
    assert!(matches!(&r[1], DirectoryResponse::User(u) if u.id == "n1" && u.admin));
    assert_eq!(
        r[2],
        DirectoryResponse::AdminExists {
            user_id: "n1".into()
        }
    );
    let dir = sm.directory();
    assert_eq!(dir.first_admin().expect("read").as_deref(), Some("n1"));
    assert!(dir.user("n2").expect("read").is_none());

    // An admin created the ordinary way (the environment's, or through the API) counts too.
    let (_d2, mut sm2) = open();
    let r = apply(
        &mut sm2,
        1,
        vec![
            DirectoryCommand::CreateUser {
                user: admin("env"),
                actor: None,
            },
            DirectoryCommand::CreateUser {
                user: admin("second"),
                actor: Some("env".into()),
            },
            DirectoryCommand::CreateFirstAdmin { user: admin("gen") },
        ],
    )
    .await;
    assert_eq!(
        r[2],
        DirectoryResponse::AdminExists {
            user_id: "env".into()
        }
    );
    assert_eq!(
        sm2.directory().first_admin().expect("read").as_deref(),
        Some("env")
    );
}
