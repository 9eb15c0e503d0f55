//! The fault schedule: which fault starts when and when it is healed, drawn entirely from one
//! seeded `StdRng`, so the same seed (with the same options) gives the same schedule.
//!
//! ```text
//!  0 ── quiet ──┬── fault ~interval ──┬── healed ~interval ──┬── fault ... ──┬── time limit
//!             start                  heal                  start           heal
//! ```
//!
//! Drawn schedules never overlap faults: each is healed before the next starts, and every one is
//! healed at or before the time limit. With several nemeses the kinds take turns in the order
//! given. A named regression scenario ([`Scenario`]) is a fixed list of steps instead, whose
//! faults may overlap (one node paused while another is killed); the nemesis carries out any
//! schedule as a [`Schedule::timeline`] of starts and heals.

use std::fmt;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// A family of faults, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// Network partitions between nodes (iptables in each node's namespace).
    Partition,
    /// SIGKILL, restarted at heal.
    Kill,
    /// SIGSTOP, SIGCONT at heal.
    Pause,
    /// Packet delay, loss, duplication and reordering.
    Netem,
    /// SIGKILL a node, damage one of its files, restart it (it must refuse to start); at heal
    /// its data directory is moved away and it rejoins empty.
    Corrupt,
    /// SIGKILL a node (or all of them) and revert its files to their last fsync (its data
    /// directory is a `c4aj-lazyfs` mount); restarted at heal.
    Powercut,
}

impl NemesisKind {
    /// Parses a comma list such as `partition,kill`; duplicates are dropped, order is kept.
    pub fn parse_list(list: &str) -> Result<Vec<NemesisKind>, String> {
        let mut kinds = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let kind = match name {
                "partition" => NemesisKind::Partition,
                "kill" => NemesisKind::Kill,
                "pause" => NemesisKind::Pause,
                "netem" => NemesisKind::Netem,
                "corrupt" => NemesisKind::Corrupt,
                "powercut" => NemesisKind::Powercut,
                "none" => continue,
                other => {
                    return Err(format!(
                        "unknown nemesis {other:?}: use partition, kill, pause, netem, corrupt, powercut or none"
                    ));
                }
            };
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }

    fn name(self) -> &'static str {
        match self {
            NemesisKind::Partition => "partition",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Netem => "netem",
            NemesisKind::Corrupt => "corrupt",
            NemesisKind::Powercut => "powercut",
        }
    }
}

/// A node, numbered 1..=N as in the cluster file.
pub type NodeId = u32;

/// How the nodes are split (Jepsen's grudge specs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PartitionSpec {
    /// One node cut off from all others (`:one`).
    Isolate {
        /// The isolated node.
        node: NodeId,
    },
    /// A clean majority/minority split (`:majority`).
    Split {
        /// The minority side.
        minority: Vec<NodeId>,
    },
    /// The current partition leaders, each in its own singleton group, the rest together
    /// (`:primaries`). Which nodes those are is only known when the fault starts.
    Leaders,
    /// Each node sees only its two ring neighbours: overlapping majorities, no two nodes agreeing
    /// on one (`:majorities-ring`). Only with 5 or more nodes (with 3 it cuts nothing).
    Ring,
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "fault")]
pub enum Fault {
    /// A network partition.
    Partition {
        /// The split.
        spec: PartitionSpec,
    },
    /// SIGKILL these nodes; restart them at heal.
    Kill {
        /// One node, or a majority.
        nodes: Vec<NodeId>,
    },
    /// SIGSTOP this node; SIGCONT at heal.
    Pause {
        /// The paused node.
        node: NodeId,
    },
    /// Degrade these nodes' links.
    Netem {
        /// One node or all of them.
        nodes: Vec<NodeId>,
    },
    /// SIGKILL the current leader of a partition of the topic (known only when the fault
    /// starts); restart it at heal.
    KillLeader {
        /// The partition whose leader is killed.
        partition: u32,
    },
    /// SIGSTOP the current leader of a partition; SIGCONT at heal.
    PauseLeader {
        /// The partition whose leader is paused.
        partition: u32,
    },
    /// SIGKILL this node, damage its largest SST file (or, without one, its newest WAL file),
    /// restart it and wait for it to refuse to start; at heal move its data directory away and
    /// restart it empty.
    Corrupt {
        /// The damaged node.
        node: NodeId,
    },
    /// [`Fault::Corrupt`] on the current leader of a partition.
    CorruptLeader {
        /// The partition whose leader is damaged.
        partition: u32,
    },
    /// SIGKILL these nodes, then revert every file on their `c4aj-lazyfs` data directories to
    /// its last fsync (a power cut); restart them at heal.
    Powercut {
        /// One node, or all of them at once.
        nodes: Vec<NodeId>,
    },
}

