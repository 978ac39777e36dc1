//! The writer thread of a shard. It drains every queued request into one
//! group (group commit), decides each event, appends the group's records with
//! one write and at most one fsync, then applies them to the indexes under
//! the write lock, so readers see all of a group or none of it.
//!
//! Ordering: a group reaches the log (and, with `Durability::Always`, the
//! disk) before the indexes change and before any caller hears back. A
//! checkpoint syncs the log before any index meta page names an LSN, so an
//! index is never ahead of the durable log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::compaction::GarbageLedger;
use crate::error::Error;
use crate::event::{EventId, EventRef};
use crate::ids::{Location, Lsn};
use crate::index::{Apply, GroupEntries, IndexKind, IndexSet};
use crate::wal::{
    Batch, BatchFull, FRAME_OVERHEAD, Log, LogWriter, RecordType, RemovePayload, RemoveReason,
    WalError,
};

use super::batch::{GroupState, Removal, WriteOutcome};
use super::deletions::{DeletionTargets, fill as fill_targets};
use super::lookup::Committed;
use super::{Durability, ShardHealth, SharedIndexes};

pub(crate) type WriteReply = Sender<Result<Vec<WriteOutcome>, Error>>;

pub(crate) enum Command {
    /// Encoded payloads (`Event::encode_payload`) of validated events.
    Write {
        payloads: Vec<Vec<u8>>,
        reply: WriteReply,
    },
    Checkpoint {
        reply: Sender<Result<(), Error>>,
    },
    /// Remove these events from the indexes, each with a remove record of
    /// reason `Purged`; replies how many were stored (and so removed).
    Purge {
        ids: Vec<EventId>,
        reply: Sender<Result<usize, Error>>,
    },
    /// Seal the active log segment (for compaction); replies whether one was.
    Seal {
        reply: Sender<Result<bool, Error>>,
    },
    Close {
        reply: Sender<Result<(), Error>>,
    },
}

/// Where the writer announces stored events (the store's commit stream).
pub(crate) trait CommitSink: Send + Sync + std::fmt::Debug {
    /// Someone listens: worth copying the payloads.
    fn active(&self) -> bool;
    /// Called with each group's stored events, in log order, while the
    /// shard's index write lock is held: an event is announced exactly when
    /// it becomes visible to queries.
    fn publish(&self, payloads: Vec<Arc<[u8]>>);
}

