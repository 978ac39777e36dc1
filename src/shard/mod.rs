//! A shard: one log, its indexes and the writer thread that owns both. Many
//! readers share the shard: each query reads it from a `ReadPoint`, taking
//! the index lock in slices that end whenever the writer waits.

mod batch;
mod deletions;
mod enforce;
mod lookup;
mod writer;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::compaction::GarbageLedger;
use crate::error::Error;
use crate::event::Pubkey;
use crate::ids::{Location, ShardId};
use crate::index::IndexSet;
use crate::query::{IndexAccess, QueryError};
use crate::wal::{Log, LogSnapshot, LogWriter};

pub(crate) use batch::WriteOutcome;
pub(crate) use enforce::{reapply_removals, restore_invariants};
pub(crate) use writer::{ChangeSink, CommitSink, Reopen, WriterConfig};
use writer::{Command, Writer};

/// When an acknowledged insert is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged event has been fsynced (one fsync per group commit).
    Always,
    /// Acknowledged events are written at once and fsynced at least this often;
    /// a power loss can take the last interval's events.
    Batch(Duration),
    /// No fsync until checkpoint or close: for tests and bulk loads that are
    /// verified afterwards.
    Never,
}

/// The shard that holds `pubkey`'s events, in a store of `shards` shards:
/// the last 8 bytes of the pubkey as a little-endian u64, mixed with
/// SplitMix64's finalizer, mapped onto `0..shards` by multiply-high. Part of
/// the on-disk format (`docs/format.md`): changing it moves authors.
///
/// The last bytes, not the first: vanity keys fix leading bytes, so many
/// authors could share a prefix.
pub(crate) fn shard_of(pubkey: &Pubkey, shards: usize) -> usize {
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&pubkey.0[24..]);
    let z = crate::ids::mix64(u64::from_le_bytes(tail));
    ((u128::from(z) * shards as u128) >> 64) as usize
}

/// Whether a shard takes writes, as its writer last found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHealth {
    pub shard: ShardId,
    /// Writes are accepted. After a failed write, sync or checkpoint (a full
    /// disk, an I/O error) the shard refuses writes, reads go on, and the
    /// writer retries in the background (waiting twice as long after each
    /// failed try) until recovery in place works.
    pub writable: bool,
    /// Why writes are refused (with file paths: for logs, not for clients).
    pub problem: Option<String>,
    /// The cause in a few words, without paths (the operating system's
    /// message, such as "No space left on device (os error 28)"): fit to
    /// show to anyone.
    pub cause: Option<String>,
    /// Since when.
    pub failed_since: Option<std::time::SystemTime>,
    /// Recoveries in place since the store was opened.
    pub recoveries: u64,
    /// What the last recovery did.
    pub last_recovery: Option<String>,
}

impl ShardHealth {
    fn new(shard: ShardId) -> ShardHealth {
        ShardHealth {
            shard,
            writable: true,
            problem: None,
            cause: None,
            failed_since: None,
            recoveries: 0,
            last_recovery: None,
        }
    }
}

/// A write handed to a shard's writer; [`PendingWrite::wait`] for its outcome.
pub(crate) struct PendingWrite(Receiver<Result<Vec<WriteOutcome>, Error>>);

impl PendingWrite {
    pub fn wait(self) -> Result<Vec<WriteOutcome>, Error> {
        self.0.recv().map_err(|_| Error::Closed)?
    }
}

/// A shard's indexes, with what a reader that lets go of them mid-query
/// needs to take them up again safely.
#[derive(Debug)]
pub(crate) struct Indexed {
    pub set: IndexSet,
    /// The log's end when the last group was applied: every event stored
    /// below it is applied (or already removed again); every event at or
    /// past it belongs to a later group, not yet visible.
    pub applied_end: Location,
    /// Counts reopenings in place (a failed writer's recovery may cut the
    /// log's unsynced end): a reader that began before one cannot go on.
    pub epoch: u64,
}

impl Deref for Indexed {
    type Target = IndexSet;
    fn deref(&self) -> &IndexSet {
        &self.set
    }
}

impl DerefMut for Indexed {
    fn deref_mut(&mut self) -> &mut IndexSet {
        &mut self.set
    }
}

