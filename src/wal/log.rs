//! A shard's log: the list of segments readers share, and the single writer
//! that appends batches, syncs them and rotates segments.
//!
//! Invariants:
//! - LSNs are strictly increasing across the whole log, because only the one
//!   `LogWriter` assigns them, in append order.
//! - A batch's records are written with one `write` at the end of the active
//!   segment; its last record carries the batch-end bit. Recovery keeps only
//!   whole batches, so a crash never leaves half of a batch in the log.
//! - A batch starts only below `segment_size`, and no batch exceeds
//!   `BATCH_SLACK`. The writer maps the active segment with an address
//!   range of `segment_size + BATCH_SLACK` bytes, so its map covers
//!   everything that will be appended to it, and grows the file
//!   `GROW_STEP` bytes at a time ahead of its writes (the part not yet
//!   written is a hole); a sealed segment, and the active one at a clean
//!   close, is cut to its written length. Readers never touch what is not
//!   written (`Segment::bytes` ends where the writer has appended).
//! - Every frame records which LSN was durable when its batch was written,
//!   so opening can tell damage (refused, never cut) from a torn tail (cut):
//!   see `damage.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use super::damage::examine_after;
use super::error::{WalError, io_error};
use super::format::{
    FRAME_OVERHEAD, FrameError, RecordRef, RecordType, SEGMENT_HEADER_LEN, encode_frame,
    encode_segment_header, mark_batch_end,
};
use super::segment::{Segment, parse_segment_file_name, segment_file_name};
use super::synced;
use crate::event::EventRef;
use crate::ids::{Location, Lsn, SegmentId, ShardId};
use crate::storage::{OpenMode, Storage, StorageFile};

/// Room past `segment_size` that the active segment may grow to, and the
/// most bytes one batch may take.
pub(crate) const BATCH_SLACK: u64 = 16 << 20;

/// How much the active segment's file grows at a time (see the module
/// comment).
pub(crate) const GROW_STEP: u64 = 4 << 20;

/// The segments of one shard, shared by the writer and all readers.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    shard: ShardId,
    storage: Arc<dyn Storage>,
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
}

/// Where the valid log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogEnd {
    pub segment: SegmentId,
    /// Offset just past the last whole batch.
    pub offset: u32,
    /// LSN of the last record kept (`Lsn::ZERO` for an empty log).
    pub last_lsn: Lsn,
}

/// Damage in the log that opening found and refused: a bad frame that a
/// later valid record proves was once synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDamage {
    /// The segment file.
    pub path: PathBuf,
    /// Where its first bad frame starts.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// Valid records after it in the same segment.
    pub valid_after: u64,
    /// Why this is damage and not a torn tail.
    pub evidence: String,
}

/// A torn or incomplete tail that opening the log cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TailRepair {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// A consistent view of the segments, for reading records by location.
#[derive(Debug, Clone)]
pub(crate) struct LogSnapshot {
    segments: Arc<Vec<Arc<Segment>>>,
}

impl LogSnapshot {
    /// A view of segments opened by hand (tools that read a log offline).
    pub(crate) fn of_segments(segments: Vec<Arc<Segment>>) -> LogSnapshot {
        LogSnapshot {
            segments: Arc::new(segments),
        }
    }

    pub fn segment(&self, id: SegmentId) -> Option<&Segment> {
        let first = self.segments.first()?.id().0;
        let index = id.0.checked_sub(first)? as usize;
        self.segments.get(index).map(|s| &**s)
    }

    pub fn segments(&self) -> &[Arc<Segment>] {
        &self.segments
    }

    /// Maps the pages of every segment that the page cache already holds
    /// ([`crate::storage::Mapping::map_resident`]); returns the bytes mapped.
    pub fn map_resident(&self) -> std::io::Result<u64> {
        let mut mapped = 0;
        for segment in self.segments.iter() {
            mapped += segment.map_resident()?;
        }
        Ok(mapped)
    }

    /// The event stored by the event record at `location`.
    /// The record's checksum is verified the first time it is read
    /// ([`Segment::read_once_verified`]).
    pub fn read_event(&self, location: Location) -> Result<EventRef<'_>, WalError> {
        self.read_event_and_len(location).map(|(event, _)| event)
    }

    /// [`LogSnapshot::read_event`], with the length of its frame.
    pub fn read_event_and_len(&self, location: Location) -> Result<(EventRef<'_>, u64), WalError> {
        let record = self.read_with(location, Segment::read_once_verified)?;
        let len = record.frame_len() as u64;
        if record.record_type != RecordType::Event {
            return Err(WalError::BadLocation {
                location,
                reason: format!(
                    "expected an event record, found a {} record",
                    record.record_type.name()
                ),
            });
        }
        EventRef::parse(record.payload)
            .map(|event| (event, len))
            .map_err(|e| WalError::BadLocation {
                location,
                reason: e.to_string(),
            })
    }

    /// Whether `location` lies inside a `Quarantined` record (its bytes were
    /// damaged and moved aside by a repair) or a `Compacted` one (its event
    /// had left the indexes and compaction took its bytes away): a remove
    /// record may still name an event that was there. The segment's list of
    /// such frames is made at the first call (one scan) and searched.
    pub fn vacated(&self, location: Location) -> bool {
        self.segment(location.segment)
            .is_some_and(|segment| segment.vacated_range(location.offset).is_some())
    }

    /// The checksummed record at `location`, read by `read`.
    fn read_with<'s>(
        &'s self,
        location: Location,
        read: impl Fn(&'s Segment, u32) -> Result<RecordRef<'s>, FrameError>,
    ) -> Result<RecordRef<'s>, WalError> {
        let segment = self
            .segment(location.segment)
            .ok_or_else(|| WalError::BadLocation {
                location,
                reason: "no such segment".to_string(),
            })?;
        read(segment, location.offset).map_err(|e| WalError::BadLocation {
            location,
            reason: format!("{e} in {}", segment.path().display()),
        })
    }
}

