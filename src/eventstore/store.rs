//! `EventStore`: the one entry type. It validates events, routes them to
//! their shard's writer, and answers queries from consistent shard views.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::analytics::StoreAnalytics;
use crate::compaction::{
    CompactOptions, CompactReport, Garbage, GarbageLedger, Pace, ShardAccess, active_holds_removed,
    compact_shard,
};
use crate::error::{Error, io_error};
use crate::event::{Event, EventId, EventRef, KindClass, Pubkey};
use crate::ids::{Location, ShardId};
use crate::index::IndexKind;
use crate::index::IndexSet;
use crate::query::{Deadline, Filter, FilterError, Hit, IndexAccess, QueryError, execute, plan};
use crate::recovery::{OpenedShard, RecoveryReport, ShardParams, finish_repair, open_shard};
use crate::shard::{
    ChangeSink, CommitSink, ReadPoint, Reopen, Shard, ShardHealth, ShardReader, WriteOutcome,
    WriterConfig, reapply_removals, restore_invariants, shard_of,
};
use crate::storage::{OpenMode, Storage};
use crate::wal::{Log, LogSnapshot, LogWriter};

use super::changes::{ChangePosition, StoreChange};
use super::commits::{Commits, Watchers};
use super::lock::lock_store_dir;
use super::manifest;
use super::options::{EventStoreBuilder, MAX_SHARDS, OpenWith, Options, cores};
use super::outcome::{InsertOutcome, Rejection};
use super::purge::{Found, PAGE, PurgeReport, Retention, purge_pages};
use super::verify::VerifyPool;

const DIRTY_FILE: &str = ".dirty";

/// A filter of a purge, and what it spares of the events it matches.
type PurgePlan<'a> = (&'a Filter, &'a dyn Fn(&EventRef<'_>) -> bool);

/// An open Megalith store. `Send + Sync`: share it behind an `Arc`; reads run
/// in parallel with each other and with the writer.
#[derive(Debug)]
pub struct EventStore {
    dir: PathBuf,
    options: Options,
    storage: Arc<dyn Storage>,
    shards: Vec<Shard>,
    /// The store keeps the term_time (search) index.
    search: bool,
    verifier: VerifyPool,
    report: RecoveryReport,
    /// Held (locked) while open; `None` once closed.
    lock: Mutex<Option<File>>,
    /// Subscribers to the commit stream.
    watchers: Arc<Watchers>,
    analytics: Option<Arc<StoreAnalytics>>,
    /// The thread that checkpoints the analytics.
    saver: Mutex<Option<Saver>>,
    /// Held while a compaction runs.
    compacting: Mutex<()>,
    /// Held while the manifest is read and written again (a compaction's
    /// or a purge's feature bit).
    manifest_edit: Mutex<()>,
    /// The manifest's purge feature bit is set.
    purge_marked: AtomicBool,
}

/// For compaction: whether each id is stored at its location, looked up
/// in the shard's primary index (under its read lock, a slice at a time).
fn stored_at(shard: &Shard) -> impl Fn(&[(EventId, Location)]) -> Result<Vec<bool>, Error> + '_ {
    move |asks| {
        let indexes = shard.lock();
        asks.iter()
            .map(|(id, at)| Ok(indexes.find_id(id)? == Some(*at)))
            .collect()
    }
}

/// One shard's feed into the analytics.
#[derive(Debug)]
struct AnalyticsFeed {
    shard: usize,
    analytics: Arc<StoreAnalytics>,
}

