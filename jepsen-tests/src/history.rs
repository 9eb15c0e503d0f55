//! A validated history: operations in order, each invocation paired with at most one completion,
//! and JSON-lines files (one operation per line) to write it to and read it back from.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use crate::error::HistoryError;
use crate::ids::Process;
use crate::op::{Call, Op, OpType};

/// The `error` of the `info` completions that [`History::completions`] makes up for invocations
/// that never completed.
pub const NO_COMPLETION: &str = "no completion recorded";

/// A history that obeys the model of Jepsen's histories (§4.1 of the reference):
///
/// - indices are 0, 1, 2, ... and times never decrease;
/// - each process has at most one invocation in flight, and each completion matches the
///   invocation in flight on its process, with the same `f`;
/// - a client process is retired by an `info` completion and never invokes again;
/// - only the nemesis process performs `nemesis` operations, and it performs nothing else.
///
/// Every way of building one ([`History::push`], [`History::from_ops`], [`History::read_jsonl`])
/// checks these rules, so checkers can rely on them.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Op>,
    /// For each position, the position of its invocation or completion.
    partner: Vec<Option<usize>>,
    /// Invocations in flight, by process.
    pending: BTreeMap<Process, usize>,
    retired: BTreeSet<Process>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a history from operations in order, checking every rule.
    pub fn from_ops(ops: impl IntoIterator<Item = Op>) -> Result<Self, HistoryError> {
        let mut history = Self::new();
        for op in ops {
            history.push(op)?;
        }
        Ok(history)
    }

    /// Appends one operation, or refuses it (leaving the history unchanged) if it breaks a rule.
    pub fn push(&mut self, op: Op) -> Result<(), HistoryError> {
        let position = self.ops.len();
        self.admit(&op)?;
        if op.kind == OpType::Invoke {
            self.pending.insert(op.process, position);
            self.partner.push(None);
        } else {
            let invoke = self.pending.remove(&op.process);
            if let Some(invoke) = invoke {
                self.partner[invoke] = Some(position);
            }
            self.partner.push(invoke);
            if op.kind == OpType::Info && op.process.is_client() {
                self.retired.insert(op.process);
            }
        }
        self.ops.push(op);
        Ok(())
    }

    /// Checks `op` against the rules without changing anything.
    fn admit(&self, op: &Op) -> Result<(), HistoryError> {
        let expected = self.next_index();
        if op.index != expected {
            return Err(HistoryError::IndexOutOfOrder {
                expected,
                found: op.index,
            });
        }
        let previous = self.last_time();
        if op.time < previous {
            return Err(HistoryError::TimeWentBackwards {
                index: op.index,
                time: op.time,
                previous,
            });
        }
        let nemesis_call = matches!(op.call, Call::Nemesis(_));
        if nemesis_call == op.process.is_client() {
            return Err(HistoryError::WrongProcess {
                index: op.index,
                process: op.process,
                f: op.call.f(),
            });
        }
        if op.kind == OpType::Invoke {
            if self.retired.contains(&op.process) {
                return Err(HistoryError::RetiredProcess {
                    index: op.index,
                    process: op.process,
                });
            }
            if self.pending.contains_key(&op.process) {
                return Err(HistoryError::AlreadyPending {
                    index: op.index,
                    process: op.process,
                });
            }
            return Ok(());
        }
        let Some(&invoke) = self.pending.get(&op.process) else {
            return Err(HistoryError::NoPendingInvoke {
                index: op.index,
                process: op.process,
            });
        };
        let invoked = self.ops[invoke].call.f();
        if invoked != op.call.f() {
            return Err(HistoryError::MismatchedF {
                index: op.index,
                invoked,
                completed: op.call.f(),
            });
        }
        Ok(())
    }

    /// All operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the history has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The index the next operation must carry.
    pub fn next_index(&self) -> u64 {
        self.ops.len() as u64
    }

    /// The time of the last operation, or 0.
    pub fn last_time(&self) -> u64 {
        self.ops.last().map_or(0, |op| op.time)
    }

    /// Whether an `info` completion has retired this client process.
    pub fn is_retired(&self, process: Process) -> bool {
        self.retired.contains(&process)
    }

    /// Each invocation with its completion, if any, in invocation order (for latency plots).
    pub fn pairs(&self) -> impl Iterator<Item = (&Op, Option<&Op>)> {
        self.ops
            .iter()
            .zip(&self.partner)
            .filter(|(op, _)| op.kind == OpType::Invoke)
            .map(|(op, partner)| (op, partner.map(|p| &self.ops[p])))
    }

    /// The invocation of a completion, or `None` for an invocation.
    pub fn invocation_of(&self, completion: &Op) -> Option<&Op> {
        let position = usize::try_from(completion.index).ok()?;
        match self.ops.get(position) {
            Some(op) if op.kind != OpType::Invoke => self.partner[position].map(|p| &self.ops[p]),
            _ => None,
        }
    }

    /// Invocations still in flight at the end of the history.
    pub fn pending(&self) -> impl Iterator<Item = &Op> {
        let mut positions: Vec<usize> = self.pending.values().copied().collect();
        positions.sort_unstable();
        positions.into_iter().map(|p| &self.ops[p])
    }

    /// Every completion in history order, followed by an `info` completion (carrying the
    /// invocation's index and value, the history's last time and the error [`NO_COMPLETION`])
    /// for each invocation that never completed: an operation whose outcome was never seen may
    /// or may not have happened, which is exactly what `info` means.
    pub fn completions(&self) -> Vec<Cow<'_, Op>> {
        let end = self.last_time();
        let recorded = self
            .ops
            .iter()
            .filter(|op| op.kind != OpType::Invoke)
            .map(Cow::Borrowed);
        let made_up = self.pending().map(|invoke| {
            Cow::Owned(Op {
                kind: OpType::Info,
                time: end,
                error: Some(NO_COMPLETION.to_owned()),
                ..invoke.clone()
            })
        });
        recorded.chain(made_up).collect()
    }

    /// Reads a JSON-lines history (blank lines are skipped), checking every rule.
    pub fn read_jsonl(reader: impl BufRead) -> Result<Self, HistoryError> {
        let mut history = Self::new();
        for (number, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                line: number + 1,
                source,
            })?;
            history.push(op)?;
        }
        Ok(history)
    }

    /// Writes the history as JSON lines, one operation per line.
    pub fn write_jsonl(&self, mut writer: impl Write) -> Result<(), HistoryError> {
        for op in &self.ops {
            serde_json::to_writer(&mut writer, op).map_err(|source| HistoryError::Encode {
                index: op.index,
                source,
            })?;
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        Ok(())
    }

    /// Reads a JSON-lines history file.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self, HistoryError> {
        Self::read_jsonl(BufReader::new(File::open(path)?))
    }

    /// Writes the history to a JSON-lines file, replacing it.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), HistoryError> {
        let file = File::create(path)?;
        self.write_jsonl(BufWriter::new(&file))?;
        file.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
