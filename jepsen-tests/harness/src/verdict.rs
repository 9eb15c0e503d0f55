//! The verdict of a run: the checkers over its history, what the `corrupt` faults add, and
//! the files that hold it in the results folder (`verdict.json`, `summary.txt`, `plot.svg`).

use std::collections::BTreeSet;
use std::path::Path;

use chat4all_jepsen::checker::{group as group_checker, kafka, queue as queue_checker};
use chat4all_jepsen::{CheckConfig, History, Process, Validity};
use serde_json::json;

use crate::Args;
use crate::nemesis::{CorruptionOutcome, NetemMode};
use crate::report::{self, Summary};
use crate::schedule::{NemesisKind, Schedule};
use crate::{plot, subscribe, view};

/// Runs the checkers and writes verdict, summary and plot.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check(
    history: &History,
    readers: &BTreeSet<Process>,
    group: bool,
    args: &Args,
    clients: u64,
    schedule: &Schedule,
    dir: &Path,
    drain_complete: bool,
    foreign_records: u64,
    corruptions: &[CorruptionOutcome],
    mut notes: Vec<String>,
    netem: NetemMode,
) -> anyhow::Result<Validity> {
    let config = CheckConfig::default();
    let mut verdicts = vec![kafka::check(history, &config)];
    let mut valid = Validity::Valid;
    match view::queue_view(history, readers)
        .and_then(|view| Ok(queue_checker::check(&view, &config)?))
    {
        Ok(verdict) => verdicts.push(verdict),
        Err(e) => {
            notes.push(format!("total-queue check impossible: {e:#}"));
            valid = Validity::Unknown;
        }
    }
    if group {
        verdicts.push(group_checker::check(
            history,
            &subscribe::timeouts(),
            &config,
        ));
    }
    valid = verdicts
        .iter()
        .fold(valid, |v, verdict| v.and(verdict.valid));
    if !drain_complete {
        valid = valid.and(Validity::Unknown);
    }
    if foreign_records > 0 {
        notes.push(format!(
            "{foreign_records} records the workload never wrote"
        ));
        valid = Validity::Invalid;
    }
    valid = valid.and(corruption_validity(schedule, corruptions, &mut notes));
    write_results(
        history,
        verdicts,
        valid,
        drain_complete,
        foreign_records,
        corruptions,
        notes,
        netem,
        args,
        clients,
        schedule,
        dir,
    )
}

/// Writes `verdict.json`, `summary.txt` and `plot.svg`, and prints the summary.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_results(
    history: &History,
    verdicts: Vec<chat4all_jepsen::Verdict>,
    valid: Validity,
    drain_complete: bool,
    foreign_records: u64,
    corruptions: &[CorruptionOutcome],
    notes: Vec<String>,
    netem: NetemMode,
    args: &Args,
    clients: u64,
    schedule: &Schedule,
    dir: &Path,
) -> anyhow::Result<Validity> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let verdict = json!({
        "valid": valid,
        "drain_complete": drain_complete,
        "foreign_records": foreign_records,
        "corruptions": corruptions,
        "netem": netem,
        "checkers": verdicts,
        "notes": notes,
        "seed": schedule.config.seed,
        "clients": clients,
        "hosts": args.hosts,
        "command": command,
    });
    std::fs::write(
        dir.join("verdict.json"),
        serde_json::to_vec_pretty(&verdict)?,
    )?;
    let netem = match netem {
        NetemMode::Tc => "tc netem (delay 50ms±20ms, loss 5%, duplicate 2%, reorder 10%)",
        NetemMode::IptablesLossAndDuplicate => {
            "kernel without netem: iptables random loss 5% and duplication 2% only (no delay, no reordering)"
        }
    };
    let summary = Summary {
        command,
        schedule,
        history,
        verdicts: &verdicts,
        valid,
        drain_complete,
        chat: args.workload == "chat",
        notes: &notes,
        netem: netem.to_owned(),
        clients,
    };
    let text = summary.render();
    print!("{text}");
    std::fs::write(dir.join("summary.txt"), text)?;
    let title = format!(
        "{} / {} / {} nodes / seed {}: valid {}",
        args.workload,
        schedule.nemesis_label(),
        args.nodes,
        schedule.config.seed,
        serde_json::to_string(&valid)?
    );
    std::fs::write(
        dir.join("plot.svg"),
        plot::render(&report::plot_data(history, &title)),
    )?;
    Ok(valid)
}

/// What the `corrupt` faults add to the verdict. A node that did not refuse to start on
/// damaged data makes the run invalid whatever the checkers say (it could serve damaged data);
/// a corrupt step that damaged nothing or did not happen leaves it unknown (damage untested).
fn corruption_validity(
    schedule: &Schedule,
    corruptions: &[CorruptionOutcome],
    notes: &mut Vec<String>,
) -> Validity {
    let planned = schedule
        .steps
        .iter()
        .filter(|s| s.fault.kind() == NemesisKind::Corrupt)
        .count();
    let mut valid = Validity::Valid;
    for c in corruptions {
        if c.damaged && !c.refused {
            notes.push(format!(
                "step {}: NOT REFUSED (a node that does not refuse damaged data could serve it): {}",
                c.step, c.detail
            ));
            valid = Validity::Invalid;
        } else if !c.damaged {
            notes.push(format!("step {}: {}", c.step, c.detail));
            valid = valid.and(Validity::Unknown);
        } else {
            notes.push(format!("step {}: {}", c.step, c.detail));
        }
    }
    if corruptions.len() < planned {
        notes.push(format!(
            "{} of {planned} corrupt steps damaged a node (the others failed or were skipped: see the nemesis operations)",
            corruptions.len()
        ));
        valid = valid.and(Validity::Unknown);
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn outcome(step: usize, damaged: bool, refused: bool) -> CorruptionOutcome {
        CorruptionOutcome {
            step,
            node: 2,
            damaged,
            refused,
            detail: "d".into(),
        }
    }

    #[test]
    fn a_damaged_node_that_did_not_refuse_makes_the_run_invalid_and_untested_damage_unknown() {
        let s7 = Schedule::scenario(Scenario::Corruption, 1, 3, 60_000).expect("valid");
        let mut notes = Vec::new();
        let both = [outcome(0, true, true), outcome(1, true, true)];
        assert_eq!(corruption_validity(&s7, &both, &mut notes), Validity::Valid);
        assert_eq!(notes.len(), 2);
        let served = [outcome(0, true, true), outcome(1, true, false)];
        assert_eq!(
            corruption_validity(&s7, &served, &mut notes),
            Validity::Invalid
        );
        assert!(notes.iter().any(|n| n.contains("NOT REFUSED")));
        let nothing = [outcome(0, true, true), outcome(1, false, false)];
        assert_eq!(
            corruption_validity(&s7, &nothing, &mut notes),
            Validity::Unknown
        );
        let missing = [outcome(0, true, true)];
        assert_eq!(
            corruption_validity(&s7, &missing, &mut notes),
            Validity::Unknown
        );
        // Runs without the fault are not affected.
        let s1 = Schedule::scenario(Scenario::PauseKill, 1, 3, 60_000).expect("valid");
        let mut none = Vec::new();
        assert_eq!(corruption_validity(&s1, &[], &mut none), Validity::Valid);
        assert!(none.is_empty());
    }
}
