//! Checker self-tests over hand-built histories: a clean handover, then each anomaly alone.

use super::*;
use crate::anomaly::Anomaly;
use crate::ids::{Key, Offset};
use crate::op::{
    Call, Commit, Heartbeat, HeartbeatReply, JOIN_EPOCH, LEAVE_EPOCH, Offsets, OpType, Poll,
};
use crate::testing::{Script, all_found, poll_call, send_call};
use crate::verdict::Validity;

const TIMEOUTS: Timeouts = Timeouts {
    session_ms: 3_000,
    rebalance_ms: 600_000,
    slack_ms: 500,
};

/// Operations at times in ms, pushed in time order (completions before invocations at equal
/// times, then in the order they were added; so no operation may take 0 ms).
#[derive(Default)]
struct Timeline {
    /// (time ms, completion?, sequence, process, kind, call)
    events: Vec<(u64, bool, usize, u64, OpType, Call)>,
}

impl Timeline {
    /// One operation from `start` to `end` ms; returns its handle for [`Built::index`].
    fn pair(
        &mut self,
        process: u64,
        [start, end]: [u64; 2],
        kind: OpType,
        invoke: Call,
        done: Call,
    ) -> usize {
        let seq = self.events.len();
        self.events
            .push((start, false, seq, process, OpType::Invoke, invoke));
        self.events.push((end, true, seq + 1, process, kind, done));
        seq + 1
    }

    fn join(&mut self, process: u64, span: [u64; 2], reply: HeartbeatReply) -> usize {
        let invoke = Heartbeat {
            epoch: JOIN_EPOCH,
            ..Heartbeat::default()
        };
        let done = Heartbeat {
            reply: Some(reply),
            ..invoke.clone()
        };
        self.pair(
            process,
            span,
            OpType::Ok,
            Call::Heartbeat(invoke),
            Call::Heartbeat(done),
        )
    }

    /// A stay heartbeat: `reply` for `ok`, or a refusal `code` for `fail`, or `info`.
    fn stay(
        &mut self,
        process: u64,
        span: [u64; 2],
        (member, epoch): (&str, i64),
        owned: &[u64],
        outcome: Result<HeartbeatReply, Option<&str>>,
    ) -> usize {
        let invoke = Heartbeat {
            member: Some(member.to_owned()),
            epoch,
            owned: keys(owned),
            ..Heartbeat::default()
        };
        let (kind, done) = match outcome {
            Ok(reply) => (
                OpType::Ok,
                Heartbeat {
                    reply: Some(reply),
                    ..invoke.clone()
                },
            ),
            Err(Some(code)) => (
                OpType::Fail,
                Heartbeat {
                    code: Some(code.to_owned()),
                    ..invoke.clone()
                },
            ),
            Err(None) => (OpType::Info, invoke.clone()),
        };
        self.pair(
            process,
            span,
            kind,
            Call::Heartbeat(invoke),
            Call::Heartbeat(done),
        )
    }

    fn commit(
        &mut self,
        process: u64,
        span: [u64; 2],
        (member, epoch): (&str, i64),
        offsets: &[(u64, u64)],
        kind: OpType,
    ) -> usize {
        let commit = Commit {
            member: member.to_owned(),
            epoch,
            offsets: offsets.iter().map(|&(k, o)| (Key(k), Offset(o))).collect(),
            code: None,
            node: None,
        };
        let done = Commit {
            code: (kind == OpType::Fail).then(|| "FENCED".to_owned()),
            ..commit.clone()
        };
        self.pair(
            process,
            span,
            kind,
            Call::Commit(commit),
            Call::Commit(done),
        )
    }

    fn read(&mut self, process: u64, span: [u64; 2], offsets: &[(u64, u64)]) -> usize {
        let done = Offsets {
            offsets: offsets.iter().map(|&(k, o)| (Key(k), Offset(o))).collect(),
            ..Offsets::default()
        };
        self.pair(
            process,
            span,
            OpType::Ok,
            Call::Offsets(Offsets::default()),
            Call::Offsets(done),
        )
    }

