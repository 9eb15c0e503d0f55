//! The crate's one error type: a history that cannot be read, recorded or checked.

use crate::ids::Process;

/// Why a history could not be read, recorded or checked.
///
/// Malformed histories are refused rather than checked, because a checker's verdict on a
/// history that breaks the model (two completions for one invocation, a retired process coming
/// back) would mean nothing.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing a history file failed.
    #[error("history i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A line of a JSON-lines history is not an operation.
    #[error("history line {line}: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// An operation could not be written as JSON.
    #[error("cannot encode operation {index}: {source}")]
    Encode {
        /// The operation's index.
        index: u64,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Operation indices must be 0, 1, 2, ... in history order.
    #[error("operation at position {expected} has index {found}")]
    IndexOutOfOrder {
        /// The position in the history.
        expected: u64,
        /// The index the operation carries.
        found: u64,
    },
    /// Operation times must not decrease along the history.
    #[error("operation {index} has time {time} ns, before its predecessor's {previous} ns")]
    TimeWentBackwards {
        /// The operation's index.
        index: u64,
        /// Its time.
        time: u64,
        /// The previous operation's time.
        previous: u64,
    },
    /// A process invoked a second operation before the first completed.
    #[error("operation {index}: process {process} already has an operation in flight")]
    AlreadyPending {
        /// The operation's index.
        index: u64,
        /// The process.
        process: Process,
    },
    /// A completion without an invocation in flight on its process.
    #[error("operation {index}: process {process} has no invocation to complete")]
    NoPendingInvoke {
        /// The operation's index.
        index: u64,
        /// The process.
        process: Process,
    },
    /// A completion whose `f` differs from its invocation's.
    #[error("operation {index} completes `{completed}` but `{invoked}` was invoked")]
    MismatchedF {
        /// The completion's index.
        index: u64,
        /// The invocation's `f`.
        invoked: &'static str,
        /// The completion's `f`.
        completed: &'static str,
    },
    /// A client process invoked an operation after an `info` completion retired it.
    #[error("operation {index}: process {process} was retired by an info completion")]
    RetiredProcess {
        /// The operation's index.
        index: u64,
        /// The process.
        process: Process,
    },
    /// Nemesis operations must come from the nemesis process, and only those.
    #[error("operation {index}: `{f}` cannot be performed by process {process}")]
    WrongProcess {
        /// The operation's index.
        index: u64,
        /// The process.
        process: Process,
        /// The function.
        f: &'static str,
    },
    /// `complete` was called with `OpType::Invoke`.
    #[error("an invocation is not a completion")]
    NotACompletion,
    /// A drain with an unknown outcome: which values it removed cannot be known, so the
    /// total-queue checker refuses the history, as Jepsen's does.
    #[error("operation {index}: drain with unknown outcome")]
    IndeterminateDrain {
        /// The drain's invocation or completion index.
        index: u64,
    },
}

impl HistoryError {
    /// A stable upper-snake code for logs and result files.
    pub fn code(&self) -> &'static str {
        match self {
            HistoryError::Io(_) => "HISTORY_IO",
            HistoryError::Parse { .. } => "HISTORY_PARSE",
            HistoryError::Encode { .. } => "HISTORY_ENCODE",
            HistoryError::IndexOutOfOrder { .. } => "INDEX_OUT_OF_ORDER",
            HistoryError::TimeWentBackwards { .. } => "TIME_WENT_BACKWARDS",
            HistoryError::AlreadyPending { .. } => "ALREADY_PENDING",
            HistoryError::NoPendingInvoke { .. } => "NO_PENDING_INVOKE",
            HistoryError::MismatchedF { .. } => "MISMATCHED_F",
            HistoryError::RetiredProcess { .. } => "RETIRED_PROCESS",
            HistoryError::WrongProcess { .. } => "WRONG_PROCESS",
            HistoryError::NotACompletion => "NOT_A_COMPLETION",
            HistoryError::IndeterminateDrain { .. } => "INDETERMINATE_DRAIN",
        }
    }
}
