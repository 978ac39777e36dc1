//! Opening a shard: the log's end is found (a torn tail is cut, damage is
//! refused or repaired), each index opens at its newest valid checkpoint (a
//! broken one starts afresh), and the log is replayed from the oldest
//! checkpoint so every index catches up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, io_error};
use crate::event::{EventId, EventRef};
use crate::ids::{Location, Lsn, ShardId};
use crate::index::{Apply, IndexSet};
use crate::storage::Storage;
use crate::wal::{
    DamagedRange, FrameError, Log, LogDamage, LogWriter, REPAIR_MARKER, RecordType, RemovePayload,
    SEGMENT_HEADER_LEN, WalError, examine_after, lost_lsns, quarantine, quarantine_path, scan_log,
};

/// What opening a store does when the log does not end cleanly.
///
/// A *torn tail* is a bad frame with nothing valid after it that proves it
/// was ever synced: what a crash during a write leaves, never acknowledged
/// as durable. *Damage* is a bad frame that a later valid record (or the
/// sealing of its segment, or an index checkpoint) proves was synced:
/// cutting there would lose acknowledged records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Cut a torn tail at the last whole batch and report the file and
    /// offset; refuse damage, naming the file, the offset and how many
    /// valid records follow, and change nothing. The default.
    #[default]
    TolerateCorruptTail,
    /// Refuse a torn tail as well as damage, and change nothing.
    Strict,
    /// Cut a torn tail; repair damage: move each damaged range to a
    /// quarantine file beside the log, keep every valid record, rebuild the
    /// shard's indexes and re-apply the removals the damaged batches owed.
    /// What was lost is in [`RecoveryReport::log_repairs`].
    Repair,
}

impl RecoveryMode {
    /// The mode's name on command lines and in config files.
    pub fn name(self) -> &'static str {
        match self {
            RecoveryMode::TolerateCorruptTail => "tolerate-torn-tail",
            RecoveryMode::Strict => "strict",
            RecoveryMode::Repair => "repair",
        }
    }

    /// Parses [`RecoveryMode::name`].
    pub fn parse(name: &str) -> Option<RecoveryMode> {
        [
            RecoveryMode::TolerateCorruptTail,
            RecoveryMode::Strict,
            RecoveryMode::Repair,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// One damaged range of a log that a repair moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRepair {
    pub shard: ShardId,
    /// The segment file and the damaged range in it.
    pub segment: PathBuf,
    pub offset: u64,
    pub len: u64,
    /// Where the damaged bytes are now, untouched.
    pub quarantine: PathBuf,
    /// What was wrong.
    pub reason: String,
    /// The LSNs of the records lost with the range (first, last), when the
    /// record after it is in the same segment.
    pub lost_lsns: Option<(Lsn, Lsn)>,
    /// Ids of the events still readable in the damaged bytes (their
    /// checksums fail, so they are unverified).
    pub lost_event_ids: Vec<EventId>,
}

impl std::fmt::Display for LogRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes at offset {} of {} ({}) moved to {}",
            self.len,
            self.offset,
            self.segment.display(),
            self.reason,
            self.quarantine.display()
        )?;
        if let Some((first, last)) = self.lost_lsns {
            let records = last.0 - first.0 + 1;
            write!(f, "; lost LSNs {first}..={last} ({records} records)")?;
        }
        if !self.lost_event_ids.is_empty() {
            let ids: Vec<String> = self.lost_event_ids.iter().map(EventId::to_hex).collect();
            write!(f, "; events readable in them: {}", ids.join(", "))?;
        }
        Ok(())
    }
}

/// How far replay has come, for a progress display while opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayProgress {
    pub shard: ShardId,
    /// Log bytes replayed so far, of `total_bytes` to replay in this shard.
    pub replayed_bytes: u64,
    pub total_bytes: u64,
    /// Records applied so far.
    pub records: u64,
}

/// Called during replay, with progress roughly every 4 MiB of log.
pub type ProgressFn = std::sync::Arc<dyn Fn(ReplayProgress) + Send + Sync>;