/// Where the writer hands each applied group's changes (the store's
/// analytics): after the group is visible to queries.
pub(crate) trait ChangeSink: Send + Sync + std::fmt::Debug {
    /// The group began at `from` in the log and ends at `to`; each change
    /// is (its record's location, added or removed, the event).
    fn apply(&self, from: Location, to: Location, changes: &[crate::analytics::GroupChange<'_>]);
    /// The shard's log was cut and its indexes rebuilt (a recovery in
    /// place): what the sink derived from the log may be gone.
    fn reopened(&self);
}

/// Opens a failed shard again in place: recovery over the log readers share
/// (see `Log::open`), giving a new writer end and indexes, and a note of
/// what recovery did.
pub(crate) type Reopen =
    Arc<dyn Fn(&Arc<Log>) -> Result<(LogWriter, IndexSet, String), Error> + Send + Sync>;

/// Changed nodes after which a merge of the in-memory level writes the
/// trees part-way (see `Writer::merge_levels`): 8 MiB of pages. Measured on
/// the 1M-event trusted import: the store 1.24x the JSON with the merge
/// written at the 65,536-node checkpoint bound, 1.06x with parts of 2,048
/// nodes, in the same time (27.5-32 s).
const MERGE_PART_NODES: usize = 2_048;

/// A full in-memory level is merged into the trees, with the spilled runs,
/// once the level holds at least a `RUN_SHARE`th of what the trees hold;
/// below that it is spilled to a run file (see `Writer::spill_levels`). A
/// merge reaches most leaves of a tree whatever it brings, so merging only
/// a fixed share of the tree keeps its cost per entry flat as the store
/// grows, where merging every full level made it grow with the tree.
const RUN_SHARE: u64 = 4;

/// At most this many `kind_time` entries, the deletion targets are filled
/// on the writer before its first write (several slices of stored
/// deletions at most; tests, and small stores, check against a complete
/// set from the start).
const INLINE_FILL: u64 = 16_384;

/// Primary entries an id filter build reads per hold of the read lock.
const ID_FILTER_SLICE: usize = 16_384;

/// Settings the writer runs with.
#[derive(Clone)]
pub(crate) struct WriterConfig {
    pub durability: Durability,
    pub checkpoint_interval: Duration,
    pub checkpoint_dirty_nodes: usize,
    /// Staged index entries that make the writer merge and checkpoint
    /// (0: entries go into the trees at once).
    pub level_entries: usize,
    /// The smallest id filter, in ids (0: no filter).
    pub id_filter_min: usize,
    /// Keep the set of what stored deletions name (see `DeletionTargets`).
    pub deletion_targets: bool,
    pub max_group_events: usize,
    pub commits: Option<Arc<dyn CommitSink>>,
    pub changes: Option<Arc<dyn ChangeSink>>,
    /// The relay URLs a NIP-62 request to vanish must name (besides
    /// `ALL_RELAYS`) for the shard to honor it.
    pub vanish_relays: Arc<Vec<String>>,
    /// How a failed writer recovers without a restart (`None`: it stays
    /// failed until the store is reopened).
    pub reopen: Option<Reopen>,
    /// The first wait before a failed writer tries to recover; each failed
    /// try doubles it, up to 64 times.
    pub retry_after: Duration,
    /// Where the writer counts the bytes of the events it removes.
    pub garbage: Arc<GarbageLedger>,
}

impl std::fmt::Debug for WriterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterConfig")
            .field("durability", &self.durability)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("checkpoint_dirty_nodes", &self.checkpoint_dirty_nodes)
            .field("level_entries", &self.level_entries)
            .field("id_filter_min", &self.id_filter_min)
            .field("deletion_targets", &self.deletion_targets)
            .field("max_group_events", &self.max_group_events)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

/// Why a writer refuses writes, and when it tries to recover.
#[derive(Debug)]
pub(crate) struct Failed {
    pub why: String,
    pub next_try: Instant,
    pub wait: Duration,
}

pub(crate) struct Writer {
    pub log: LogWriter,
    pub indexes: Arc<SharedIndexes>,
    pub config: WriterConfig,
    pub commands: Receiver<Command>,
    pub failed: Option<Failed>,
    pub health: Arc<Mutex<ShardHealth>>,
    pub last_checkpoint: Instant,
    pub unsynced_since: Option<Instant>,
    /// What the stored deletions could name, filled at the first write.
    pub targets: Arc<DeletionTargets>,
}

/// A record of the group, applied to the indexes once it is in the log.
enum Op<'a> {
    Insert {
        lsn: Lsn,
        location: Location,
        payload: &'a [u8],
    },
    Remove {
        lsn: Lsn,
        target: Location,
        /// Where the remove record is.
        location: Location,
    },
}

impl Writer {
    pub fn run(mut self) {
        self.tend_id_filter();
        let mut deferred = None;
        loop {
            let command = match deferred.take() {
                Some(command) => command,
                None => match self.commands.recv_timeout(self.until_housekeeping()) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => {
                        self.housekeeping();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = self.close();
                        return;
                    }
                },
            };
            match command {
                Command::Write { payloads, reply } => {
                    let mut count = payloads.len();
                    let mut group = vec![(payloads, reply)];
                    while count < self.config.max_group_events {
                        match self.commands.try_recv() {
                            Ok(Command::Write { payloads, reply }) => {
                                count += payloads.len();
                                group.push((payloads, reply));
                            }
                            Ok(other) => {
                                deferred = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_group(group);
                    self.housekeeping();
                }
                Command::Checkpoint { reply } => {
                    let _ = reply.send(self.checkpoint(true));
                }
                Command::Purge { ids, reply } => {
                    let _ = reply.send(self.purge(&ids));
                    self.housekeeping();
                }
                Command::Seal { reply } => {
                    let _ = reply.send(self.seal());
                }
                Command::Close { reply } => {
                    let _ = reply.send(self.close());
                    return;
                }
            }
        }
    }

    fn write_group(&mut self, group: Vec<(Vec<Vec<u8>>, WriteReply)>) {
        self.try_recover();
        self.tend_targets();
        if let Some(failed) = &self.failed {
            for (_, reply) in group {
                let _ = reply.send(Err(Error::Poisoned(failed.why.clone())));
            }
            return;
        }
        let requests: Vec<&[Vec<u8>]> = group
            .iter()
            .map(|(payloads, _)| payloads.as_slice())
            .collect();
        match self.apply_group(&requests) {
            Ok(outcomes) => {
                for ((_, reply), outcomes) in group.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcomes));
                }
            }
            Err((error, wrote)) => {
                let message = self.failed_group(&error, wrote);
                let mut first = Some(error);
                for (_, reply) in group {
                    let error = match first.take() {
                        Some(e) => e,
                        None if self.failed.is_some() => Error::Poisoned(message.clone()),
                        None => Error::Corrupt(message.clone()),
                    };
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    /// Returns each request's outcomes; on error, also whether any record was written.
    fn apply_group(
        &mut self,
        requests: &[&[Vec<u8>]],
    ) -> Result<Vec<Vec<WriteOutcome>>, (Error, bool)> {
        let mut ops = Vec::new();
        let mut wrote = false;
        let from = self.log.end();
        let mut outcomes = Vec::with_capacity(requests.len());
        let last = {
            let indexes = Arc::clone(&self.indexes);
            let indexes = indexes.read();
            let snapshot = self.log.log().snapshot();
            let committed = Committed {
                indexes: &indexes,
                log: &snapshot,
                targets: self.config.deletion_targets.then_some(&*self.targets),
            };
            let mut state = GroupState::new(Arc::clone(&self.config.vanish_relays));
            let mut batch = Some(self.log.batch().map_err(|e| (e.into(), false))?);
            let log = &mut self.log;
            for payloads in requests {
                let mut request_outcomes = Vec::with_capacity(payloads.len());
                for payload in *payloads {
                    let event = EventRef::parse(payload).map_err(|e| (e.into(), wrote))?;
                    // An event and the remove records it causes go into one
                    // batch, so a crash keeps both or neither (never a new
                    // version beside the one it replaced).
                    make_room(log, &mut batch, &mut wrote, records_bound(&event, payload))
                        .map_err(|e| (e, wrote))?;
                    let mut store = || -> Result<Location, Error> {
                        let (lsn, location) =
                            push(log, &mut batch, &mut wrote, RecordType::Event, payload)?;
                        ops.push(Op::Insert {
                            lsn,
                            location,
                            payload,
                        });
                        Ok(location)
                    };
                    let mut removals = Vec::new();
                    let mut remove = |removal: Removal| -> Result<(), Error> {
                        removals.push(removal);
                        Ok(())
                    };
                    let outcome = state
                        .decide(&committed, &event, &mut store, &mut remove)
                        .map_err(|e| (e, wrote))?;
                    for removal in removals {
                        let payload = removal.payload();
                        let (lsn, location) =
                            push(log, &mut batch, &mut wrote, RecordType::Remove, &payload)
                                .map_err(|e| (e, wrote))?;
                        ops.push(Op::Remove {
                            lsn,
                            target: removal.target,
                            location,
                        });
                    }
                    request_outcomes.push(outcome);
                }
                outcomes.push(request_outcomes);
            }
            batch
        };
        self.finish_group(last, from, &ops)?;
        Ok(outcomes)
    }

    /// Ends a group: commits its last batch, then installs what the group
    /// wrote (see [`Writer::install`]).
    fn finish_group(
        &mut self,
        last: Option<Batch>,
        from: Location,
        ops: &[Op<'_>],
    ) -> Result<(), (Error, bool)> {
        if let Some(batch) = last
            && !batch.is_empty()
        {
            self.log
                .commit(batch, false)
                .map_err(|e| (e.into(), true))?;
        }
        if !ops.is_empty() {
            self.install(from, ops)?;
        }
        Ok(())
    }

    /// After a group that failed: once anything of it reached the log,
    /// memory and disk may disagree, so further writes are refused until a
    /// reopen replays. Returns the error's message.
    fn failed_group(&mut self, error: &Error, wrote: bool) -> String {
        let message = error.to_string();
        if wrote || self.log.is_poisoned() {
            self.fail(message.clone(), short_cause(error));
        }
        message
    }

    /// Removes the events `ids` names that are stored, each with a remove
    /// record of reason `Purged`, as one group: a crash keeps all of its
    /// records or a prefix, and replay repeats what it keeps.
    fn purge(&mut self, ids: &[EventId]) -> Result<usize, Error> {
        self.try_recover();
        if let Some(failed) = &self.failed {
            return Err(Error::Poisoned(failed.why.clone()));
        }
        match self.apply_purge(ids) {
            Ok(removed) => Ok(removed),
            Err((error, wrote)) => {
                self.failed_group(&error, wrote);
                Err(error)
            }
        }
    }

    fn apply_purge(&mut self, ids: &[EventId]) -> Result<usize, (Error, bool)> {
        let mut ops = Vec::new();
        let mut wrote = false;
        let from = self.log.end();
        let last = {
            let indexes = Arc::clone(&self.indexes);
            let indexes = indexes.read();
            let mut targets = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(location) = indexes.find_id(id).map_err(|e| (e.into(), false))? {
                    targets.push((location, *id));
                }
            }
            targets.sort_unstable();
            targets.dedup_by_key(|(location, _)| *location);
            let mut batch = Some(self.log.batch().map_err(|e| (e.into(), false))?);
            let log = &mut self.log;
            for (target, target_id) in targets {
                let payload = Removal {
                    target,
                    target_id,
                    reason: RemoveReason::Purged,
                }
                .payload();
                make_room(
                    log,
                    &mut batch,
                    &mut wrote,
                    FRAME_OVERHEAD + RemovePayload::LEN,
                )
                .map_err(|e| (e, wrote))?;
                let (lsn, location) =
                    push(log, &mut batch, &mut wrote, RecordType::Remove, &payload)
                        .map_err(|e| (e, wrote))?;
                ops.push(Op::Remove {
                    lsn,
                    target,
                    location,
                });
            }
            batch
        };
        self.finish_group(last, from, &ops)?;
        Ok(ops.len())
    }

    /// Makes a group whose records `ops` are in the log (from `from`) as
    /// durable as the settings ask, then applies it to the indexes and hands
    /// it to the commit stream and the change sink.
    fn install(&mut self, from: Location, ops: &[Op<'_>]) -> Result<(), (Error, bool)> {
        match self.config.durability {
            Durability::Always => self.log.sync().map_err(|e| (e.into(), true))?,
            Durability::Batch(_) | Durability::Never => {
                self.unsynced_since.get_or_insert_with(Instant::now);
            }
        }
        let snapshot = self.log.log().snapshot();
        // Copies of the stored events for the commit stream, if anyone listens.
        let live: Option<Vec<Arc<[u8]>>> = self
            .config
            .commits
            .as_ref()
            .filter(|sink| sink.active())
            .map(|_| {
                ops.iter()
                    .filter_map(|op| match op {
                        Op::Insert { payload, .. } => Some(Arc::from(*payload)),
                        Op::Remove { .. } => None,
                    })
                    .collect()
            });
        // The group's entries are gathered before the write lock is taken,
        // then applied per index in key order (see `IndexSet::apply_group`).
        let mut group = GroupEntries::default();
        // The group's changes for the analytics, parsed once with the
        // index entries (a second parse cost 2 µs an event).
        let mut changes: Vec<crate::analytics::GroupChange<'_>> = Vec::new();
        let feed = self.config.changes.is_some();
        {
            let indexes = self.indexes.read();
            for op in ops {
                let result = match *op {
                    Op::Insert {
                        lsn,
                        location,
                        payload,
                    } => EventRef::parse(payload).map_err(Error::from).map(|event| {
                        indexes.collect(Apply::Insert, &event, location, lsn, &mut group);
                        if feed {
                            changes.push((location, true, event));
                        }
                    }),
                    Op::Remove {
                        lsn,
                        target,
                        location,
                    } => snapshot
                        .read_event_and_len(target)
                        .map_err(Error::from)
                        .map(|(event, bytes)| {
                            self.config.garbage.add(target.segment, bytes);
                            indexes.collect(Apply::Remove, &event, target, lsn, &mut group);
                            if feed {
                                changes.push((location, false, event));
                            }
                        }),
                };
                result.map_err(|e| (e, true))?;
            }
        }
        let mut indexes = self.indexes.write();
        indexes
            .apply_group(group, self.config.level_entries > 0)
            .map_err(|e| (e.into(), true))?;
        // Readers that began before this group skip its entries.
        indexes.applied_end = self.log.end();
        if let (Some(sink), Some(live)) = (&self.config.commits, live) {
            sink.publish(live);
        }
        drop(indexes);
        if let Some(sink) = &self.config.changes {
            sink.apply(from, self.log.end(), &changes);
        }
        Ok(())
    }

    /// Refuses writes from now on, with `why` (and `cause`, the same
    /// without paths), until a recovery works.
    fn fail(&mut self, why: String, cause: String) {
        let wait = match &self.failed {
            Some(failed) => (failed.wait * 2).min(self.config.retry_after * 64),
            None => self.config.retry_after,
        };
        let mut health = self.health.lock();
        if health.writable {
            health.writable = false;
            health.failed_since = Some(std::time::SystemTime::now());
        }
        health.problem = Some(why.clone());
        health.cause = Some(cause);
        drop(health);
        self.failed = Some(Failed {
            why,
            next_try: Instant::now() + wait,
            wait,
        });
    }

    /// When the writer has failed and its wait is over, opens the shard again
    /// in place: the log is cut back to what can be trusted (see
    /// `LogWriter::cut_for_reopen`) and recovered like at open, with the
    /// index write lock held so no reader sees the change half done. A cause
    /// that has cleared (space freed on a full disk) lets writes go on
    /// without a restart; otherwise the next try waits twice as long.
    fn try_recover(&mut self) {
        let Some(failed) = &self.failed else {
            return;
        };
        let Some(reopen) = self.config.reopen.clone() else {
            return;
        };
        if Instant::now() < failed.next_try {
            return;
        }
        let indexes = Arc::clone(&self.indexes);
        let mut indexes = indexes.write();
        let outcome = self
            .log
            .cut_for_reopen()
            .map_err(Error::from)
            .and_then(|cut| reopen(self.log.log()).map(|opened| (cut, opened)));
        match outcome {
            Ok((cut, (log, fresh, note))) => {
                indexes.set = fresh;
                indexes.applied_end = log.end();
                // Queries that began before this cannot resume (their
                // places may have been cut): they fail and are asked again.
                indexes.epoch += 1;
                drop(indexes);
                if let Some(sink) = &self.config.changes {
                    sink.reopened();
                }
                self.log = log;
                self.failed = None;
                self.unsynced_since = None;
                self.last_checkpoint = Instant::now();
                let mut health = self.health.lock();
                health.writable = true;
                health.problem = None;
                health.cause = None;
                health.failed_since = None;
                health.recoveries += 1;
                health.last_recovery = Some(format!(
                    "writes resumed after a failure; {cut} unsynced records were cut; {note}"
                ));
            }
            Err(error) => {
                drop(indexes);
                let why = format!("{} (recovery failed: {error})", failed.why);
                self.fail(why, short_cause(&error));
            }
        }
    }

    fn until_housekeeping(&self) -> Duration {
        let mut wait = self
            .config
            .checkpoint_interval
            .saturating_sub(self.last_checkpoint.elapsed());
        if let Some(failed) = &self.failed {
            wait = wait.min(failed.next_try.saturating_duration_since(Instant::now()));
        }
        if let (Durability::Batch(interval), Some(since)) =
            (self.config.durability, self.unsynced_since)
        {
            wait = wait.min(interval.saturating_sub(since.elapsed()));
        }
        wait.max(Duration::from_millis(1))
    }

    fn housekeeping(&mut self) {
        self.try_recover();
        if self.failed.is_some() {
            return;
        }
        self.tend_id_filter();
        if let (Durability::Batch(interval), Some(since)) =
            (self.config.durability, self.unsynced_since)
            && since.elapsed() >= interval
        {
            match self.log.sync() {
                Ok(()) => self.unsynced_since = None,
                Err(e) => {
                    let cause = short_cause(&e);
                    self.fail(e.to_string(), cause);
                }
            }
        }
        let (dirty, staged) = {
            let indexes = self.indexes.read();
            (indexes.dirty_nodes(), indexes.memory_len())
        };
        let due = self.last_checkpoint.elapsed() >= self.config.checkpoint_interval;
        if dirty >= self.config.checkpoint_dirty_nodes
            || self.level_full(staged)
            || (dirty > 0 && due)
        {
            // A failure poisons the writer (see `checkpoint`) and reaches
            // the next caller.
            let _ = self.checkpoint(false);
        } else if due {
            // Nothing to write: the next housekeeping is an interval away,
            // not a millisecond (an idle store woke its writers 1,000
            // times a second once the interval had passed).
            self.last_checkpoint = Instant::now();
        }
    }

    /// Makes the indexes durable through the last committed record (with
    /// `merge`, or when the in-memory level is full; otherwise the indexes
    /// with staged entries keep their checkpoint LSN). Any
    /// failure poisons the writer: a meta page may have become durable
    /// without memory knowing (see `BTree::prepare_checkpoint`), so only a
    /// reopen, which reads what is on disk, can continue safely.
    fn seal(&mut self) -> Result<bool, Error> {
        if let Some(failed) = &self.failed {
            return Err(Error::Poisoned(failed.why.clone()));
        }
        let result = self.log.seal().map_err(Error::from);
        if let Err(error) = &result {
            self.fail(
                format!("sealing the log segment failed: {error}"),
                short_cause(error),
            );
        }
        result
    }

    fn checkpoint(&mut self, merge: bool) -> Result<(), Error> {
        if let Some(failed) = &self.failed {
            return Err(Error::Poisoned(failed.why.clone()));
        }
        let result = self.write_checkpoint(merge);
        if let Err(error) = &result {
            self.fail(format!("checkpoint failed: {error}"), short_cause(error));
        }
        result
    }

    fn write_checkpoint(&mut self, merge: bool) -> Result<(), Error> {
        // WAL rule: the log must be durable through the LSN a meta page (or
        // a run file) names.
        self.log.sync()?;
        self.unsynced_since = None;
        let (staged, memory, trees) = {
            let indexes = self.indexes.read();
            let (staged, trees) = indexes.level_and_tree_entries();
            (staged, indexes.memory_len(), trees)
        };
        let full = self.level_full(memory);
        let merge_due = merge && staged > 0
            || full
                && (self.config.level_entries == 0 || staged.saturating_mul(RUN_SHARE) >= trees);
        if merge_due {
            self.merge_levels()?;
        }
        self.write_trees(false)?;
        if full && !merge_due {
            self.spill_levels()?;
        }
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Writes the in-memory level of each random-order index to a run file
    /// (see `index::levelfile`), chained after the runs before it, then
    /// merges neighbouring runs into one file while the older holds at
    /// most as many entries as the newer. The log is synced through
    /// what they cover, and the trees are checkpointed (their stamps name
    /// durable trees). A file is written and synced with no lock held;
    /// readers wait only while the level takes it in place of what it
    /// holds.
    fn spill_levels(&mut self) -> Result<(), Error> {
        let covered = (self.log.last_lsn(), self.log.end());
        let (storage, dir) = self.indexes.read().run_io();
        let mut jobs = self.indexes.read().spill_jobs(covered);
        while !jobs.is_empty() {
            for (kind, job) in jobs {
                let bytes = crate::index::write_run(&*storage, &dir, &job)?;
                let replaced = self.indexes.write().adopt_run(kind, &job, bytes);
                crate::index::remove_runs(&*storage, &dir, &replaced)?;
            }
            jobs = self.indexes.read().run_merge_jobs();
        }
        Ok(())
    }

    /// Whether the in-memory level is due to be merged into the trees: it
    /// holds `Options::level_entries` entries, or any when staging is off
    /// (replay stages all the same). A level below its budget is not merged
    /// by the background checkpoints (every `checkpoint_interval` or
    /// `checkpoint_dirty_nodes`): its trees keep their checkpoint LSN, and
    /// after a crash replay stages the records after it again from the
    /// log. A merge writes every leaf it reaches, and a small level spread
    /// over a big tree reaches nearly every leaf for few entries: merged
    /// every 30 s, a relay taking a thousand events a second into a 10M
    /// store rewrote most of its random-order leaves twice a minute. Close
    /// and explicit checkpoints merge it, so a clean open replays nothing.
    fn level_full(&self, staged: usize) -> bool {
        staged > 0 && (self.config.level_entries == 0 || staged >= self.config.level_entries)
    }

    /// Merges the staged entries into the trees, a slice at a time under
    /// the write lock (readers go on between slices and always see every
    /// entry, staged or merged). Every [`MERGE_PART_NODES`] changed nodes,
    /// the trees are written part-way at the LSN their checkpoints already
    /// hold: they then hold some entries past it, which replay after a
    /// crash adds (or removes) again with no effect. Written in parts, the
    /// pages one part frees are reused by the next: a merge that rewrites
    /// most of a tree grows its file by a part, not by a second tree.
    fn merge_levels(&mut self) -> Result<(), Error> {
        // Entries merged per hold of the write lock: a few milliseconds'
        // worth, and an eighth of the level at most (so a small level, as
        // the crash tests use, is merged in several slices too).
        let slice = (self.config.level_entries / 8).clamp(1, 16_384);
        loop {
            let left = self.indexes.write().merge_levels(slice)?;
            if left == 0 {
                return Ok(());
            }
            let part = MERGE_PART_NODES.min(self.config.checkpoint_dirty_nodes);
            if self.indexes.read().dirty_nodes() >= part {
                self.write_trees(true)?;
            }
        }
    }

    /// Checkpoints every index: through the log's last record (synced by
    /// the caller), or with `keep_lsn`, at the LSN each already holds (a
    /// merge written part-way). An index with staged entries always keeps
    /// its LSN: the level is not durable, the log is.
    fn write_trees(&mut self, keep_lsn: bool) -> Result<(), Error> {
        let lsn = self.log.last_lsn();
        let position = self.log.end();
        // Tree by tree, each installed as soon as it is durable: readers see
        // the same entries before and after, only read from other places.
        let kinds: Vec<IndexKind> = self.indexes.read().kinds().collect();
        for kind in kinds {
            let prepared = {
                let indexes = self.indexes.read();
                let (lsn, position) = if keep_lsn || indexes.tree(kind).level_len() > 0 {
                    let meta = indexes.tree(kind).meta();
                    (meta.checkpoint_lsn, meta.checkpoint_position)
                } else {
                    (lsn, position)
                };
                indexes.prepare_checkpoint(kind, lsn, position)?
            };
            if let Some(prepared) = prepared {
                self.indexes.write().install(kind, prepared)?;
            }
        }
        Ok(())
    }

    /// Starts the one fill of the deletion targets (see `DeletionTargets`):
    /// on a thread of its own that scans `kind_time` in slices under the
    /// read lock, or here when the index is small (so small stores, as the
    /// tests use, check against a complete set from their first write).
    fn tend_targets(&mut self) {
        if !self.config.deletion_targets || !self.targets.claim_fill() || self.targets.is_complete()
        {
            return;
        }
        let small = {
            let indexes = self.indexes.read();
            !indexes.has(IndexKind::KindTime)
                || indexes.tree(IndexKind::KindTime).entry_count() <= INLINE_FILL
        };
        if small {
            fill_targets(&self.indexes, self.log.log(), &self.targets);
            return;
        }
        let (indexes, log, targets) = (
            Arc::clone(&self.indexes),
            Arc::clone(self.log.log()),
            Arc::clone(&self.targets),
        );
        // Without the thread the set stays incomplete: every check seeks.
        let _ = std::thread::Builder::new()
            .name("megalith-deletions".into())
            .spawn(move || fill_targets(&indexes, &log, &targets));
    }

    /// Puts a built id filter in use, or starts building one (see
    /// `IndexSet::id_filter_job`) on a thread of its own that scans the
    /// primary index in slices under the read lock.
    fn tend_id_filter(&mut self) {
        if self.config.id_filter_min == 0 {
            // Turned off: not even the one a clean close saved is used.
            if self.indexes.read().id_filter().is_some() {
                self.indexes.write().drop_id_filter();
            }
            return;
        }
        if !self.indexes.read().id_filter_due() {
            return;
        }
        let (job, epoch) = {
            let mut indexes = self.indexes.write();
            (
                indexes.id_filter_job(self.config.id_filter_min),
                indexes.epoch,
            )
        };
        let Some(filter) = job else {
            return;
        };
        let primary = self.indexes.read().tree(IndexKind::Primary).entry_count();
        if primary <= ID_FILTER_SLICE as u64 {
            // One slice: scanned here, with no thread to start, and in use
            // from the next turn whatever the machine's load (a thread
            // made whether a close saved the filter, and so the I/O
            // operations the crash tests count, depend on timing).
            fill_id_filter(&self.indexes, epoch, &filter);
            return;
        }
        let indexes = Arc::clone(&self.indexes);
        // Without the thread there is no filter: look-ups descend the
        // primary index, as they do without one.
        let building = Arc::clone(&filter);
        if std::thread::Builder::new()
            .name("megalith-id-filter".into())
            .spawn(move || fill_id_filter(&indexes, epoch, &building))
            .is_err()
        {
            filter.abandon();
        }
    }

    /// Checkpoints the trees (the time-ordered ones through the log's
    /// end) and spills the random-order indexes' in-memory levels to run
    /// files instead of merging them: a merge reaches most leaves of a big
    /// tree however few entries it brings, and a small import into a big
    /// store spent most of its time there. The next open takes the runs
    /// back (see `IndexSet::load_runs`), or replays their records.
    fn close(&mut self) -> Result<(), Error> {
        self.indexes.close();
        self.checkpoint(false)?;
        // A failure loses nothing: a run file is written whole or not at
        // all, and the log holds what it covers. The caller hears it,
        // after the log is closed all the same.
        let covered = (self.log.last_lsn(), self.log.end());
        let levels = self.spill_levels();
        // A failure here loses nothing (the pages stay allocated, and are
        // reused by the next checkpoint), but the device said no: the
        // caller hears it, after the log is closed all the same.
        let released = self.indexes.read().release_free_pages();
        // A failed save loses nothing: the next open builds the filter by
        // a scan. The caller hears it all the same.
        let saved = self.indexes.write().save_id_filter(covered.0);
        // Like the id filter: a failed save loses nothing (the next open
        // fills the set by a scan), and the caller hears it.
        let (storage, dir) = self.indexes.read().run_io();
        let targets = super::deletions::save(&*storage, &dir, covered.0, covered.1, &self.targets);
        self.log.close()?;
        levels?;
        released?;
        saved?;
        targets?;
        Ok(())
    }
}

/// Fills `filter` from the primary index, a slice at a time under the read
/// lock, and marks it complete; gives up when the shard closes or reopens
/// in place (a new filter is built for the new indexes) or the index
/// cannot be read (look-ups then go on without a filter).
fn fill_id_filter(indexes: &SharedIndexes, epoch: u64, filter: &crate::index::IdFilter) {
    let mut from = Vec::new();
    loop {
        let indexed = indexes.read();
        if indexed.epoch != epoch || indexes.is_closed() {
            return;
        }
        match indexed.fill_id_filter(filter, &from, ID_FILTER_SLICE) {
            Ok(Some(next)) => from = next,
            Ok(None) => {
                filter.set_complete();
                return;
            }
            // The index cannot be read: queries and writes will say so; the
            // writer stops adding to this filter and tries another build
            // (a few times at most).
            Err(_) => {
                filter.abandon();
                return;
            }
        }
    }
}

/// What made a write fail, in a few words and without file paths: the
/// operating system's message when an I/O call failed.
fn short_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.to_string();
        }
        current = e.source();
    }
    "a write to the store failed".to_string()
}

/// The most bytes an event's records can take in a batch: its own frame and
/// a remove frame for everything it can remove (a replaced version, or one
/// target per tag of a deletion).
fn records_bound(event: &EventRef<'_>, payload: &[u8]) -> usize {
    let removals = 1 + event.tags().count();
    FRAME_OVERHEAD + payload.len() + removals * (FRAME_OVERHEAD + RemovePayload::LEN)
}

/// Commits the current batch and starts another when it has less than
/// `needed` bytes of room.
fn make_room(
    log: &mut LogWriter,
    batch: &mut Option<Batch>,
    wrote: &mut bool,
    needed: usize,
) -> Result<(), Error> {
    if let Some(current) = batch
        && !current.is_empty()
        && current.room() < needed
        && let Some(full) = batch.take()
    {
        *wrote = true;
        log.commit(full, false)?;
    }
    if batch.is_none() {
        *batch = Some(log.batch()?);
    }
    Ok(())
}

/// Appends a record to the current batch, committing the batch and starting
/// another when it is full (`make_room` keeps that from splitting an event
/// from its removals; this only meets a record larger than a whole batch).
fn push(
    log: &mut LogWriter,
    batch: &mut Option<Batch>,
    wrote: &mut bool,
    record_type: RecordType,
    payload: &[u8],
) -> Result<(Lsn, Location), Error> {
    let current = match batch {
        Some(b) => b,
        None => batch.insert(log.batch()?),
    };
    match current.push(record_type, payload) {
        Ok(placed) => Ok(placed),
        Err(BatchFull) => {
            if current.is_empty() {
                return Err(WalError::RecordTooLarge { len: payload.len() }.into());
            }
            if let Some(full) = batch.take() {
                *wrote = true;
                log.commit(full, false)?;
            }
            let fresh = batch.insert(log.batch()?);
            fresh
                .push(record_type, payload)
                .map_err(|BatchFull| WalError::RecordTooLarge { len: payload.len() }.into())
        }
    }
}