    fn send(&mut self, process: u64, span: [u64; 2], key: u64, value: u64, offset: u64) -> usize {
        self.pair(
            process,
            span,
            OpType::Ok,
            send_call(&[(key, value, None)]),
            send_call(&[(key, value, Some(offset))]),
        )
    }

    fn poll(&mut self, process: u64, span: [u64; 2], records: &[(u64, &[(u64, u64)])]) -> usize {
        self.pair(
            process,
            span,
            OpType::Ok,
            Call::Poll(Poll::default()),
            poll_call(records),
        )
    }

    fn build(mut self) -> Built {
        self.events
            .sort_by_key(|(time, done, seq, ..)| (*time, !*done, *seq));
        let mut script = Script::new();
        let mut index = vec![0; self.events.len()];
        for (time, _, seq, process, kind, call) in self.events {
            index[seq] = script.push_at(process, kind, call, time * 1_000_000);
        }
        Built { script, index }
    }
}

struct Built {
    script: Script,
    index: Vec<u64>,
}

impl Built {
    fn index(&self, handle: usize) -> u64 {
        self.index[handle]
    }

    fn verdict(&self) -> Verdict {
        check(&self.script.history(), &TIMEOUTS, &CheckConfig::default())
    }
}

fn keys(ks: &[u64]) -> Vec<Key> {
    ks.iter().map(|k| Key(*k)).collect()
}

fn reply(member: &str, epoch: i64, assignment: &[u64], revoking: &[u64]) -> HeartbeatReply {
    HeartbeatReply {
        member: member.to_owned(),
        epoch,
        assignment: keys(assignment),
        revoking: keys(revoking),
        committed: Default::default(),
    }
}

fn with_committed(mut reply: HeartbeatReply, committed: &[(u64, Option<u64>)]) -> HeartbeatReply {
    reply.committed = committed
        .iter()
        .map(|&(k, o)| (Key(k), o.map(Offset)))
        .collect();
    reply
}

/// Member `a` (process 1) owns keys 0 and 1 and reads key 1 to offset 1; member `b` (process
/// 2) joins; `a` is asked to give up key 1, commits it and releases it; `b` then gets key 1 at
/// the committed offset and carries on. Everything in order.
fn handover() -> Timeline {
    let mut t = Timeline::default();
    t.send(0, [0, 5], 1, 10, 0);
    t.send(0, [5, 10], 1, 11, 1);
    t.send(0, [10, 15], 1, 12, 2);
    t.join(1, [20, 30], reply("a", 1, &[0, 1], &[]));
    t.poll(1, [40, 50], &[(1, &[(0, 10)])]);
    t.commit(1, [60, 70], ("a", 1), &[(1, 1)], OpType::Ok);
    t.join(2, [100, 110], reply("b", 2, &[], &[]));
    t.stay(
        1,
        [800, 810],
        ("a", 1),
        &[0, 1],
        Ok(reply("a", 1, &[0], &[1])),
    );
    t.commit(1, [820, 830], ("a", 1), &[(1, 1)], OpType::Ok);
    t.stay(1, [840, 850], ("a", 1), &[0], Ok(reply("a", 2, &[0], &[])));
    t.stay(
        2,
        [900, 910],
        ("b", 2),
        &[],
        Ok(with_committed(reply("b", 2, &[1], &[]), &[(1, Some(1))])),
    );
    t.poll(2, [920, 930], &[(1, &[(1, 11), (2, 12)])]);
    t.commit(2, [940, 950], ("b", 2), &[(1, 3)], OpType::Ok);
    t.read(3, [960, 970], &[(1, 3)]);
    t.stay(
        1,
        [1_600, 1_610],
        ("a", 2),
        &[0],
        Ok(reply("a", 2, &[0], &[])),
    );
    t.stay(
        2,
        [1_700, 1_710],
        ("b", 2),
        &[1],
        Ok(reply("b", 2, &[1], &[])),
    );
    t
}

