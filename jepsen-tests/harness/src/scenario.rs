//! Named regression scenarios (reference, section 7.3): fixed fault schedules taken from
//! published bugs in other replicated logs, built from the nemesis's primitives. Unlike drawn
//! schedules their faults may overlap (one node paused while another is killed); every step
//! still has its own heal, and the final heal comes after them as in every run. The seed only
//! drives the clients.
//!
//! ```text
//!  S1 pause-kill     n1 ░░░░░░░░ paused ░░░░░░░░
//!                    n2           ▓▓ killed ▓▓
//!                    n3              ░░░ paused ░░░
//!  S3 last replica   n2 ── isolated ──────┐        then n3 isolated too, n1 (alone) killed,
//!                    n3       ── isolated ┘        partitions healed, n1 restarted; twice
//!  S4 kill leaders   kill -9 the leader of p0, p1, p2, p0, ... (4 s each), 20 clients
//!  S5 storm          20 short pauses and kills 1-3 s apart, half of them of current leaders
//!  S7 corruption     n2: kill -9, bytes flipped in its largest SST, restart ─► must exit by
//!                    itself ("is damaged"); heal: data moved away, rejoins empty. Then the
//!                    same on the current leader of p1
//! ```

use serde::{Deserialize, Serialize};

use crate::schedule::{Fault, NodeId, PartitionSpec, Step};

/// A named regression scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// S1, NATS #7567: pause a minority node, keep writing, kill another node, pause the rest,
    /// resume the first, restart the killed one.
    PauseKill,
    /// S3, KIP-966 "last replica standing": isolate the followers one after another, then
    /// SIGKILL the last node standing; heal the partitions before it comes back.
    LastReplicaStanding,
    /// S4, Redpanda #3039: kill -9 the leaders again and again with many idempotent batches in
    /// flight.
    KillLeaders,
    /// S5, Redpanda #3003: a storm of short, overlapping pauses and kills, half of them of the
    /// current leaders.
    PauseKillStorm,
    /// S7, NATS #7549 / #7556: damage the files of one node while it is down (a fixed node,
    /// then the current leader of a partition); it must refuse to start, and the others carry
    /// on; repaired by rebuilding it empty from its peers.
    Corruption,
}

impl Scenario {
    /// Every scenario, in the reference's order.
    pub const ALL: [Scenario; 5] = [
        Scenario::PauseKill,
        Scenario::LastReplicaStanding,
        Scenario::KillLeaders,
        Scenario::PauseKillStorm,
        Scenario::Corruption,
    ];

