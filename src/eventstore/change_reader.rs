//! The change feed read from a store's files by another process
//! ([`ChangeReader`]): beside the process that has the store open (a
//! running `megalith serve`), or with none, on a read-only file system too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::changes::{PastEnd, collect_changes};
use super::lock::{Holder, probe_holder};
use super::{ChangeOp, ChangePosition, StoreChange, manifest};
use crate::error::Error;
use crate::event::EventRef;
use crate::ids::{Location, ShardId};
use crate::storage::{FileStorage, Storage};
use crate::wal::{LogFollower, LogSnapshot, LogView, REPAIR_MARKER};

/// Reads a store's change feed ([`crate::EventStore::changes`]: the same
/// changes, order and positions) without opening the store: it takes no
/// exclusive lock, writes nothing, replays nothing.
///
/// - Beside a process that has the store open, it reads each shard's log
///   up to where that process has synced it (the log's synced mark): a
///   change it returns is durable, and a power loss cannot take it back.
///   With `Durability::Batch` or `Never` the feed here lags the writer's
///   own by up to the interval between syncs (with `Never`, until a
///   checkpoint or the close).
/// - With no process beside, it reads what the next open would keep (whole
///   batches; a torn tail is left for that open to cut), holding the lock
///   shared for the length of one call, so a process that opens the store
///   meanwhile waits for at most that call.
///
/// A shard whose running writer has published no synced mark yet (it is
/// still opening the store, or a repair is changing its log) reads as
/// having nothing new; [`ChangeReader::waiting`] names such shards.
#[derive(Debug)]
pub struct ChangeReader {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    logs: Vec<LogFollower>,
    waiting: Vec<ShardId>,
}

