//! The results folder's human side: `summary.txt`, the plot's data taken from the history, and
//! the UTC timestamp that names the folder.

use std::collections::BTreeMap;
use std::fmt::Write;

use chat4all_jepsen::{Call, History, OpType, Process, Validity, Verdict};
use serde_json::Value;

use crate::plot::{FaultWindow, OpPoint, Outcome, PlotData};
use crate::schedule::{Fault, Schedule};

/// `YYYYMMDDTHHMMSSZ` for `secs` seconds since the Unix epoch.
pub fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// The fault windows the nemesis recorded: from each fault's start to its heal (or the final
/// heal, or the end of the history), in order of their starts. Starts and heals are matched by
/// their `step`, so overlapping faults (scenarios) get a window each.
pub fn fault_windows(history: &History) -> Vec<FaultWindow> {
    let mut windows = Vec::new();
    // By step (histories without one have one fault at a time: key 0).
    let mut open: BTreeMap<u64, (f64, String)> = BTreeMap::new();
    let secs = |ns: u64| ns as f64 / 1e9;
    let close = |windows: &mut Vec<FaultWindow>, (start_s, label): (f64, String), end_s| {
        windows.push(FaultWindow {
            start_s,
            end_s,
            label,
        });
    };
    for op in history
        .ops()
        .iter()
        .filter(|op| op.process == Process::Nemesis && op.kind == OpType::Invoke)
    {
        let Call::Nemesis(value) = &op.call else {
            continue;
        };
        let step = value["step"].as_u64().unwrap_or(0);
        match value["phase"].as_str() {
            Some("start") => {
                let label = serde_json::from_value::<Fault>(value["fault"].clone())
                    .map(|f| f.to_string())
                    .unwrap_or_else(|_| value["fault"].to_string());
                open.insert(step, (secs(op.time), label));
            }
            Some("final-heal") => {
                for (_, window) in std::mem::take(&mut open) {
                    close(&mut windows, window, secs(op.time));
                }
            }
            Some(_) => {
                if let Some(window) = open.remove(&step) {
                    close(&mut windows, window, secs(op.time));
                }
            }
            None => {}
        }
    }
    for (_, window) in open {
        close(&mut windows, window, secs(history.last_time()));
    }
    windows.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    windows
}

/// The union of the windows as disjoint intervals, in time order.
pub fn merge_windows(windows: &[FaultWindow]) -> Vec<(f64, f64)> {
    let mut spans: Vec<(f64, f64)> = windows.iter().map(|w| (w.start_s, w.end_s)).collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// The plot of a history: its client operations (invocations that never completed count as
/// `info`, lasting to the end) and its fault windows.
pub fn plot_data(history: &History, title: &str) -> PlotData {
    let end = history.last_time();
    let ops = history
        .pairs()
        .filter(|(invoke, _)| invoke.process.is_client())
        .map(|(invoke, completion)| {
            let (done, outcome) = match completion {
                Some(c) if c.kind == OpType::Ok => (c.time, Outcome::Ok),
                Some(c) if c.kind == OpType::Fail => (c.time, Outcome::Fail),
                Some(c) => (c.time, Outcome::Info),
                None => (end, Outcome::Info),
            };
            OpPoint {
                start_s: invoke.time as f64 / 1e9,
                latency_ms: done.saturating_sub(invoke.time) as f64 / 1e6,
                outcome,
            }
        })
        .collect();
    PlotData {
        title: title.to_owned(),
        duration_s: end as f64 / 1e9,
        ops,
        faults: fault_windows(history),
    }
}

/// Client operations completing `ok` per second within `[start_s, end_s)`: availability during
/// a fault window.
pub fn ok_rate(history: &History, start_s: f64, end_s: f64) -> f64 {
    if end_s <= start_s {
        return 0.0;
    }
    let ok = history
        .ops()
        .iter()
        .filter(|op| op.process.is_client() && op.kind == OpType::Ok)
        .filter(|op| (start_s..end_s).contains(&(op.time as f64 / 1e9)))
        .count();
    ok as f64 / (end_s - start_s)
}

/// Everything `summary.txt` says.
pub struct Summary<'a> {
    /// The command line.
    pub command: String,
    /// The schedule.
    pub schedule: &'a Schedule,
    /// The history.
    pub history: &'a History,
    /// The checkers' verdicts.
    pub verdicts: &'a [Verdict],
    /// The combined verdict.
    pub valid: Validity,
    /// Whether the final drain read every partition to its end (chat: whether every
    /// conversation was read from every node, and every user's event stream).
    pub drain_complete: bool,
    /// The chat workload (no drain: final reads of the histories and streams).
    pub chat: bool,
    /// Harness observations (protocol surprises, drain problems).
    pub notes: &'a [String],
    /// How netem faults were carried out.
    pub netem: String,
    /// Concurrent clients.
    pub clients: u64,
}