/// A shard's indexes behind their lock, and the flag that tells readers a
/// writer waits for it.
#[derive(Debug)]
pub(crate) struct SharedIndexes {
    lock: RwLock<Indexed>,
    writer_waiting: AtomicBool,
    /// The writer is closing: background scans stop.
    closed: AtomicBool,
}

impl SharedIndexes {
    fn new(indexes: Indexed) -> SharedIndexes {
        SharedIndexes {
            lock: RwLock::new(indexes),
            writer_waiting: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Indexed> {
        self.lock.read()
    }

    /// The write lock, for the shard's writer only. While it waits, readers
    /// see [`SharedIndexes::writer_waiting`] and let go at their next step.
    pub fn write(&self) -> RwLockWriteGuard<'_, Indexed> {
        self.writer_waiting.store(true, Ordering::Release);
        let guard = self.lock.write();
        self.writer_waiting.store(false, Ordering::Release);
        guard
    }

    pub fn writer_waiting(&self) -> bool {
        self.writer_waiting.load(Ordering::Acquire)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Where a query reads a shard from: the log as it was, and the point in it
/// up to which the indexes had been applied when the query began.
#[derive(Debug)]
pub(crate) struct ReadPoint {
    pub log: LogSnapshot,
    bound: Location,
    epoch: u64,
}

/// A query's access to one shard's indexes (see [`IndexAccess`]): read-locked
/// in slices, let go whenever the writer waits, and seen only as of the
/// query's [`ReadPoint`]: an entry of a group applied since is skipped.
pub(crate) struct ShardReader<'a> {
    indexes: &'a SharedIndexes,
    point: &'a ReadPoint,
}

impl IndexAccess for ShardReader<'_> {
    type Guard<'g>
        = MappedRwLockReadGuard<'g, IndexSet>
    where
        Self: 'g;

    fn lock(&self) -> Result<Self::Guard<'_>, QueryError> {
        let guard = self.indexes.read();
        if guard.epoch != self.point.epoch {
            return Err(QueryError::Interrupted);
        }
        Ok(RwLockReadGuard::map(guard, |indexed| &indexed.set))
    }

    fn writer_waiting(&self) -> bool {
        self.indexes.writer_waiting()
    }

    fn visible(&self, location: Location) -> bool {
        location < self.point.bound
    }
}

#[derive(Debug)]
pub(crate) struct Shard {
    log: Arc<Log>,
    indexes: Arc<SharedIndexes>,
    commands: Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    health: Arc<Mutex<ShardHealth>>,
    garbage: Arc<GarbageLedger>,
}

/// A shard's writer on its way to closing.
pub(crate) struct Closing {
    outcome: Option<Receiver<Result<(), Error>>>,
    thread: Option<JoinHandle<()>>,
}

impl Closing {
    /// Waits until the writer has closed; `Error::Closed` if it had been
    /// closed before or stopped without answering.
    pub fn wait(self) -> Result<(), Error> {
        let result = match &self.outcome {
            Some(outcome) => outcome.recv().map_err(|_| Error::Closed).and_then(|r| r),
            None => Err(Error::Closed),
        };
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
        result
    }
}

impl Shard {
    /// Starts the writer thread over a recovered log and index set.
    pub fn start(
        id: ShardId,
        log: LogWriter,
        indexes: IndexSet,
        config: WriterConfig,
    ) -> Result<Shard, Error> {
        let shared_log = Arc::clone(log.log());
        let targets = Arc::new(deletions::DeletionTargets::default());
        {
            let (storage, dir) = indexes.run_io();
            let keep = config.deletion_targets.then_some(&*targets);
            deletions::load_saved(&*storage, &dir, log.last_lsn(), log.end(), keep)?;
        }
        // Everything in the log is applied once recovery is done.
        let indexes = Arc::new(SharedIndexes::new(Indexed {
            set: indexes,
            applied_end: log.end(),
            epoch: 0,
        }));
        let (commands, receiver) = bounded(1024);
        let health = Arc::new(Mutex::new(ShardHealth::new(id)));
        let garbage = Arc::clone(&config.garbage);
        let writer = Writer {
            log,
            indexes: Arc::clone(&indexes),
            config,
            commands: receiver,
            failed: None,
            health: Arc::clone(&health),
            last_checkpoint: Instant::now(),
            unsynced_since: None,
            targets,
        };
        let thread = std::thread::Builder::new()
            .name(format!("megalith-shard-{id}"))
            .spawn(move || writer.run())
            .map_err(|source| Error::Io {
                path: shared_log.dir().to_path_buf(),
                op: "spawn writer thread",
                source,
            })?;
        Ok(Shard {
            log: shared_log,
            indexes,
            commands,
            thread: Mutex::new(Some(thread)),
            health,
            garbage,
        })
    }