impl Log {
    /// Opens the log in `dir` (creating it when empty), finds the end of the
    /// valid log and cuts anything after it, and returns the log with its writer.
    ///
    /// `scan_hint` is a location known to hold a whole-batch boundary (an index
    /// checkpoint); when it lies in the last segment the search for the end
    /// starts there instead of at the segment's first record. With
    /// `strict_tail`, a torn or corrupt tail is an error and nothing is cut.
    /// With `existing`, the log that readers already share is opened again in
    /// place (after its writer failed): its segment list is replaced.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        shard: ShardId,
        segment_size: u64,
        scan_hint: Option<(Location, Lsn)>,
        strict_tail: bool,
        existing: Option<&Arc<Log>>,
    ) -> Result<(Arc<Log>, LogWriter, Option<TailRepair>), WalError> {
        let store = &*storage;
        store
            .create_dir_all(dir)
            .map_err(io_error(dir, "create directory"))?;
        // A reopen in place (after a failed write) runs beside a compaction
        // that may be writing one.
        if existing.is_none() {
            remove_compacting_leftovers(store, dir)?;
        }
        let mut ids = list_segment_ids(store, dir)?;
        let mut repair = None;
        // A crash while a segment was being created (the first one, or at a
        // rotation) can leave a last segment that holds nothing but zeros:
        // its header was never synced, so nothing was ever appended to it.
        // It is removed; a header that is there but damaged, or any other
        // byte, is not that case, and opening it below reports corruption.
        if let Some(&last) = ids.last() {
            let path = dir.join(segment_file_name(last));
            if never_written(store, &path)? {
                // Unless an index checkpoint says records reached it: then
                // acknowledged records were lost, and that is damage.
                if let Some((hint, lsn)) = scan_hint
                    && hint.segment >= last
                {
                    return Err(WalError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!(
                            "the segment holds only zeros, but an index checkpoint says the log \
                             reaches LSN {lsn} at offset {} of segment {}",
                            hint.offset, hint.segment
                        ),
                    });
                }
                store
                    .remove_file(&path)
                    .map_err(io_error(&path, "remove"))?;
                sync_dir(store, dir)?;
                repair = Some(TailRepair {
                    path,
                    offset: 0,
                    reason: "a segment whose creation never finished (all zeros) was removed"
                        .into(),
                });
                ids.pop();
            }
        }
        if ids.is_empty() {
            create_segment_file(store, dir, shard, SegmentId(1))?;
            ids.push(SegmentId(1));
        }
        let mut segments = Vec::with_capacity(ids.len());
        for &id in &ids {
            let path = dir.join(segment_file_name(id));
            segments.push(Arc::new(Segment::open(store, &path, shard, id)?));
        }
        // Compaction packs sealed segments only, and a packed file is never
        // appended to: a log whose later segments are gone (moved away by
        // hand) goes on in a new one.
        if let Some(last) = segments.last().filter(|s| s.is_packed()) {
            let id = SegmentId(last.id().0 + 1);
            create_segment_file(store, dir, shard, id)?;
            let path = dir.join(segment_file_name(id));
            segments.push(Arc::new(Segment::open(store, &path, shard, id)?));
        }
        if let (Some(active), Some((hint, lsn))) = (segments.last(), scan_hint)
            && hint.segment == active.id()
        {
            check_reaches(store, active.path(), hint, lsn)?;
        }
        // Nothing is changed before the end is known: damage is refused
        // with every byte as it was.
        let (end, tail) = find_end(&segments, scan_hint)?;
        if let (true, Some(tail)) = (strict_tail, &tail) {
            return Err(WalError::Corrupt {
                path: tail.path.clone(),
                offset: tail.offset,
                reason: format!(
                    "{} (strict recovery refuses to cut the log's tail)",
                    tail.reason
                ),
            });
        }
        {
            // Cut everything past the end, always: a torn batch can leave
            // valid frames beyond a zeroed page, and once new batches reuse
            // their LSNs they must never be read back after another crash.
            // The writer grows the file again as it writes.
            let path = dir.join(segment_file_name(end.segment));
            let file = store
                .open(&path, OpenMode::ReadWrite)
                .map_err(io_error(&path, "open"))?;
            file.set_len(u64::from(end.offset))
                .map_err(io_error(&path, "truncate"))?;
            file.sync().map_err(io_error(&path, "sync"))?;
        }
        if let Some(tail) = tail {
            repair = Some(tail);
        }
        // Map the active segment again with room for all it may grow to,
        // so what is appended to it is visible through the map.
        let active_segment = {
            let path = dir.join(segment_file_name(end.segment));
            let segment = Arc::new(Segment::open_growing(
                store,
                &path,
                shard,
                end.segment,
                segment_size + BATCH_SLACK,
            )?);
            segment.set_readable(end.offset as usize);
            if let Some(last) = segments.last_mut() {
                *last = Arc::clone(&segment);
            }
            segment
        };
        let active_path = dir.join(segment_file_name(end.segment));
        let active = store
            .open(&active_path, OpenMode::ReadWrite)
            .map_err(io_error(&active_path, "open"))?;
        let log = match existing {
            Some(log) => {
                log.replace_segments(segments);
                Arc::clone(log)
            }
            None => Arc::new(Log {
                dir: dir.to_path_buf(),
                shard,
                storage: Arc::clone(&storage),
                segments: RwLock::new(Arc::new(segments)),
            }),
        };
        let mut writer = LogWriter {
            log: Arc::clone(&log),
            active,
            active_segment,
            active_id: end.segment,
            position: u64::from(end.offset),
            allocated: u64::from(end.offset),
            next_lsn: end.last_lsn.next(),
            // The log was synced above (and sealed segments at rotation).
            durable: end.last_lsn,
            durable_end: Location {
                segment: end.segment,
                offset: end.offset,
            },
            segment_size,
            poisoned: None,
            unsynced: false,
            mark: synced::open_for_writing(store, dir)
                .map_err(io_error(&dir.join(synced::SYNCED_FILE), "open"))?,
        };
        writer.publish_synced()?;
        Ok((log, writer, repair))
    }

    /// What [`Log::open`] would find at the end of the log in `dir`, without
    /// changing anything: `Ok(None)` a clean end, `Ok(Some(tail))` a torn
    /// tail it would cut, `Err` damage (or anything else) it would refuse.
    /// For tools that must say what the next open does.
    pub fn predict_end(
        storage: &dyn Storage,
        dir: &Path,
        shard: ShardId,
        scan_hint: Option<(Location, Lsn)>,
    ) -> Result<Option<TailRepair>, WalError> {
        let mut ids = list_segment_ids(storage, dir)?;
        if let Some(&last) = ids.last()
            && never_written(storage, &dir.join(segment_file_name(last)))?
            && scan_hint.is_none_or(|(hint, _)| hint.segment < last)
        {
            ids.pop();
        }
        let Some(&last) = ids.last() else {
            return Ok(None);
        };
        let mut segments = Vec::with_capacity(2);
        if let Some(&before) = ids.iter().rev().nth(1) {
            let path = dir.join(segment_file_name(before));
            segments.push(Arc::new(Segment::open(storage, &path, shard, before)?));
        }
        let path = dir.join(segment_file_name(last));
        segments.push(Arc::new(Segment::open(storage, &path, shard, last)?));
        if let Some((hint, lsn)) = scan_hint
            && hint.segment == last
        {
            check_reaches(storage, &path, hint, lsn)?;
        }
        Ok(find_end(&segments, scan_hint)?.1)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshot(&self) -> LogSnapshot {
        LogSnapshot {
            segments: Arc::clone(&self.segments.read()),
        }
    }

    /// Bytes of log written, over all segments (sealed segments are exact; the
    /// active one counts up to `active_end`).
    pub fn bytes_on_disk(&self) -> u64 {
        self.snapshot()
            .segments()
            .iter()
            .filter_map(|s| self.storage.size_on_disk(s.path()).ok())
            .sum()
    }

    fn replace_segments(&self, segments: Vec<Arc<Segment>>) {
        *self.segments.write() = Arc::new(segments);
    }

    /// Puts `segment` in the place of the one with its id (a sealed segment
    /// that compaction wrote again). Readers that took a snapshot before
    /// keep the old file's map (and its inode) until they drop it. False
    /// when the log has no such segment (it was opened again in between).
    pub fn replace_sealed(&self, segment: Arc<Segment>) -> bool {
        let mut segments = self.segments.write();
        let Some(at) = segments.iter().position(|s| s.id() == segment.id()) else {
            return false;
        };
        let mut list = segments.to_vec();
        list[at] = segment;
        *segments = Arc::new(list);
        true
    }

    /// The storage the log's files live in.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

/// The suffix of the file compaction writes a segment into before it
/// takes the segment's name; one left by a crash is removed at open.
pub(crate) const COMPACTING_SUFFIX: &str = ".compacting";

/// Removes the files a compaction cut short left in the log directory.
fn remove_compacting_leftovers(storage: &dyn Storage, dir: &Path) -> Result<(), WalError> {
    let mut removed = false;
    for name in storage.list(dir).map_err(io_error(dir, "list"))? {
        if name
            .to_str()
            .is_some_and(|name| name.ends_with(COMPACTING_SUFFIX))
        {
            let path = dir.join(&name);
            storage
                .remove_file(&path)
                .map_err(io_error(&path, "remove"))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(storage, dir)?;
    }
    Ok(())
}

pub(crate) fn list_segment_ids(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<SegmentId>, WalError> {
    let mut ids = Vec::new();
    for name in storage.list(dir).map_err(io_error(dir, "list"))? {
        if let Some(id) = name.to_str().and_then(parse_segment_file_name) {
            ids.push(id);
        }
    }
    ids.sort();
    for pair in ids.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(WalError::Corrupt {
                path: dir.join(segment_file_name(SegmentId(pair[0].0 + 1))),
                offset: 0,
                reason: format!(
                    "segment {} is missing between {} and {}",
                    pair[0].0 + 1,
                    pair[0],
                    pair[1]
                ),
            });
        }
    }
    Ok(ids)
}

/// Whether every byte of the file at `path` is zero (or it is empty).
pub(crate) fn never_written(storage: &dyn Storage, path: &Path) -> Result<bool, WalError> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(io_error(path, "open"))?;
    let len = file.size().map_err(io_error(path, "stat"))?;
    let mut header = vec![0u8; SEGMENT_HEADER_LEN.min(len as usize)];
    file.read_exact_at(&mut header, 0)
        .map_err(io_error(path, "read"))?;
    if header.iter().any(|&b| b != 0) {
        return Ok(false);
    }
    // Rare (a crash during segment creation): read the rest to be sure.
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = header.len() as u64;
    while at < len {
        let n = chunk.len().min((len - at) as usize);
        file.read_exact_at(&mut chunk[..n], at)
            .map_err(io_error(path, "read"))?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Checks that the active segment at `path` reaches `hint`, where an index
/// checkpoint says the log was synced to: a file that ends before it lost
/// acknowledged records, which is damage.
fn check_reaches(
    storage: &dyn Storage,
    path: &Path,
    hint: Location,
    lsn: Lsn,
) -> Result<(), WalError> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(io_error(path, "open"))?;
    let len = file.size().map_err(io_error(path, "stat"))?;
    if u64::from(hint.offset) > len {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: len,
            reason: format!(
                "the file ends at byte {len}, but an index checkpoint says the log \
                 reaches LSN {lsn} at offset {}: acknowledged records are missing",
                hint.offset
            ),
        });
    }
    Ok(())
}