impl Fault {
    /// The nemesis family the fault belongs to.
    pub fn kind(&self) -> NemesisKind {
        match self {
            Fault::Partition { .. } => NemesisKind::Partition,
            Fault::Kill { .. } | Fault::KillLeader { .. } => NemesisKind::Kill,
            Fault::Pause { .. } | Fault::PauseLeader { .. } => NemesisKind::Pause,
            Fault::Netem { .. } => NemesisKind::Netem,
            Fault::Corrupt { .. } | Fault::CorruptLeader { .. } => NemesisKind::Corrupt,
            Fault::Powercut { .. } => NemesisKind::Powercut,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |nodes: &[NodeId]| {
            nodes
                .iter()
                .map(|n| format!("n{n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Fault::Partition { spec } => match spec {
                PartitionSpec::Isolate { node } => write!(f, "partition: isolate n{node}"),
                PartitionSpec::Split { minority } => {
                    write!(f, "partition: minority {} | majority", list(minority))
                }
                PartitionSpec::Leaders => f.write_str("partition: isolate the current leaders"),
                PartitionSpec::Ring => f.write_str("partition: majorities ring"),
            },
            Fault::Kill { nodes } => write!(f, "kill -9 {} (restart at heal)", list(nodes)),
            Fault::Pause { node } => write!(f, "pause n{node} (SIGSTOP, SIGCONT at heal)"),
            Fault::Netem { nodes } => write!(f, "netem on {}", list(nodes)),
            Fault::KillLeader { partition } => {
                write!(f, "kill -9 the leader of p{partition} (restart at heal)")
            }
            Fault::PauseLeader { partition } => {
                write!(f, "pause the leader of p{partition} (SIGCONT at heal)")
            }
            Fault::Corrupt { node } => write!(
                f,
                "corrupt n{node}: kill -9, damage a file, restart (must refuse; rebuilt empty at heal)"
            ),
            Fault::CorruptLeader { partition } => write!(
                f,
                "corrupt the leader of p{partition}: kill -9, damage a file, restart (must refuse; rebuilt empty at heal)"
            ),
            Fault::Powercut { nodes } => write!(
                f,
                "powercut {}: kill -9, lose every write since the last fsync (restart at heal)",
                list(nodes)
            ),
        }
    }
}

/// One scheduled fault and its heal, in ms since the workload started. The heal undoes exactly
/// what the start did, so overlapping steps heal independently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// When the fault starts.
    pub start_ms: u64,
    /// When it is healed; after `start_ms`, at most the time limit.
    pub heal_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// What a schedule is drawn from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Number of nodes (3 or 5).
    pub nodes: u32,
    /// The nemeses, taking turns in this order.
    pub nemeses: Vec<NemesisKind>,
    /// Length of the workload, in ms.
    pub time_limit_ms: u64,
    /// Typical length of a fault and of the quiet period after it, in ms.
    pub interval_ms: u64,
    /// A named scenario replaces the drawn faults (then `nemeses` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<Scenario>,
}

/// Whether a timeline event starts or heals its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Undo the step's fault (ordered first when a heal and a start fall on the same ms).
    Heal,
    /// Inflict the step's fault.
    Start,
}

/// One action of a timeline: at `at_ms`, start or heal `steps[step]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in ms since the workload started.
    pub at_ms: u64,
    /// Start or heal.
    pub phase: Phase,
    /// Index into [`Schedule::steps`].
    pub step: usize,
}