/// Log bytes between two progress calls.
const PROGRESS_EVERY: u64 = 4 << 20;

/// What opening the store found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The store was not closed cleanly last time.
    pub unclean_shutdown: bool,
    /// Log records applied to the indexes on open.
    pub replayed_records: u64,
    /// Torn or incomplete log tails that were cut, with file and offset.
    pub tail_repairs: Vec<String>,
    /// Index files that were started afresh and rebuilt from the log, and why.
    pub rebuilt_indexes: Vec<String>,
    /// The store was of an older format, `(from, to)`: its manifest now says
    /// `to`, and the indexes whose entries changed were rebuilt from the log
    /// (named in `rebuilt_indexes`).
    pub format_migration: Option<(u32, u32)>,
    /// Damaged log ranges moved to quarantine files ([`RecoveryMode::Repair`]).
    pub log_repairs: Vec<LogRepair>,
    /// Remove records written after a repair: removals that records lost to
    /// damage had made (a replaced version, what a deletion named).
    pub removals_reapplied: u64,
    /// Shards whose id filter came from the file the last clean close saved
    /// (the others build theirs by a scan of the primary index, in the
    /// background).
    pub id_filters_loaded: u32,
    /// Run files of the random-order indexes' levels (spilled when the
    /// in-memory level was full, and at a clean close) this open took
    /// back, instead of replaying the records they hold (see
    /// `docs/recovery.md`, "Spilled runs").
    pub levels_loaded: u32,
}

/// A shard as recovery leaves it.
pub(crate) struct OpenedShard {
    pub log: LogWriter,
    pub indexes: IndexSet,
    /// After a repair: the event records of the damaged batches, whose
    /// removals must be re-applied before the repair is finished.
    pub repair_scope: Option<Vec<Location>>,
}

/// What opening a shard needs.
#[derive(Clone)]
pub(crate) struct ShardParams {
    pub storage: Arc<dyn Storage>,
    /// The shard's directory (`shard-NNNN`).
    pub dir: PathBuf,
    pub shard: ShardId,
    pub segment_size: u64,
    pub mode: RecoveryMode,
    /// The store keeps the term_time index.
    pub search: bool,
    /// Check every record of every segment first (not only what replay
    /// reads), so damage anywhere is refused or, in `Repair` mode, repaired.
    pub scan_whole_log: bool,
    pub progress: Option<ProgressFn>,
    /// Entries replay stages in the in-memory level before it merges them
    /// into the trees (`Options::level_entries`; 0 merges after every record).
    pub level_entries: usize,
}

