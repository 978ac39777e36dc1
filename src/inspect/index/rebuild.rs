//! Recreates every index of a store from its log: the index directories are
//! set aside under the store's lock, then opening the store replays the whole
//! log into fresh index files, and closing it checkpoints them. The old
//! directories are deleted once that worked, and put back if it did not.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::EventStore;
use crate::error::{Error, io_error};
use crate::recovery::{LogRepair, RecoveryMode};

use super::{lock_store, shard_dirs};

/// What [`rebuild`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub shards: usize,
    /// Log records replayed into the new indexes.
    pub replayed_records: u64,
    /// Time from opening the store to its indexes being checkpointed.
    pub elapsed: Duration,
    /// Damaged log ranges found while replaying, moved to quarantine files
    /// (never cut: every valid record after them is kept).
    pub log_repairs: Vec<LogRepair>,
    /// Torn log tails that were cut (never acknowledged as durable).
    pub tail_repairs: Vec<String>,
}

/// Rebuilds every index of the store in `data_dir` from the log (and its
/// analytics, when it keeps them). `Err` when
/// the store is missing, open in another process (`Error::Locked`), or the
/// log cannot be replayed; the old indexes are then back in place.
pub fn rebuild(data_dir: &Path) -> Result<RebuildReport, Error> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let shards = {
        let _lock = lock_store(data_dir)?;
        let shards = shard_dirs(data_dir)?;
        for (_, dir) in &shards {
            let index = dir.join("index");
            if !index.exists() {
                continue;
            }
            let aside = free_name(dir, stamp);
            if let Err(e) = std::fs::rename(&index, &aside) {
                let error = io_error(&index, "rename")(e);
                restore(&moved);
                return Err(error);
            }
            moved.push((index, aside));
        }
        // The analytics too: the open below builds them from the logs.
        let analytics = data_dir.join(crate::analytics::ANALYTICS_DIR);
        if analytics.exists() {
            let mut aside = data_dir.join(format!("analytics.old-{stamp}"));
            let mut n = 1;
            while aside.exists() {
                aside = data_dir.join(format!("analytics.old-{stamp}-{n}"));
                n += 1;
            }
            if let Err(e) = std::fs::rename(&analytics, &aside) {
                let error = io_error(&analytics, "rename")(e);
                restore(&moved);
                return Err(error);
            }
            moved.push((analytics, aside));
        }
        shards.len()
        // The lock is released here, for the store to take: between the two
        // another process could open the store, which would then rebuild the
        // indexes itself and make `open` below fail with `Error::Locked`.
    };
    let started = Instant::now();
    // Damage met while replaying is repaired, never cut (see RecoveryMode).
    let opened = EventStore::builder(data_dir)
        .create_if_missing(false)
        .recovery_mode(RecoveryMode::Repair)
        .open()
        .and_then(|store| {
            let report = store.recovery_report().clone();
            store.close().map(|()| report)
        });
    match opened {
        Ok(report) => {
            let elapsed = started.elapsed();
            for (_, aside) in &moved {
                std::fs::remove_dir_all(aside).map_err(io_error(aside, "remove"))?;
            }
            Ok(RebuildReport {
                shards,
                replayed_records: report.replayed_records,
                elapsed,
                log_repairs: report.log_repairs,
                tail_repairs: report.tail_repairs,
            })
        }
        Err(error) => {
            // Put the old indexes back, under the lock, unless someone else
            // has the store open (then their open rebuilds the indexes).
            if let Ok(_lock) = lock_store(data_dir) {
                restore(&moved);
            }
            Err(error)
        }
    }
}

/// `index.old-<unix time>` in `dir`, with a counter if that name is taken.
fn free_name(dir: &Path, stamp: u64) -> PathBuf {
    let mut candidate = dir.join(format!("index.old-{stamp}"));
    let mut n = 1;
    while candidate.exists() {
        candidate = dir.join(format!("index.old-{stamp}-{n}"));
        n += 1;
    }
    candidate
}

/// Moves set-aside index directories back (best effort: the rebuild already failed).
fn restore(moved: &[(PathBuf, PathBuf)]) {
    for (index, aside) in moved {
        let _ = std::fs::remove_dir_all(index);
        let _ = std::fs::rename(aside, index);
    }
}