/// A fault schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// What it was drawn from.
    pub config: ScheduleConfig,
    /// The faults, in order of their starts; they overlap only in scenarios.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// The fixed schedule of a named scenario. It needs its node count and a time limit that
    /// holds its last heal; the seed is kept for the clients.
    pub fn scenario(
        scenario: Scenario,
        seed: u64,
        nodes: u32,
        time_limit_ms: u64,
    ) -> Result<Schedule, String> {
        if nodes != scenario.nodes() {
            return Err(format!(
                "scenario {} is written for {} nodes, not {nodes}",
                scenario.name(),
                scenario.nodes()
            ));
        }
        let steps = scenario.steps();
        let end = steps.iter().map(|s| s.heal_ms).max().unwrap_or(0);
        if end > time_limit_ms {
            return Err(format!(
                "scenario {} heals its last fault at {} s: use --time-limit {} or more",
                scenario.name(),
                end / 1000,
                end.div_ceil(1000)
            ));
        }
        Ok(Schedule {
            config: ScheduleConfig {
                seed,
                nodes,
                nemeses: Vec::new(),
                time_limit_ms,
                interval_ms: 0,
                scenario: Some(scenario),
            },
            steps,
        })
    }

    /// Every start and heal in time order (heals first at equal times, then by step): what the
    /// nemesis carries out.
    pub fn timeline(&self) -> Vec<Event> {
        let mut events: Vec<Event> = self
            .steps
            .iter()
            .enumerate()
            .flat_map(|(step, s)| {
                [
                    Event {
                        at_ms: s.start_ms,
                        phase: Phase::Start,
                        step,
                    },
                    Event {
                        at_ms: s.heal_ms,
                        phase: Phase::Heal,
                        step,
                    },
                ]
            })
            .collect();
        events.sort_by_key(|e| (e.at_ms, e.phase, e.step));
        events
    }

    /// Draws the schedule for `config`. Deterministic in `config`.
    pub fn generate(config: &ScheduleConfig) -> Schedule {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut steps = Vec::new();
        let interval = config.interval_ms.max(1);
        // Let the workload warm up for about half an interval first.
        let mut t = jitter(&mut rng, interval / 2);
        // Every step advances `t` by at least half an interval, so this bound is never the
        // reason to stop unless the interval is tiny; it keeps the loop finite regardless.
        let max_steps = config.time_limit_ms / (interval / 2).max(1) + 1;
        for turn in 0..max_steps {
            let Some(&kind) = config
                .nemeses
                .get(usize::try_from(turn).unwrap_or(0) % config.nemeses.len().max(1))
            else {
                break;
            };
            let duration = jitter(&mut rng, interval).max(1);
            let fault = draw_fault(&mut rng, kind, config.nodes);
            if t + duration > config.time_limit_ms {
                break;
            }
            steps.push(Step {
                start_ms: t,
                heal_ms: t + duration,
                fault,
            });
            t += duration + jitter(&mut rng, interval).max(1);
        }
        Schedule {
            config: config.clone(),
            steps,
        }
    }

    /// A human-readable listing, one fault per line.
    pub fn describe(&self) -> String {
        if let Some(scenario) = self.config.scenario {
            let mut out = format!(
                "scenario {} ({}; seed {} for the clients, {} nodes, time limit {} s): {} faults\n  {}\n",
                scenario.name(),
                scenario.reference(),
                self.config.seed,
                self.config.nodes,
                self.config.time_limit_ms as f64 / 1000.0,
                self.steps.len(),
                scenario.summary()
            );
            for event in self.timeline() {
                let phase = match event.phase {
                    Phase::Start => "start",
                    Phase::Heal => "heal ",
                };
                out.push_str(&format!(
                    "  {:>7.1} s  {phase} #{:<2} {}\n",
                    event.at_ms as f64 / 1000.0,
                    event.step,
                    self.steps[event.step].fault
                ));
            }
            return out;
        }
        let mut out = format!(
            "fault schedule (seed {}, {} nodes, nemesis {}, time limit {} s, interval {} s): {} faults\n",
            self.config.seed,
            self.config.nodes,
            self.nemesis_label(),
            self.config.time_limit_ms as f64 / 1000.0,
            self.config.interval_ms as f64 / 1000.0,
            self.steps.len()
        );
        for step in &self.steps {
            out.push_str(&format!(
                "  {:>7.1} s .. {:>7.1} s  {}\n",
                step.start_ms as f64 / 1000.0,
                step.heal_ms as f64 / 1000.0,
                step.fault
            ));
        }
        out
    }

    /// Whether any step damages a node's files (the cluster file then makes SST files appear
    /// within seconds: `[storage] memtable_mb = 1`).
    pub fn corrupts(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.fault.kind() == NemesisKind::Corrupt)
    }

    /// Whether any step cuts a node's power (the data directories are then `c4aj-lazyfs`
    /// mounts).
    pub fn powercuts(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.fault.kind() == NemesisKind::Powercut)
    }

    /// The scenario's name, or the nemeses as a comma list (`none` if there are none).
    pub fn nemesis_label(&self) -> String {
        if let Some(scenario) = self.config.scenario {
            return scenario.name().into();
        }
        if self.config.nemeses.is_empty() {
            return "none".into();
        }
        let names: Vec<&str> = self.config.nemeses.iter().map(|k| k.name()).collect();
        names.join(",")
    }
}

