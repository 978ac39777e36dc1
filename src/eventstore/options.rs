//! Store options and the builder that opens a store with them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::event::Limits;
use crate::recovery::{ProgressFn, RecoveryMode, RecoveryReport};
use crate::shard::Durability;
use crate::storage::{FileStorage, Storage};

use super::store::EventStore;

/// Everything a store can be tuned with. Every field's default is the one a
/// production relay should run with.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// When an acknowledged insert is on disk. Default: `Durability::Always`.
    pub durability: Durability,
    /// A log segment is sealed and a new one started past this size.
    /// Default: 1 GiB. Range: 64 KiB ..= 2 GiB.
    pub segment_size: u64,
    /// Indexes are checkpointed at least this often while they have changes.
    /// Default: 30 s.
    pub checkpoint_interval: Duration,
    /// ... and as soon as this many index nodes have changed in memory.
    /// Default: 65,536 per shard (at most about 256 MiB of changed 4 KiB
    /// pages). Random inserts into a large tree dirty about one page each,
    /// so a low bound makes every checkpoint rewrite a page per insert: at
    /// 16,384, trusted ingest of generated data fell from 21k to 6k events/s
    /// over the first 500,000 events; at 65,536 it held 15-18k/s.
    pub checkpoint_dirty_nodes: usize,
    /// Index entries staged in the sorted in-memory level (per shard) before
    /// they are merged into the trees in key order and checkpointed. The
    /// random-order indexes (primary, author_time, author_kind_time,
    /// tag_time, address, term_time) stage a group's entries instead of
    /// inserting them one by one into trees of millions of entries, where
    /// nearly every insert copies and rewrites a leaf of its own; a merge
    /// copies and writes each leaf once for all the entries that fall in it
    /// (`docs/engine-at-scale.md`). About 100 bytes of memory per entry;
    /// once the level holds this many, the writer spills it to run files
    /// (or merges it and the run files into the trees, when they are a
    /// quarter of the trees' entries), and a close spills what it holds;
    /// background checkpoints leave a smaller level staged, so after a
    /// crash replay covers up to this many entries' records per shard
    /// (and, after a crash during a merge into the trees, every record
    /// the run files held). Default: 1,048,576 (about 100 MiB per
    /// shard, some 125,000 of its events). 0 turns the level off: every
    /// entry goes into its tree at once.
    pub level_entries: usize,
    /// The smallest id filter per shard, in ids (docs/engine-at-scale.md,
    /// "Id filter"): an in-memory filter of the ids each shard holds, 10
    /// bits per id, sized for twice the shard's events at open (at least
    /// this many) and built again twice as large when it fills, so that a
    /// new event's duplicate check and an id look-up in a shard that does
    /// not hold the id skip the primary index. Default: 1,048,576 (1.25
    /// MiB per shard). 0 turns the filter off.
    pub id_filter_min: usize,
    /// Keep, per shard, the set of what stored deletion requests (kind 5)
    /// and requests to vanish (kind 62) name (docs/engine-at-scale.md,
    /// "Deletion targets"), so a new event's deletion checks seek the
    /// indexes only when a deletion may name it. Taken at open from the file
    /// a clean close saved, or else filled at the first write by a scan of
    /// the stored deletions. Default: on. Off: every check seeks (the same answers).
    pub deletion_targets: bool,
    /// While opening, map every page of the store's files that the
    /// operating system's page cache already holds (after a restart, most
    /// of a store that fits in memory), so the first query to read each
    /// page takes no page fault: without it, the first id look-ups after an
    /// open took about twice as long as later ones, two faults each (an
    /// index leaf and the record's log page). Reads nothing from disk;
    /// costs page tables (about 2 MiB per GiB mapped) and a few hundred
    /// milliseconds of opening per 10 GiB held. Failures are ignored (the
    /// pages are then mapped at first read, as without it). Linux only.
    /// For a store opened for a while (a server); a short-lived or
    /// write-only opening (`megalith import`, `query`, `stats`) turns it
    /// off. Default: true.
    pub map_resident: bool,
    /// Size and shape limits for events. Default: `Limits::default()`
    /// (64 KiB events, 2,000 tags, 1,024-byte tag values, 64 KiB content).
    pub limits: Limits,
    /// Events dated more than this far in the future are refused. Default: 15 min.
    pub max_future: Duration,
    /// Most events one group commit takes. Default: 10,000.
    pub max_group_events: usize,
    /// Create a new store when the directory holds none. Default: true;
    /// when false, opening a directory without a store is `Error::Missing`.
    pub create_if_missing: bool,
    /// What opening does when the log does not end cleanly. Default:
    /// `RecoveryMode::TolerateCorruptTail` (cut a torn tail and report
    /// where; refuse damage). See [`RecoveryMode`].
    pub recovery_mode: RecoveryMode,
    /// Check every record of every log segment while opening, not only the
    /// records replay reads (which start at the indexes' checkpoints), so
    /// damage anywhere in the log is found now: refused, or repaired with
    /// `RecoveryMode::Repair`. Reads the whole log. Default: false.
    pub scan_whole_log: bool,
    /// Shards of a new store, each with its own log, indexes and writer
    /// thread; events go to `shard_of(pubkey)`. Default: `None`, which
    /// creates as many shards as the machine has cores and opens an existing
    /// store with whatever count it was created with. `Some(n)` (1 ..= 256)
    /// creates `n` and refuses to open a store created with another count.
    pub shards: Option<u32>,
    /// Whether the store keeps the term_time index for NIP-50 search.
    /// Default `None`: a new store has none, an existing one keeps what its
    /// manifest says. `Some(true)` turns it on (the index is built from the
    /// log while the store opens), `Some(false)` turns it off (its files are
    /// removed); either choice is recorded in the manifest. Without it,
    /// search filters are still answered exactly, from the other indexes,
    /// checking the words on each record. It costs about half the trusted
    /// ingest rate and 0.75x the raw JSON in disk on text-heavy data (see
    /// docs/performance.md).
    pub search: Option<bool>,
    /// Whether the store keeps the analytics (docs/analytics.md):
    /// engagement per video, video lists, active authors, creators,
    /// updated as events are stored and read with
    /// [`EventStore::analytics`](crate::EventStore::analytics). Default
    /// `None`: a new store has none, an existing one keeps what its
    /// manifest says; `Some(true)` turns them on (built from the log while
    /// the store opens), `Some(false)` off (their files are removed).
    pub analytics: Option<bool>,
    /// The URLs this store is served at (`wss://relay.example.com`). A NIP-62
    /// request to vanish (kind 62) is honored when a `relay` tag names one
    /// of them or `ALL_RELAYS`: every event its author created up to it is
    /// removed (like a NIP-09 deletion, recorded in the log) and refused
    /// from then on; the requests stay stored. Default: none (only
    /// `ALL_RELAYS` requests are honored).
    pub relay_urls: Vec<String>,
    /// After a failed write, sync or checkpoint (a full disk, an I/O error)
    /// the shard refuses writes, reads go on, and its writer opens it again
    /// in place after this long, and after twice as long each time that
    /// fails (at most 64 times this), so writes resume without a restart
    /// once the cause clears. Default: 1 s.
    pub recover_after: Duration,
    /// Threads that check signatures for `insert`, besides the calling
    /// thread, which helps. Default: the number of cores. 0 checks
    /// everything on the calling thread.
    pub verify_threads: usize,
    /// The nice value the verify threads run at (Linux, where it is a
    /// per-thread setting; ignored elsewhere). A server that answers
    /// queries beside a busy writer raises it (`megalith serve` uses 10),
    /// so that signature checks, which are throughput work, give way to
    /// queries, which are latency work; with nothing else to run they get
    /// every core all the same. Default 0 (unchanged).
    pub verify_nice: i32,
}

