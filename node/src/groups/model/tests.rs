//! State-machine tests of the coordinator's rules: joins, balance, the revocation handshake,
//! fencing, static membership, expiry and a seeded churn run that checks no partition is
//! ever owned by two members.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn topics(names: &[&str]) -> Option<BTreeSet<String>> {
    Some(names.iter().map(|s| s.to_string()).collect())
}

fn counts(t: &str) -> Option<u32> {
    match t {
        "a" => Some(6),
        "b" => Some(3),
        _ => None,
    }
}

struct Ids(u32);

impl Ids {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("m{}", self.0)
    }
}

fn join(g: &mut Group, ids: &mut Ids, t: &[&str], instance: Option<&str>) -> HeartbeatReply {
    g.heartbeat(
        Heartbeat {
            member_epoch: JOIN_EPOCH,
            topics: topics(t),
            instance_id: instance.map(str::to_string),
            ..Heartbeat::default()
        },
        &counts,
        &mut || ids.next(),
    )
    .expect("join")
}

fn beat(g: &mut Group, r: &HeartbeatReply, owned: Option<BTreeSet<Tp>>) -> HeartbeatReply {
    g.heartbeat(
        Heartbeat {
            member_id: Some(r.member_id.clone()),
            member_epoch: r.member_epoch,
            owned,
            ..Heartbeat::default()
        },
        &counts,
        &mut || unreachable!("no new member"),
    )
    .expect("heartbeat")
}

fn tps(t: &str, ps: &[u32]) -> BTreeSet<Tp> {
    ps.iter().map(|p| (t.to_string(), *p)).collect()
}

#[test]
fn a_lone_member_gets_every_partition_of_its_topics() {
    let mut g = Group::default();
    let mut ids = Ids(0);
    let r = join(&mut g, &mut ids, &["a", "b"], None);
    assert_eq!(r.member_epoch, 1);
    let mut want = tps("a", &[0, 1, 2, 3, 4, 5]);
    want.extend(tps("b", &[0, 1, 2]));
    assert_eq!(r.assigned, want);
    assert_eq!(g.state(), GroupStateName::Stable);
}

#[test]
fn a_partition_moves_only_after_its_owner_releases_it() {
    let mut g = Group::default();
    let mut ids = Ids(0);
    let a = join(&mut g, &mut ids, &["a"], None);
    let b = join(&mut g, &mut ids, &["a"], None);
    // B joined, but A still owns everything: B gets nothing yet.
    assert!(b.assigned.is_empty(), "{b:?}");
    assert_eq!(g.state(), GroupStateName::Reconciling);
    // A's heartbeat revokes half; its epoch stays until it releases them.
    let a2 = beat(&mut g, &a, None);
    assert_eq!(a2.assigned.len(), 3);
    assert_eq!(a2.revoking.len(), 3);
    assert_eq!(a2.member_epoch, a.member_epoch);
    // B still gets nothing while A holds the revoked partitions.
    let b2 = beat(&mut g, &b, None);
    assert!(b2.assigned.is_empty());
    // A reports it no longer owns them: it takes the new epoch.
    let a3 = beat(&mut g, &a2, Some(a2.assigned.clone()));
    assert!(a3.revoking.is_empty());
    assert_eq!(a3.member_epoch, g.epoch);
    // Now B gets them.
    let b3 = beat(&mut g, &b2, Some(BTreeSet::new()));
    assert_eq!(b3.assigned, a2.revoking);
    assert!(a3.assigned.is_disjoint(&b3.assigned));
    assert_eq!(g.state(), GroupStateName::Stable);
}

#[test]
fn a_member_that_still_owns_a_revoked_partition_keeps_it_revoking() {
    let mut g = Group::default();
    let mut ids = Ids(0);
    let a = join(&mut g, &mut ids, &["b"], None);
    let _b = join(&mut g, &mut ids, &["b"], None);
    let a2 = beat(&mut g, &a, None);
    assert_eq!(a2.revoking.len(), 1);
    // Reporting everything still owned releases nothing.
    let all: BTreeSet<Tp> = a2.assigned.union(&a2.revoking).cloned().collect();
    let a3 = beat(&mut g, &a2, Some(all));
    assert_eq!(a3.revoking, a2.revoking);
    assert_eq!(a3.member_epoch, a.member_epoch);
}