/// Creates segment `id`: its header, synced, then the directory entry, synced.
fn create_segment_file(
    storage: &dyn Storage,
    dir: &Path,
    shard: ShardId,
    id: SegmentId,
) -> Result<Box<dyn StorageFile>, WalError> {
    let path = dir.join(segment_file_name(id));
    let file = storage
        .open(&path, OpenMode::CreateNew)
        .map_err(io_error(&path, "create"))?;
    file.write_all_at(&encode_segment_header(shard, id), 0)
        .map_err(io_error(&path, "write header"))?;
    file.sync().map_err(io_error(&path, "sync"))?;
    sync_dir(storage, dir)?;
    Ok(file)
}

pub(crate) fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), WalError> {
    storage
        .sync_dir(dir)
        .map_err(io_error(dir, "sync directory"))
}

/// Scans the active (last) segment and returns where its last whole batch
/// ends, and a repair note if a torn tail after that has to go. Damage (a
/// bad frame that a later valid record proves was synced) is an error, and
/// nothing is cut.
pub(crate) fn find_end(
    segments: &[Arc<Segment>],
    hint: Option<(Location, Lsn)>,
) -> Result<(LogEnd, Option<TailRepair>), WalError> {
    let Some(active) = segments.last() else {
        return Ok((
            LogEnd {
                segment: SegmentId(1),
                offset: SEGMENT_HEADER_LEN as u32,
                last_lsn: Lsn::ZERO,
            },
            None,
        ));
    };
    // With a usable hint, the records before it need no scan: the hint
    // also says which LSN they end with.
    let (start, lsn_at_start) = match hint {
        Some((h, lsn))
            if h.segment == active.id()
                && h.offset as usize >= SEGMENT_HEADER_LEN
                && (h.offset as usize) <= active.bytes().len() =>
        {
            (h.offset, Some(lsn))
        }
        _ => (SEGMENT_HEADER_LEN as u32, None),
    };
    let lsn_before = || lsn_at_start.unwrap_or_else(|| last_lsn_before(segments, start));
    let mut scan = active.scan_from(start);
    let mut kept: Option<(u32, Lsn)> = None;
    let mut previous: Option<Lsn> = lsn_at_start;
    let mut lsn_problem = None;
    for (offset, record) in scan.by_ref() {
        if let Some(previous) = previous
            && record.lsn <= previous
        {
            lsn_problem = Some((
                offset as usize,
                format!("LSN {} does not follow {}", record.lsn, previous),
            ));
            break;
        }
        previous = Some(record.lsn);
        if record.batch_end {
            kept = Some((offset + record.frame_len() as u32, record.lsn));
        }
    }
    let end_offset = kept.map_or(start, |(offset, _)| offset);
    let scan_end = scan.offset();
    let bytes = active.bytes();
    let problem = match (lsn_problem, scan.stop()) {
        (Some(problem), _) => Some(problem),
        (None, Some(FrameError::End) | None) => next_data(bytes, scan_end).map(|data| {
            (
                scan_end,
                format!(
                    "{} zero bytes (an unwritten gap) followed by more data",
                    data - scan_end
                ),
            )
        }),
        (None, Some(other)) => Some((scan_end, other.to_string())),
    };
    if let Some((at, reason)) = &problem {
        let last_good = previous.unwrap_or_else(lsn_before);
        let after = examine_after(bytes, active.id(), *at, last_good, None);
        if let Some((proof_at, lsn, durable)) = after.proof {
            return Err(WalError::Damaged(LogDamage {
                path: active.path().to_path_buf(),
                offset: *at as u64,
                reason: reason.clone(),
                valid_after: after.valid_records,
                evidence: format!(
                    "the record at offset {proof_at} (LSN {lsn}) was written after LSN {durable} \
                     had been synced"
                ),
            }));
        }
    }
    let tail = match problem {
        Some((at, reason)) => Some(TailRepair {
            path: active.path().to_path_buf(),
            offset: at as u64,
            reason: format!("{reason}; the log is cut at offset {end_offset}"),
        }),
        None if scan_end > end_offset as usize => Some(TailRepair {
            path: active.path().to_path_buf(),
            offset: u64::from(end_offset),
            reason: "the last batch is incomplete".to_string(),
        }),
        None => None,
    };
    let last_lsn = match kept {
        Some((_, lsn)) => lsn,
        None => lsn_before(),
    };
    Ok((
        LogEnd {
            segment: active.id(),
            offset: end_offset,
            last_lsn,
        },
        tail,
    ))
}

