//! Opening a shard: the log's end is found (a torn tail is cut), each index
//! opens at its newest valid checkpoint (a broken one starts afresh), and the
//! log is replayed from the oldest checkpoint so every index catches up.

use std::path::Path;
use std::sync::Arc;

use crate::error::Error;
use crate::event::EventRef;
use crate::ids::ShardId;
use crate::index::{Apply, IndexSet};
use crate::storage::Storage;
use crate::wal::{FrameError, Log, LogWriter, RecordType, RemovePayload, SEGMENT_HEADER_LEN};

/// What opening a store does with a torn or corrupt end of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Cut the log at the last whole batch and report the file and offset
    /// (what a crash during a write leaves). The default.
    #[default]
    TolerateCorruptTail,
    /// Refuse to open, naming the file and offset, and change nothing.
    Strict,
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
}

/// Recovers one shard's log and indexes from `dir`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_shard(
    storage: Arc<dyn Storage>,
    dir: &Path,
    shard: ShardId,
    segment_size: u64,
    mode: RecoveryMode,
    search: bool,
    progress: Option<&ProgressFn>,
    report: &mut RecoveryReport,
) -> Result<(LogWriter, IndexSet), Error> {
    let mut indexes = IndexSet::open(
        Arc::clone(&storage),
        &dir.join("index"),
        search,
        &mut report.rebuilt_indexes,
    )?;
    let (_, writer, repair) = Log::open(
        storage,
        &dir.join("log"),
        shard,
        segment_size,
        indexes.newest_checkpoint(),
        mode == RecoveryMode::Strict,
    )?;
    if let Some(repair) = repair {
        report.tail_repairs.push(format!(
            "{} at offset {}: {}",
            repair.path.display(),
            repair.offset,
            repair.reason
        ));
    }
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
    report.replayed_records += replay(shard, &writer, &mut indexes, progress)?;
    Ok((writer, indexes))
}

/// Applies every record after the oldest index checkpoint; each index skips
/// what its own checkpoint already holds.
fn replay(
    shard: ShardId,
    writer: &LogWriter,
    indexes: &mut IndexSet,
    progress: Option<&ProgressFn>,
) -> Result<u64, Error> {
    let snapshot = writer.log().snapshot();
    let Some(first) = snapshot.segments().first() else {
        return Ok(0);
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
    let mut replayed = 0;
    let span = |segment: &crate::wal::Segment| {
        let from = if segment.id() == start_segment {
            start_offset
        } else {
            SEGMENT_HEADER_LEN as u32
        };
        let to = if segment.id() == end.segment {
            end.offset
        } else {
            segment.bytes().len() as u32
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
                tell(done, replayed);
                next_report = done + PROGRESS_EVERY;
            }
            let location = segment.location(offset as usize);
            match record.record_type {
                RecordType::Event => {
                    let event = EventRef::parse(record.payload)
                        .map_err(|e| Error::corrupt(format!("event record at {location}: {e}")))?;
                    indexes.apply(Apply::Insert, &event, location, record.lsn)?;
                }
                RecordType::Remove => {
                    let remove = RemovePayload::decode(record.payload).ok_or_else(|| {
                        Error::corrupt(format!("malformed remove record at {location}"))
                    })?;
                    let target = snapshot.read_event(remove.target)?;
                    if target.id().0 != remove.target_id {
                        return Err(Error::corrupt(format!(
                            "remove record at {location} names event {} but {} holds {}",
                            hex(&remove.target_id),
                            remove.target,
                            target.id()
                        )));
                    }
                    indexes.apply(Apply::Remove, &target, remove.target, record.lsn)?;
                }
            }
            replayed += 1;
        }
        done_before += span(segment);
        // A sealed segment ends exactly after its last record: stopping
        // anywhere else (a bad frame, or zeros) is damage, not a torn tail.
        if segment.id() != end.segment {
            let at_end = scan.offset() == segment.bytes().len();
            let problem = match scan.stop() {
                Some(FrameError::End) if at_end => None,
                Some(FrameError::End) => Some(format!(
                    "zeros where a record should start, {} bytes before the segment's end",
                    segment.bytes().len() - scan.offset()
                )),
                Some(other) => Some(other.to_string()),
                None => None,
            };
            if let Some(problem) = problem {
                return Err(Error::corrupt(format!(
                    "log segment {} is damaged at offset {}: {problem}",
                    segment.path().display(),
                    scan.offset()
                )));
            }
        }
    }
    tell(total_bytes, replayed);
    Ok(replayed)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