#[test]
fn removing_a_member_frees_its_partitions_for_the_others() {
    let mut g = Group::default();
    let mut ids = Ids(0);
    let a = join(&mut g, &mut ids, &["a"], None);
    let b = join(&mut g, &mut ids, &["a"], None);
    let a2 = beat(&mut g, &a, None);
    let a3 = beat(&mut g, &a2, Some(a2.assigned.clone()));
    let b2 = beat(&mut g, &b, None);
    assert_eq!(a3.assigned.len() + b2.assigned.len(), 6);
    assert!(g.remove_member(&a.member_id, &counts));
    let b3 = beat(&mut g, &b2, None);
    assert_eq!(b3.assigned, tps("a", &[0, 1, 2, 3, 4, 5]));
    // The removed member is fenced on its next heartbeat and commit.
    let err = g
        .heartbeat(
            Heartbeat {
                member_id: Some(a.member_id.clone()),
                member_epoch: a3.member_epoch,
                ..Heartbeat::default()
            },
            &counts,
            &mut || unreachable!(),
        )
        .expect_err("fenced");
    assert!(matches!(err, GroupError::Fenced(_)), "{err:?}");
    let commit = g.check_commit(Some((&a.member_id, a3.member_epoch)), &[("a".into(), 0)]);
    assert!(matches!(commit, Err(GroupError::Fenced(_))));
}

#[test]
fn a_stale_epoch_is_fenced_and_the_previous_one_tolerated() {
    let mut g = Group::default();
    let mut ids = Ids(0);
    let a = join(&mut g, &mut ids, &["a"], None);
    // Another member joins and leaves: A is bumped twice.
    let b = join(&mut g, &mut ids, &["a"], None);
    let a2 = beat(&mut g, &a, None);
    let a3 = beat(&mut g, &a2, Some(a2.assigned.clone()));
    assert!(a3.member_epoch > a.member_epoch);
    // The reply carrying the new epoch was lost: the previous epoch still works.
    let again = beat(&mut g, &a2, Some(a3.assigned.clone()));
    assert_eq!(again.member_epoch, a3.member_epoch);
    g.remove_member(&b.member_id, &counts);
    let a4 = beat(&mut g, &a3, None);
    assert!(a4.member_epoch > a3.member_epoch);
    // Two epochs back is stale.
    let err = g
        .heartbeat(
            Heartbeat {
                member_id: Some(a.member_id.clone()),
                member_epoch: a.member_epoch,
                ..Heartbeat::default()
            },
            &counts,
            &mut || unreachable!(),
        )
        .expect_err("stale");
    assert!(matches!(err, GroupError::Fenced(_)));
    assert!(
        g.check_commit(Some((&a.member_id, a.member_epoch)), &[])
            .is_err()
    );
}

#[test]
fn commits_need_ownership_or_an_empty_group() {
    let mut g = Group::default();
    assert!(g.check_commit(None, &[("a".into(), 0)]).is_ok());
    let mut ids = Ids(0);
    let a = join(&mut g, &mut ids, &["b"], None);
    assert!(g.check_commit(None, &[("b".into(), 0)]).is_err());
    assert!(
        g.check_commit(Some((&a.member_id, a.member_epoch)), &[("b".into(), 2)])
            .is_ok()
    );
    assert!(
        g.check_commit(Some((&a.member_id, a.member_epoch)), &[("a".into(), 0)])
            .is_err(),
        "a partition of a topic the member does not own"
    );
}

