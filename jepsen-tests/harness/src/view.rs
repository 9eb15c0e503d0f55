//! The queue workload's history seen as a total queue, for the total-queue checker: each
//! one-record `send` becomes an `enqueue` of its value (same process, type and time), each `poll`
//! a `drain` of the values it returned, and `assign`s and consumer-group operations disappear.
//! Indices are renumbered; nothing else changes, so every outcome the kafka view has, the queue
//! view has too.
//!
//! The log workload's consumers read a log, they do not dequeue: several of them read the same
//! records, and a reassigned partition is read again from its start. Their polls are left out
//! of the view (`readers`); what remains is the sends and the final drain, which reads every
//! record once, so the total-queue checker still checks that every acknowledged send is drained
//! exactly once and nothing unexpected is.

use std::collections::BTreeSet;

use chat4all_jepsen::{Call, History, Op, Process};

/// The total-queue view of a queue- or log-workload history, without the operations of
/// `readers` (the log and subscribe workloads' consumers and readers). Fails if a `send` carries other than one record
/// (the workloads never send more), or if the result breaks the history model.
pub fn queue_view(history: &History, readers: &BTreeSet<Process>) -> anyhow::Result<History> {
    let mut ops = Vec::with_capacity(history.len());
    for op in history.ops() {
        if readers.contains(&op.process) {
            continue;
        }
        let call = match &op.call {
            Call::Send(sends) => match sends.as_slice() {
                [one] => Call::Enqueue(one.value),
                _ => anyhow::bail!(
                    "operation {}: a queue-workload send must carry exactly one record",
                    op.index
                ),
            },
            Call::Poll(poll) => Call::Drain(
                poll.records
                    .values()
                    .flatten()
                    .map(|record| record.value)
                    .collect(),
            ),
            Call::Assign(_) | Call::Heartbeat(_) | Call::Commit(_) | Call::Offsets(_) => continue,
            other => other.clone(),
        };
        ops.push(Op {
            index: ops.len() as u64,
            call,
            ..op.clone()
        });
    }
    Ok(History::from_ops(ops)?)
}

#[cfg(test)]
mod tests {
    use chat4all_jepsen::checker::queue;
    use chat4all_jepsen::{
        AnomalyKind, Assign, CheckConfig, Key, Offset, OpType, Poll, Process, Record, Recorder,
        Send, Validity, Value,
    };

    use super::*;

    fn send(value: u64, offset: Option<u64>) -> Call {
        Call::Send(vec![Send {
            key: Key(0),
            value: Value(value),
            offset: offset.map(Offset),
        }])
    }

    fn poll(values: &[(u64, u64)]) -> Call {
        let mut poll = Poll::default();
        poll.records.insert(
            Key(0),
            values
                .iter()
                .map(|&(offset, value)| Record {
                    offset: Offset(offset),
                    value: Value(value),
                })
                .collect(),
        );
        Call::Poll(poll)
    }

    /// Values 1 (ok), 2 (info, then retried ok by a new process), 3 (fail) are sent; the drain
    /// returns `drained`.
    fn history(drained: &[(u64, u64)]) -> History {
        let r = Recorder::new();
        let (p0, p1, p2, d) = (
            Process::Client(0),
            Process::Client(1),
            Process::Client(2),
            Process::Client(3),
        );
        let record = |p, kind, call: Call| {
            if kind == OpType::Invoke {
                r.invoke(p, call).expect("invoke");
            } else {
                r.complete(p, kind, call, None).expect("complete");
            }
        };
        record(p0, OpType::Invoke, send(1, None));
        record(p0, OpType::Ok, send(1, Some(0)));
        record(p0, OpType::Invoke, send(2, None));
        record(p0, OpType::Info, send(2, None));
        record(p1, OpType::Invoke, send(2, None));
        record(p1, OpType::Ok, send(2, Some(1)));
        record(p2, OpType::Invoke, send(3, None));
        record(p2, OpType::Fail, send(3, None));
        let assign = Call::Assign(Assign {
            keys: vec![Key(0)],
            seek_to_beginning: true,
        });
        record(d, OpType::Invoke, assign.clone());
        record(d, OpType::Ok, assign);
        record(d, OpType::Invoke, Call::Poll(Poll::default()));
        record(d, OpType::Fail, Call::Poll(Poll::default()));
        record(d, OpType::Invoke, Call::Poll(Poll::default()));
        record(d, OpType::Ok, poll(drained));
        r.into_history()
    }

    #[test]
    fn sends_become_enqueues_and_polls_drains_with_outcomes_kept() {
        let view = queue_view(&history(&[(0, 1), (1, 2)]), &BTreeSet::new()).expect("view");
        assert_eq!(view.len(), 12, "the assign pair is gone");
        let calls: Vec<(&str, OpType)> = view.ops().iter().map(|o| (o.call.f(), o.kind)).collect();
        assert_eq!(calls[3], ("enqueue", OpType::Info));
        assert_eq!(calls[7], ("enqueue", OpType::Fail));
        assert_eq!(view.ops()[11].call, Call::Drain(vec![Value(1), Value(2)]));
        let verdict = queue::check(&view, &CheckConfig::default()).expect("checkable");
        assert_eq!(verdict.valid, Validity::Valid);
    }

    #[test]
    fn a_value_missing_from_the_drain_is_lost_in_the_queue_view() {
        let view = queue_view(&history(&[(0, 1)]), &BTreeSet::new()).expect("view");
        let verdict = queue::check(&view, &CheckConfig::default()).expect("checkable");
        assert_eq!(verdict.valid, Validity::Invalid);
        assert_eq!(verdict.count(AnomalyKind::Lost), 1);
    }

    #[test]
    fn the_readers_polls_are_left_out() {
        // Leaving out the drain's process (Client(3)) leaves the sends undrained.
        let readers = BTreeSet::from([Process::Client(3)]);
        let view = queue_view(&history(&[(0, 1), (1, 2)]), &readers).expect("view");
        assert_eq!(view.len(), 8, "the assign and the three polls are gone");
        assert!(view.ops().iter().all(|op| op.call.f() == "enqueue"));
    }

    #[test]
    fn multi_record_sends_are_refused() {
        let r = Recorder::new();
        let two = Call::Send(vec![
            Send {
                key: Key(0),
                value: Value(1),
                offset: None,
            },
            Send {
                key: Key(0),
                value: Value(2),
                offset: None,
            },
        ]);
        r.invoke(Process::Client(0), two).expect("invoke");
        assert!(queue_view(&r.into_history(), &BTreeSet::new()).is_err());
    }
}