/// The offset of the first non-zero byte at or after `from`, if any.
pub(crate) fn next_data(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    // Words first: the tail of a segment is mostly zeros.
    let mut chunks = rest.chunks_exact(8);
    let mut at = from;
    for chunk in chunks.by_ref() {
        if chunk.iter().any(|&b| b != 0) {
            break;
        }
        at += 8;
    }
    bytes[at..].iter().position(|&b| b != 0).map(|p| at + p)
}

/// LSN of the last record before `offset` in the active segment or, when
/// `offset` is its first record slot, of the last record of the segment before.
fn last_lsn_before(segments: &[Arc<Segment>], offset: u32) -> Lsn {
    let (segment, limit) = if offset as usize > SEGMENT_HEADER_LEN {
        (segments.last(), offset)
    } else {
        (
            segments.len().checked_sub(2).and_then(|i| segments.get(i)),
            u32::MAX,
        )
    };
    let mut last = Lsn::ZERO;
    if let Some(segment) = segment {
        for (at, record) in segment.scan_from(SEGMENT_HEADER_LEN as u32) {
            if at >= limit {
                break;
            }
            last = record.last_lsn();
        }
    }
    last
}

/// A batch too large for the room left; commit what the batch holds and start
/// a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchFull;

/// Records being gathered for one write. Locations and LSNs are final as soon
/// as a record is pushed, so later records of the same batch can refer to it.
#[derive(Debug)]
pub(crate) struct Batch {
    segment: SegmentId,
    start: u64,
    capacity: usize,
    buf: Vec<u8>,
    next_lsn: Lsn,
    /// The last LSN durable when the batch was started; every frame says so.
    durable: Lsn,
    last_frame: Option<usize>,
}