#[test]
fn a_static_member_back_within_its_session_keeps_its_partitions_without_a_rebalance() {
    let mut g = Group::default();
    let mut ids = Ids(0);
    let a = join(&mut g, &mut ids, &["a"], Some("worker-1"));
    let b = join(&mut g, &mut ids, &["a"], Some("worker-2"));
    let a2 = beat(&mut g, &a, None);
    let a3 = beat(&mut g, &a2, Some(a2.assigned.clone()));
    let b2 = beat(&mut g, &b, None);
    let epoch = g.epoch;
    // worker-1 restarts (crash: no leave) and rejoins with its instance id.
    let a_new = join(&mut g, &mut ids, &["a"], Some("worker-1"));
    assert_ne!(a_new.member_id, a.member_id);
    assert_eq!(a_new.assigned, a3.assigned);
    assert_eq!(g.epoch, epoch, "no rebalance");
    assert_eq!(beat(&mut g, &b2, None).assigned, b2.assigned);
    // The old incarnation is fenced.
    assert!(
        g.check_commit(Some((&a.member_id, a3.member_epoch)), &[])
            .is_err()
    );
    // A temporary leave (-2) keeps the partitions for the next incarnation too.
    let left = g
        .heartbeat(
            Heartbeat {
                member_id: Some(a_new.member_id.clone()),
                member_epoch: LEAVE_STATIC_EPOCH,
                ..Heartbeat::default()
            },
            &counts,
            &mut || unreachable!(),
        )
        .expect("leave");
    assert_eq!(left.member_epoch, LEAVE_STATIC_EPOCH);
    assert_eq!(beat(&mut g, &b2, None).assigned, b2.assigned);
    let a_back = join(&mut g, &mut ids, &["a"], Some("worker-1"));
    assert_eq!(a_back.assigned, a3.assigned);
    assert_eq!(g.epoch, epoch);
}

#[test]
fn a_topic_created_after_the_subscription_is_assigned_on_the_next_heartbeat() {
    let mut g = Group::default();
    let mut ids = Ids(0);
    let r = g
        .heartbeat(
            Heartbeat {
                member_epoch: JOIN_EPOCH,
                topics: topics(&["later"]),
                ..Heartbeat::default()
            },
            &|_| None,
            &mut || ids.next(),
        )
        .expect("join");
    assert!(r.assigned.is_empty());
    let r2 = g
        .heartbeat(
            Heartbeat {
                member_id: Some(r.member_id.clone()),
                member_epoch: r.member_epoch,
                ..Heartbeat::default()
            },
            &|t| (t == "later").then_some(2),
            &mut || unreachable!(),
        )
        .expect("heartbeat");
    assert_eq!(r2.assigned, tps("later", &[0, 1]));
}

#[test]
fn a_join_retried_with_the_members_own_id_is_one_member() {
    let mut g = Group::default();
    let hb = Heartbeat {
        member_id: Some("mine".into()),
        member_epoch: JOIN_EPOCH,
        topics: topics(&["a"]),
        ..Heartbeat::default()
    };
    let first = g
        .heartbeat(hb.clone(), &counts, &mut || unreachable!("own id"))
        .expect("join");
    // The reply was lost; the member sends the same join again.
    let again = g
        .heartbeat(hb, &counts, &mut || unreachable!("own id"))
        .expect("join again");
    assert_eq!(
        (first.member_id.as_str(), again.member_id.as_str()),
        ("mine", "mine")
    );
    assert_eq!(g.members.len(), 1);
    assert_eq!(again.assigned.len(), 6);
}

#[test]
fn joining_without_topics_and_odd_timeouts_are_invalid() {
    let mut g = Group::default();
    let err = g
        .heartbeat(
            Heartbeat {
                member_epoch: JOIN_EPOCH,
                ..Heartbeat::default()
            },
            &counts,
            &mut || "x".into(),
        )
        .expect_err("no topics");
    assert!(matches!(
        err,
        GroupError::Invalid("INVALID_SUBSCRIPTION", _)
    ));
    let err = g
        .heartbeat(
            Heartbeat {
                member_epoch: JOIN_EPOCH,
                topics: topics(&["a"]),
                rebalance_timeout_ms: Some(1),
                ..Heartbeat::default()
            },
            &counts,
            &mut || "x".into(),
        )
        .expect_err("timeout");
    assert!(matches!(err, GroupError::Invalid(..)));
    assert!(g.members.is_empty(), "nothing changed: {g:?}");
}

