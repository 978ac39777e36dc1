//! A shard: one log, its indexes and the writer thread that owns both. Many
//! readers share the shard through `ShardRead` views.

mod batch;
mod lookup;
mod writer;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::Error;
use crate::ids::ShardId;
use crate::index::IndexSet;
use crate::wal::{Log, LogSnapshot, LogWriter};

pub(crate) use batch::WriteOutcome;
pub(crate) use writer::WriterConfig;
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
        let writer = Writer {
            log,
            indexes: Arc::clone(&indexes),
            config,
            commands: receiver,
            poisoned: None,
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
        })
    }

    /// Writes validated events, given as their encoded payloads
    /// (`Event::encode_payload`), and waits for their outcomes.
    pub fn write(&self, payloads: Vec<Vec<u8>>) -> Result<Vec<WriteOutcome>, Error> {
        let (reply, outcome) = bounded(1);
        self.commands
            .send(Command::Write { payloads, reply })
            .map_err(|_| Error::Closed)?;
        outcome.recv().map_err(|_| Error::Closed)?
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