#[test]
fn a_handover_through_revocation_is_valid() {
    let verdict = handover().build().verdict();
    assert_eq!(verdict.valid, Validity::Valid, "{verdict:?}");
    assert_eq!(all_found(&verdict), []);
    assert_eq!(verdict.ops["heartbeat"].ok, 7);
    assert_eq!(verdict.ops["commit"].ok, 3);
    assert_eq!(verdict.ops["offsets"].ok, 1);
    assert!(
        !verdict.ops.contains_key("poll"),
        "only group functions are counted"
    );
}

#[test]
fn without_a_commit_and_a_read_the_verdict_is_unknown() {
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    let verdict = t.build().verdict();
    assert_eq!(verdict.valid, Validity::Unknown);
}

#[test]
fn a_read_below_an_earlier_read_is_a_regression_unless_a_commit_of_it_may_have_landed() {
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.commit(1, [20, 30], ("a", 1), &[(0, 3)], OpType::Ok);
    t.commit(1, [40, 50], ("a", 1), &[(0, 5)], OpType::Ok);
    let high = t.read(2, [60, 70], &[(0, 5)]);
    let low = t.read(2, [80, 90], &[(0, 3)]);
    let built = t.build();
    let verdict = built.verdict();
    assert_eq!(verdict.valid, Validity::Invalid);
    assert_eq!(
        verdict.bad,
        [
            AnomalyKind::CommittedOffsetRegression,
            AnomalyKind::LostCommit
        ]
    );
    assert_eq!(
        verdict.examples(AnomalyKind::CommittedOffsetRegression),
        [Anomaly::CommittedOffsetRegression {
            key: Key(0),
            offsets: [Some(Offset(5)), Some(Offset(3))],
            ops: [built.index(high), built.index(low)],
        }]
    );

    // The commit of 3 had an unknown outcome and may have been served after the first read.
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.commit(1, [20, 30], ("a", 1), &[(0, 3)], OpType::Info);
    t.stay(4, [35, 38], ("a", 1), &[0], Ok(reply("a", 1, &[0], &[])));
    t.commit(4, [40, 50], ("a", 1), &[(0, 5)], OpType::Ok);
    t.read(2, [60, 70], &[(0, 5)]);
    t.read(2, [80, 90], &[(0, 3)]);
    let verdict = t.build().verdict();
    assert_eq!(verdict.valid, Validity::Valid, "{verdict:?}");

    // A group that vanishes (no offsets at all) went back too.
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.read(2, [60, 70], &[(0, 5)]);
    t.commit(1, [20, 30], ("a", 1), &[(0, 5)], OpType::Ok);
    t.read(2, [80, 90], &[]);
    let verdict = t.build().verdict();
    assert_eq!(
        verdict.examples(AnomalyKind::CommittedOffsetRegression)[0],
        Anomaly::CommittedOffsetRegression {
            key: Key(0),
            offsets: [Some(Offset(5)), None],
            ops: [5, 7],
        }
    );
}

#[test]
fn a_read_below_an_earlier_ok_commit_is_a_lost_commit() {
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.commit(1, [20, 30], ("a", 1), &[(0, 4)], OpType::Ok);
    let commit = t.commit(1, [40, 50], ("a", 1), &[(0, 7)], OpType::Ok);
    // Overlapping the commit: may show 4 or 7.
    t.read(2, [45, 55], &[(0, 4)]);
    // After it: must show 7. A heartbeat reply is a read of its keys too.
    let hb = t.stay(
        1,
        [60, 70],
        ("a", 1),
        &[0],
        Ok(with_committed(reply("a", 1, &[0], &[]), &[(0, Some(4))])),
    );
    let built = t.build();
    let verdict = built.verdict();
    assert_eq!(verdict.bad, [AnomalyKind::LostCommit]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::LostCommit {
            key: Key(0),
            member: "a".into(),
            offsets: [Some(Offset(7)), Some(Offset(4))],
            ops: [built.index(commit), built.index(hb)],
        }]
    );
}