impl Batch {
    pub fn push(
        &mut self,
        record_type: RecordType,
        payload: &[u8],
    ) -> Result<(Lsn, Location), BatchFull> {
        if self.buf.len() + FRAME_OVERHEAD + payload.len() > self.capacity {
            return Err(BatchFull);
        }
        let frame_start = self.buf.len();
        let lsn = self.next_lsn;
        encode_frame(
            &mut self.buf,
            self.segment,
            record_type,
            false,
            lsn,
            self.durable,
            payload,
        )
        .map_err(|_| BatchFull)?;
        self.last_frame = Some(frame_start);
        self.next_lsn = lsn.next();
        let offset = u32::try_from(self.start + frame_start as u64).map_err(|_| BatchFull)?;
        Ok((
            lsn,
            Location {
                segment: self.segment,
                offset,
            },
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.last_frame.is_none()
    }

    /// Bytes still free in the batch.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.buf.len())
    }
}

/// The one appender of a shard's log.
#[derive(Debug)]
pub(crate) struct LogWriter {
    log: Arc<Log>,
    active: Box<dyn StorageFile>,
    /// The active segment as readers see it: told how far it is written.
    active_segment: Arc<Segment>,
    active_id: SegmentId,
    position: u64,
    /// The active segment file's length: the writer grows it `GROW_STEP`
    /// bytes at a time ahead of `position`.
    allocated: u64,
    next_lsn: Lsn,
    /// The last LSN known durable (synced), which each batch records.
    durable: Lsn,
    /// Where the durable log ends.
    durable_end: Location,
    segment_size: u64,
    /// Set by a failed write, sync, rotation or close: what failed.
    poisoned: Option<Failure>,
    unsynced: bool,
    /// The synced mark (`synced.rs`): `durable_end` for readers in other
    /// processes, rewritten after every sync.
    mark: Box<dyn StorageFile>,
}

/// What made a [`LogWriter`] refuse further writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// A write (or truncation, or segment creation) failed: what the file
    /// holds past the writer's position is unknown, but what was written
    /// before it is as written.
    Write,
    /// An fsync failed: the kernel may have dropped dirty pages and marked
    /// them clean, so nothing written since the last good sync can be
    /// trusted, even if it reads back fine ("fsyncgate").
    Sync,
}

