//! The stores under test behind one interface, and the batch driver the
//! synchronous ones share.

use std::ops::{Add, Range};
use std::path::Path;

use crate::dataset::Dataset;
use crate::workload::Query;

pub mod megalith;
pub mod nostr_lmdb;
pub mod nostrdb;
pub mod sqlite;

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Megalith,
    NostrLmdb,
    Nostrdb,
    Sqlite,
}

impl PeerKind {
    pub const ALL: [PeerKind; 4] = [
        PeerKind::Megalith,
        PeerKind::NostrLmdb,
        PeerKind::Nostrdb,
        PeerKind::Sqlite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Megalith => "megalith",
            PeerKind::NostrLmdb => "nostr-lmdb",
            PeerKind::Nostrdb => "nostrdb",
            PeerKind::Sqlite => "sqlite",
        }
    }

    pub fn parse(name: &str) -> Option<PeerKind> {
        PeerKind::ALL.into_iter().find(|p| p.name() == name.trim())
    }

    /// How the harness drives this peer, for the report.
    pub fn how_driven(self, config: &Config) -> String {
        match self {
            PeerKind::Megalith => megalith::how_driven(config),
            PeerKind::NostrLmdb => nostr_lmdb::how_driven(config),
            PeerKind::Nostrdb => nostrdb::how_driven(config),
            PeerKind::Sqlite => sqlite::how_driven(config),
        }
    }

    /// Opens (creating) this peer's store in `dir`. `verify` says whether
    /// ingest checks ids and signatures (nostrdb fixes that when opening).
    pub fn open(self, dir: &Path, config: &Config, verify: bool) -> anyhow::Result<Box<dyn Peer>> {
        std::fs::create_dir_all(dir)?;
        Ok(match self {
            PeerKind::Megalith => Box::new(megalith::MegalithPeer::open(dir, config)?),
            PeerKind::NostrLmdb => Box::new(nostr_lmdb::NostrLmdbPeer::open(dir, config)?),
            PeerKind::Nostrdb => Box::new(nostrdb::NostrdbPeer::open(dir, config, verify)?),
            PeerKind::Sqlite => Box::new(sqlite::SqlitePeer::open(dir, config)?),
        })
    }
}

/// The durability class every peer runs in, as far as it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityClass {
    /// Every acknowledged batch is fsynced before the call returns.
    Always,
    /// Writes reach the OS at once and are fsynced later (a power loss can
    /// lose the last second); peers without such a setting stay at Always.
    Relaxed,
}

/// Settings shared by every peer.
#[derive(Debug, Clone)]
pub struct Config {
    pub durability: DurabilityClass,
    /// Events per ingest call.
    pub batch: usize,
    /// Threads feeding batches at once (peers with a synchronous insert).
    pub writers: usize,
    /// Keep nostrdb's full-text index, note blocks and reaction stats.
    pub nostrdb_full: bool,
    /// Megalith keeps its NIP-50 search index.
    pub megalith_search: bool,
    /// Every distinct kind of the dataset (nostrdb's ingest watch filter).
    pub kinds: Vec<u16>,
    /// A result capacity for queries without a limit (nostrdb needs one).
    pub unlimited_capacity: usize,
}

/// What an ingest left in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Events the peer said it stored (or, for nostrdb, that became queryable).
    pub stored: u64,
    /// Events the peer refused (duplicate, invalid, replaced, ...).
    pub refused: u64,
    /// Events the harness found invalid before handing them over.
    pub invalid: u64,
}

impl Add for Ingested {
    type Output = Ingested;

    fn add(self, other: Ingested) -> Ingested {
        Ingested {
            stored: self.stored + other.stored,
            refused: self.refused + other.refused,
            invalid: self.invalid + other.invalid,
        }
    }
}

/// A store under test.
pub trait Peer {
    /// Ingests every event of `data` and returns once all are queryable.
    /// Parsing the JSON is part of the work.
    fn ingest(&mut self, data: &Dataset, verify: bool) -> anyhow::Result<Ingested>;

    /// Runs one query, appending each result's NIP-01 JSON and a newline to
    /// `out` (nothing for a count); returns the number of results (the count).
    fn query(&mut self, query: &Query<'_>, out: &mut Vec<u8>) -> anyhow::Result<u64>;

    /// Flushes and closes the store.
    fn close(self: Box<Self>) -> anyhow::Result<()>;
}

/// Parses (and with `verify`, checks the id and signature of) the dataset's
/// events in `range` as rust-nostr events, for the peers built on that
/// crate; returns them with the number refused as invalid.
pub fn parse_nostr_batch(
    data: &Dataset,
    range: Range<usize>,
    verify: bool,
) -> (Vec<nostr::prelude::Event>, u64) {
    use nostr::prelude::*;
    let mut invalid = 0;
    let events = data.events[range]
        .iter()
        .filter_map(|json| match Event::from_json(json) {
            Ok(event) if !verify || event.verify().is_ok() => Some(event),
            _ => {
                invalid += 1;
                None
            }
        })
        .collect();
    (events, invalid)
}

/// Runs `ingest` over consecutive batches of `count` events, from `writers`
/// threads at once (writer `w` takes batches `w`, `w + writers`, ...).
/// Stops at the first error.
pub fn run_batches<F>(
    count: usize,
    batch: usize,
    writers: usize,
    ingest: F,
) -> anyhow::Result<Ingested>
where
    F: Fn(Range<usize>) -> anyhow::Result<Ingested> + Sync,
{
    let batch = batch.max(1);
    let batches: Vec<Range<usize>> = (0..count)
        .step_by(batch)
        .map(|start| start..(start + batch).min(count))
        .collect();
    if writers <= 1 {
        return batches
            .into_iter()
            .try_fold(Ingested::default(), |sum, range| Ok(sum + ingest(range)?));
    }
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (batches, ingest, failed) = (&batches, &ingest, &failed);
                scope.spawn(move || {
                    let mut sum = Ingested::default();
                    for range in batches.iter().skip(w).step_by(writers) {
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        match ingest(range.clone()) {
                            Ok(n) => sum = sum + n,
                            Err(e) => {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(sum)
                })
            })
            .collect();
        handles.into_iter().try_fold(Ingested::default(), |sum, h| {
            let part = h
                .join()
                .map_err(|_| anyhow::anyhow!("an ingest writer thread panicked"))??;
            Ok(sum + part)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn batches_cover_every_event_once_with_any_writer_count() {
        for writers in [1, 2, 3] {
            let seen = Mutex::new(vec![0u8; 10]);
            let total = run_batches(10, 3, writers, |range| {
                let mut seen = seen.lock().unwrap();
                for i in range.clone() {
                    seen[i] += 1;
                }
                Ok(Ingested {
                    stored: range.len() as u64,
                    ..Ingested::default()
                })
            })
            .unwrap();
            assert_eq!(total.stored, 10);
            assert!(seen.lock().unwrap().iter().all(|n| *n == 1));
        }
    }

    #[test]
    fn the_first_error_stops_the_ingest() {
        let err = run_batches(10, 2, 2, |range| {
            if range.start == 4 {
                anyhow::bail!("disk full")
            }
            Ok(Ingested::default())
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
    }
}