    /// Whether the shard takes writes, as its writer last found.
    pub fn health(&self) -> ShardHealth {
        self.health.lock().clone()
    }

    /// Queues validated events, given as their encoded payloads
    /// (`Event::encode_payload`), for the writer. It does not wait, so one
    /// caller can keep several shards' writers busy at once.
    pub fn submit(&self, payloads: Vec<Vec<u8>>) -> Result<PendingWrite, Error> {
        let (reply, outcome) = bounded(1);
        self.commands
            .send(Command::Write { payloads, reply })
            .map_err(|_| Error::Closed)?;
        Ok(PendingWrite(outcome))
    }

    /// The shard's indexes, read-locked. Hold them briefly: the writer
    /// waits for every reader.
    pub fn lock(&self) -> RwLockReadGuard<'_, Indexed> {
        self.indexes.read()
    }

    /// Whether the writer waits for the index lock: a reader holding it
    /// should let go.
    pub fn writer_waiting(&self) -> bool {
        self.indexes.writer_waiting()
    }

    /// Where a query starting now reads from, taken with the indexes locked
    /// (`indexes` is this shard's guard): the log snapshot is taken after
    /// the lock, so every location the indexes hold is in it.
    pub fn read_point(&self, indexes: &Indexed) -> ReadPoint {
        ReadPoint {
            log: self.log.snapshot(),
            bound: indexes.applied_end,
            epoch: indexes.epoch,
        }
    }

    /// A query's access to the indexes from `point` on.
    pub fn reader<'a>(&'a self, point: &'a ReadPoint) -> ShardReader<'a> {
        ShardReader {
            indexes: &self.indexes,
            point,
        }
    }

    pub fn checkpoint(&self) -> Result<(), Error> {
        let (reply, outcome) = bounded(1);
        self.commands
            .send(Command::Checkpoint { reply })
            .map_err(|_| Error::Closed)?;
        outcome.recv().map_err(|_| Error::Closed)?
    }

    /// Removes the stored events among `ids` (a remove record of reason
    /// `Purged` each, in one group); returns how many there were.
    pub fn purge(&self, ids: Vec<crate::event::EventId>) -> Result<usize, Error> {
        let (reply, outcome) = bounded(1);
        self.commands
            .send(Command::Purge { ids, reply })
            .map_err(|_| Error::Closed)?;
        outcome.recv().map_err(|_| Error::Closed)?
    }

    /// Seals the active log segment (see `LogWriter::seal`).
    pub fn seal(&self) -> Result<bool, Error> {
        let (reply, outcome) = bounded(1);
        self.commands
            .send(Command::Seal { reply })
            .map_err(|_| Error::Closed)?;
        outcome.recv().map_err(|_| Error::Closed)?
    }

    /// Checkpoints, closes the log cleanly and stops the writer thread.
    pub fn close(&self) -> Result<(), Error> {
        self.start_close().wait()
    }

    /// Asks the writer to close (see [`Closing::wait`]): the store closes
    /// its shards side by side, each writing its own files.
    pub fn start_close(&self) -> Closing {
        let Some(thread) = self.thread.lock().take() else {
            return Closing {
                outcome: None,
                thread: None,
            };
        };
        let (reply, outcome) = bounded(1);
        let outcome = self
            .commands
            .send(Command::Close { reply })
            .is_ok()
            .then_some(outcome);
        Closing {
            outcome,
            thread: Some(thread),
        }
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The bytes of removed events in the shard's log, per segment.
    pub fn garbage(&self) -> &GarbageLedger {
        &self.garbage
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if self.thread.lock().is_some() {
            let _ = self.close();
        }
    }
}