impl ChangeSink for AnalyticsFeed {
    fn apply(&self, from: Location, to: Location, changes: &[crate::analytics::GroupChange<'_>]) {
        self.analytics
            .apply_group(self.shard, from, to, changes, unix_now());
    }

    fn reopened(&self) {
        if let Err(error) = self.analytics.rebuild(unix_now()) {
            eprintln!("megalith: analytics: rebuilding after a recovery failed: {error}");
        }
    }
}

/// Checkpoints the analytics every interval while anything changed.
#[derive(Debug)]
struct Saver {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Saver {
    fn start(analytics: Arc<StoreAnalytics>, every: std::time::Duration) -> std::io::Result<Saver> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("megalith-analytics".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    if let Err(error) = analytics.checkpoint() {
                        eprintln!("megalith: analytics checkpoint failed: {error}");
                    }
                }
            })?;
        Ok(Saver { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Counts and sizes, for `megalith stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Events in the store (served by queries, expired ones included until removed).
    pub events: u64,
    pub events_by_kind: BTreeMap<u16, u64>,
    /// Log segments and the bytes they take on disk.
    pub log_segments: usize,
    pub log_bytes: u64,
    /// Bytes on disk per index (summed over shards).
    pub index_bytes: BTreeMap<&'static str, u64>,
    /// Entries per index (summed over shards).
    pub index_entries: BTreeMap<&'static str, u64>,
    /// Run files of the random-order indexes' levels (spilled when the
    /// in-memory level is full, and at a clean close; summed over indexes
    /// and shards).
    pub index_runs: usize,
    /// Shards whose id filter is built and in use (one is built in the
    /// background after an open), and the memory of those filters.
    pub id_filters: usize,
    pub id_filter_bytes: u64,
}

/// Figures from [`EventStore::gauges`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Events in the store (expired ones included until removed).
    pub events: u64,
    /// Bytes of the log on disk.
    pub log_bytes: u64,
    /// Bytes of all the indexes on disk.
    pub index_bytes: u64,
    /// Bytes of removed events still in the log ([`EventStore::garbage`]).
    pub garbage_bytes: u64,
}

/// Hits with the shard each is in and its event.
type ShardHits<'v> = Vec<(Hit, usize, EventRef<'v>)>;

impl EventStore {
    /// A builder for a store in `path` (created if missing or empty).
    pub fn builder(path: impl AsRef<Path>) -> EventStoreBuilder {
        EventStoreBuilder::new(path.as_ref())
    }

    /// Opens the store in `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<EventStore, Error> {
        EventStore::builder(path).open()
    }

    pub(crate) fn open_with(
        dir: &Path,
        options: Options,
        with: OpenWith,
    ) -> Result<EventStore, Error> {
        let OpenWith { storage, progress } = with;
        let manifest_path = dir.join(manifest::MANIFEST_FILE);
        let has_manifest = storage
            .exists(&manifest_path)
            .map_err(io_error(&manifest_path, "stat"))?;
        if !options.create_if_missing && !has_manifest {
            return Err(Error::Missing(dir.to_path_buf()));
        }
        storage
            .create_dir_all(dir)
            .map_err(io_error(dir, "create directory"))?;
        let lock = lock_store_dir(dir)?;
        let new_count = options
            .shards
            .unwrap_or(cores().min(MAX_SHARDS as usize) as u32);
        let mut manifest = manifest::load_or_create(
            &*storage,
            dir,
            manifest::Manifest {
                version: manifest::STORE_FORMAT_VERSION,
                shards: new_count,
                search: options.search.unwrap_or(false),
                analytics: options.analytics.unwrap_or(false),
                compacted: false,
                purged: false,
                packed: false,
            },
        )?;
        let shard_count = manifest.shards;
        if let Some(search) = options.search
            && search != manifest.search
        {
            // Turned on: the missing index files are built by replay below.
            // Turned off: the files go once the manifest no longer names them
            // (and any left by a crash go at the next open).
            manifest.search = search;
            manifest::store(&*storage, dir, manifest)?;
        }
        if let Some(analytics) = options.analytics
            && analytics != manifest.analytics
        {
            manifest.analytics = analytics;
            manifest::store(&*storage, dir, manifest)?;
        }
        if !manifest.analytics {
            crate::analytics::remove_files(&*storage, dir)?;
        }
        if let Some(wanted) = options.shards
            && wanted != shard_count
        {
            return Err(Error::Options(format!(
                "{} was created with {shard_count} shards, not {wanted}: a store \
                 keeps its shard count (open it without a shard count to use {shard_count})",
                dir.display()
            )));
        }
        let dirty = dir.join(DIRTY_FILE);
        let mut report = RecoveryReport {
            unclean_shutdown: storage.exists(&dirty).map_err(io_error(&dirty, "stat"))?,
            ..RecoveryReport::default()
        };
        // The marker is durable before anything can change, so a crash from
        // here on is always noticed at the next open.
        storage
            .open(&dirty, OpenMode::ReadWriteCreate)
            .and_then(|f| f.sync())
            .map_err(io_error(&dirty, "create"))?;
        storage
            .sync_dir(dir)
            .map_err(io_error(dir, "sync directory"))?;
        let older_format = manifest.version;
        let watchers = Arc::new(Watchers::default());
        let mut opened = Vec::with_capacity(shard_count as usize);
        for n in 0..shard_count {
            let id = ShardId(n);
            let params = ShardParams {
                storage: Arc::clone(&storage),
                dir: dir.join(format!("shard-{n:04}")),
                shard: id,
                segment_size: options.segment_size,
                mode: options.recovery_mode,
                search: manifest.search,
                scan_whole_log: options.scan_whole_log,
                progress: progress.clone(),
                level_entries: options.level_entries,
            };
            let (log, indexes) = open_one_shard(&params, None, &mut report)?;
            opened.push((params, log, indexes));
        }
        // Every shard's indexes of an older format were rebuilt by the
        // replay above (opening them found their entry width): the manifest
        // now says so, and an older build refuses the store from here on. A
        // crash before this line migrates again at the next open.
        if older_format < manifest::STORE_FORMAT_VERSION {
            manifest.version = manifest::STORE_FORMAT_VERSION;
            manifest::store(&*storage, dir, manifest)?;
            report.format_migration = Some((older_format, manifest::STORE_FORMAT_VERSION));
        }
        // The analytics catch up from the recovered logs before any writer
        // starts (docs/analytics.md).
        let analytics = if manifest.analytics {
            let logs = opened
                .iter()
                .map(|(_, log, _)| Arc::clone(log.log()))
                .collect();
            let ends: Vec<Location> = opened.iter().map(|(_, log, _)| log.end()).collect();
            let (analytics, done) = StoreAnalytics::open(
                Arc::clone(&storage),
                dir,
                logs,
                &ends,
                report.log_repairs.is_empty(),
                unix_now(),
            )?;
            if let Some(why) = done.rebuilt {
                report
                    .rebuilt_indexes
                    .push(format!("analytics, from the logs: {why}"));
            }
            report.replayed_records += done.records;
            Some(Arc::new(analytics))
        } else {
            None
        };
        if options.map_resident {
            // Best effort (see `Options::map_resident`): a failure leaves
            // pages to be mapped at their first read.
            for (_, log, indexes) in &opened {
                let _ = log.log().snapshot().map_resident();
                let _ = indexes.map_resident();
            }
        }
        let vanish_relays = Arc::new(options.relay_urls.clone());
        let mut shards = Vec::with_capacity(shard_count as usize);
        for (params, log, indexes) in opened {
            let id = params.shard;
            // Reopening in place after a failure: the log is not scanned
            // whole again, and nothing reports progress.
            let again = ShardParams {
                scan_whole_log: false,
                progress: None,
                ..params
            };
            let reopen: Reopen = Arc::new(move |log| {
                let mut report = RecoveryReport::default();
                let (writer, indexes) = open_one_shard(&again, Some(log), &mut report)?;
                Ok((writer, indexes, describe_recovery(&report)))
            });
            let changes = analytics.as_ref().map(|analytics| {
                Arc::new(AnalyticsFeed {
                    shard: id.0 as usize,
                    analytics: Arc::clone(analytics),
                }) as Arc<dyn ChangeSink>
            });
            let config = WriterConfig {
                durability: options.durability,
                checkpoint_interval: options.checkpoint_interval,
                checkpoint_dirty_nodes: options.checkpoint_dirty_nodes,
                level_entries: options.level_entries,
                id_filter_min: options.id_filter_min,
                deletion_targets: options.deletion_targets,
                max_group_events: options.max_group_events,
                commits: Some(Arc::clone(&watchers) as Arc<dyn CommitSink>),
                changes,
                vanish_relays: Arc::clone(&vanish_relays),
                reopen: Some(reopen),
                retry_after: options.recover_after,
                garbage: Arc::new(GarbageLedger::default()),
            };
            shards.push(Shard::start(id, log, indexes, config)?);
        }
        let saver = analytics
            .as_ref()
            .map(|analytics| Saver::start(Arc::clone(analytics), options.checkpoint_interval))
            .transpose()
            .map_err(io_error(dir, "start the analytics checkpoint thread"))?;
        let verifier = VerifyPool::start(options.verify_threads, options.verify_nice)
            .map_err(io_error(dir, "start verify threads"))?;
        Ok(EventStore {
            dir: dir.to_path_buf(),
            options,
            storage,
            shards,
            search: manifest.search,
            verifier,
            report,
            lock: Mutex::new(Some(lock)),
            watchers,
            analytics,
            saver: Mutex::new(saver),
            compacting: Mutex::new(()),
            manifest_edit: Mutex::new(()),
            purge_marked: AtomicBool::new(manifest.purged),
        })
    }

    /// The store's analytics, when it keeps them ([`Options::analytics`]).
    pub fn analytics(&self) -> Option<&Arc<StoreAnalytics>> {
        self.analytics.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// What opening the store found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Verifies (id, signature, limits, created_at window, NIP-40 expiry) and
    /// stores a batch of events. Returns one outcome per event, in order. An
    /// `Err` means the store could not write at all (nothing was acknowledged).
    pub fn insert(&self, events: &[Event]) -> Result<Vec<InsertOutcome>, Error> {
        self.insert_checked(events, true)
    }

    /// Like [`EventStore::insert`] but trusts ids and signatures (events from
    /// a source that already verified them); every other check still runs.
    pub fn insert_trusted(&self, events: &[Event]) -> Result<Vec<InsertOutcome>, Error> {
        self.insert_checked(events, false)
    }

    /// Like [`EventStore::insert`], but a shard that cannot write (see
    /// [`EventStore::health`]) fails only its own events: one result per
    /// event, so a relay answers the events of healthy shards as usual.
    pub fn insert_each(&self, events: &[Event]) -> Vec<Result<InsertOutcome, Error>> {
        let (outcomes, failures) = self.insert_routed(events, true);
        let mut failed: Vec<Option<&Error>> = vec![None; events.len()];
        for (positions, error) in &failures {
            for &i in positions {
                failed[i] = Some(error);
            }
        }
        outcomes
            .into_iter()
            .zip(failed)
            .map(|(outcome, failure)| match (outcome, failure) {
                (_, Some(error)) => Err(Error::Poisoned(error.to_string())),
                (Some(outcome), None) => Ok(outcome),
                (None, None) => Err(Error::corrupt(
                    "a shard returned fewer outcomes than events",
                )),
            })
            .collect()
    }

    fn insert_checked(&self, events: &[Event], verify: bool) -> Result<Vec<InsertOutcome>, Error> {
        let (outcomes, failures) = self.insert_routed(events, verify);
        // With several shards, others may have stored their part: the batch
        // as a whole is not acknowledged, and the caller retries (duplicates
        // are answered as such).
        if let Some((_, e)) = failures.into_iter().next() {
            return Err(e);
        }
        // Every event got an outcome above or from its shard; a gap would be a bug.
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| Error::corrupt("a shard returned fewer outcomes than events")))
            .collect()
    }

    /// Checks, routes and stores `events`; returns each event's outcome
    /// (`None` for the events of a shard that failed) and each failed
    /// shard's events with its error.
    #[allow(clippy::type_complexity)]
    fn insert_routed(
        &self,
        events: &[Event],
        verify: bool,
    ) -> (Vec<Option<InsertOutcome>>, Vec<(Vec<usize>, Error)>) {
        let now = unix_now();
        let mut outcomes: Vec<Option<InsertOutcome>> = vec![None; events.len()];
        // Checks after the signature's, kept so each event reports the first
        // check it fails in NIP-01 order.
        let mut later: Vec<Result<(), Rejection>> = Vec::with_capacity(events.len());
        let mut signatures = verify.then(|| self.verifier.batch());
        // Events are checked and encoded here, on the caller's thread (with
        // signatures on the pool meanwhile), so concurrent callers share the
        // work and the shard writers only append bytes.
        let mut staged: Vec<Option<Vec<u8>>> = vec![None; events.len()];
        // With watchers, a copy of each ephemeral event for the commit
        // stream (stored events are published by their shard's writer).
        let watching = self.watchers.active();
        let mut live: Vec<Option<Arc<[u8]>>> = Vec::new();
        if watching {
            live.resize(events.len(), None);
        }
        for (i, event) in events.iter().enumerate() {
            if let Err(rejection) = self.check_shape(event, verify) {
                outcomes[i] = Some(InsertOutcome::Invalid(rejection));
                later.push(Ok(()));
                continue;
            }
            if let Some(signatures) = &mut signatures {
                signatures.push(event);
            }
            later.push(self.check_time(event, now));
            let ephemeral = KindClass::of(event.kind) == KindClass::Ephemeral;
            if !ephemeral || watching {
                let mut payload = Vec::with_capacity(event.payload_len());
                match event.encode_payload(&mut payload) {
                    Ok(()) if ephemeral => live[i] = Some(Arc::from(payload)),
                    Ok(()) => staged[i] = Some(payload),
                    Err(e) => later[i] = Err(Rejection::from(&e)),
                }
            }
        }
        let mut valid = signatures
            .map(|s| s.finish())
            .unwrap_or_default()
            .into_iter();
        for (i, event) in events.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            let rejection = if verify && valid.next() == Some(false) {
                // Rare: ask again for the exact reason.
                let error = event.verify_signature().err();
                Some(error.map_or_else(
                    || Rejection::new("bad-signature", "signature verification failed"),
                    |e| Rejection::from(&e),
                ))
            } else {
                std::mem::replace(&mut later[i], Ok(())).err()
            };
            if let Some(rejection) = rejection {
                outcomes[i] = Some(InsertOutcome::Invalid(rejection));
                staged[i] = None;
            } else if KindClass::of(event.kind) == KindClass::Ephemeral {
                outcomes[i] = Some(InsertOutcome::Ephemeral);
            }
        }
        // Route: each author's events go to their shard, in the order given.
        let shards = self.shards.len();
        let mut routed: Vec<(Vec<usize>, Vec<Vec<u8>>)> = vec![(Vec::new(), Vec::new()); shards];
        for (i, payload) in staged.into_iter().enumerate() {
            if let Some(payload) = payload {
                let (positions, payloads) = &mut routed[shard_of(&events[i].pubkey, shards)];
                positions.push(i);
                payloads.push(payload);
            }
        }
        // Every shard's writer gets its part before any is waited for.
        let mut pending = Vec::new();
        let mut failures = Vec::new();
        for (shard, (positions, payloads)) in self.shards.iter().zip(routed) {
            if payloads.is_empty() {
                continue;
            }
            match shard.submit(payloads) {
                Ok(write) => pending.push((positions, write)),
                Err(e) => failures.push((positions, e)),
            }
        }
        for (positions, write) in pending {
            match write.wait() {
                Ok(written) => {
                    for (i, outcome) in positions.into_iter().zip(written) {
                        outcomes[i] = Some(match outcome {
                            WriteOutcome::Stored => InsertOutcome::Stored,
                            WriteOutcome::Replaced { previous } => {
                                InsertOutcome::Replaced { previous }
                            }
                            WriteOutcome::Duplicate => InsertOutcome::Duplicate,
                            WriteOutcome::Superseded => InsertOutcome::Superseded,
                            WriteOutcome::Deleted => InsertOutcome::Deleted,
                        });
                    }
                }
                Err(e) => failures.push((positions, e)),
            }
        }
        if watching {
            self.watchers
                .publish(outcomes.iter().zip(live).filter_map(
                    |(outcome, payload)| match outcome {
                        Some(InsertOutcome::Ephemeral) => payload,
                        _ => None,
                    },
                ));
        }
        (outcomes, failures)
    }

