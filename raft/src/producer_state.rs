//! Kafka's idempotent-producer rules (`ProducerAppendInfo`), as a pure function of a producer's
//! stored state and an incoming batch. The partition state machine applies it inside `apply`, so
//! every replica reaches the same decision from the same log.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many recent batches per producer are remembered for duplicate detection (Kafka's
/// `NUM_BATCHES_TO_RETAIN`, and the bound on a producer's in-flight requests).
pub const BATCHES_TO_RETAIN: usize = 5;

/// One remembered batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Its record count.
    pub count: u32,
}

/// What a partition remembers of one producer id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The newest epoch seen.
    pub epoch: i16,
    /// The last batches of that epoch, oldest first, at most [`BATCHES_TO_RETAIN`].
    pub batches: VecDeque<BatchMeta>,
}

/// The verdict on an incoming batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Append it.
    Append,
    /// It repeats a remembered batch: answer with that batch's offsets, write nothing.
    Duplicate(BatchMeta),
    /// Its first sequence is not the next one.
    OutOfOrder {
        /// The sequence expected next (0 after an epoch bump).
        expected: i32,
    },
    /// Its epoch is older than the current one.
    Fenced {
        /// The current epoch.
        current_epoch: i16,
    },
}

/// The last sequence of a batch of `count` records starting at `first`, wrapping from
/// `i32::MAX` to 0 as Kafka does.
pub fn last_sequence(first: i32, count: u32) -> i32 {
    ((i64::from(first) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

/// The sequence that follows `seq`.
pub fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// Decides what to do with a batch (`epoch`, `first_seq`, `count`) given what the partition
/// remembers of its producer (`None`: nothing, e.g. a new producer or one whose state retention
/// removed, in which case Kafka accepts any sequence).
pub fn decide(entry: Option<&ProducerEntry>, epoch: i16, first_seq: i32, count: u32) -> Decision {
    let Some(entry) = entry else {
        return Decision::Append;
    };
    if epoch < entry.epoch {
        return Decision::Fenced {
            current_epoch: entry.epoch,
        };
    }
    if epoch > entry.epoch {
        return if first_seq == 0 {
            Decision::Append
        } else {
            Decision::OutOfOrder { expected: 0 }
        };
    }
    let last_seq = last_sequence(first_seq, count);
    if let Some(dup) = entry
        .batches
        .iter()
        .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
    {
        return Decision::Duplicate(*dup);
    }
    match entry.batches.back() {
        Some(last) if first_seq != next_sequence(last.last_seq) => Decision::OutOfOrder {
            expected: next_sequence(last.last_seq),
        },
        _ => Decision::Append,
    }
}

/// The producer's state after appending a batch that [`decide`] accepted.
pub fn record_append(
    entry: Option<ProducerEntry>,
    epoch: i16,
    first_seq: i32,
    count: u32,
    base_offset: u64,
) -> ProducerEntry {
    let mut entry = match entry {
        Some(e) if e.epoch == epoch => e,
        _ => ProducerEntry {
            epoch,
            batches: VecDeque::new(),
        },
    };
    entry.batches.push_back(BatchMeta {
        first_seq,
        last_seq: last_sequence(first_seq, count),
        base_offset,
        count,
    });
    while entry.batches.len() > BATCHES_TO_RETAIN {
        entry.batches.pop_front();
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends batches of `sizes` from sequence 0 at offsets from 0; returns the state.
    fn producer_with(epoch: i16, sizes: &[u32]) -> ProducerEntry {
        let mut state = None;
        let (mut seq, mut offset) = (0i32, 0u64);
        for &n in sizes {
            assert_eq!(decide(state.as_ref(), epoch, seq, n), Decision::Append);
            state = Some(record_append(state, epoch, seq, n, offset));
            seq = next_sequence(last_sequence(seq, n));
            offset += u64::from(n);
        }
        state.expect("at least one batch")
    }

    #[test]
    fn in_order_batches_are_accepted() {
        let p = producer_with(0, &[3, 1, 4]);
        assert_eq!(decide(Some(&p), 0, 8, 2), Decision::Append);
    }

    #[test]
    fn a_duplicate_of_any_of_the_last_five_returns_its_original_offsets() {
        let p = producer_with(0, &[2, 2, 2, 2, 2, 2]); // seqs 0-1, 2-3, ..., 10-11
        for (i, first) in [2, 4, 6, 8, 10].into_iter().enumerate() {
            let want = BatchMeta {
                first_seq: first,
                last_seq: first + 1,
                base_offset: first as u64,
                count: 2,
            };
            assert_eq!(
                decide(Some(&p), 0, first, 2),
                Decision::Duplicate(want),
                "batch {i}"
            );
        }
        // The sixth-oldest batch is forgotten: it is out of order, not a duplicate.
        assert_eq!(
            decide(Some(&p), 0, 0, 2),
            Decision::OutOfOrder { expected: 12 }
        );
    }

    #[test]
    fn a_gap_or_a_partial_overlap_is_out_of_order() {
        let p = producer_with(0, &[5]);
        assert_eq!(
            decide(Some(&p), 0, 6, 1),
            Decision::OutOfOrder { expected: 5 }
        );
        assert_eq!(
            decide(Some(&p), 0, 2, 5),
            Decision::OutOfOrder { expected: 5 }
        );
    }

    #[test]
    fn an_old_epoch_is_fenced_and_a_new_epoch_must_start_at_zero() {
        let p = producer_with(3, &[2]);
        assert_eq!(
            decide(Some(&p), 2, 2, 1),
            Decision::Fenced { current_epoch: 3 }
        );
        assert_eq!(
            decide(Some(&p), 4, 2, 1),
            Decision::OutOfOrder { expected: 0 }
        );
        assert_eq!(decide(Some(&p), 4, 0, 1), Decision::Append);
        let bumped = record_append(Some(p), 4, 0, 1, 10);
        assert_eq!(bumped.epoch, 4);
        assert_eq!(
            bumped.batches.len(),
            1,
            "an epoch bump forgets the old epoch's batches"
        );
        assert_eq!(
            decide(Some(&bumped), 3, 2, 1),
            Decision::Fenced { current_epoch: 4 }
        );
    }

    #[test]
    fn an_unknown_producer_may_start_at_any_sequence() {
        assert_eq!(decide(None, 0, 42, 3), Decision::Append);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(last_sequence(i32::MAX - 1, 3), 0);
        assert_eq!(next_sequence(i32::MAX), 0);
        let p = record_append(None, 0, i32::MAX - 1, 2, 0); // MAX-1, MAX
        assert_eq!(decide(Some(&p), 0, 0, 1), Decision::Append);
        assert_eq!(
            decide(Some(&p), 0, 1, 1),
            Decision::OutOfOrder { expected: 0 }
        );
        let p = record_append(Some(p), 0, 0, 1, 2);
        assert!(matches!(
            decide(Some(&p), 0, i32::MAX - 1, 2),
            Decision::Duplicate(_)
        ));
    }

    /// A reference model: the producer's accepted batches as a plain list; replaying random
    /// sends (in order, retried, skipped ahead) must agree with `decide` on every step.
    #[test]
    fn agrees_with_a_reference_model_on_random_sequences() {
        use rand::{Rng, SeedableRng};
        let seed = 0x5eed_u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _round in 0..200 {
            let mut state: Option<ProducerEntry> = None;
            let mut accepted: Vec<(i32, i32, u64)> = Vec::new(); // (first, last, offset)
            let mut next_offset = 0u64;
            for _ in 0..40 {
                let count = rng.random_range(1..4u32);
                let next = accepted.last().map_or(0, |b| next_sequence(b.1));
                let first = match rng.random_range(0..4) {
                    0 if !accepted.is_empty() => {
                        let back = rng.random_range(0..accepted.len().min(7));
                        let b = accepted[accepted.len() - 1 - back];
                        // Retry of an earlier batch with its exact shape.
                        let got = decide(
                            state.as_ref(),
                            0,
                            b.0,
                            u32::try_from(b.1 - b.0 + 1).expect("small"),
                        );
                        if back < BATCHES_TO_RETAIN {
                            assert!(
                                matches!(got, Decision::Duplicate(m) if m.base_offset == b.2),
                                "seed {seed}"
                            );
                        } else {
                            assert!(matches!(got, Decision::OutOfOrder { .. }), "seed {seed}");
                        }
                        continue;
                    }
                    1 => next + rng.random_range(1..3),
                    _ => next,
                };
                let got = decide(state.as_ref(), 0, first, count);
                if first == next || accepted.is_empty() {
                    assert_eq!(got, Decision::Append, "seed {seed}");
                    state = Some(record_append(state, 0, first, count, next_offset));
                    accepted.push((first, last_sequence(first, count), next_offset));
                    next_offset += u64::from(count);
                } else {
                    assert_eq!(got, Decision::OutOfOrder { expected: next }, "seed {seed}");
                }
            }
        }
    }
}