/// `base` scaled by a factor in [0.75, 1.25].
fn jitter(rng: &mut StdRng, base: u64) -> u64 {
    let factor = rng.random_range(0.75..=1.25);
    (base as f64 * factor).round() as u64
}

fn draw_fault(rng: &mut StdRng, kind: NemesisKind, nodes: u32) -> Fault {
    let all: Vec<NodeId> = (1..=nodes).collect();
    let majority = nodes / 2 + 1;
    match kind {
        NemesisKind::Partition => {
            let choices = if nodes >= 5 { 4 } else { 3 };
            let spec = match rng.random_range(0..choices) {
                0 => PartitionSpec::Isolate {
                    node: pick(rng, &all),
                },
                1 => {
                    let mut shuffled = all.clone();
                    shuffled.shuffle(rng);
                    let mut minority = shuffled[..(nodes - majority) as usize].to_vec();
                    minority.sort_unstable();
                    PartitionSpec::Split { minority }
                }
                2 => PartitionSpec::Leaders,
                _ => PartitionSpec::Ring,
            };
            Fault::Partition { spec }
        }
        NemesisKind::Kill => {
            // Mostly one node; one time in four a majority, which stops all progress.
            let count = if rng.random_bool(0.25) { majority } else { 1 };
            let mut shuffled = all.clone();
            shuffled.shuffle(rng);
            let mut nodes = shuffled[..count as usize].to_vec();
            nodes.sort_unstable();
            Fault::Kill { nodes }
        }
        NemesisKind::Pause => Fault::Pause {
            node: pick(rng, &all),
        },
        NemesisKind::Netem => {
            let nodes = if rng.random_bool(0.5) {
                all.clone()
            } else {
                vec![pick(rng, &all)]
            };
            Fault::Netem { nodes }
        }
        NemesisKind::Corrupt => Fault::Corrupt {
            node: pick(rng, &all),
        },
        NemesisKind::Powercut => {
            // Mostly one node; one time in four every node at once (nothing acknowledged may
            // be lost even then: the node fsyncs before it acknowledges).
            let nodes = if rng.random_bool(0.25) {
                all.clone()
            } else {
                vec![pick(rng, &all)]
            };
            Fault::Powercut { nodes }
        }
    }
}

fn pick(rng: &mut StdRng, nodes: &[NodeId]) -> NodeId {
    let i = (rng.next_u64() % nodes.len() as u64) as usize;
    nodes[i]
}