    /// The checks before the signature's, in the NIP-01 order: size and
    /// shape, then the id.
    fn check_shape(&self, event: &Event, verify: bool) -> Result<(), Rejection> {
        event
            .check_limits(&self.options.limits)
            .map_err(|e| Rejection::from(&e))?;
        if verify {
            event.verify_id().map_err(|e| Rejection::from(&e))?;
        }
        Ok(())
    }

    /// The checks after the signature's: created_at window and expiry.
    fn check_time(&self, event: &Event, now: u64) -> Result<(), Rejection> {
        let horizon = now.saturating_add(self.options.max_future.as_secs());
        if event.created_at > horizon {
            return Err(Rejection::new(
                "future",
                format!(
                    "created_at {} is more than {} s in the future",
                    event.created_at,
                    self.options.max_future.as_secs()
                ),
            ));
        }
        if let Some(expiration) = event.expiration()
            && expiration <= now
        {
            return Err(Rejection::new(
                "expired",
                format!("event expired at {expiration} (NIP-40)"),
            ));
        }
        Ok(())
    }

    /// Events matching any of `filters`, in NIP-01 order (newest first, ties
    /// by lowest id), without duplicates; each filter's `limit` applies to
    /// that filter.
    pub fn query(&self, filters: &[Filter]) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        self.query_with(filters, |event| {
            events.push(event.to_event());
            Ok(())
        })?;
        Ok(events)
    }

    /// Like [`EventStore::query`], handing each event to `visit` as a
    /// zero-copy view of its stored bytes (write it out with
    /// `EventRef::write_json`). It answers what was stored when the query
    /// began (less what was removed while it ran); no lock is held while
    /// `visit` runs, and a writer never waits for more than one step of the
    /// query (see `docs/api.md`, "Reads and writes").
    pub fn query_with(
        &self,
        filters: &[Filter],
        visit: impl FnMut(&EventRef<'_>) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        self.query_with_deadline(filters, None, visit)
    }

    /// [`EventStore::query_with`] that gives up with [`Error::TimedOut`]
    /// (having visited nothing) once `deadline` passes: a relay's time
    /// budget per query, so one heavy filter cannot take a large share of
    /// the machine.
    pub fn query_with_deadline(
        &self,
        filters: &[Filter],
        deadline: Option<Instant>,
        visit: impl FnMut(&EventRef<'_>) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        Ok(self.query_snapshot(filters, deadline, visit)?.0)
    }

    /// [`EventStore::query_with_deadline`] that also returns the commit
    /// sequence of the state it read: of the shards the filters reach, it
    /// saw every stored event the commit stream numbers up to that (unless
    /// removed while it ran), and none after. A relay delivers live only stored events numbered
    /// higher, so that no event is both in a REQ's stored part and live, and
    /// none its limit left out arrives live.
    pub fn query_snapshot(
        &self,
        filters: &[Filter],
        deadline: Option<Instant>,
        mut visit: impl FnMut(&EventRef<'_>) -> Result<(), Error>,
    ) -> Result<(usize, u64), Error> {
        let deadline = Deadline::new(deadline);
        let targets: Vec<Vec<(usize, Filter)>> = filters.iter().map(|f| self.route(f)).collect();
        let (points, sequence) = self.read_points(&targets);
        let hits = self.hits(filters, &targets, &points, &deadline, None, unix_now())?;
        for (_, _, event) in &hits {
            visit(event)?;
        }
        Ok((hits.len(), sequence))
    }

    /// The answer to `filters`, in NIP-01 order, read from one consistent
    /// state (as [`EventStore::query_snapshot`]) but held as places in the
    /// log: the shards' locks are released before this returns, and the
    /// events are read (zero-copy) only as [`Answer::visit`] asks for them.
    /// A relay streams a large answer this way, at the pace its client
    /// reads, without building it whole or holding up the writers. Gives
    /// up with [`Error::TimedOut`] once `deadline` passes.
    pub fn query_answer(
        &self,
        filters: &[Filter],
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        self.answer_at(filters, deadline, unix_now())
    }

    /// [`EventStore::query_answer`] as of `now`: events whose NIP-40
    /// expiration is at or before it are left out (a purge asks with 0, so
    /// that it finds expired events too).
    fn answer_at(
        &self,
        filters: &[Filter],
        deadline: Option<Instant>,
        now: u64,
    ) -> Result<Answer, Error> {
        let deadline = Deadline::new(deadline);
        let targets: Vec<Vec<(usize, Filter)>> = filters.iter().map(|f| self.route(f)).collect();
        let (points, sequence) = self.read_points(&targets);
        let places = self
            .hits(filters, &targets, &points, &deadline, None, now)?
            .into_iter()
            .map(|(hit, shard, _)| (shard, hit.location))
            .collect();
        let logs = points
            .into_iter()
            .map(|point| point.map(|point| point.log))
            .collect();
        Ok(Answer {
            places,
            logs,
            sequence,
        })
    }

    /// For tests of reads that run while the store changes: the answer of
    /// [`EventStore::query`], read as if a writer waited at every step (the
    /// shard's index lock is let go after each index entry or record), with
    /// `between` called each time before it is taken again. `between` may
    /// write to the store; the answer must hold what was stored when the
    /// query began, less what `between` removed before the query reached
    /// it, and nothing `between` stored.
    #[doc(hidden)]
    pub fn query_interleaved(
        &self,
        filters: &[Filter],
        mut between: impl FnMut(),
    ) -> Result<Vec<Event>, Error> {
        let deadline = Deadline::new(None);
        let targets: Vec<Vec<(usize, Filter)>> = filters.iter().map(|f| self.route(f)).collect();
        let (points, _) = self.read_points(&targets);
        let between: &RefCell<dyn FnMut() + '_> = &RefCell::new(&mut between);
        let hits = self.hits(
            filters,
            &targets,
            &points,
            &deadline,
            Some(between),
            unix_now(),
        )?;
        Ok(hits.iter().map(|(_, _, event)| event.to_event()).collect())
    }

    /// Every hit of `filters` from the read points, merged, in NIP-01
    /// order, each once.
    fn hits<'v>(
        &self,
        filters: &[Filter],
        targets: &[Vec<(usize, Filter)>],
        points: &'v [Option<ReadPoint>],
        deadline: &Deadline,
        between: Option<&RefCell<dyn FnMut() + '_>>,
        now: u64,
    ) -> Result<ShardHits<'v>, Error> {
        // One shard's part of a filter, to `limit`.
        let run = |shard: usize, part: &Filter, limit: Option<usize>| {
            let mut out: ShardHits<'v> = Vec::new();
            let Some(point) = &points[shard] else {
                return Ok(out);
            };
            let reader = self.shards[shard].reader(point);
            let keep = |hit, event| out.push((hit, shard, event));
            match between {
                None => execute(&reader, &point.log, part, now, limit, deadline, keep)?,
                Some(between) => {
                    let interleaved = Interleaved {
                        reader,
                        between,
                        locked: Cell::new(false),
                    };
                    let log = &point.log;
                    execute(&interleaved, log, part, now, limit, deadline, keep)?
                }
            };
            Ok::<_, Error>(out)
        };
        let mut hits: ShardHits<'v> = Vec::new();
        for (filter, targets) in filters.iter().zip(targets) {
            let start = hits.len();
            match filter.limit {
                Some(limit) if targets.len() > 1 => {
                    hits.extend(self.limited_hits(filter, targets, limit, &run)?);
                    // Each shard kept to its share; together they may pass
                    // the limit.
                    hits[start..].sort_unstable_by_key(|(hit, _, _)| *hit);
                    hits.truncate(start + limit);
                }
                _ => {
                    for (shard, part) in targets {
                        hits.extend(run(*shard, part, filter.limit)?);
                    }
                }
            }
        }
        // Merged order is exact up to ids sharing their first 8 bytes; this
        // settles that, and merges the filters' results.
        hits.sort_unstable_by_key(|(hit, _, _)| *hit);
        hits.dedup_by_key(|(hit, shard, _)| (*shard, hit.location));
        Ok(hits)
    }

    /// The hits of a filter with a limit that reaches several shards,
    /// without each shard reading to the whole limit (a two-shard follow
    /// feed read 200 events to answer 100): each shard is first asked for
    /// its share of the limit (by the authors routed to it, or evenly),
    /// with a margin. A shard that gave all it was asked for may
    /// hold more of the answer only if its last hit comes before the
    /// limit-th hit of all the shards together (or they hold fewer than
    /// the limit); such a shard is asked to go on from its last hit (up to
    /// its created_at, for as many more as the answer can still take, plus
    /// the hits of that second it already gave). Every shard then holds
    /// every hit of the answer it has: exact, as if each had been asked
    /// for the whole limit.
    fn limited_hits<'v>(
        &self,
        filter: &Filter,
        targets: &[(usize, Filter)],
        limit: usize,
        run: &impl Fn(usize, &Filter, Option<usize>) -> Result<ShardHits<'v>, Error>,
    ) -> Result<ShardHits<'v>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let authors = filter.authors.as_ref().map_or(0, Vec::len);
        let mut parts: Vec<(ShardHits<'v>, usize)> = Vec::new();
        for (shard, part) in targets {
            let share = match &part.authors {
                Some(mine) if authors > 0 => mine.len() as f64 / authors as f64,
                _ => 1.0 / targets.len() as f64,
            };
            let asked = ((limit as f64 * share * 1.25).ceil() as usize + 4).min(limit);
            let mut hits = run(*shard, part, Some(asked))?;
            // In NIP-01 order, so that its last is the one to go on from.
            hits.sort_unstable_by_key(|(hit, _, _)| *hit);
            parts.push((hits, asked));
        }
        let mut all: Vec<Hit> = parts
            .iter()
            .flat_map(|(hits, _)| hits.iter().map(|(hit, _, _)| *hit))
            .collect();
        all.sort_unstable();
        let cut = all.get(limit - 1).copied();
        let mut out = Vec::with_capacity(all.len());
        for ((shard, part), (mut hits, asked)) in targets.iter().zip(parts) {
            let last = match hits.last() {
                Some((last, _, _)) if hits.len() == asked && asked < limit => *last,
                _ => {
                    out.extend(hits);
                    continue;
                }
            };
            if cut.is_some_and(|cut| cut <= last) {
                // Whatever else it holds comes after the answer's end.
                out.extend(hits);
                continue;
            }
            // Fewer than `limit` hits of all shards come up to `last`: the
            // answer can take that many more, from this shard at most.
            let need = limit - all.partition_point(|hit| *hit <= last);
            let same_second = hits
                .iter()
                .filter(|(hit, _, _)| hit.created_at == last.created_at)
                .count();
            let mut rest = part.clone();
            rest.until = Some(last.created_at);
            let more = run(*shard, &rest, Some(need + same_second))?;
            hits.extend(more.into_iter().filter(|(hit, _, _)| *hit > last));
            out.extend(hits);
        }
        Ok(out)
    }

    /// The shards a filter can match events in, each with the filter to run
    /// there: a filter naming authors goes only to their shards, with only
    /// the authors each shard holds; any other filter goes to every shard.
    fn route(&self, filter: &Filter) -> Vec<(usize, Filter)> {
        let shards = self.shards.len();
        match &filter.authors {
            Some(authors) if shards > 1 => {
                let mut parts: Vec<Vec<Pubkey>> = vec![Vec::new(); shards];
                for author in authors {
                    parts[shard_of(author, shards)].push(*author);
                }
                parts
                    .into_iter()
                    .enumerate()
                    .filter(|(_, authors)| !authors.is_empty())
                    .map(|(shard, mut authors)| {
                        // Sorted once here; the executor then finds them
                        // in order and does not sort them again.
                        authors.sort_unstable();
                        authors.dedup();
                        (shard, filter.with_authors(authors))
                    })
                    .collect()
            }
            _ => (0..shards).map(|shard| (shard, filter.clone())).collect(),
        }
    }

    /// Where each shard some target needs is read from (indexed by shard),
    /// and the commit sequence of that state: every event the commit
    /// stream numbers up to it is below the points' bounds, every later one
    /// at or past them. The shards are read-locked together only while the
    /// points are taken; queries then lock each shard in slices that end
    /// whenever its writer waits (see `query::IndexAccess`).
    ///
    /// Lock order: shards are always read-locked in ascending order. Taken in
    /// the order the filters name them, two readers could each hold one
    /// shard and wait for the other's, and with a writer queued on each
    /// (the locks are fair: a queued writer holds back new readers) neither
    /// would ever get it.
    fn read_points(&self, targets: &[Vec<(usize, Filter)>]) -> (Vec<Option<ReadPoint>>, u64) {
        let mut needed = vec![false; self.shards.len()];
        for (shard, _) in targets.iter().flatten() {
            needed[*shard] = true;
        }
        let guards: Vec<_> = needed
            .iter()
            .zip(&self.shards)
            .map(|(&needed, shard)| needed.then(|| shard.lock()))
            .collect();
        // With the read locks held, no writer can publish: this is the
        // sequence of what the points show.
        let sequence = self.watchers.sequence();
        let points = guards
            .iter()
            .zip(&self.shards)
            .map(|(guard, shard)| guard.as_ref().map(|guard| shard.read_point(guard)))
            .collect();
        drop(guards);
        (points, sequence)
    }

    /// Whether each shard takes writes. A shard whose write, sync or
    /// checkpoint failed (a full disk, an I/O error) refuses writes
    /// (`Error::Poisoned`) while reads go on, and recovers in place by
    /// itself once the cause clears (see [`Options::recover_after`](crate::Options::recover_after)).
    pub fn health(&self) -> Vec<ShardHealth> {
        self.shards.iter().map(Shard::health).collect()
    }

    /// The number of shards (fixed when the store was created).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard that holds `author`'s events.
    pub fn shard_of(&self, author: &Pubkey) -> ShardId {
        ShardId(shard_of(author, self.shards.len()) as u32)
    }

    /// The index each filter would be answered from (`primary`,
    /// `term_time`, `tag_time`, `author_kind_time`, `author_time`,
    /// `kind_time`, `time`, or `none` when the filter can match nothing).
    pub fn explain(&self, filters: &[Filter]) -> Vec<&'static str> {
        filters
            .iter()
            .map(|f| plan(f, self.search).index_name())
            .collect()
    }

    /// Whether the store keeps the term_time index for NIP-50 search (see
    /// [`Options::search`](crate::Options::search)).
    pub fn search_index(&self) -> bool {
        self.search
    }

    /// NIP-45: how many events match any of `filters` (limits are ignored).
    pub fn count(&self, filters: &[Filter]) -> Result<u64, Error> {
        self.count_with_deadline(filters, None)
    }

    /// [`EventStore::count`] that gives up with [`Error::TimedOut`] once
    /// `deadline` passes.
    pub fn count_with_deadline(
        &self,
        filters: &[Filter],
        deadline: Option<Instant>,
    ) -> Result<u64, Error> {
        let deadline = Deadline::new(deadline);
        let targets: Vec<Vec<(usize, Filter)>> = filters.iter().map(|f| self.route(f)).collect();
        let (points, _) = self.read_points(&targets);
        let now = unix_now();
        // An event lives in one shard, and one filter meets it once: a single
        // filter's counts add up.
        if let [targets] = targets.as_slice() {
            let mut n = 0;
            for (shard, part) in targets {
                let Some(point) = &points[*shard] else {
                    continue;
                };
                n += execute(
                    &self.shards[*shard].reader(point),
                    &point.log,
                    part,
                    now,
                    None,
                    &deadline,
                    |_, _| {},
                )? as u64;
            }
            return Ok(n);
        }
        let mut seen: HashSet<(usize, Location)> = HashSet::new();
        for (shard, part) in targets.iter().flatten() {
            let Some(point) = &points[*shard] else {
                continue;
            };
            execute(
                &self.shards[*shard].reader(point),
                &point.log,
                part,
                now,
                None,
                &deadline,
                |hit, _| {
                    seen.insert((*shard, hit.location));
                },
            )?;
        }
        Ok(seen.len() as u64)
    }

    /// Which of `ids` the store holds, one answer per id in order: a look
    /// in each shard's primary index, reading no record and checking no
    /// signature, so that an ingester can drop what it already has before
    /// paying for verification. An event the store would refuse for another
    /// reason (deleted by its author, replaced by a newer version) is not
    /// held; `insert` answers those. Like a query, it lets go of a shard's
    /// lock whenever the shard's writer waits.
    pub fn contains_ids(&self, ids: &[EventId]) -> Result<Vec<bool>, Error> {
        let mut held = vec![false; ids.len()];
        for shard in &self.shards {
            let mut indexes = shard.lock();
            for (id, held) in ids.iter().zip(&mut held) {
                if *held {
                    continue;
                }
                if shard.writer_waiting() {
                    drop(indexes);
                    indexes = shard.lock();
                }
                *held = indexes.find_id(id)?.is_some();
            }
        }
        Ok(held)
    }

    /// [`EventStore::contains_ids`] for events whose authors are known (an
    /// ingester holding the events it received): each id is looked for
    /// only in its author's shard, one index look-up per event where
    /// `contains_ids` makes one per shard. An id paired with an author that
    /// did not sign it is looked for in that author's shard only, so it may
    /// be answered either way; `insert` refuses such an event regardless.
    pub fn contains_events(&self, events: &[(EventId, Pubkey)]) -> Result<Vec<bool>, Error> {
        let mut held = vec![false; events.len()];
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (at, (_, author)) in events.iter().enumerate() {
            by_shard[shard_of(author, self.shards.len())].push(at);
        }
        for (shard, positions) in self.shards.iter().zip(&by_shard) {
            if positions.is_empty() {
                continue;
            }
            let mut indexes = shard.lock();
            for &at in positions {
                if shard.writer_waiting() {
                    drop(indexes);
                    indexes = shard.lock();
                }
                held[at] = indexes.find_id(&events[at].0)?.is_some();
            }
        }
        Ok(held)
    }

    /// The stored event with this id (not if expired).
    pub fn get(&self, id: &EventId) -> Result<Option<Event>, Error> {
        Ok(self.query(&[Filter::new().ids([*id])])?.into_iter().next())
    }

    /// A new subscription to the commit stream: every event accepted as new
    /// from now on (stored, replacing an older version, or ephemeral), once
    /// durable; a stored event in the same step that makes it visible to
    /// queries (see [`Committed::sequence`](crate::Committed::sequence)). It holds at most `capacity` events
    /// not yet received; past that, events are dropped for this subscriber
    /// (counted by [`Commits::lagged`]) and writers never wait.
    pub fn commits(&self, capacity: usize) -> Commits {
        self.watchers.subscribe(capacity)
    }

    /// The sequence of the last event published on the commit stream (0
    /// before the first). Every stored event with a sequence at most this
    /// is seen by any query that starts after it was read. A relay reads it
    /// when it registers a subscription: events at most this were committed
    /// before the REQ and are never live.
    pub fn commit_sequence(&self) -> u64 {
        self.watchers.sequence()
    }

    /// A number that grows whenever a write becomes visible to queries (the
    /// ends of the shards' logs as their indexes have applied them), with or
    /// without commit-stream subscribers: a reader that polls can skip its
    /// query while the mark stays the same.
    pub fn write_mark(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| {
                let end = shard.lock().applied_end;
                (u64::from(end.segment.0) << 32) | u64::from(end.offset)
            })
            .fold(0u64, u64::wrapping_add)
    }

    /// Up to `limit` changes after `after` (see [`ChangePosition`]): every
    /// event stored and every event removed, read from the logs, within a
    /// shard in commit order, the shards in turn (each given an equal share
    /// of `limit` first, the rest to those with more). Only changes visible
    /// to queries are returned. Each change carries the position after it;
    /// an empty answer means the reader is up to date. `Err` when `after`
    /// names another shard count or a position past a shard's log.
    pub fn changes(&self, after: &ChangePosition, limit: usize) -> Result<Vec<StoreChange>, Error> {
        let views: Vec<_> = self
            .shards
            .iter()
            .map(|shard| {
                let end = shard.lock().applied_end;
                Some((shard.log().snapshot(), end))
            })
            .collect();
        super::changes::collect_changes(&views, after, limit, super::changes::PastEnd::Refuse)
    }

    /// Cheap figures for monitoring (no scan): events stored, the bytes
    /// of the log and of the indexes on disk, and of removed events in the log.
    pub fn gauges(&self) -> StoreGauges {
        let mut gauges = StoreGauges::default();
        for shard in &self.shards {
            let view = shard.lock();
            gauges.events += view.tree(IndexKind::Primary).entry_count();
            for kind in view.kinds() {
                let tree = view.tree(kind);
                gauges.index_bytes += self.storage.size_on_disk(tree.path()).unwrap_or(0);
                for run in view.run_paths(kind) {
                    gauges.index_bytes += self.storage.size_on_disk(&run).unwrap_or(0);
                }
            }
            gauges.log_bytes += shard.log().bytes_on_disk();
            gauges.garbage_bytes += shard.garbage().total().0;
        }
        gauges
    }

    /// Makes the indexes durable now (they also checkpoint in the background).
    pub fn checkpoint(&self) -> Result<(), Error> {
        self.shards.iter().try_for_each(Shard::checkpoint)
    }

    /// Takes the bytes of removed events (replaced, deleted, vanished) out
    /// of the sealed log segments while the store serves reads and writes
    /// (docs/compaction.md). One compaction runs at a time; a second call
    /// waits for the first.
    pub fn compact(&self, options: &CompactOptions) -> Result<CompactReport, Error> {
        self.compact_until(options, &AtomicBool::new(false))
    }

    /// [`EventStore::compact`], giving up with [`Error::Interrupted`] once
    /// `stop` is set: before the next segment, or within a rewrite at its
    /// next write (what was rewritten stays; an unfinished file goes at the
    /// next run or open). For a server that stops while compaction runs in
    /// the background.
    pub fn compact_until(
        &self,
        options: &CompactOptions,
        stop: &AtomicBool,
    ) -> Result<CompactReport, Error> {
        let started = Instant::now();
        let _one = self.compacting.lock();
        if options.seal_active {
            for shard in &self.shards {
                let stored = stored_at(shard);
                let epoch = || shard.lock().epoch;
                let access = ShardAccess {
                    log: shard.log(),
                    floor: None,
                    stored: &stored,
                    epoch: &epoch,
                    garbage: shard.garbage(),
                    expired_before: 0,
                };
                if active_holds_removed(&access)? {
                    shard.seal()?;
                }
            }
        }
        if options.checkpoint_first {
            self.checkpoint()?;
            if let Some(analytics) = &self.analytics {
                analytics.checkpoint()?;
            }
        }
        let log_bytes = || -> u64 { self.shards.iter().map(|s| s.log().bytes_on_disk()).sum() };
        let mut report = CompactReport {
            disk_bytes_before: log_bytes(),
            ..CompactReport::default()
        };
        let mut marked = false;
        let mut mark = || -> Result<(), Error> {
            if !marked {
                self.set_feature(|manifest| {
                    let compacted = std::mem::replace(&mut manifest.compacted, true);
                    let packed = std::mem::replace(&mut manifest.packed, true);
                    !(compacted && packed)
                })?;
                marked = true;
            }
            Ok(())
        };
        let mut pace = Pace::new(options.max_write_rate, stop);
        // The first round also finds events past their NIP-40 expiration in
        // the segments it reads and removes them; a second round, after a
        // checkpoint, takes their bytes when the run checkpoints first.
        for round in 0..2 {
            if round == 1 {
                if report.expired_removed == 0 || !options.checkpoint_first {
                    break;
                }
                self.checkpoint()?;
                if let Some(analytics) = &self.analytics {
                    analytics.checkpoint()?;
                }
                // The second round reads every sealed segment again and
                // counts what it leaves afresh.
                report.segments_examined = 0;
                report.records_left = 0;
            }
            let analytics_floor = self.analytics.as_ref().map(|a| a.saved_positions());
            for (n, shard) in self.shards.iter().enumerate() {
                let floor = match (
                    shard.lock().checkpoint_floor(),
                    analytics_floor.as_ref().map(|p| p[n]),
                ) {
                    (Some(indexes), Some(analytics)) => Some(indexes.min(analytics)),
                    (floor, _) => floor,
                };
                let stored = stored_at(shard);
                let epoch = || shard.lock().epoch;
                let access = ShardAccess {
                    log: shard.log(),
                    floor,
                    stored: &stored,
                    epoch: &epoch,
                    garbage: shard.garbage(),
                    expired_before: if round == 0 { unix_now() } else { 0 },
                };
                let expired = compact_shard(
                    &self.dir,
                    &access,
                    options,
                    &mut mark,
                    &mut report,
                    &mut pace,
                )?;
                shard.garbage().mark_known();
                if !expired.is_empty() {
                    self.mark_purged()?;
                    report.expired_removed += shard.purge(expired)? as u64;
                }
            }
        }
        report.disk_bytes_after = log_bytes();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// How much of the logs removed events take: the background
    /// compaction's trigger. The writers count each event they remove
    /// (replaced, deleted, vanished, purged), and each compaction pass
    /// sets the figure of every sealed segment to what it left there.
    /// Removals replayed at the open are counted only from the first pass
    /// on (`counted` says whether one has run since the open).
    pub fn garbage(&self) -> Garbage {
        let mut garbage = Garbage {
            removed_bytes: 0,
            log_bytes: 0,
            counted: true,
        };
        for shard in &self.shards {
            let (removed, known) = shard.garbage().total();
            garbage.removed_bytes += removed;
            garbage.counted &= known;
            garbage.log_bytes += shard.log().bytes_on_disk();
        }
        garbage
    }

    /// Sets the manifest's purge bit (feature bit 3) before the first
    /// purge record, so older builds refuse the store.
    fn mark_purged(&self) -> Result<(), Error> {
        if !self.purge_marked.load(Ordering::Acquire) {
            self.set_feature(|manifest| !std::mem::replace(&mut manifest.purged, true))?;
            self.purge_marked.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Reads the manifest, lets `set` change it, and writes it again (synced)
    /// if `set` says it did.
    fn set_feature(&self, set: impl FnOnce(&mut manifest::Manifest) -> bool) -> Result<(), Error> {
        let _one = self.manifest_edit.lock();
        let mut manifest = manifest::load(&*self.storage, &self.dir)?;
        if set(&mut manifest) {
            manifest::store(&*self.storage, &self.dir, manifest)?;
        }
        Ok(())
    }

    /// Removes every stored event that matches one of `filters` and that
    /// `spare` does not keep: the operator's delete (`megalith delete`) and
    /// retention rules. Each removal is a remove record in the log (reason
    /// `Purged`), so replay repeats it and compaction can take the bytes
    /// out; nothing stops the same event from being stored again later.
    /// With `dry_run`, counts what it would remove and changes nothing.
    /// Runs while the store serves: the matches are found with queries a
    /// page at a time (newest first) and removed a page at a time by each
    /// shard's writer. A filter with `limit` is refused. The first purge
    /// sets a feature bit in the manifest, so older builds refuse the store.
    pub fn purge(
        &self,
        filters: &[Filter],
        spare: impl Fn(&EventRef<'_>) -> bool,
        dry_run: bool,
    ) -> Result<PurgeReport, Error> {
        self.purge_until(filters, spare, dry_run, &AtomicBool::new(false))
    }

    /// [`EventStore::purge`], giving up with [`Error::Interrupted`] between
    /// two pages once `stop` is set (what it removed stays removed).
    pub fn purge_until(
        &self,
        filters: &[Filter],
        spare: impl Fn(&EventRef<'_>) -> bool,
        dry_run: bool,
        stop: &AtomicBool,
    ) -> Result<PurgeReport, Error> {
        if filters.iter().any(|f| f.limit.is_some()) {
            return Err(Error::Filter(FilterError(
                "a purge removes every matching event: `limit` has no meaning there".to_string(),
            )));
        }
        let plans: Vec<PurgePlan<'_>> = filters.iter().map(|f| (f, &spare as _)).collect();
        self.purge_plans(&plans, dry_run, stop)
    }

    /// Purges what each filter matches and its own `spare` does not keep.
    fn purge_plans(
        &self,
        plans: &[PurgePlan<'_>],
        dry_run: bool,
        stop: &AtomicBool,
    ) -> Result<PurgeReport, Error> {
        // A dry run over several filters counts an event the first filter
        // that matches it (a real run removes it then, so later ones miss it).
        let counted = RefCell::new(HashSet::new());
        let several = plans.len() > 1;
        let mut report = PurgeReport::default();
        for &(filter, spare) in plans {
            let page = |ask: &Filter| -> Result<Vec<Found>, Error> {
                // Expired (NIP-40) events too: queries hide them, but they
                // are stored until something removes them.
                let answer = self.answer_at(std::slice::from_ref(ask), None, 0)?;
                let mut found = Vec::with_capacity(answer.len());
                answer.visit(0..answer.len(), |event| {
                    let id = event.id();
                    found.push(Found {
                        created_at: event.created_at(),
                        id,
                        pubkey: event.pubkey(),
                        spared: spare(event)
                            || (dry_run && several && counted.borrow().contains(&id)),
                    });
                    Ok(())
                })?;
                Ok(found)
            };
            let remove = |doomed: &[(Pubkey, EventId)]| -> Result<usize, Error> {
                if dry_run {
                    if several {
                        counted
                            .borrow_mut()
                            .extend(doomed.iter().map(|(_, id)| *id));
                    }
                    return Ok(0);
                }
                self.mark_purged()?;
                let mut by_shard: Vec<Vec<EventId>> = vec![Vec::new(); self.shards.len()];
                for (pubkey, id) in doomed {
                    by_shard[self.shard_of(pubkey).0 as usize].push(*id);
                }
                let mut removed = 0;
                for (shard, ids) in self.shards.iter().zip(by_shard) {
                    if !ids.is_empty() {
                        removed += shard.purge(ids)?;
                    }
                }
                Ok(removed)
            };
            report += purge_pages(filter, PAGE, stop, page, remove)?;
        }
        Ok(report)
    }

    /// Applies retention rules as of `now` (seconds since the epoch): every
    /// event a rule covers (its kinds, less the `never` kinds) whose
    /// `created_at` is more than the rule's age before `now` is purged (see
    /// [`EventStore::purge`]). A rule that names at most 256 kinds reads
    /// only those kinds' entries; a wider one reads every event older than
    /// its age, each run.
    ///
    /// Gives up with [`Error::Interrupted`] between two pages once `stop`
    /// is set (a server stopping); what it removed until then stays removed.
    pub fn apply_retention(
        &self,
        retention: &Retention,
        now: u64,
        dry_run: bool,
        stop: &AtomicBool,
    ) -> Result<PurgeReport, Error> {
        let oldest_until = self.size_cutoff(retention, now)?;
        let plans = retention.plans_with(now, oldest_until);
        let spares: Vec<_> = plans
            .iter()
            .map(|(_, covers)| move |event: &EventRef<'_>| !covers(event.kind()))
            .collect();
        let plans: Vec<PurgePlan<'_>> = plans
            .iter()
            .zip(&spares)
            .map(|((filter, _), spare)| (filter, spare as _))
            .collect();
        self.purge_plans(&plans, dry_run, stop)
    }

    /// For a retention's size limit: the newest `created_at` whose events
    /// (and all older ones of the kinds it removes) must go for the store
    /// to fit, at its bytes per event; `None` when it fits or has no limit.
    /// The store's bytes: its logs and indexes on disk, less the removed
    /// events compaction has not taken out yet. The events of `never`
    /// kinds are not counted when those are at most 256 kinds.
    fn size_cutoff(&self, retention: &Retention, now: u64) -> Result<Option<u64>, Error> {
        let Some(max) = retention.max_bytes else {
            return Ok(None);
        };
        let gauges = self.gauges();
        let live = (gauges.log_bytes + gauges.index_bytes).saturating_sub(gauges.garbage_bytes);
        if live <= max || gauges.events == 0 {
            return Ok(None);
        }
        let per_event = (live / gauges.events).max(1);
        let needed = (live - max).div_ceil(per_event);
        let never = retention.never_listed();
        let removable = |until: u64| -> Result<u64, Error> {
            let all = self.count(&[Filter {
                until: Some(until),
                ..Filter::default()
            }])?;
            let spared = match &never {
                Some(kinds) if !kinds.is_empty() => self.count(&[Filter {
                    kinds: Some(kinds.clone()),
                    until: Some(until),
                    ..Filter::default()
                }])?,
                _ => 0,
            };
            Ok(all.saturating_sub(spared))
        };
        // The smallest second that takes enough (or `now`: all there is).
        let (mut low, mut high) = (0u64, now);
        while low < high {
            let middle = low + (high - low) / 2;
            if removable(middle)? >= needed {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Ok(Some(low))
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<StoreStats, Error> {
        let mut stats = StoreStats::default();
        for shard in &self.shards {
            let view = shard.lock();
            for kind in view.kinds() {
                let tree = view.tree(kind);
                *stats.index_entries.entry(kind.name()).or_default() += tree.entry_count();
                // Its level's run files (see `index::levelfile`) are part of it.
                let bytes = self.storage.size_on_disk(tree.path()).unwrap_or(0)
                    + view
                        .run_paths(kind)
                        .iter()
                        .map(|run| self.storage.size_on_disk(run).unwrap_or(0))
                        .sum::<u64>();
                *stats.index_bytes.entry(kind.name()).or_default() += bytes;
                stats.index_runs += view.run_paths(kind).len();
            }
            stats.events += view.tree(IndexKind::Primary).entry_count();
            if let Some(filter) = view.id_filter() {
                stats.id_filters += 1;
                stats.id_filter_bytes += filter.bytes() as u64;
            }
            let mut cursor = view.tree(IndexKind::KindTime).seek(&[])?;
            while let Some(entry) = cursor.next()? {
                *stats
                    .events_by_kind
                    .entry(u16::from_be_bytes([entry[0], entry[1]]))
                    .or_default() += 1;
            }
            stats.log_segments += shard.log().snapshot().segments().len();
            stats.log_bytes += shard.log().bytes_on_disk();
        }
        Ok(stats)
    }

    /// Checkpoints every shard, closes the logs and marks the shutdown clean.
    pub fn close(self) -> Result<(), Error> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<(), Error> {
        let Some(lock) = self.lock.lock().take() else {
            return Ok(());
        };
        self.watchers.close();
        let mut result = Ok(());
        // Side by side: a close spills each shard's level and may merge
        // run files, and a store of 2 shards closed one after the other
        // took twice as long.
        let closing: Vec<_> = self
            .shards
            .iter()
            .map(|shard| shard.start_close())
            .collect();
        for closing in closing {
            if let Err(e) = closing.wait()
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        if let Some(saver) = self.saver.lock().take() {
            saver.stop();
        }
        // After the writers stopped: the checkpoint reflects every group.
        if let Some(analytics) = &self.analytics
            && let Err(e) = analytics.checkpoint()
            && result.is_ok()
        {
            result = Err(e);
        }
        if result.is_ok() {
            let dirty = self.dir.join(DIRTY_FILE);
            self.storage
                .remove_file(&dirty)
                .map_err(io_error(&dirty, "remove"))?;
            self.storage
                .sync_dir(&self.dir)
                .map_err(io_error(&self.dir, "sync directory"))?;
        }
        drop(lock);
        result
    }
}

impl Drop for EventStore {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Opens one shard (see `open_shard`) and, after a repair, re-applies the
/// removals its damaged batches owed and finishes the repair.
fn open_one_shard(
    params: &ShardParams,
    existing: Option<&Arc<Log>>,
    report: &mut RecoveryReport,
) -> Result<(LogWriter, IndexSet), Error> {
    let OpenedShard {
        mut log,
        mut indexes,
        repair_scope,
    } = open_shard(params, existing, report)?;
    if let Some(scope) = repair_scope {
        // A repair moved records aside: what they removed (a replaced
        // version, what a deletion named) is removed again.
        report.removals_reapplied += reapply_removals(&mut log, &mut indexes, &scope)?;
        // What lost remove records had removed is live again: the rules a
        // later version or a surviving deletion relied on hold again.
        report.removals_reapplied += restore_invariants(&mut log, &mut indexes)?;
        finish_repair(&*params.storage, &params.dir, &mut log, &mut indexes)?;
    }
    Ok((log, indexes))
}

/// One line on what a recovery in place did.
fn describe_recovery(report: &RecoveryReport) -> String {
    let mut parts = vec![format!("{} log records replayed", report.replayed_records)];
    parts.extend(report.tail_repairs.iter().map(|t| format!("cut {t}")));
    parts.extend(
        report
            .rebuilt_indexes
            .iter()
            .map(|r| format!("rebuilt {r}")),
    );
    parts.extend(report.log_repairs.iter().map(|r| format!("repaired {r}")));
    parts.join("; ")
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A shard reader that lets go of the lock after every step (as if a
/// writer always waited) and runs `between` before taking it again: see
/// [`EventStore::query_interleaved`].
struct Interleaved<'a> {
    reader: ShardReader<'a>,
    between: &'a RefCell<dyn FnMut() + 'a>,
    locked: Cell<bool>,
}

impl IndexAccess for Interleaved<'_> {
    type Guard<'g>
        = <ShardReader<'g> as IndexAccess>::Guard<'g>
    where
        Self: 'g;

    fn lock(&self) -> Result<Self::Guard<'_>, QueryError> {
        if self.locked.replace(true) {
            (self.between.borrow_mut())();
        }
        self.reader.lock()
    }

    fn writer_waiting(&self) -> bool {
        true
    }

    fn visible(&self, location: Location) -> bool {
        self.reader.visible(location)
    }
}

/// An answer of [`EventStore::query_answer`]: the places of its events in
/// the log, and the log snapshots to read them from. It holds no lock; the
/// snapshots keep the segments it needs mapped.
#[derive(Debug)]
pub struct Answer {
    places: Vec<(usize, Location)>,
    logs: Vec<Option<LogSnapshot>>,
    sequence: u64,
}

impl Answer {
    /// How many events the answer holds.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// The commit sequence of the state it was read from (see
    /// [`EventStore::query_snapshot`]).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Hands the events `range` (positions in NIP-01 order) to `visit`, as
    /// zero-copy views of their stored bytes.
    pub fn visit(
        &self,
        range: std::ops::Range<usize>,
        mut visit: impl FnMut(&EventRef<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let end = range.end.min(self.places.len());
        for &(shard, location) in &self.places[range.start.min(end)..end] {
            let log = self.logs[shard]
                .as_ref()
                .expect("an answer keeps the log of every shard it holds events of");
            visit(&log.read_event(location)?)?;
        }
        Ok(())
    }
}
