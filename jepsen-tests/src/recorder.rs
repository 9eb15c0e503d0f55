//! A thread-safe recorder that client and nemesis workers share while a test runs.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::error::HistoryError;
use crate::history::History;
use crate::ids::Process;
use crate::op::{Call, Op, OpType};

/// Records operations as they happen: it assigns each its index and its time (nanoseconds since
/// the recorder was created) and checks the history rules as it goes.
///
/// Index and time are taken under one lock, so both increase along the history even when many
/// workers record at once. Record the invocation just before sending the request and the
/// completion just after the outcome is known; a timeout or a lost connection is `info`, after
/// which the worker continues under a fresh process number.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            history: Mutex::new(History::new()),
        }
    }

    /// Records an invocation; returns its index.
    pub fn invoke(&self, process: Process, call: Call) -> Result<u64, HistoryError> {
        self.record(process, OpType::Invoke, call, None)
    }

    /// Records the completion of the invocation in flight on `process`; returns its index.
    /// `kind` must be `Ok`, `Fail` or `Info`.
    pub fn complete(
        &self,
        process: Process,
        kind: OpType,
        call: Call,
        error: Option<String>,
    ) -> Result<u64, HistoryError> {
        if kind == OpType::Invoke {
            return Err(HistoryError::NotACompletion);
        }
        self.record(process, kind, call, error)
    }

    fn record(
        &self,
        process: Process,
        kind: OpType,
        call: Call,
        error: Option<String>,
    ) -> Result<u64, HistoryError> {
        let mut history = self.lock();
        let index = history.next_index();
        // Saturates after 584 years of test time.
        let time = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        history.push(Op {
            index,
            time,
            process,
            kind,
            call,
            error,
        })?;
        Ok(index)
    }

    /// A copy of the history recorded so far.
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }

    /// The history, once every worker is done.
    pub fn into_history(self) -> History {
        self.history
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    // A worker that panicked while holding the lock cannot have left a half-pushed operation
    // (`History::push` checks before it changes anything), so a poisoned lock is still sound.
    fn lock(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::ids::Value;

    #[test]
    fn concurrent_workers_produce_a_valid_history_with_increasing_indices_and_times() {
        let recorder = Recorder::new();
        thread::scope(|scope| {
            for worker in 0..4u64 {
                let recorder = &recorder;
                scope.spawn(move || {
                    for i in 0..50 {
                        let process = Process::Client(worker);
                        let value = Value(worker * 1000 + i);
                        recorder
                            .invoke(process, Call::Enqueue(value))
                            .expect("invoke");
                        recorder
                            .complete(process, OpType::Ok, Call::Enqueue(value), None)
                            .expect("complete");
                    }
                });
            }
        });
        let history = recorder.into_history();
        assert_eq!(history.len(), 400);
        // Re-checking every rule from scratch proves the recorded order was consistent.
        let rebuilt = History::from_ops(history.ops().to_vec()).expect("valid history");
        assert_eq!(rebuilt.pairs().filter(|(_, c)| c.is_some()).count(), 200);
        assert!(history.ops().windows(2).all(|w| w[0].time <= w[1].time));
    }

    #[test]
    fn recorder_refuses_invoke_as_completion_and_completion_without_invoke() {
        let recorder = Recorder::new();
        let p = Process::Client(0);
        assert!(matches!(
            recorder.complete(p, OpType::Invoke, Call::Crash, None),
            Err(HistoryError::NotACompletion)
        ));
        assert!(matches!(
            recorder.complete(p, OpType::Ok, Call::Crash, None),
            Err(HistoryError::NoPendingInvoke { index: 0, .. })
        ));
        assert_eq!(recorder.invoke(p, Call::Crash).expect("invoke"), 0);
        assert_eq!(
            recorder
                .complete(p, OpType::Info, Call::Crash, None)
                .expect("info"),
            1
        );
        assert!(matches!(
            recorder.invoke(p, Call::Crash),
            Err(HistoryError::RetiredProcess { index: 2, .. })
        ));
        assert_eq!(recorder.snapshot().len(), 2);
    }
}
