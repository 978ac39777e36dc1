//! The analytics of an open store: [`LiveAnalytics`] fed by every shard's
//! writer after each group it applies (the group's stored and removed
//! events, with their log locations), the log position of each shard it
//! reflects, and its checkpoint file. At open, the checkpoint is loaded and
//! each shard's log is read from its position (docs/analytics.md, "Where
//! the state lives and how it is fed").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use super::live::LiveAnalytics;
use super::snapshot;
use crate::error::{Error, io_error};
use crate::event::EventRef;
use crate::ids::{Location, SegmentId};
use crate::storage::{Storage, replace_file};
use crate::wal::{Log, LogSnapshot, SEGMENT_HEADER_LEN, scan_changes};

/// The directory of the analytics files, in the store's directory.
pub const ANALYTICS_DIR: &str = "analytics";
const STATE_FILE: &str = "state";
const STATE_TEMP: &str = "state.tmp";

/// One change of a group: where its record is, whether the event was added
/// (or removed), the event.
pub(crate) type GroupChange<'a> = (Location, bool, EventRef<'a>);

pub(crate) struct Inner {
    pub live: LiveAnalytics,
    /// Per shard: the log position up to which the state reflects it.
    positions: Vec<Location>,
}

/// The analytics of an open store (see the module doc).
pub struct StoreAnalytics {
    inner: RwLock<Inner>,
    logs: Vec<Arc<Log>>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    /// Groups applied so far, and the count the last checkpoint reflects.
    generation: AtomicU64,
    saved: AtomicU64,
    /// Per shard, the position the checkpoint file on disk reflects (the
    /// start of the log while there is none): an open replays the log
    /// from there, so compaction keeps every record it may read.
    saved_positions: Mutex<Vec<Location>>,
}

impl std::fmt::Debug for StoreAnalytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAnalytics")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What opening the analytics did, for the recovery report.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    /// Why the checkpoint was not used (the state was built from the logs).
    pub rebuilt: Option<String>,
    /// Log records read to catch up.
    pub records: u64,
}

fn start_of_log() -> Location {
    Location {
        segment: SegmentId(0),
        offset: 0,
    }
}

impl StoreAnalytics {
    /// Opens the analytics of a store whose shards' logs are `logs`
    /// (recovered, nothing written since): loads the checkpoint when it is
    /// whole and not ahead of any log, else starts empty, then reads each
    /// log from its position to its end. `trust_checkpoint` false (a log
    /// was repaired) builds from the logs.
    pub(crate) fn open(
        storage: Arc<dyn Storage>,
        store_dir: &Path,
        logs: Vec<Arc<Log>>,
        ends: &[Location],
        trust_checkpoint: bool,
        now: u64,
    ) -> Result<(StoreAnalytics, Opened), Error> {
        let dir = store_dir.join(ANALYTICS_DIR);
        storage
            .create_dir_all(&dir)
            .map_err(io_error(&dir, "create directory"))?;
        let path = dir.join(STATE_FILE);
        let mut opened = Opened::default();
        let loaded = if !storage.exists(&path).map_err(io_error(&path, "stat"))? {
            Err("no checkpoint yet".to_string())
        } else if !trust_checkpoint {
            Err("a log was repaired".to_string())
        } else {
            storage
                .read_file(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|bytes| snapshot::decode(&bytes, logs.len()))
                .and_then(|(live, positions)| {
                    // A checkpoint that counted records a crash took from a
                    // log's unsynced tail is ahead of that log.
                    for (shard, (p, end)) in positions.iter().zip(ends).enumerate() {
                        if p > end {
                            return Err(format!(
                                "it reflects shard {shard}'s log up to {p}, past its end ({end})"
                            ));
                        }
                    }
                    Ok((live, positions))
                })
        };
        let (live, positions) = match loaded {
            Ok(state) => state,
            Err(why) => {
                opened.rebuilt = Some(why);
                (LiveAnalytics::new(), vec![start_of_log(); logs.len()])
            }
        };
        let saved_positions = Mutex::new(positions.clone());
        let analytics = StoreAnalytics {
            saved_positions,
            inner: RwLock::new(Inner { live, positions }),
            logs,
            storage,
            dir,
            generation: AtomicU64::new(1),
            saved: AtomicU64::new(0),
        };
        {
            let mut inner = analytics.inner.write();
            for (shard, end) in ends.iter().enumerate() {
                opened.records += analytics.catch_up(&mut inner, shard, Some(*end), now)?;
            }
        }
        if opened.rebuilt.is_some() {
            // The unused checkpoint must not outlive this open: a crash
            // before the next one could find it no longer ahead of the
            // logs, and trust it.
            analytics.replace_checkpoint()?;
        }
        Ok((analytics, opened))
    }