impl LogWriter {
    /// Starts a batch, rotating to a new segment first when the active one is full.
    pub fn batch(&mut self) -> Result<Batch, WalError> {
        if self.poisoned.is_some() {
            return Err(WalError::Poisoned);
        }
        if self.position >= self.segment_size {
            self.rotate()?;
        }
        let room = (self.segment_size + BATCH_SLACK).saturating_sub(self.position);
        Ok(Batch {
            segment: self.active_id,
            start: self.position,
            capacity: room.min(BATCH_SLACK) as usize,
            buf: Vec::with_capacity(64 << 10),
            next_lsn: self.next_lsn,
            durable: self.durable,
            last_frame: None,
        })
    }

    /// Seals the active segment now, if it holds any record (compaction
    /// rewrites only sealed segments); the next batch starts a new one.
    /// Returns whether it sealed one.
    pub fn seal(&mut self) -> Result<bool, WalError> {
        if self.poisoned.is_some() {
            return Err(WalError::Poisoned);
        }
        if self.position <= SEGMENT_HEADER_LEN as u64 {
            return Ok(false);
        }
        self.rotate()?;
        Ok(true)
    }

    /// Writes the batch with one `write` and, if `sync`, makes it durable.
    /// Any failure poisons the writer: what reached the file is unknown, so
    /// nothing more is appended or acknowledged until the store is reopened.
    pub fn commit(&mut self, mut batch: Batch, sync: bool) -> Result<(), WalError> {
        if self.poisoned.is_some() {
            return Err(WalError::Poisoned);
        }
        let Some(last_frame) = batch.last_frame else {
            return Ok(());
        };
        debug_assert_eq!(batch.start, self.position);
        mark_batch_end(&mut batch.buf, last_frame, batch.segment);
        let path = self.active_path();
        let needed = self.position + batch.buf.len() as u64;
        if needed > self.allocated {
            // Grown ahead, so most syncs change no length; never past what
            // the readers' maps reach.
            let grown = needed
                .next_multiple_of(GROW_STEP)
                .min(self.segment_size + BATCH_SLACK)
                .max(needed);
            if let Err(source) = self.active.set_len(grown) {
                self.poisoned = Some(Failure::Write);
                return Err(WalError::Io {
                    path,
                    op: "extend",
                    source,
                });
            }
            self.allocated = grown;
        }
        if let Err(source) = self.active.write_all_at(&batch.buf, self.position) {
            self.poisoned = Some(Failure::Write);
            return Err(WalError::Io {
                path,
                op: "write",
                source,
            });
        }
        self.position += batch.buf.len() as u64;
        self.active_segment.set_readable(self.position as usize);
        self.next_lsn = batch.next_lsn;
        self.unsynced = true;
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every committed batch durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.poisoned.is_some() {
            return Err(WalError::Poisoned);
        }
        if !self.unsynced {
            return Ok(());
        }
        if let Err(source) = self.active.sync() {
            // fsyncgate: after a failed fsync the kernel may have dropped the
            // dirty pages; retrying could "succeed" without the data on disk.
            self.poisoned = Some(Failure::Sync);
            return Err(WalError::Io {
                path: self.active_path(),
                op: "sync",
                source,
            });
        }
        self.unsynced = false;
        self.durable = self.last_lsn();
        self.durable_end = self.end();
        self.publish_synced()
    }