#[test]
fn two_members_owning_a_key_at_once_is_a_double_assignment() {
    let mut t = Timeline::default();
    let a = t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    let b = t.join(2, [100, 110], reply("b", 2, &[0], &[]));
    t.stay(1, [700, 710], ("a", 1), &[0], Ok(reply("a", 2, &[0], &[])));
    t.commit(1, [720, 730], ("a", 2), &[(0, 0)], OpType::Ok);
    t.read(3, [740, 750], &[(0, 0)]);
    let built = t.build();
    let verdict = built.verdict();
    assert_eq!(verdict.bad, [AnomalyKind::DoubleAssignment]);
    assert_eq!(
        all_found(&verdict)[0],
        Anomaly::DoubleAssignment {
            key: Key(0),
            members: ["a".into(), "b".into()],
            ops: [built.index(a), built.index(b)],
            window_ms: [110, 700],
        }
    );
    // `a`'s next heartbeat's reply keeps the key, and so does `b`'s: a second overlap.
    assert_eq!(verdict.count(AnomalyKind::DoubleAssignment), 2);

    // `a` stopped heartbeating at 0: from 2,500 ms (3 s less the slack) it may be gone, so
    // `b` getting the key at 2,600 is fine.
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.join(2, [2_590, 2_600], reply("b", 2, &[0], &[]));
    t.commit(2, [2_620, 2_630], ("b", 2), &[(0, 0)], OpType::Ok);
    t.read(3, [2_640, 2_650], &[(0, 0)]);
    let verdict = t.build().verdict();
    assert_eq!(verdict.valid, Validity::Valid, "{verdict:?}");

    // A revoking key still belongs to `a` until it says it no longer owns it.
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.join(2, [100, 110], reply("b", 2, &[], &[]));
    t.stay(1, [700, 710], ("a", 1), &[0], Ok(reply("a", 1, &[], &[0])));
    t.stay(2, [750, 760], ("b", 2), &[], Ok(reply("b", 2, &[0], &[])));
    t.stay(1, [800, 810], ("a", 1), &[], Ok(reply("a", 2, &[], &[])));
    t.commit(2, [820, 830], ("b", 2), &[(0, 0)], OpType::Ok);
    t.read(3, [840, 850], &[(0, 0)]);
    let verdict = t.build().verdict();
    assert_eq!(verdict.bad, [AnomalyKind::DoubleAssignment]);
    assert_eq!(
        all_found(&verdict)[0],
        Anomaly::DoubleAssignment {
            key: Key(0),
            members: ["a".into(), "b".into()],
            ops: [5, 7],
            window_ms: [760, 800],
        }
    );
}

#[test]
fn a_commit_accepted_after_a_fenced_answer_is_a_zombie_commit() {
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    let fenced = t.stay(1, [4_000, 4_010], ("a", 1), &[0], Err(Some("FENCED")));
    let zombie = t.commit(1, [4_020, 4_030], ("a", 1), &[(0, 0)], OpType::Ok);
    t.read(3, [4_040, 4_050], &[(0, 0)]);
    let built = t.build();
    let verdict = built.verdict();
    assert_eq!(verdict.bad, [AnomalyKind::ZombieCommit]);
    assert_eq!(
        verdict.examples(AnomalyKind::ZombieCommit),
        [Anomaly::ZombieCommit {
            member: "a".into(),
            epoch: 1,
            ops: [built.index(fenced), built.index(zombie)],
        }]
    );
    // Silent for 4 s before it, too: reported, allowed.
    assert_eq!(verdict.count(AnomalyKind::LateCommit), 1);

    // A commit refused as it should be, then a rejoin under a new id, is fine.
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.stay(1, [4_000, 4_010], ("a", 1), &[0], Err(Some("FENCED")));
    t.commit(1, [4_020, 4_030], ("a", 1), &[(0, 0)], OpType::Fail);
    t.join(1, [4_040, 4_050], reply("c", 3, &[0], &[]));
    t.commit(1, [4_060, 4_070], ("c", 3), &[(0, 0)], OpType::Ok);
    t.read(3, [4_080, 4_090], &[(0, 0)]);
    let verdict = t.build().verdict();
    assert_eq!(verdict.valid, Validity::Valid, "{verdict:?}");
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn a_commit_after_the_session_timeout_is_a_late_commit_and_allowed() {
    let mut t = Timeline::default();
    let join = t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    let late = t.commit(1, [3_600, 3_610], ("a", 1), &[(0, 0)], OpType::Ok);
    t.read(3, [3_620, 3_630], &[(0, 0)]);
    let built = t.build();
    let verdict = built.verdict();
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::LateCommit {
            member: "a".into(),
            epoch: 1,
            silent_ms: 3_590,
            ops: [built.index(join), built.index(late)],
        }]
    );

    // Within the session timeout plus the slack (3.5 s): not late.
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.commit(1, [3_400, 3_410], ("a", 1), &[(0, 0)], OpType::Ok);
    t.read(3, [3_420, 3_430], &[(0, 0)]);
    assert_eq!(all_found(&t.build().verdict()), []);

    // A heartbeat of unknown outcome in between may have been served late: not judged.
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    t.stay(1, [700, 5_700], ("a", 1), &[0], Err(None));
    t.commit(4, [5_800, 5_810], ("a", 1), &[(0, 0)], OpType::Ok);
    t.read(3, [5_820, 5_830], &[(0, 0)]);
    assert_eq!(all_found(&t.build().verdict()), []);
}