/// Recovers one shard's log and indexes. With `existing`, the log readers
/// share is opened again in place (see `Log::open`).
pub(crate) fn open_shard(
    params: &ShardParams,
    existing: Option<&Arc<Log>>,
    report: &mut RecoveryReport,
) -> Result<OpenedShard, Error> {
    let ShardParams {
        storage,
        dir,
        shard,
        segment_size,
        mode,
        search,
        scan_whole_log,
        progress,
        level_entries,
    } = params;
    let (dir, shard, segment_size, mode, search) =
        (dir.as_path(), *shard, *segment_size, *mode, *search);
    let (scan_whole_log, progress) = (*scan_whole_log, progress.as_ref());
    let storage = Arc::clone(storage);
    let log_dir = dir.join("log");
    let mut repaired = false;
    loop {
        let mut indexes = IndexSet::open(
            Arc::clone(&storage),
            &dir.join("index"),
            search,
            &mut report.rebuilt_indexes,
        )?;
        let durable = indexes
            .newest_checkpoint()
            .map_or(Lsn::ZERO, |(_, lsn)| lsn);
        if scan_whole_log && !repaired {
            let damage = scan_log(&*storage, &log_dir, shard, durable)?;
            if let Some(first) = damage.first() {
                if mode != RecoveryMode::Repair {
                    return Err(first.refusal().into());
                }
                repair(&*storage, dir, shard, &damage, report)?;
                repaired = true;
                continue;
            }
        }
        let marker = dir.join(REPAIR_MARKER);
        let pending = storage.exists(&marker).map_err(io_error(&marker, "stat"))?;
        if pending {
            report.rebuilt_indexes.push(format!(
                "every index of shard {shard}: a repair of its log is being finished"
            ));
            indexes.restart_all()?;
        }
        let opened = Log::open(
            Arc::clone(&storage),
            &log_dir,
            shard,
            segment_size,
            indexes.newest_checkpoint(),
            mode == RecoveryMode::Strict,
            existing,
        );
        let writer = match opened {
            Ok((_, writer, tail)) => {
                if let Some(tail) = tail {
                    report.tail_repairs.push(format!(
                        "{} at offset {}: {}",
                        tail.path.display(),
                        tail.offset,
                        tail.reason
                    ));
                }
                writer
            }
            // A damaged segment header is refused as `Corrupt` when the
            // segment is opened: the scan finds it as damage too (and
            // rewrites it). Whatever the scan does not count as damage is
            // refused again on the next pass.
            Err(WalError::Damaged(_) | WalError::Corrupt { .. })
                if mode == RecoveryMode::Repair && !repaired =>
            {
                repair_whole_log(&*storage, dir, shard, durable, report)?;
                repaired = true;
                continue;
            }
            Err(other) => return Err(other.into()),
        };
        // An index that claims records the log no longer has cannot be trusted.
        let last_lsn = writer.last_lsn();
        let ahead: Vec<_> = indexes
            .checkpoints()
            .filter(|(_, lsn)| *lsn > last_lsn)
            .collect();
        for (kind, lsn) in ahead {
            report.rebuilt_indexes.push(format!(
                "{}: checkpoint at LSN {lsn} is past the log's end ({last_lsn})",
                kind.name()
            ));
            indexes.reset(kind)?;
        }
        // After a repair the indexes were restarted, and their run files
        // removed with them.
        report.levels_loaded += indexes.load_runs(last_lsn)?;
        match replay(shard, &writer, &mut indexes, progress, *level_entries) {
            Ok(replayed) => {
                report.replayed_records += replayed.records;
                report.id_filters_loaded += u32::from(indexes.id_filter_loaded());
                return Ok(OpenedShard {
                    log: writer,
                    indexes,
                    repair_scope: pending.then_some(replayed.repair_scope),
                });
            }
            Err(Error::Wal(WalError::Damaged(_))) if mode == RecoveryMode::Repair && !repaired => {
                drop(writer);
                repair_whole_log(&*storage, dir, shard, durable, report)?;
                repaired = true;
            }
            Err(other) => return Err(other),
        }
    }
}

/// Scans the whole log of the shard in `dir` and repairs what it finds.
fn repair_whole_log(
    storage: &dyn Storage,
    dir: &Path,
    shard: ShardId,
    durable: Lsn,
    report: &mut RecoveryReport,
) -> Result<(), Error> {
    let damage = scan_log(storage, &dir.join("log"), shard, durable)?;
    repair(storage, dir, shard, &damage, report)
}

/// Moves every damaged range aside (see `wal::repair`) and reports it.
fn repair(
    storage: &dyn Storage,
    dir: &Path,
    shard: ShardId,
    damage: &[DamagedRange],
    report: &mut RecoveryReport,
) -> Result<(), Error> {
    if damage.is_empty() {
        return Ok(());
    }
    let repairs: Vec<LogRepair> = damage
        .iter()
        .map(|range| LogRepair {
            shard,
            segment: range.path.clone(),
            offset: range.start,
            len: range.end - range.start,
            quarantine: quarantine_path(dir, range),
            reason: range.reason.clone(),
            lost_lsns: lost_lsns(range),
            lost_event_ids: range.readable_ids.iter().map(|id| EventId(*id)).collect(),
        })
        .collect();
    let marker: String = repairs.iter().map(|r| format!("{r}\n")).collect();
    quarantine(storage, dir, shard, damage, &marker)?;
    report.log_repairs.extend(repairs);
    Ok(())
}