    /// Writes `durable_end` to the synced mark. A failure poisons the
    /// writer like a failed write (the log itself is as written, so a
    /// reopen keeps it), and reaches the caller.
    fn publish_synced(&mut self) -> Result<(), WalError> {
        let bytes = synced::encode(self.durable_end, self.durable);
        if let Err(source) = self.mark.write_all_at(&bytes, 0) {
            self.poisoned = Some(Failure::Write);
            return Err(WalError::Io {
                path: self.log.dir.join(synced::SYNCED_FILE),
                op: "write",
                source,
            });
        }
        Ok(())
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// After a failure, cuts the log back to what can be trusted, so that
    /// opening it again finds its end there: past the last successful write
    /// after a failed write (its bytes are as written), past the last
    /// successful sync after a failed sync (nothing since can be trusted).
    /// Readers must not be reading past that point (the caller holds the
    /// shard's index write lock). Returns the records cut.
    pub fn cut_for_reopen(&mut self) -> Result<u64, WalError> {
        let (keep, kept_lsn) = match self.poisoned {
            Some(Failure::Sync) => (self.durable_end, self.durable),
            _ => (self.end(), self.last_lsn()),
        };
        let dir = self.log.dir.clone();
        // A segment begun by a rotation that failed holds no kept record:
        // emptied, it is removed when the log is opened again.
        if keep.segment != self.active_id {
            self.active_segment.set_readable(0);
            self.active
                .set_len(0)
                .map_err(io_error(&self.active_path(), "truncate"))?;
        }
        let path = dir.join(segment_file_name(keep.segment));
        if let Some(segment) = self.log.snapshot().segment(keep.segment) {
            if segment.is_packed() {
                // Written whole and synced by compaction: nothing to cut.
                return Ok(self.last_lsn().0.saturating_sub(kept_lsn.0));
            }
            let readable = segment.bytes().len().min(keep.offset as usize);
            segment.set_readable(readable);
        }
        let file = self
            .log
            .storage
            .open(&path, OpenMode::ReadWrite)
            .map_err(io_error(&path, "open"))?;
        file.set_len(u64::from(keep.offset))
            .map_err(io_error(&path, "truncate"))?;
        Ok(self.last_lsn().0.saturating_sub(kept_lsn.0))
    }

    /// LSN of the last committed record.
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.next_lsn.0 - 1)
    }

    /// Where the next batch will start.
    pub fn end(&self) -> Location {
        Location {
            segment: self.active_id,
            offset: self.position as u32,
        }
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Syncs and cuts the active segment back to its written length, for a
    /// clean close.
    pub fn close(&mut self) -> Result<(), WalError> {
        self.sync()?;
        let path = self.active_path();
        self.poisoned = Some(Failure::Write);
        self.active
            .set_len(self.position)
            .map_err(io_error(&path, "truncate"))?;
        self.allocated = self.position;
        self.active.sync().map_err(io_error(&path, "sync"))?;
        self.poisoned = None;
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        self.log.dir.join(segment_file_name(self.active_id))
    }

    /// Seals the active segment at its written length and starts the next one.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.sync()?;
        let path = self.active_path();
        let storage = &*self.log.storage;
        // Until the new segment is in place, what reached the disk is
        // unknown: a failure here poisons the writer like a failed write.
        self.poisoned = Some(Failure::Write);
        self.active
            .set_len(self.position)
            .map_err(io_error(&path, "truncate"))?;
        self.active.sync().map_err(io_error(&path, "sync"))?;
        let next = SegmentId(self.active_id.0 + 1);
        let file = create_segment_file(storage, &self.log.dir, self.log.shard, next)?;
        let sealed = Arc::new(Segment::open(
            storage,
            &path,
            self.log.shard,
            self.active_id,
        )?);
        let fresh = Arc::new(Segment::open_growing(
            storage,
            &self.log.dir.join(segment_file_name(next)),
            self.log.shard,
            next,
            self.segment_size + BATCH_SLACK,
        )?);
        fresh.set_readable(SEGMENT_HEADER_LEN);
        {
            // Under the lock: compaction may put a sealed segment in place.
            let mut list = self.log.segments.write();
            let mut segments: Vec<Arc<Segment>> = list.to_vec();
            if let Some(last) = segments.last_mut() {
                *last = sealed;
            }
            segments.push(Arc::clone(&fresh));
            *list = Arc::new(segments);
        }
        self.active = file;
        self.active_segment = fresh;
        self.active_id = next;
        self.position = SEGMENT_HEADER_LEN as u64;
        self.allocated = self.position;
        self.durable_end = self.end();
        self.poisoned = None;
        // Readers beside the writer (a live backup) follow the mark: it
        // names the new segment, which checkpoints may name from now on.
        self.publish_synced()
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::storage::FileStorage;

    type Opened = (Arc<Log>, LogWriter, Option<TailRepair>);

    /// Opens the log of shard 0 in `dir` on the real file system.
    fn open_log(
        dir: &Path,
        segment_size: u64,
        hint: Option<(Location, Lsn)>,
        strict: bool,
    ) -> Result<Opened, WalError> {
        Log::open(
            Arc::new(FileStorage),
            dir,
            ShardId(0),
            segment_size,
            hint,
            strict,
            None,
        )
    }

    fn append(writer: &mut LogWriter, payloads: &[&[u8]]) {
        let mut batch = writer.batch().unwrap();
        for payload in payloads {
            batch.push(RecordType::Event, payload).unwrap();
        }
        writer.commit(batch, true).unwrap();
    }

    #[test]
    fn stale_frames_behind_a_lost_page_are_wiped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut writer, _) = open_log(dir.path(), 1 << 20, None, false).unwrap();
        append(&mut writer, &[b"one"]);
        let end = writer.end();
        append(&mut writer, &[b"two", b"three"]);
        drop(writer);
        // A crash lost the page holding the second batch's first frame but
        // kept the rest: a valid frame with the batch-end bit lies beyond zeros.
        let path = dir.path().join(segment_file_name(SegmentId(1)));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0u8; FRAME_OVERHEAD + 3], u64::from(end.offset))
            .unwrap();
        drop(file);

        let (_, writer, repair) = open_log(dir.path(), 1 << 20, None, false).unwrap();
        assert_eq!((writer.end(), writer.last_lsn()), (end, Lsn(1)));
        // Nothing after the zeros says the lost batch was ever synced: a
        // torn tail, cut and reported.
        assert_eq!(
            repair.map(|r| r.offset),
            Some(u64::from(end.offset)),
            "the torn tail is reported where it starts"
        );
        let bytes = fs::read(&path).unwrap();
        assert!(
            bytes[end.offset as usize..].iter().all(|&b| b == 0),
            "stale frames survived"
        );
    }

    #[test]
    fn strict_open_refuses_a_torn_tail_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let open = |strict| open_log(dir.path(), 1 << 20, None, strict);
        let (_, mut writer, _) = open(false).unwrap();
        append(&mut writer, &[b"one"]);
        let end = writer.end();
        append(&mut writer, &[b"two"]);
        drop(writer);
        // Damage the second batch's payload: its checksum no longer matches.
        let path = dir.path().join(segment_file_name(SegmentId(1)));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", u64::from(end.offset) + 14).unwrap();
        drop(file);
        let before = fs::read(&path).unwrap();
        let error = open(true).unwrap_err().to_string();
        assert!(
            error.contains(&end.offset.to_string()) && error.contains("strict"),
            "{error}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "strict open changed the file"
        );
        let (_, writer, repair) = open(false).unwrap();
        assert_eq!(writer.end(), end);
        assert_eq!(repair.unwrap().offset, u64::from(end.offset));
    }

    /// The active segment grows as it is written, a step at a time, so a
    /// fresh store's files are small (they were 1 GiB each, as sparse
    /// files, which copies and `ls` treat as 1 GiB); a reader that took
    /// the log's segments before the file grew reads what is appended
    /// after, through its own map.
    #[test]
    fn the_active_segment_grows_as_it_is_written_and_readers_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(SegmentId(1)));
        let len = || fs::metadata(&path).unwrap().len();
        let (log, mut writer, _) = open_log(dir.path(), 1 << 30, None, false).unwrap();
        assert!(len() <= GROW_STEP, "a fresh segment is {} bytes", len());
        let early = log.snapshot();
        let payload = vec![9u8; 100_000];
        let mut locations = Vec::new();
        // More than three steps of records, in batches of ten.
        while writer.end().offset < 3 * GROW_STEP as u32 + 1000 {
            let mut batch = writer.batch().unwrap();
            for _ in 0..10 {
                locations.push(batch.push(RecordType::Event, &payload).unwrap().1);
            }
            writer.commit(batch, true).unwrap();
            let written = u64::from(writer.end().offset);
            assert!(
                len() >= written && len() < written + GROW_STEP + BATCH_SLACK,
                "{} bytes on disk for {written} written",
                len()
            );
        }
        // The snapshot taken when the file was small reads every record.
        let segment = early.segment(SegmentId(1)).unwrap();
        for location in &locations {
            let record = segment.read(location.offset).unwrap();
            assert_eq!(record.payload, &payload[..]);
        }
        let end = writer.end();
        writer.close().unwrap();
        assert_eq!(
            len(),
            u64::from(end.offset),
            "a close cuts the file to its records"
        );
        drop((writer, log, early));
        // Opened again: the file stays at its records until written.
        let (log, mut writer, repair) = open_log(dir.path(), 1 << 30, None, false).unwrap();
        assert!(repair.is_none());
        assert_eq!(writer.end(), end);
        assert_eq!(len(), u64::from(end.offset));
        append(&mut writer, &[b"after"]);
        let last = writer.end();
        assert!(len() >= u64::from(last.offset) && len() <= u64::from(last.offset) + GROW_STEP);
        let snapshot = log.snapshot();
        let records: Vec<_> = snapshot.segments()[0]
            .scan_from(SEGMENT_HEADER_LEN as u32)
            .map(|(_, record)| record.lsn)
            .collect();
        assert_eq!(records.len(), locations.len() + 1);
    }

    #[test]
    fn lsns_continue_across_reopen_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut writer, _) = open_log(dir.path(), 64 << 10, None, false).unwrap();
        let payload = vec![7u8; 10_000];
        for _ in 0..20 {
            append(&mut writer, &[&payload]);
        }
        assert!(writer.end().segment > SegmentId(1), "the log rotated");
        let (last, end) = (writer.last_lsn(), writer.end());
        writer.close().unwrap();
        drop(writer);
        for hint in [None, Some((end, last))] {
            let (log, writer, repair) = open_log(dir.path(), 64 << 10, hint, false).unwrap();
            assert_eq!(
                (writer.last_lsn(), writer.end()),
                (last, end),
                "hint {hint:?}"
            );
            assert!(repair.is_none());
            let mut expected = Lsn(1);
            for segment in log.snapshot().segments() {
                for (_, record) in segment.scan_from(SEGMENT_HEADER_LEN as u32) {
                    assert_eq!(record.lsn, expected);
                    expected = expected.next();
                }
            }
            assert_eq!(expected, last.next());
        }
    }
}