    /// Parses a name as `--scenario` takes it: the full name (`s1-pause-kill`) or its tag
    /// (`s1`, `S1`).
    pub fn parse(name: &str) -> Result<Scenario, String> {
        let name = name.trim().to_ascii_lowercase();
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name || s.name().split('-').next() == Some(name.as_str()))
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {name:?}: use one of {}", names.join(", "))
            })
    }

    /// The name on the command line and in results folders.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::PauseKill => "s1-pause-kill",
            Scenario::LastReplicaStanding => "s3-last-replica",
            Scenario::KillLeaders => "s4-kill-leaders",
            Scenario::PauseKillStorm => "s5-pause-kill-storm",
            Scenario::Corruption => "s7-corruption",
        }
    }

    /// The bug it comes from.
    pub fn reference(self) -> &'static str {
        match self {
            Scenario::PauseKill => "S1, NATS #7567",
            Scenario::LastReplicaStanding => "S3, KIP-966",
            Scenario::KillLeaders => "S4, Redpanda #3039",
            Scenario::PauseKillStorm => "S5, Redpanda #3003",
            Scenario::Corruption => "S7, NATS #7549 and #7556",
        }
    }

    /// One line: what it does and what must hold.
    pub fn summary(self) -> &'static str {
        match self {
            Scenario::PauseKill => {
                "pause n1, write, kill -9 n2, pause n3, resume n1, restart n2, resume n3; no acknowledged write lost (no power loss: unfsynced writes survive)"
            }
            Scenario::LastReplicaStanding => {
                "isolate n2, then n3, kill -9 n1 (alone), heal, restart n1; again with n1, n3 isolated and n2 killed; no committed write lost"
            }
            Scenario::KillLeaders => {
                "kill -9 the leader of p0, p1, p2, p0, ... every 8 s for 4 s with 20 idempotent clients; no duplicates"
            }
            Scenario::PauseKillStorm => {
                "20 pauses and kills of 1.5-3 s, 1-3 s apart, half of current leaders, up to two at once; no inconsistent offsets"
            }
            Scenario::Corruption => {
                "kill -9 n2, flip 16 bytes of its largest SST, restart: it must exit by itself saying the data is damaged; rebuilt empty at heal; then the same on the leader of p1; no acknowledged write lost, the damaged node never serves"
            }
        }
    }

    /// The cluster size it is written for.
    pub fn nodes(self) -> u32 {
        3
    }

    /// The client concurrency it needs, if not the default.
    pub fn concurrency(self) -> Option<u64> {
        match self {
            Scenario::KillLeaders => Some(20),
            _ => None,
        }
    }

    /// Its steps, in order of their starts.
    pub fn steps(self) -> Vec<Step> {
        match self {
            Scenario::PauseKill => vec![
                // n2 and n3 carry the writes for 15 s while n1 falls behind.
                step(3_000, 28_000, pause(1)),
                // n3 alone is up: no quorum.
                step(18_000, 31_000, kill(2)),
                // Nothing runs.
                step(22_000, 38_000, pause(3)),
                // 28 s: n1 is back alone and behind; 31 s: n2 restarts and n1 + n2 form a
                // majority in which only n2 has the writes of 3..18 s; 38 s: n3 resumes.
            ],
            Scenario::LastReplicaStanding => vec![
                // Round 1: n1 and n3 commit for 10 s without n2; then n1 is the last replica
                // standing (it cannot commit alone); it dies; n2 and n3 must elect n3, the one
                // with every committed write, before n1 returns.
                step(5_000, 27_000, isolate(2)),
                step(15_000, 27_000, isolate(3)),
                step(21_000, 35_000, kill(1)),
                // Round 2, rotated: n2 is the last one standing.
                step(37_000, 51_000, isolate(1)),
                step(43_000, 51_000, isolate(3)),
                step(47_000, 55_000, kill(2)),
            ],
            Scenario::KillLeaders => (0..7u32)
                .map(|k| {
                    let start = 5_000 + 8_000 * u64::from(k);
                    step(start, start + 4_000, Fault::KillLeader { partition: k % 3 })
                })
                .collect(),
            Scenario::PauseKillStorm => storm(),
            Scenario::Corruption => vec![
                // 15 s of writes first, so that every node has SST files (memtable_mb = 1).
                // n2 is damaged and refuses to start; n1 + n3 carry the writes until 30 s,
                // when n2 is rebuilt empty from them.
                step(15_000, 30_000, Fault::Corrupt { node: 2 }),
                // 8 s later (n2 caught up), the same on whichever node leads p1 then.
                step(38_000, 52_000, Fault::CorruptLeader { partition: 1 }),
            ],
        }
    }
}

/// S5's storm, written out so that it never changes: (start, length) in ms and the fault.
/// Fixed nodes are chosen so that no two faults on the same node overlap; a leader target that
/// turns out to be a node already paused or killed is skipped at run time (and recorded so).
fn storm() -> Vec<Step> {
    let table = [
        (4_000, 2_500, pause(1)),
        (5_000, 3_000, Fault::KillLeader { partition: 1 }),
        (7_000, 2_000, Fault::PauseLeader { partition: 2 }),
        (9_000, 2_500, kill(3)),
        // n3 dead and n2 paused: no quorum for a second.
        (10_500, 2_000, pause(2)),
        (13_000, 2_000, Fault::KillLeader { partition: 0 }),
        (14_000, 3_000, pause(3)),
        (16_000, 2_500, Fault::KillLeader { partition: 1 }),
        (18_000, 1_500, Fault::PauseLeader { partition: 0 }),
        (19_000, 3_000, kill(1)),
        (20_500, 2_000, Fault::PauseLeader { partition: 2 }),
        (23_000, 2_000, Fault::KillLeader { partition: 2 }),
        (24_000, 2_500, pause(2)),
        (26_000, 3_000, Fault::KillLeader { partition: 0 }),
        (28_000, 1_500, Fault::PauseLeader { partition: 1 }),
        (30_000, 2_500, kill(2)),
        // n2 dead and n3 paused: no quorum for 1.5 s.
        (31_000, 2_000, pause(3)),
        (34_000, 2_000, Fault::KillLeader { partition: 1 }),
        (35_000, 2_000, Fault::PauseLeader { partition: 0 }),
        (37_500, 2_500, Fault::KillLeader { partition: 2 }),
    ];
    table
        .into_iter()
        .map(|(start, length, fault)| step(start, start + length, fault))
        .collect()
}

fn step(start_ms: u64, heal_ms: u64, fault: Fault) -> Step {
    Step {
        start_ms,
        heal_ms,
        fault,
    }
}