/// Ends a repair once the removals its damaged batches owed are in the log:
/// checkpoints every index, then removes the shard's marker.
pub(crate) fn finish_repair(
    storage: &dyn Storage,
    dir: &Path,
    log: &mut LogWriter,
    indexes: &mut IndexSet,
) -> Result<(), Error> {
    log.sync()?;
    // Every index is checkpointed through the log's end: what replay
    // staged goes into the trees first.
    indexes.merge_levels(usize::MAX)?;
    let (lsn, position) = (log.last_lsn(), log.end());
    let kinds: Vec<_> = indexes.kinds().collect();
    for kind in kinds {
        if let Some(prepared) = indexes.prepare_checkpoint(kind, lsn, position)? {
            indexes.install(kind, prepared)?;
        }
    }
    let marker = dir.join(REPAIR_MARKER);
    storage
        .remove_file(&marker)
        .map_err(io_error(&marker, "remove"))?;
    storage
        .sync_dir(dir)
        .map_err(io_error(dir, "sync directory"))?;
    Ok(())
}

/// What replay did.
struct Replayed {
    records: u64,
    /// Event records of the batches that `Quarantined` records cut into.
    repair_scope: Vec<Location>,
}

/// Applies every record after the oldest index checkpoint; each index skips
/// what its own checkpoint already holds. The random-order indexes stage
/// what replay finds (the records after their checkpoint are what the
/// writer had staged), and a level that reaches `level_entries` is merged
/// into the trees there and then, so a replay of a whole log (a rebuilt
/// index) holds at most that many staged entries.
fn replay(
    shard: ShardId,
    writer: &LogWriter,
    indexes: &mut IndexSet,
    progress: Option<&ProgressFn>,
    level_entries: usize,
) -> Result<Replayed, Error> {
    let snapshot = writer.log().snapshot();
    let mut replayed = Replayed {
        records: 0,
        repair_scope: Vec::new(),
    };
    let Some(first) = snapshot.segments().first() else {
        return Ok(replayed);
    };
    let (start_segment, start_offset) = match indexes.replay_from() {
        Some((_, position)) => (position.segment, position.offset),
        None => (first.id(), SEGMENT_HEADER_LEN as u32),
    };
    if snapshot.segment(start_segment).is_none() {
        return Err(Error::corrupt(format!(
            "an index checkpoint names log segment {start_segment}, which is missing"
        )));
    }
    let end = writer.end();
    let last_lsn = writer.last_lsn();
    // Event records since the last batch end, and whether the records up to
    // the next batch end belong to a batch a Quarantined record cut into.
    let mut batch_events: Vec<Location> = Vec::new();
    let mut after_quarantine = false;
    let span = |segment: &crate::wal::Segment| {
        let from = if segment.id() == start_segment {
            start_offset
        } else {
            SEGMENT_HEADER_LEN as u32
        };
        let to = if segment.id() == end.segment {
            end.offset
        } else {
            segment.logical_end() as u32
        };
        u64::from(to.saturating_sub(from))
    };
    let total_bytes: u64 = snapshot
        .segments()
        .iter()
        .filter(|s| s.id() >= start_segment)
        .map(|s| span(s))
        .sum();
    let mut done_before = 0;
    let mut next_report = 0;
    let tell = |replayed_bytes: u64, records: u64| {
        if let Some(progress) = progress {
            progress(ReplayProgress {
                shard,
                replayed_bytes,
                total_bytes,
                records,
            });
        }
    };
    for segment in snapshot
        .segments()
        .iter()
        .filter(|s| s.id() >= start_segment)
    {
        let from = if segment.id() == start_segment {
            start_offset
        } else {
            SEGMENT_HEADER_LEN as u32
        };
        let mut scan = segment.scan_from(from);
        for (offset, record) in scan.by_ref() {
            if record.lsn > last_lsn || (segment.id() == end.segment && offset >= end.offset) {
                break;
            }
            let done = done_before + u64::from(offset - from);
            if done >= next_report {
                tell(done, replayed.records);
                next_report = done + PROGRESS_EVERY;
            }
            let location = segment.location(offset as usize);
            match record.record_type {
                RecordType::Event => {
                    let event = EventRef::parse(record.payload)
                        .map_err(|e| Error::corrupt(format!("event record at {location}: {e}")))?;
                    indexes.apply(Apply::Insert, &event, location, record.lsn)?;
                    batch_events.push(location);
                }
                RecordType::Quarantined => {
                    // The batch it cut into began before it and ends after it.
                    replayed.repair_scope.append(&mut batch_events);
                    after_quarantine = true;
                }
                // Event records that had left the indexes: nothing to apply.
                RecordType::Compacted => {}
                RecordType::Remove => {
                    let remove = RemovePayload::decode(record.payload).ok_or_else(|| {
                        Error::corrupt(format!("malformed remove record at {location}"))
                    })?;
                    match snapshot.read_event(remove.target) {
                        Ok(target) => {
                            if target.id().0 != remove.target_id {
                                return Err(Error::corrupt(format!(
                                    "remove record at {location} names event {} but {} holds {}",
                                    crate::hex::encode(&remove.target_id),
                                    remove.target,
                                    target.id()
                                )));
                            }
                            indexes.apply(Apply::Remove, &target, remove.target, record.lsn)?;
                        }
                        // The event went to quarantine with damaged bytes
                        // (it is in no index), or compaction took it away
                        // (only events removed before every index
                        // checkpoint): nothing is left to remove.
                        Err(_) if snapshot.vacated(remove.target) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if indexes.memory_len() >= level_entries.max(1) {
                indexes.merge_levels(usize::MAX)?;
            }
            if record.batch_end {
                if after_quarantine && record.record_type != RecordType::Quarantined {
                    replayed.repair_scope.append(&mut batch_events);
                    after_quarantine = false;
                }
                batch_events.clear();
            }
            replayed.records += 1;
        }
        done_before += span(segment);
        // A sealed segment ends exactly after its last record, and the
        // active one reaches the end found at open: stopping anywhere else
        // (a bad frame, or zeros) is damage, not a torn tail.
        let active = segment.id() == end.segment;
        let stop_at = scan.offset();
        let expected_end = if active {
            end.offset as usize
        } else {
            segment.sealed_end()
        };
        let problem = match scan.stop() {
            _ if stop_at >= expected_end => None,
            Some(FrameError::End) => Some(format!(
                "zeros where a record should start, {} bytes before the end of the records",
                expected_end - stop_at
            )),
            Some(other) => Some(other.to_string()),
            None => None,
        };
        if let Some(reason) = problem {
            let last_good = replayed_lsn_before(segment, stop_at);
            // `stop_at` is a location's offset; the bytes are the file's.
            let at = u32::try_from(stop_at)
                .ok()
                .and_then(|at| segment.file_offset(at))
                .map_or(segment.bytes().len(), |at| at as usize);
            let after = examine_after(
                segment.bytes(),
                segment.id(),
                at,
                last_good,
                segment.pack_table(),
            );
            return Err(WalError::Damaged(LogDamage {
                path: segment.path().to_path_buf(),
                offset: stop_at as u64,
                reason,
                valid_after: after.valid_records,
                evidence: if active {
                    "an index checkpoint says the log was synced past it".to_string()
                } else {
                    "the segment was sealed, so all of it had been synced".to_string()
                },
            })
            .into());
        }
    }
    tell(total_bytes, replayed.records);
    Ok(replayed)
}

/// LSN of the last valid record before `offset` in `segment` (for a damage
/// report; `Lsn::ZERO` when there is none).
fn replayed_lsn_before(segment: &crate::wal::Segment, offset: usize) -> Lsn {
    segment
        .scan_from(SEGMENT_HEADER_LEN as u32)
        .take_while(|(at, _)| (*at as usize) < offset)
        .last()
        .map_or(Lsn::ZERO, |(_, record)| record.last_lsn())
}