impl Summary<'_> {
    /// The text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let valid = serde_json::to_string(&self.valid).unwrap_or_default();
        let _ = writeln!(out, "valid: {valid}");
        let _ = writeln!(out, "command: {}", self.command);
        let _ = writeln!(out, "netem: {}", self.netem);
        let drain = match (self.chat, self.drain_complete) {
            (false, true) => "drain: every partition read to its high watermark",
            (false, false) => "drain: INCOMPLETE (unread values show up as lost/unseen)",
            (true, true) => {
                "reads: every conversation read from every node, every user's event stream read"
            }
            (true, false) => "reads: INCOMPLETE (see the notes)",
        };
        let _ = writeln!(out, "{drain}");
        let _ = writeln!(
            out,
            "history: {} operations, {} clients",
            self.history.len(),
            self.clients
        );
        for verdict in self.verdicts {
            let valid = serde_json::to_string(&verdict.valid).unwrap_or_default();
            let _ = writeln!(out, "\n[{}] valid: {valid}", verdict.checker);
            for (f, counts) in &verdict.ops {
                let _ = writeln!(
                    out,
                    "  {f:<8} ok {:>6}  fail {:>6}  info {:>6}",
                    counts.ok, counts.fail, counts.info
                );
            }
            if verdict.anomalies.is_empty() {
                let _ = writeln!(out, "  no anomalies");
            }
            for (kind, report) in &verdict.anomalies {
                let bad = if verdict.bad.contains(kind) {
                    "INVALID"
                } else {
                    "allowed"
                };
                let kind = serde_json::to_value(kind).unwrap_or(Value::Null);
                let _ = writeln!(out, "  {kind} x{} ({bad})", report.count);
                for example in report.examples.iter().take(5) {
                    let _ = writeln!(
                        out,
                        "      {}",
                        serde_json::to_string(example).unwrap_or_default()
                    );
                }
            }
        }
        let _ = writeln!(out, "\nnotes:");
        if self.notes.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for note in self.notes {
            let _ = writeln!(out, "  {note}");
        }
        let _ = writeln!(out, "\nfaults as carried out (s since start):");
        let windows = fault_windows(self.history);
        if windows.is_empty() {
            let _ = writeln!(out, "  none");
        }
        let _ = writeln!(
            out,
            "  (ok/s: client completions that ended ok inside the window; overall {:.0}/s)",
            ok_rate(self.history, 0.0, self.history.last_time() as f64 / 1e9)
        );
        let merged = merge_windows(&windows);
        if !merged.is_empty() {
            let during: f64 = merged.iter().map(|(a, b)| b - a).sum();
            let ok: f64 = merged
                .iter()
                .map(|&(a, b)| ok_rate(self.history, a, b) * (b - a))
                .sum();
            let _ = writeln!(
                out,
                "  (during any fault: {during:.1} s, ok/s {:.0})",
                ok / during.max(1e-9)
            );
        }
        for w in windows {
            let _ = writeln!(
                out,
                "  {:>7.1} .. {:>7.1}  ok/s {:>6.0}  {}",
                w.start_s,
                w.end_s,
                ok_rate(self.history, w.start_s, w.end_s),
                w.label
            );
        }
        let _ = write!(out, "\n{}", self.schedule.describe());
        out
    }
}