/// Which links a partition cuts: for each node, the peers it must not exchange packets with.
/// Symmetric. `leaders` is used for [`PartitionSpec::Leaders`].
pub fn grudge(spec: &PartitionSpec, nodes: u32, leaders: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let all: Vec<NodeId> = (1..=nodes).collect();
    // The group of each node; nodes in different groups are cut apart.
    let group = |n: NodeId| -> u32 {
        match spec {
            PartitionSpec::Isolate { node } => u32::from(n == *node),
            PartitionSpec::Split { minority } => u32::from(minority.contains(&n)),
            PartitionSpec::Leaders => {
                if leaders.contains(&n) {
                    n
                } else {
                    0
                }
            }
            PartitionSpec::Ring => 0,
        }
    };
    let mut cut = Vec::new();
    for &a in &all {
        for &b in &all {
            if a == b {
                continue;
            }
            let apart = match spec {
                PartitionSpec::Ring => {
                    // Neighbours on the ring 1..=N: distance 1 either way.
                    let d = a.abs_diff(b);
                    d != 1 && d != nodes - 1
                }
                _ => group(a) != group(b),
            };
            if apart {
                cut.push((a, b));
            }
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64, nemeses: &[NemesisKind], nodes: u32) -> ScheduleConfig {
        ScheduleConfig {
            seed,
            nodes,
            nemeses: nemeses.to_vec(),
            time_limit_ms: 120_000,
            interval_ms: 10_000,
            scenario: None,
        }
    }

    const ALL: &[NemesisKind] = &[
        NemesisKind::Partition,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Netem,
        NemesisKind::Corrupt,
        NemesisKind::Powercut,
    ];

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_other_seeds_differ() {
        let a = Schedule::generate(&config(42, ALL, 5));
        let b = Schedule::generate(&config(42, ALL, 5));
        assert_eq!(a, b);
        assert_eq!(a.describe(), b.describe());
        let differing = (43..53)
            .filter(|seed| Schedule::generate(&config(*seed, ALL, 5)).steps != a.steps)
            .count();
        assert_eq!(differing, 10, "every other seed gives another schedule");
    }

    #[test]
    fn every_fault_is_healed_before_the_next_and_within_the_time_limit() {
        for seed in 0..200 {
            for nodes in [3, 5] {
                let s = Schedule::generate(&config(seed, ALL, nodes));
                assert!(!s.steps.is_empty(), "seed {seed}: a 120 s run has faults");
                let mut previous_heal = 0;
                for step in &s.steps {
                    assert!(step.start_ms >= previous_heal, "seed {seed}: overlap");
                    assert!(
                        step.heal_ms > step.start_ms,
                        "seed {seed}: heal after start"
                    );
                    assert!(
                        step.heal_ms <= s.config.time_limit_ms,
                        "seed {seed}: late heal"
                    );
                    // About one interval of fault, then about one interval of quiet.
                    let duration = step.heal_ms - step.start_ms;
                    assert!(
                        (7_500..=12_500).contains(&duration),
                        "seed {seed}: {duration}"
                    );
                    previous_heal = step.heal_ms;
                }
            }
        }
    }

    #[test]
    fn nemeses_take_turns_and_faults_name_real_nodes() {
        let s = Schedule::generate(&config(7, &[NemesisKind::Partition, NemesisKind::Kill], 3));
        assert!(s.steps.len() >= 4);
        for (i, step) in s.steps.iter().enumerate() {
            let expected = [NemesisKind::Partition, NemesisKind::Kill][i % 2];
            assert_eq!(step.fault.kind(), expected);
            let nodes: Vec<NodeId> = match &step.fault {
                Fault::Partition { spec } => {
                    assert_ne!(*spec, PartitionSpec::Ring, "no ring with 3 nodes");
                    match spec {
                        PartitionSpec::Isolate { node } => vec![*node],
                        PartitionSpec::Split { minority } => minority.clone(),
                        _ => vec![],
                    }
                }
                Fault::Kill { nodes } | Fault::Netem { nodes } | Fault::Powercut { nodes } => {
                    nodes.clone()
                }
                Fault::Pause { node } | Fault::Corrupt { node } => vec![*node],
                Fault::KillLeader { .. }
                | Fault::PauseLeader { .. }
                | Fault::CorruptLeader { .. } => {
                    panic!("drawn schedules name their nodes")
                }
            };
            assert!(nodes.iter().all(|n| (1..=3).contains(n)), "{nodes:?}");
        }
    }

    #[test]
    fn no_nemesis_means_no_faults_and_short_runs_fit_what_they_can() {
        assert!(Schedule::generate(&config(1, &[], 3)).steps.is_empty());
        let mut short = config(1, &[NemesisKind::Kill], 3);
        short.time_limit_ms = 30_000;
        let s = Schedule::generate(&short);
        assert!((1..=2).contains(&s.steps.len()), "{}", s.describe());
    }

    #[test]
    fn nemesis_lists_parse_and_unknown_names_are_refused() {
        assert_eq!(
            NemesisKind::parse_list("partition,kill,partition").expect("valid"),
            vec![NemesisKind::Partition, NemesisKind::Kill]
        );
        assert_eq!(NemesisKind::parse_list("none").expect("valid"), vec![]);
        assert_eq!(
            NemesisKind::parse_list("corrupt").expect("valid"),
            vec![NemesisKind::Corrupt]
        );
        assert!(NemesisKind::parse_list("partition,clock").is_err());
    }

    #[test]
    fn powercuts_hit_one_node_or_all_and_the_same_seed_cuts_the_same() {
        let mut one = 0;
        let mut all = 0;
        for seed in 0..100 {
            let s = Schedule::generate(&config(seed, &[NemesisKind::Powercut], 3));
            assert!(s.powercuts(), "seed {seed}");
            assert_eq!(
                s,
                Schedule::generate(&config(seed, &[NemesisKind::Powercut], 3))
            );
            for step in &s.steps {
                let Fault::Powercut { nodes } = &step.fault else {
                    panic!("only powercuts: {:?}", step.fault)
                };
                match nodes.len() {
                    1 => one += 1,
                    3 => all += 1,
                    n => panic!("seed {seed}: {n} nodes cut"),
                }
                assert!(step.fault.to_string().starts_with("powercut n"));
            }
            assert!(s.describe().contains("nemesis powercut"));
        }
        assert!(one > all && all > 0, "{one} single, {all} all at once");
        assert!(!Schedule::generate(&config(1, &[NemesisKind::Kill], 3)).powercuts());
    }

    #[test]
    fn grudges_cut_the_links_each_partition_names() {
        let isolate = grudge(&PartitionSpec::Isolate { node: 2 }, 3, &[]);
        assert_eq!(isolate, vec![(1, 2), (2, 1), (2, 3), (3, 2)]);

        let split = grudge(
            &PartitionSpec::Split {
                minority: vec![1, 4],
            },
            5,
            &[],
        );
        assert_eq!(split.len(), 2 * 2 * 3, "2 x 3 links, both directions");
        assert!(split.contains(&(1, 2)) && !split.contains(&(1, 4)) && !split.contains(&(2, 3)));

        let leaders = grudge(&PartitionSpec::Leaders, 5, &[1, 3]);
        assert!(
            leaders.contains(&(1, 3)) && leaders.contains(&(1, 2)) && leaders.contains(&(3, 5))
        );
        assert!(!leaders.contains(&(2, 4)) && !leaders.contains(&(4, 5)));

        let ring = grudge(&PartitionSpec::Ring, 5, &[]);
        for node in 1..=5u32 {
            let reachable: Vec<NodeId> = (1..=5)
                .filter(|p| *p != node && !ring.contains(&(node, *p)))
                .collect();
            let mut neighbours = vec![node % 5 + 1, (node + 3) % 5 + 1];
            neighbours.sort_unstable();
            // With itself, each node sees 3 of 5: a majority, but a different one for each.
            assert_eq!(
                reachable, neighbours,
                "n{node} sees only its ring neighbours"
            );
        }
        assert!(grudge(&PartitionSpec::Ring, 3, &[]).is_empty());
    }
}