#[test]
fn records_below_a_committed_offset_that_no_member_polled_are_a_group_poll_skip() {
    let mut t = Timeline::default();
    for (value, offset) in [(10, 0), (11, 1), (12, 2), (13, 3)] {
        t.send(0, [offset * 5, offset * 5 + 1], 0, value, offset);
    }
    t.join(1, [20, 30], reply("a", 1, &[0], &[]));
    t.poll(1, [40, 50], &[(0, &[(0, 10), (1, 11)])]);
    // The coordinator handed out 4 as the position (say): the member polls from there.
    t.commit(1, [60, 70], ("a", 1), &[(0, 4)], OpType::Ok);
    let read = t.read(3, [80, 90], &[(0, 4)]);
    // The final drain (not a member) reads everything.
    t.poll(9, [100, 110], &[(0, &[(0, 10), (1, 11), (2, 12), (3, 13)])]);
    let built = t.build();
    let verdict = built.verdict();
    assert_eq!(verdict.bad, [AnomalyKind::GroupPollSkip]);
    let commit_index = built.index(read) - 2;
    assert_eq!(
        all_found(&verdict),
        [2, 3].map(|o| Anomaly::GroupPollSkip {
            key: Key(0),
            offset: Offset(o),
            value: crate::ids::Value(10 + o),
            committed: Offset(4),
            op: commit_index,
        })
    );

    // Polled by two members between them: fine.
    let mut t = handover();
    t.poll(9, [2_000, 2_010], &[(1, &[(0, 10), (1, 11), (2, 12)])]);
    assert_eq!(all_found(&t.build().verdict()), []);
}

#[test]
fn a_leave_ends_ownership_at_once_and_commits_after_it_are_zombies() {
    let mut t = Timeline::default();
    t.join(1, [0, 10], reply("a", 1, &[0], &[]));
    let leave = Heartbeat {
        member: Some("a".into()),
        epoch: LEAVE_EPOCH,
        ..Heartbeat::default()
    };
    let left = Heartbeat {
        reply: Some(reply("a", LEAVE_EPOCH, &[], &[])),
        ..leave.clone()
    };
    let leave = t.pair(
        1,
        [100, 110],
        OpType::Ok,
        Call::Heartbeat(leave),
        Call::Heartbeat(left),
    );
    t.join(2, [105, 120], reply("b", 2, &[0], &[]));
    t.commit(2, [130, 140], ("b", 2), &[(0, 0)], OpType::Ok);
    t.read(3, [150, 160], &[(0, 0)]);
    let mut with_zombie = Timeline {
        events: t.events.clone(),
    };
    let verdict = t.build().verdict();
    assert_eq!(verdict.valid, Validity::Valid, "{verdict:?}");

    // A commit of the member that left, accepted: a zombie commit.
    let zombie = with_zombie.commit(1, [170, 180], ("a", 1), &[(0, 0)], OpType::Ok);
    let built = with_zombie.build();
    assert_eq!(
        all_found(&built.verdict()),
        [Anomaly::ZombieCommit {
            member: "a".into(),
            epoch: 1,
            ops: [built.index(leave), built.index(zombie)],
        }]
    );
}