impl ChangeReader {
    /// Opens the store in `dir` for reading its change feed: reads its
    /// manifest only.
    pub fn open(dir: impl AsRef<Path>) -> Result<ChangeReader, Error> {
        let dir = dir.as_ref().to_path_buf();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage);
        let (_, manifest) = manifest::read_existing(&dir)?;
        let logs = (0..manifest.shards)
            .map(|n| LogFollower::new(&shard_dir(&dir, n).join("log"), ShardId(n)))
            .collect();
        Ok(ChangeReader {
            dir,
            storage,
            logs,
            waiting: Vec::new(),
        })
    }

    pub fn shard_count(&self) -> usize {
        self.logs.len()
    }

    /// Up to `limit` changes after `after`, as [`crate::EventStore::changes`]
    /// gives them, from what can be read now (see the type's description);
    /// an empty answer means nothing more can be read yet.
    pub fn changes(
        &mut self,
        after: &ChangePosition,
        limit: usize,
    ) -> Result<Vec<StoreChange>, Error> {
        self.read(Some((after, limit)), None)
            .map(|(changes, _)| changes)
    }

    /// [`ChangeReader::changes`], reading no shard past its part of
    /// `until` (a position [`ChangeReader::end`] gave): the store as it was
    /// at that point, for an export or a copy consistent to it.
    pub fn changes_until(
        &mut self,
        after: &ChangePosition,
        until: &ChangePosition,
        limit: usize,
    ) -> Result<Vec<StoreChange>, Error> {
        if until.shards() != self.logs.len() {
            return Err(Error::Options(format!(
                "the end position names {} shards; this store has {}",
                until.shards(),
                self.logs.len()
            )));
        }
        self.read(Some((after, limit)), Some(until))
            .map(|(changes, _)| changes)
    }

    /// The position up to which every shard can be read now: reading from
    /// the start to it gives every change durable at this moment. `Err`
    /// when a running writer has published no synced mark for some shard
    /// (see [`ChangeReader::waiting`]).
    pub fn end(&mut self) -> Result<ChangePosition, Error> {
        let (_, end) = self.read(None, None)?;
        match self.waiting.first() {
            Some(&shard) => Err(no_synced_mark(shard)),
            None => Ok(end),
        }
    }

    /// Calls `each` with every change after `after` up to `until` (a
    /// position [`ChangeReader::end`] gave), shard after shard, each in
    /// commit order, with the event as the log holds it (nothing copied:
    /// for a reader of a whole store, such as an export). With nobody
    /// beside, the store's lock is held shared for the whole walk. `each`
    /// returns false to stop it.
    pub fn for_each_until(
        &mut self,
        after: &ChangePosition,
        until: &ChangePosition,
        mut each: impl FnMut(ChangeOp, ShardId, EventRef<'_>) -> bool,
    ) -> Result<(), Error> {
        if after.shards() != self.logs.len() || until.shards() != self.logs.len() {
            return Err(Error::Options(format!(
                "the positions name {} and {} shards; this store has {}",
                after.shards(),
                until.shards(),
                self.logs.len()
            )));
        }
        let (views, _, _holder) = self.views(Some(until))?;
        if let Some(&shard) = self.waiting.first() {
            return Err(no_synced_mark(shard));
        }
        let mut going = true;
        for (n, view) in views.iter().enumerate() {
            let Some((snapshot, end)) = view else {
                continue;
            };
            if !going {
                break;
            }
            if after.0[n] >= *end {
                continue;
            }
            crate::wal::scan_changes(snapshot, after.0[n], Some(*end), |change| {
                let op = if change.stored {
                    ChangeOp::Stored
                } else {
                    ChangeOp::Removed
                };
                going = each(op, ShardId(n as u32), change.event);
                going
            })?;
        }
        Ok(())
    }

    /// Takes the view of every shard; with `page`, reads changes from it
    /// (up to `until`). Returns them and where each shard's view ends.
    fn read(
        &mut self,
        page: Option<(&ChangePosition, usize)>,
        until: Option<&ChangePosition>,
    ) -> Result<(Vec<StoreChange>, ChangePosition), Error> {
        let (views, ends, holder) = self.views(until)?;
        let live = matches!(holder, Holder::Running);
        let changes = match page {
            Some((after, limit)) => {
                // Past the end of what can be read: beside a writer, a
                // position its own feed gave can be ahead of the synced
                // mark for a moment; before an `until`, it is simply done.
                let past_end = if live || until.is_some() {
                    PastEnd::Wait
                } else {
                    PastEnd::Refuse
                };
                collect_changes(&views, after, limit, past_end)?
            }
            None => Vec::new(),
        };
        drop(holder);
        Ok((changes, ends))
    }

    /// Each shard's view (none for a shard whose running writer has
    /// published no mark), capped at `until`; where each view ends; and
    /// what the probe of the lock found (holding it shared when nobody has
    /// the store open: keep it while reading the views).
    #[allow(clippy::type_complexity)]
    fn views(
        &mut self,
        until: Option<&ChangePosition>,
    ) -> Result<(Vec<Option<(LogSnapshot, Location)>>, ChangePosition, Holder), Error> {
        let holder = probe_holder(&self.dir)?;
        let live = matches!(holder, Holder::Running);
        self.waiting.clear();
        let mut views = Vec::with_capacity(self.logs.len());
        let mut ends = ChangePosition::start(self.logs.len());
        for (n, log) in self.logs.iter_mut().enumerate() {
            if !live {
                let marker = shard_dir(&self.dir, n as u32).join(REPAIR_MARKER);
                if marker.exists() {
                    return Err(Error::Format {
                        path: marker,
                        reason: "a repair of this shard's log was interrupted; open the store \
                                 (for example `megalith stats`) to finish it, then read the \
                                 changes"
                            .to_string(),
                    });
                }
            }
            match log.view(&*self.storage, live)? {
                LogView::Readable { snapshot, end } => {
                    ends.0[n] = end;
                    let end = until.map_or(end, |until| end.min(until.0[n]));
                    views.push(Some((snapshot, end)));
                }
                LogView::NoMark => {
                    self.waiting.push(ShardId(n as u32));
                    views.push(None);
                }
            }
        }
        Ok((views, ends, holder))
    }

    /// The shards the last [`ChangeReader::changes`] could not read because
    /// their running writer had published no synced mark.
    pub fn waiting(&self) -> &[ShardId] {
        &self.waiting
    }
}

/// The error of a reader that needs every shard's log read to one point
/// while the running writer of `shard` has published no synced mark.
pub(crate) fn no_synced_mark(shard: ShardId) -> Error {
    Error::Options(format!(
        "the process that has the store open has not published how far the log of shard \
         {shard} is synced (it is opening or repairing the store); try again"
    ))
}

fn shard_dir(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("shard-{n:04}"))
}