#[test]
fn the_target_is_balanced_and_sticky() {
    let mut g = Group::default();
    let mut ids = Ids(0);
    let mut replies: Vec<HeartbeatReply> = (0..4)
        .map(|_| join(&mut g, &mut ids, &["a", "b"], None))
        .collect();
    let sizes: Vec<usize> = g.target.values().map(BTreeSet::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 9);
    assert!(sizes.iter().all(|&n| n == 2 || n == 3), "{sizes:?}");
    let before = g.target.clone();
    // One member leaves: the others keep what they had.
    let gone = replies.remove(0);
    g.remove_member(&gone.member_id, &counts);
    for (id, t) in &g.target {
        assert!(before[id].is_subset(t), "{id} lost {:?}", before[id]);
    }
    let sizes: Vec<usize> = g.target.values().map(BTreeSet::len).collect();
    assert_eq!(sizes, [3, 3, 3]);
}

/// A tiny deterministic generator, so a failing seed replays exactly.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A simulated consumer: what it owns, and its last reply.
struct Client {
    reply: HeartbeatReply,
    owns: BTreeSet<Tp>,
}

#[test]
fn churn_never_gives_a_partition_to_two_members_and_settles_balanced() {
    for seed in 0..40 {
        let mut rng = Lcg(seed);
        let mut g = Group::default();
        let mut ids = Ids(0);
        let mut clients: BTreeMap<String, Client> = BTreeMap::new();
        for _step in 0..300 {
            match rng.below(10) {
                0 | 1 if clients.len() < 6 => {
                    let r = join(&mut g, &mut ids, &["a", "b"], None);
                    let owns = r.assigned.clone();
                    clients.insert(r.member_id.clone(), Client { reply: r, owns });
                }
                2 if !clients.is_empty() => {
                    // Expiry or leave: the coordinator removes it; the process is gone.
                    let k = rng.below(clients.len() as u64) as usize;
                    let id = clients.keys().nth(k).cloned().expect("k < len");
                    clients.remove(&id);
                    g.remove_member(&id, &counts);
                }
                _ if !clients.is_empty() => {
                    let k = rng.below(clients.len() as u64) as usize;
                    let id = clients.keys().nth(k).cloned().expect("k < len");
                    let c = clients.get_mut(&id).expect("present");
                    // Half the time the client has finished releasing what was revoked.
                    let release = rng.below(2) == 0;
                    if release {
                        c.owns = c.reply.assigned.clone();
                    }
                    let r = beat(&mut g, &c.reply, Some(c.owns.clone()));
                    // It may use what is assigned; it keeps what is revoking until released.
                    c.owns = r.assigned.union(&c.owns).cloned().collect();
                    c.owns
                        .retain(|tp| r.assigned.contains(tp) || r.revoking.contains(tp));
                    c.reply = r;
                }
                _ => {}
            }
            let mut seen: BTreeMap<&Tp, &String> = BTreeMap::new();
            for (id, c) in &clients {
                for tp in &c.owns {
                    if let Some(other) = seen.insert(tp, id) {
                        panic!("seed {seed}: {tp:?} owned by {other} and {id}");
                    }
                }
            }
        }
        // Churn stops: everyone heartbeats (releasing) until the group settles.
        for _round in 0..6 {
            for c in clients.values_mut() {
                c.owns = c.reply.assigned.clone();
                let r = beat(&mut g, &c.reply, Some(c.owns.clone()));
                c.owns = r.assigned.clone();
                c.reply = r;
            }
        }
        if clients.is_empty() {
            assert_eq!(g.state(), GroupStateName::Empty);
            continue;
        }
        assert_eq!(g.state(), GroupStateName::Stable, "seed {seed}: {g:#?}");
        let owned: usize = clients.values().map(|c| c.owns.len()).sum();
        assert_eq!(owned, 9, "seed {seed}: every partition owned once");
        let sizes: Vec<usize> = clients.values().map(|c| c.owns.len()).collect();
        let (min, max) = (sizes.iter().min(), sizes.iter().max());
        assert!(
            max.zip(min).is_some_and(|(a, b)| a - b <= 1),
            "seed {seed}: {sizes:?}"
        );
    }
}