/// Most shards a store can have.
pub const MAX_SHARDS: u32 = 256;

/// The number of cores, or 1 when the system will not say.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Default for Options {
    fn default() -> Options {
        Options {
            durability: Durability::Always,
            segment_size: 1 << 30,
            checkpoint_interval: Duration::from_secs(30),
            checkpoint_dirty_nodes: 65_536,
            level_entries: 1 << 20,
            id_filter_min: 1 << 20,
            deletion_targets: true,
            map_resident: true,
            limits: Limits::default(),
            max_future: Duration::from_secs(15 * 60),
            max_group_events: 10_000,
            create_if_missing: true,
            recovery_mode: RecoveryMode::TolerateCorruptTail,
            scan_whole_log: false,
            shards: None,
            search: None,
            analytics: None,
            relay_urls: Vec::new(),
            recover_after: Duration::from_secs(1),
            verify_threads: cores(),
            verify_nice: 0,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(64 << 10..=2 << 30).contains(&self.segment_size) {
            return Err(Error::Options(format!(
                "segment_size {} is outside 64 KiB ..= 2 GiB",
                self.segment_size
            )));
        }
        if self.limits.max_event_bytes > 4 << 20 {
            return Err(Error::Options(format!(
                "limits.max_event_bytes {} is above the 4 MiB a log batch can hold",
                self.limits.max_event_bytes
            )));
        }
        if let Some(shards) = self.shards
            && !(1..=MAX_SHARDS).contains(&shards)
        {
            return Err(Error::Options(format!(
                "shards {shards} is outside 1 ..= {MAX_SHARDS}"
            )));
        }
        if self.verify_threads > 1024 {
            return Err(Error::Options(format!(
                "verify_threads {} is above 1,024",
                self.verify_threads
            )));
        }
        if !(-20..=19).contains(&self.verify_nice) {
            return Err(Error::Options(format!(
                "verify_nice {} is outside -20 ..= 19",
                self.verify_nice
            )));
        }
        if self.recover_after.is_zero() || self.recover_after > Duration::from_secs(3600) {
            return Err(Error::Options(format!(
                "recover_after {:?} is outside 1 ns ..= 1 h",
                self.recover_after
            )));
        }
        if self.max_group_events == 0 || self.checkpoint_dirty_nodes == 0 {
            return Err(Error::Options(
                "max_group_events and checkpoint_dirty_nodes must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Opens a store: `EventStore::builder(path).durability(..).open()`.
#[derive(Clone)]
pub struct EventStoreBuilder {
    path: PathBuf,
    options: Options,
    storage: Arc<dyn Storage>,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for EventStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStoreBuilder")
            .field("path", &self.path)
            .field("options", &self.options)
            .field("storage", &self.storage)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What opening needs besides the options.
pub(crate) struct OpenWith {
    pub storage: Arc<dyn Storage>,
    pub progress: Option<ProgressFn>,
}

impl EventStoreBuilder {
    pub(crate) fn new(path: &Path) -> EventStoreBuilder {
        EventStoreBuilder {
            path: path.to_path_buf(),
            options: Options::default(),
            storage: Arc::new(FileStorage),
            progress: None,
        }
    }

    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    pub fn durability(mut self, durability: Durability) -> Self {
        self.options.durability = durability;
        self
    }

    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.options.segment_size = bytes;
        self
    }

    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.options.checkpoint_interval = interval;
        self
    }

    pub fn checkpoint_dirty_nodes(mut self, nodes: usize) -> Self {
        self.options.checkpoint_dirty_nodes = nodes;
        self
    }

    pub fn level_entries(mut self, entries: usize) -> Self {
        self.options.level_entries = entries;
        self
    }

    pub fn id_filter_min(mut self, ids: usize) -> Self {
        self.options.id_filter_min = ids;
        self
    }

    pub fn deletion_targets(mut self, keep: bool) -> Self {
        self.options.deletion_targets = keep;
        self
    }

    pub fn map_resident(mut self, map: bool) -> Self {
        self.options.map_resident = map;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.options.limits = limits;
        self
    }

    pub fn max_future(mut self, max_future: Duration) -> Self {
        self.options.max_future = max_future;
        self
    }

    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.options.create_if_missing = create;
        self
    }

    /// The file system the store lives on. Default: [`FileStorage`]; tests
    /// pass a [`crate::storage::SimStorage`] to inject faults and crashes.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }

    /// See [`Options::shards`].
    pub fn shards(mut self, shards: u32) -> Self {
        self.options.shards = Some(shards);
        self
    }

    /// See [`Options::search`].
    pub fn search(mut self, search: bool) -> Self {
        self.options.search = Some(search);
        self
    }

    /// See [`Options::analytics`].
    pub fn analytics(mut self, analytics: bool) -> Self {
        self.options.analytics = Some(analytics);
        self
    }

    /// See [`Options::relay_urls`].
    pub fn relay_urls(mut self, urls: impl IntoIterator<Item = String>) -> Self {
        self.options.relay_urls = urls.into_iter().collect();
        self
    }

    /// See [`Options::verify_threads`].
    pub fn verify_threads(mut self, threads: usize) -> Self {
        self.options.verify_threads = threads;
        self
    }

    /// See [`Options::verify_nice`].
    pub fn verify_nice(mut self, nice: i32) -> Self {
        self.options.verify_nice = nice;
        self
    }

    /// See [`Options::recovery_mode`].
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Self {
        self.options.recovery_mode = mode;
        self
    }

    /// See [`Options::recover_after`].
    pub fn recover_after(mut self, wait: Duration) -> Self {
        self.options.recover_after = wait;
        self
    }

    /// See [`Options::scan_whole_log`].
    pub fn scan_whole_log(mut self, scan: bool) -> Self {
        self.options.scan_whole_log = scan;
        self
    }

    /// Finds and repairs damage anywhere in the store's log (every record
    /// of every segment is checked), finishes, and closes the store: what
    /// `megalith repair` runs. Damaged ranges go to quarantine files beside
    /// the log and every valid record is kept; the report says what was
    /// lost. A store without damage is left as it was (a torn tail is cut,
    /// as any open does).
    pub fn repair(mut self) -> Result<RecoveryReport, Error> {
        self.options.recovery_mode = RecoveryMode::Repair;
        self.options.scan_whole_log = true;
        self.options.create_if_missing = false;
        // Opened to be closed again: mapping its resident pages is waste.
        self.options.map_resident = false;
        let store = self.open()?;
        let report = store.recovery_report().clone();
        store.close()?;
        Ok(report)
    }

    /// Called with replay progress while opening (a long replay follows a
    /// crash or rebuilds an index from the log). Default: none.
    pub fn on_replay_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Opens the store, creating it if the directory is empty or missing.
    pub fn open(self) -> Result<EventStore, Error> {
        self.options.validate()?;
        let with = OpenWith {
            storage: self.storage,
            progress: self.progress,
        };
        EventStore::open_with(&self.path, self.options, with)
    }
}
