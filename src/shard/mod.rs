//! A shard: one log, its indexes and the writer thread that owns both. Many
//! readers share the shard through `ShardRead` views.

mod batch;
mod enforce;
mod lookup;
mod writer;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::Error;
use crate::event::Pubkey;
use crate::ids::ShardId;
use crate::index::IndexSet;
use crate::wal::{Log, LogSnapshot, LogWriter};

pub(crate) use batch::WriteOutcome;
pub(crate) use enforce::{reapply_removals, restore_invariants};
use writer::{Command, Writer};
pub(crate) use writer::{CommitSink, Reopen, WriterConfig};

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
    let mut z = u64::from_le_bytes(tail);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
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

/// A consistent read view of a shard: its indexes (read-locked) and the log
/// segments they point into.
pub(crate) struct ShardRead<'a> {
    pub indexes: RwLockReadGuard<'a, IndexSet>,
    pub log: LogSnapshot,
}

#[derive(Debug)]
pub(crate) struct Shard {
    log: Arc<Log>,
    indexes: Arc<RwLock<IndexSet>>,
    commands: Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    health: Arc<Mutex<ShardHealth>>,
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
        let indexes = Arc::new(RwLock::new(indexes));
        let (commands, receiver) = bounded(1024);
        let health = Arc::new(Mutex::new(ShardHealth::new(id)));
        let writer = Writer {
            log,
            indexes: Arc::clone(&indexes),
            config,
            commands: receiver,
            failed: None,
            health: Arc::clone(&health),
            last_checkpoint: Instant::now(),
            unsynced_since: None,
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

    /// A consistent view for queries. The index lock is taken before the log
    /// snapshot, so every location the indexes hold is in the snapshot.
    pub fn read(&self) -> ShardRead<'_> {
        let indexes = self.indexes.read();
        let log = self.log.snapshot();
        ShardRead { indexes, log }
    }

    pub fn checkpoint(&self) -> Result<(), Error> {
        let (reply, outcome) = bounded(1);
        self.commands
            .send(Command::Checkpoint { reply })
            .map_err(|_| Error::Closed)?;
        outcome.recv().map_err(|_| Error::Closed)?
    }

    /// Checkpoints, closes the log cleanly and stops the writer thread.
    pub fn close(&self) -> Result<(), Error> {
        let Some(thread) = self.thread.lock().take() else {
            return Err(Error::Closed);
        };
        let (reply, outcome) = bounded(1);
        let result = match self.commands.send(Command::Close { reply }) {
            Ok(()) => outcome.recv().map_err(|_| Error::Closed).and_then(|r| r),
            Err(_) => Err(Error::Closed),
        };
        let _ = thread.join();
        result
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if self.thread.lock().is_some() {
            let _ = self.close();
        }
    }
}