    /// Applies a group a shard's writer applied to its indexes: `from` is
    /// where the group began in the log, `to` where it ended.
    pub(crate) fn apply_group(
        &self,
        shard: usize,
        from: Location,
        to: Location,
        changes: &[GroupChange<'_>],
        now: u64,
    ) {
        let mut inner = self.inner.write();
        if inner.positions[shard] < from {
            // Records this state has not seen (a group that failed after
            // writing, then a recovery in place): read them from the log.
            if let Err(error) = self.catch_up(&mut inner, shard, Some(from), now) {
                eprintln!("megalith: analytics: catching up shard {shard} failed: {error}");
            }
        }
        let position = inner.positions[shard];
        for (location, added, event) in changes {
            if *location >= position {
                inner.live.apply_ref(*added, event, now);
            }
        }
        inner.positions[shard] = position.max(to);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A shard's log was cut and its indexes rebuilt (a recovery in place):
    /// the state may hold records that are gone, so it is built again.
    pub(crate) fn rebuild(&self, now: u64) -> Result<u64, Error> {
        let mut inner = self.inner.write();
        inner.live = LiveAnalytics::new();
        inner.positions = vec![start_of_log(); self.logs.len()];
        let mut records = 0;
        for shard in 0..self.logs.len() {
            records += self.catch_up(&mut inner, shard, None, now)?;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(inner);
        // As at open: the checkpoint that may name cut records goes now.
        self.replace_checkpoint()?;
        Ok(records)
    }

    /// Writes a checkpoint of the state now, or, failing that, removes the
    /// old one (the next open then builds from the logs).
    fn replace_checkpoint(&self) -> Result<(), Error> {
        if self.checkpoint().is_ok() {
            return Ok(());
        }
        let path = self.dir.join(STATE_FILE);
        if self
            .storage
            .exists(&path)
            .map_err(io_error(&path, "stat"))?
        {
            self.storage
                .remove_file(&path)
                .map_err(io_error(&path, "remove"))?;
            self.storage
                .sync_dir(&self.dir)
                .map_err(io_error(&self.dir, "sync directory"))?;
        }
        *self.saved_positions.lock() = vec![start_of_log(); self.logs.len()];
        Ok(())
    }

    /// Reads shard `shard`'s log from the state's position up to `to` (or
    /// its end), applying every record. Returns the records read.
    fn catch_up(
        &self,
        inner: &mut Inner,
        shard: usize,
        to: Option<Location>,
        now: u64,
    ) -> Result<u64, Error> {
        let snapshot = self.logs[shard].snapshot();
        let (position, records) =
            replay(&mut inner.live, &snapshot, inner.positions[shard], to, now)?;
        inner.positions[shard] = inner.positions[shard].max(position);
        Ok(records)
    }

    /// The state to read, with every event expired by `now` taken out.
    pub fn read(&self, now: u64) -> AnalyticsGuard<'_> {
        if self.inner.read().live.expired_by(now) {
            self.inner.write().live.sweep(now);
        }
        AnalyticsGuard {
            guard: self.inner.read(),
        }
    }

    /// A number that changes whenever the state may have changed (for
    /// caches and ETags, with the time of the expiry sweep).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Writes the checkpoint if anything changed since the last one: the
    /// state is encoded under the read lock, written to a temporary file,
    /// synced and renamed over the last one. The positions it names need
    /// not be durable in the logs: at open, a checkpoint ahead of a log is
    /// not used.
    pub fn checkpoint(&self) -> Result<(), Error> {
        let generation = self.generation();
        if self.saved.load(Ordering::Acquire) == generation {
            return Ok(());
        }
        let (bytes, positions) = {
            let inner = self.inner.read();
            (
                snapshot::encode(&inner.live, &inner.positions),
                inner.positions.clone(),
            )
        };
        let temp = self.dir.join(STATE_TEMP);
        let path = self.dir.join(STATE_FILE);
        // While the file is replaced either one may be read at an open:
        // the older positions count until the new file is in place.
        let mut saved = self.saved_positions.lock();
        let older = saved.clone();
        *saved = older
            .iter()
            .zip(&positions)
            .map(|(a, b)| *a.min(b))
            .collect();
        replace_file(&*self.storage, &temp, &path, &bytes)
            .map_err(|(file, what, e)| io_error(&file, what)(e))?;
        *saved = positions;
        drop(saved);
        self.saved.store(generation, Ordering::Release);
        Ok(())
    }

    /// Per shard, the log position from which an open would replay the
    /// analytics (what the checkpoint on disk reflects).
    pub(crate) fn saved_positions(&self) -> Vec<Location> {
        self.saved_positions.lock().clone()
    }
}

/// Applies the records of a shard's log from `from` up to `to` (or its
/// end) to `live`; returns the position after the last record read and
/// how many were read.
pub(crate) fn replay(
    live: &mut LiveAnalytics,
    snapshot: &LogSnapshot,
    from: Location,
    to: Option<Location>,
    now: u64,
) -> Result<(Location, u64), Error> {
    let mut records = 0;
    let position = scan_changes(snapshot, from, to, |change| {
        live.apply_ref(change.stored, &change.event, now);
        records += 1;
        true
    })?;
    Ok((position, records))
}

/// Checks a store's analytics checkpoint (offline, for `index-doctor
/// check`): whole, not ahead of any log, and equal to the state built
/// from scratch from the logs up to its positions. `logs` are the shards'
/// logs, read only. Returns what is wrong (empty: nothing), or a note
/// when there is no checkpoint yet.
pub(crate) fn check_checkpoint(
    storage: &dyn Storage,
    store_dir: &Path,
    logs: &[LogSnapshot],
    now: u64,
) -> Result<Result<Vec<String>, String>, Error> {
    let path = store_dir.join(ANALYTICS_DIR).join(STATE_FILE);
    if !storage.exists(&path).map_err(io_error(&path, "stat"))? {
        return Ok(Err(
            "no analytics checkpoint yet: the next open builds it from the logs".to_string(),
        ));
    }
    let bytes = storage.read_file(&path).map_err(io_error(&path, "read"))?;
    let (mut saved, positions) = match snapshot::decode(&bytes, logs.len()) {
        Ok(state) => state,
        Err(why) => {
            return Ok(Ok(vec![format!(
                "{}: {why} (the next open builds the analytics from the logs)",
                path.display()
            )]));
        }
    };
    let mut fresh = LiveAnalytics::new();
    let mut problems = Vec::new();
    for (shard, (log, position)) in logs.iter().zip(&positions).enumerate() {
        replay(&mut fresh, log, start_of_log(), Some(*position), now)?;
        let end = log.segments().last().map_or(start_of_log(), |last| {
            let mut scan = last.scan_from(SEGMENT_HEADER_LEN as u32);
            for _ in scan.by_ref() {}
            last.location(scan.offset())
        });
        if *position > end {
            problems.push(format!(
                "{}: reflects shard {shard}'s log up to {position}, past its end {end} (the next \
                 open builds the analytics from the logs)",
                path.display()
            ));
        }
    }
    saved.sweep(now);
    fresh.sweep(now);
    problems.extend(
        saved
            .differences(&fresh, 20)
            .into_iter()
            .map(|d| format!("{}: {d}", path.display())),
    );
    Ok(Ok(problems))
}

/// Removes a store's analytics files (the feature was turned off).
pub(crate) fn remove_files(storage: &dyn Storage, store_dir: &Path) -> Result<(), Error> {
    let dir = store_dir.join(ANALYTICS_DIR);
    for name in [STATE_FILE, STATE_TEMP] {
        let path = dir.join(name);
        if storage.exists(&path).map_err(io_error(&path, "stat"))? {
            storage
                .remove_file(&path)
                .map_err(io_error(&path, "remove"))?;
        }
    }
    Ok(())
}

/// Read access to the analytics (see [`StoreAnalytics::read`]); holds the
/// state's read lock, so keep it briefly.
pub struct AnalyticsGuard<'a> {
    guard: RwLockReadGuard<'a, Inner>,
}

impl std::fmt::Debug for AnalyticsGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalyticsGuard")
            .field("videos", &self.guard.live.video_count())
            .finish()
    }
}

impl std::ops::Deref for AnalyticsGuard<'_> {
    type Target = LiveAnalytics;

    fn deref(&self) -> &LiveAnalytics {
        &self.guard.live
    }
}