#[cfg(test)]
mod tests {
    use chat4all_jepsen::Recorder;
    use serde_json::json;

    use super::*;

    #[test]
    fn utc_stamps_match_the_calendar() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_763_800_000), "20251122T082640Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn fault_windows_run_from_each_start_to_its_heal() {
        let r = Recorder::new();
        let nemesis = |phase: &str| {
            let fault = json!({"fault": "pause", "node": 2});
            let value = json!({"phase": phase, "fault": fault});
            r.invoke(Process::Nemesis, Call::Nemesis(value.clone()))
                .expect("invoke");
            r.complete(Process::Nemesis, OpType::Info, Call::Nemesis(value), None)
                .expect("complete");
        };
        nemesis("start");
        nemesis("heal");
        nemesis("start");
        let history = r.into_history();
        let windows = fault_windows(&history);
        assert_eq!(windows.len(), 2, "the second is still open at the end");
        assert!(
            windows[0].label.starts_with("pause n2"),
            "{}",
            windows[0].label
        );
        assert!(windows[0].start_s <= windows[0].end_s);
        assert!(windows[1].end_s >= windows[1].start_s);
        assert_eq!(windows[1].end_s, history.last_time() as f64 / 1e9);
    }

    #[test]
    fn overlapping_faults_get_a_window_each_matched_by_step() {
        let r = Recorder::new();
        let nemesis = |phase: &str, step: u64, node: u64| {
            let fault = json!({"fault": "pause", "node": node});
            let value = json!({"phase": phase, "step": step, "fault": fault});
            r.invoke(Process::Nemesis, Call::Nemesis(value.clone()))
                .expect("invoke");
            r.complete(Process::Nemesis, OpType::Info, Call::Nemesis(value), None)
                .expect("complete");
        };
        nemesis("start", 0, 1);
        nemesis("start", 1, 3);
        nemesis("heal", 0, 1);
        nemesis("start", 2, 2);
        let final_heal = json!({"phase": "final-heal"});
        r.invoke(Process::Nemesis, Call::Nemesis(final_heal.clone()))
            .expect("invoke");
        let history = r.into_history();
        let windows = fault_windows(&history);
        let labels: Vec<&str> = windows.iter().map(|w| &w.label[..8]).collect();
        assert_eq!(labels, ["pause n1", "pause n3", "pause n2"]);
        let ops = history.ops();
        let t = |i: usize| ops[i].time as f64 / 1e9;
        assert_eq!((windows[0].start_s, windows[0].end_s), (t(0), t(4)));
        assert_eq!((windows[1].start_s, windows[1].end_s), (t(2), t(8)));
        assert_eq!((windows[2].start_s, windows[2].end_s), (t(6), t(8)));
        let merged = merge_windows(&windows);
        assert_eq!(merged, vec![(t(0), t(8))]);
    }

    #[test]
    fn ok_rate_counts_ok_client_completions_inside_the_window_only() {
        let r = Recorder::new();
        let p = Process::Client(0);
        for value in 0..4 {
            let call = Call::Enqueue(chat4all_jepsen::Value(value));
            r.invoke(p, call.clone()).expect("invoke");
            let kind = if value == 3 { OpType::Fail } else { OpType::Ok };
            r.complete(p, kind, call, None).expect("complete");
        }
        let history = r.into_history();
        let end = history.last_time() as f64 / 1e9;
        let all = ok_rate(&history, 0.0, end + 1.0);
        assert!(
            (all - 3.0 / (end + 1.0)).abs() < 1e-9,
            "3 ok, the fail not counted"
        );
        assert_eq!(ok_rate(&history, end + 1.0, end + 2.0), 0.0);
        assert_eq!(ok_rate(&history, 5.0, 5.0), 0.0);
    }
}