fn pause(node: NodeId) -> Fault {
    Fault::Pause { node }
}

fn kill(node: NodeId) -> Fault {
    Fault::Kill { nodes: vec![node] }
}

fn isolate(node: NodeId) -> Fault {
    Fault::Partition {
        spec: PartitionSpec::Isolate { node },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::schedule::{Phase, Schedule};

    fn schedule(scenario: Scenario) -> Schedule {
        Schedule::scenario(scenario, 1, 3, 60_000).expect("fits 3 nodes and 60 s")
    }

    /// The nodes a step's fault names, if it names them (leader targets are resolved at run
    /// time).
    fn fixed_nodes(fault: &Fault) -> Vec<NodeId> {
        match fault {
            Fault::Kill { nodes } | Fault::Netem { nodes } => nodes.clone(),
            Fault::Pause { node } | Fault::Corrupt { node } => vec![*node],
            Fault::Partition {
                spec: PartitionSpec::Isolate { node },
            } => vec![*node],
            _ => vec![],
        }
    }

    fn overlap(a: &Step, b: &Step) -> bool {
        a.start_ms < b.heal_ms && b.start_ms < a.heal_ms
    }

    #[test]
    fn scenarios_are_fixed_whatever_the_seed() {
        for scenario in Scenario::ALL {
            let a = Schedule::scenario(scenario, 1, 3, 60_000).expect("valid");
            let b = Schedule::scenario(scenario, 99, 3, 60_000).expect("valid");
            assert_eq!(a.steps, b.steps, "{}", scenario.name());
            assert_eq!(a.timeline(), b.timeline());
            assert_eq!(a.nemesis_label(), scenario.name());
            assert!(a.describe().contains(scenario.reference()));
        }
    }

    #[test]
    fn every_fault_is_started_then_healed_within_60_s() {
        for scenario in Scenario::ALL {
            let s = schedule(scenario);
            assert!(!s.steps.is_empty());
            let timeline = s.timeline();
            assert_eq!(timeline.len(), 2 * s.steps.len(), "{}", scenario.name());
            let mut seen: BTreeMap<usize, Vec<Phase>> = BTreeMap::new();
            let mut previous = 0;
            for event in &timeline {
                assert!(event.at_ms >= previous, "time order");
                previous = event.at_ms;
                seen.entry(event.step).or_default().push(event.phase);
            }
            for (step, phases) in seen {
                assert_eq!(phases, vec![Phase::Start, Phase::Heal], "step {step}");
                let st = &s.steps[step];
                assert!(st.start_ms < st.heal_ms && st.heal_ms <= 60_000);
            }
        }
    }

    #[test]
    fn process_faults_on_one_node_never_overlap_so_each_heal_undoes_its_own_fault() {
        for scenario in Scenario::ALL {
            let steps = scenario.steps();
            for (i, a) in steps.iter().enumerate() {
                for b in &steps[i + 1..] {
                    let process = |f: &Fault| f.kind() != crate::schedule::NemesisKind::Partition;
                    if !(process(&a.fault) && process(&b.fault) && overlap(a, b)) {
                        continue;
                    }
                    let (na, nb) = (fixed_nodes(&a.fault), fixed_nodes(&b.fault));
                    assert!(
                        na.iter().all(|n| !nb.contains(n)),
                        "{}: {} and {} overlap on one node",
                        scenario.name(),
                        a.fault,
                        b.fault
                    );
                }
            }
        }
    }

    #[test]
    fn s1_and_s5_overlap_faults_and_s3_isolates_both_followers_before_the_kill() {
        let overlapping = |s: &[Step]| {
            s.iter()
                .enumerate()
                .any(|(i, a)| s[i + 1..].iter().any(|b| overlap(a, b)))
        };
        assert!(overlapping(&Scenario::PauseKill.steps()));
        assert!(overlapping(&Scenario::PauseKillStorm.steps()));
        assert!(!overlapping(&Scenario::KillLeaders.steps()));

        // S1: at 25 s n1 and n3 are paused and n2 is dead.
        let s1 = Scenario::PauseKill.steps();
        let at = |t: u64| -> Vec<String> {
            s1.iter()
                .filter(|s| (s.start_ms..s.heal_ms).contains(&t))
                .map(|s| s.fault.to_string())
                .collect()
        };
        assert_eq!(at(25_000).len(), 3, "{:?}", at(25_000));
        // n1 resumes before n2 restarts, which is before n3 resumes.
        assert!(s1[0].heal_ms < s1[1].heal_ms && s1[1].heal_ms < s1[2].heal_ms);

        // S3: when the last node standing is killed, both others are isolated.
        let s3 = Scenario::LastReplicaStanding.steps();
        for kill in s3.iter().filter(|s| matches!(s.fault, Fault::Kill { .. })) {
            let killed = fixed_nodes(&kill.fault);
            let isolated: Vec<NodeId> = s3
                .iter()
                .filter(|s| matches!(s.fault, Fault::Partition { .. }))
                .filter(|s| (s.start_ms..s.heal_ms).contains(&kill.start_ms))
                .flat_map(|s| fixed_nodes(&s.fault))
                .collect();
            assert_eq!(isolated.len(), 2);
            assert!(!isolated.contains(&killed[0]));
            // The partitions heal while the killed node is still down.
            assert!(
                s3.iter()
                    .filter(|s| matches!(s.fault, Fault::Partition { .. }))
                    .filter(|s| (s.start_ms..s.heal_ms).contains(&kill.start_ms))
                    .all(|s| s.heal_ms < kill.heal_ms)
            );
        }
    }

    #[test]
    fn s4_kills_leaders_with_20_clients_and_s5_targets_leaders_half_the_time() {
        assert_eq!(Scenario::KillLeaders.concurrency(), Some(20));
        assert_eq!(Scenario::PauseKill.concurrency(), None);
        let s4 = Scenario::KillLeaders.steps();
        assert!(
            s4.iter()
                .all(|s| matches!(s.fault, Fault::KillLeader { .. }))
        );
        let s5 = Scenario::PauseKillStorm.steps();
        assert_eq!(s5.len(), 20);
        let leaders = s5
            .iter()
            .filter(|s| {
                matches!(
                    s.fault,
                    Fault::KillLeader { .. } | Fault::PauseLeader { .. }
                )
            })
            .count();
        assert_eq!(leaders, 12);
        let kills = s5
            .iter()
            .filter(|s| s.fault.kind() == crate::schedule::NemesisKind::Kill)
            .count();
        assert_eq!(kills, 10);
    }

    #[test]
    fn names_parse_in_full_or_by_tag_and_bad_sizes_are_refused() {
        assert_eq!(Scenario::parse("s1"), Ok(Scenario::PauseKill));
        assert_eq!(Scenario::parse("S3"), Ok(Scenario::LastReplicaStanding));
        assert_eq!(
            Scenario::parse("s5-pause-kill-storm"),
            Ok(Scenario::PauseKillStorm)
        );
        assert_eq!(Scenario::parse("s7"), Ok(Scenario::Corruption));
        assert_eq!(Scenario::parse("s7-corruption"), Ok(Scenario::Corruption));
        assert!(Scenario::parse("s2").is_err());
        assert!(Schedule::scenario(Scenario::PauseKill, 1, 5, 60_000).is_err());
        let short = Schedule::scenario(Scenario::LastReplicaStanding, 1, 3, 30_000);
        assert!(short.expect_err("too short").contains("--time-limit 55"));
    }

    #[test]
    fn s7_damages_one_node_at_a_time_after_sst_files_exist_and_never_with_other_faults() {
        let s = schedule(Scenario::Corruption);
        assert!(s.corrupts());
        assert!(!schedule(Scenario::PauseKill).corrupts());
        assert_eq!(s.steps.len(), 2);
        assert_eq!(s.steps[0].fault, Fault::Corrupt { node: 2 });
        assert_eq!(s.steps[1].fault, Fault::CorruptLeader { partition: 1 });
        // At least 10 s of writes before the first damage (1 MB memtables have flushed).
        assert!(s.steps[0].start_ms >= 10_000);
        for (i, a) in s.steps.iter().enumerate() {
            assert_eq!(a.fault.kind(), crate::schedule::NemesisKind::Corrupt);
            // Long enough for the restart to be refused (bounded wait) before the heal.
            assert!(a.heal_ms - a.start_ms >= 10_000, "{}", a.fault);
            // The next damage only after the previous node was rebuilt and had time to catch
            // up: never two damaged nodes (a rebuilt node forgot its vote; README).
            for b in &s.steps[i + 1..] {
                assert!(b.start_ms >= a.heal_ms + 5_000);
            }
        }
        assert_eq!(Scenario::Corruption.nodes(), 3);
        assert_eq!(Scenario::Corruption.concurrency(), None);
        assert!(Schedule::scenario(Scenario::Corruption, 1, 3, 51_000).is_err());
        assert!(s.describe().contains("corrupt n2"));
    }
}
