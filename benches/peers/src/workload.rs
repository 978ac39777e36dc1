//! The query workloads: their parameters, sampled deterministically from the
//! dataset (the same list for every peer), and the statistics of a run.

use std::collections::HashMap;

use crate::dataset::Dataset;

/// One query, in terms every peer translates into its own API.
#[derive(Debug, Clone, Copy)]
pub enum Query<'a> {
    /// W2: `{"ids":[id]}`.
    Id(&'a [u8; 32]),
    /// W3: `{"authors":[a],"kinds":[1],"limit":50}`.
    AuthorFeed { author: &'a [u8; 32], limit: usize },
    /// W4: `{"authors":[...500],"kinds":[1],"limit":100}` with an optional `until`.
    FollowFeed {
        authors: &'a [[u8; 32]],
        limit: usize,
        until: Option<u64>,
    },
    /// W5: `{"#e":[id],"kinds":[7]}`.
    Reactions(&'a [u8; 32]),
    /// W6: NIP-45 COUNT of `{"#e":[id],"kinds":[7]}`.
    CountReactions(&'a [u8; 32]),
}

/// The note kind of W3 and W4, and the reaction kind of W5 and W6.
pub const NOTE: u16 = 1;
pub const REACTION: u16 = 7;
pub const AUTHOR_FEED_LIMIT: usize = 50;
pub const FOLLOWS: usize = 500;
pub const FOLLOW_FEED_LIMIT: usize = 100;
pub const PAGES: usize = 20;

/// Every query parameter of a run: `warmup` samples first, then the timed ones.
#[derive(Debug)]
pub struct Samples {
    pub ids: Vec<[u8; 32]>,
    pub authors: Vec<[u8; 32]>,
    pub follow_sets: Vec<Vec<[u8; 32]>>,
    /// Where the follow sets came from.
    pub follow_source: String,
    pub targets: Vec<[u8; 32]>,
    /// Most reactions any sampled target has (bounds peers that need a result capacity).
    pub max_reactions: usize,
    /// The kind 1 note count of the least prolific sampled author.
    pub min_author_notes: usize,
    pub warmup: usize,
}

/// SplitMix64: small, seedable, the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

impl Samples {
    /// `count` timed samples per workload plus `warmup`, drawn with `seed`.
    pub fn draw(data: &Dataset, count: usize, warmup: usize, seed: u64) -> Samples {
        let total = count + warmup;
        let mut rng = Rng::new(seed);

        let ids = (0..total)
            .map(|_| data.meta[rng.below(data.len())].id)
            .collect();

        // W3: the authors with the most kind 1 notes (at least a full page
        // where the dataset has them), sampled uniformly from the top ones.
        let mut notes_by_author: HashMap<u32, usize> = HashMap::new();
        for m in data.meta.iter().filter(|m| m.kind == NOTE) {
            *notes_by_author.entry(m.author).or_default() += 1;
        }
        let mut prolific: Vec<(u32, usize)> = notes_by_author.into_iter().collect();
        prolific.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let full_pages = prolific
            .iter()
            .filter(|(_, n)| *n >= AUTHOR_FEED_LIMIT)
            .count();
        let pool = if full_pages >= 10 {
            full_pages
        } else {
            prolific.len().min(100)
        };
        let pool = &prolific[..pool];
        let (authors, min_author_notes) = if pool.is_empty() {
            (vec![data.authors[0]; total], 0)
        } else {
            let picks: Vec<(u32, usize)> =
                (0..total).map(|_| pool[rng.below(pool.len())]).collect();
            let min = picks.iter().map(|p| p.1).min().unwrap_or(0);
            (
                picks
                    .iter()
                    .map(|(a, _)| data.authors[*a as usize])
                    .collect(),
                min,
            )
        };

        // W4: kind 3 lists with at least 500 follows when the dataset has
        // enough of them, else random sets of 500 authors of kind 1 notes.
        let long_lists: Vec<&Vec<[u8; 32]>> = data
            .follow_lists
            .iter()
            .filter(|l| l.len() >= FOLLOWS)
            .collect();
        let (follow_sets, follow_source) = if long_lists.len() >= 10 {
            let sets = (0..total)
                .map(|_| long_lists[rng.below(long_lists.len())][..FOLLOWS].to_vec())
                .collect();
            (
                sets,
                format!(
                    "first {FOLLOWS} follows of kind 3 lists with at least {FOLLOWS} (of {} such lists)",
                    long_lists.len()
                ),
            )
        } else {
            let mut candidates: Vec<[u8; 32]> = prolific
                .iter()
                .map(|(a, _)| data.authors[*a as usize])
                .collect();
            if candidates.is_empty() {
                candidates = data.authors.clone();
            }
            let take = FOLLOWS.min(candidates.len());
            let sets = (0..total)
                .map(|_| {
                    // Partial Fisher-Yates: the first `take` are a uniform sample.
                    for i in 0..take {
                        let j = i + rng.below(candidates.len() - i);
                        candidates.swap(i, j);
                    }
                    candidates[..take].to_vec()
                })
                .collect();
            (
                sets,
                format!(
                    "random sets of {take} authors of kind 1 notes (the dataset has {} kind 3 lists of {FOLLOWS}+ follows)",
                    long_lists.len()
                ),
            )
        };

        // W5, W6: the notes with the most reactions.
        let mut popular: Vec<([u8; 32], usize)> =
            data.reactions.iter().map(|(id, n)| (*id, *n)).collect();
        popular.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        popular.truncate(total.max(1));
        let (targets, max_reactions) = if popular.is_empty() {
            // No reactions at all: the queries still run and must find nothing.
            (ids_of(data, &mut rng, total), 0)
        } else {
            let targets = (0..total)
                .map(|_| popular[rng.below(popular.len())].0)
                .collect();
            (targets, popular[0].1)
        };

        Samples {
            ids,
            authors,
            follow_sets,
            follow_source,
            targets,
            max_reactions,
            min_author_notes,
            warmup,
        }
    }
}

fn ids_of(data: &Dataset, rng: &mut Rng, n: usize) -> Vec<[u8; 32]> {
    (0..n)
        .map(|_| data.meta[rng.below(data.len())].id)
        .collect()
}

/// Latency statistics of one workload on one peer.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Nanoseconds per timed sample, in run order.
    pub samples_ns: Vec<u64>,
    /// Results per timed sample (events returned, or the count of W6).
    pub results: Vec<u64>,
    /// For the first few samples: a hash of the sorted result ids.
    pub id_hashes: Vec<u64>,
    /// Samples left out because the workload ran past its time budget.
    pub skipped: usize,
}

impl Latencies {
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.samples_ns.is_empty() {
            return None;
        }
        let mut sorted = self.samples_ns.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    pub fn mean(&self) -> Option<u64> {
        if self.samples_ns.is_empty() {
            return None;
        }
        Some(self.samples_ns.iter().sum::<u64>() / self.samples_ns.len() as u64)
    }
}

/// Hash of a set of ids, order-independent, for the cross-check.
pub fn hash_ids(ids: &mut [[u8; 32]]) -> u64 {
    ids.sort_unstable();
    // FNV-1a over the sorted ids: stable across runs and peers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids.iter() {
        for b in id {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let l = Latencies {
            samples_ns: (1..=100).rev().collect(),
            ..Latencies::default()
        };
        assert_eq!(l.percentile(50.0), Some(50));
        assert_eq!(l.percentile(99.0), Some(99));
        assert_eq!(l.percentile(100.0), Some(100));
        assert_eq!(l.mean(), Some(50));
        assert_eq!(Latencies::default().percentile(50.0), None);
    }

    #[test]
    fn id_hash_ignores_order() {
        let mut a = [[1u8; 32], [2u8; 32]];
        let mut b = [[2u8; 32], [1u8; 32]];
        assert_eq!(hash_ids(&mut a), hash_ids(&mut b));
        assert_ne!(hash_ids(&mut a), hash_ids(&mut [[1u8; 32]]));
    }

    #[test]
    fn rng_is_deterministic() {
        let mut a = Rng::new(5);
        let mut b = Rng::new(5);
        assert_eq!(
            (0..10).map(|_| a.next()).collect::<Vec<_>>(),
            (0..10).map(|_| b.next()).collect::<Vec<_>>()
        );
    }
}
