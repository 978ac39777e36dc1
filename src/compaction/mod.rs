//! Online compaction: takes the bytes of removed events out of sealed log
//! segments while the store serves reads and writes (docs/compaction.md).
//!
//! An event record whose event left the indexes (replaced, deleted by
//! NIP-09, vanished by NIP-62) stays in the log until compaction. A sealed
//! segment is written again, packed, into a new file beside it: every
//! other record in order, each run of removed event records replaced by
//! one `Compacted` frame, and a relocation table of the runs' lengths, so
//! every record keeps its logical offset (its location) and no index
//! changes (`wal/packed.rs`). The new file is synced, then renamed over the
//! old one; readers that mapped the old file keep it until they let go,
//! and its blocks go back to the file system then.
//!
//! Which records may go: those removed by a remove record that every index
//! checkpoint (and the analytics checkpoint) already reflects. An open
//! replays the log only from those checkpoints, so it never meets a remove
//! record whose event is gone while the event is in a checkpoint; a replay
//! of the whole log (an index rebuilt) skips both the compacted event and
//! its remove record, as it does for quarantined bytes.
//!
//! Crash safety: the segment's name always holds a whole file, the old one
//! or the new one (the new one is synced before the rename); a file left
//! half-written by a crash has its own name and goes at the next open. The
//! manifest says the logs may hold compacted records before the first one
//! is written, so a build that does not know them refuses the store.

mod ledger;

pub(crate) use ledger::GarbageLedger;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, io_error};
use crate::event::EventId;
use crate::ids::{Location, Lsn};
use crate::storage::{OpenMode, Storage};
use crate::wal::{
    COMPACTED_FRAME_LEN, COMPACTING_SUFFIX, CompactedPayload, FrameError, LogSnapshot, PackTable,
    RecordType, RemovePayload, SEGMENT_HEADER_LEN, Segment, encode_frame,
    encode_packed_segment_header,
};

/// How compaction runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactOptions {
    /// A sealed segment is written again only when at least this share of
    /// its bytes belongs to removed events that may go (0.0: any; default
    /// 0.0 for an explicit run, `megalith compact`).
    pub min_garbage: f64,
    /// At most this many bytes written per second (`None`: no limit).
    pub max_write_rate: Option<u64>,
    /// Make the indexes durable first, so that everything removed until
    /// now may go (default: on; it merges the in-memory level into the
    /// trees). Off, only what the last checkpoints reflect goes, which
    /// with the level's spilled runs can be long before the log's end.
    pub checkpoint_first: bool,
    /// Seal each shard's active log segment first when it holds removed
    /// events (default: on), so that they may go too; the next write
    /// starts a new segment. Off, they wait until their segment fills.
    pub seal_active: bool,
}

impl Default for CompactOptions {
    fn default() -> CompactOptions {
        CompactOptions {
            min_garbage: 0.0,
            max_write_rate: None,
            checkpoint_first: true,
            seal_active: true,
        }
    }
}

/// How much of the logs removed events take ([`crate::EventStore::garbage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garbage {
    /// Bytes of event records that left the indexes and are still in the logs.
    pub removed_bytes: u64,
    /// Bytes the logs take on disk.
    pub log_bytes: u64,
    /// A compaction pass has read every sealed segment since the open, so
    /// the figure counts what the sealed segments held at the open too.
    /// It stays an estimate: removals replayed at the open whose events
    /// lie in the active segment count once that is sealed and read, and a
    /// removal a failed sync takes back, or one that races a pass, is set
    /// right by the next pass over its segment.
    pub counted: bool,
}

impl Garbage {
    /// `removed_bytes` as a share of `log_bytes` (0 for an empty log).
    pub fn ratio(&self) -> f64 {
        if self.log_bytes == 0 {
            0.0
        } else {
            self.removed_bytes as f64 / self.log_bytes as f64
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactReport {
    /// Sealed segments read.
    pub segments_examined: u64,
    /// Segment rewrites (a run that removed expired events and rewrites a
    /// segment in both rounds counts it twice).
    pub segments_rewritten: u64,
    /// Event records taken out.
    pub records_compacted: u64,
    /// Their bytes (now holes).
    pub bytes_compacted: u64,
    /// Removed event records left for a later run: their removal is newer
    /// than the checkpoints, or they lie in the active segment, or their
    /// segment held less than `min_garbage`.
    pub records_left: u64,
    /// Bytes the logs took on disk before and after.
    pub disk_bytes_before: u64,
    pub disk_bytes_after: u64,
    /// Bytes written into new segment files.
    pub bytes_written: u64,
    /// Stored events past their NIP-40 expiration found in the sealed
    /// segments read and removed (remove records of reason *purged*);
    /// their bytes go in the same run when it checkpoints first, else at
    /// the next one.
    pub expired_removed: u64,
    pub seconds: f64,
}

/// One frame of a sealed segment, as compaction sees it.
#[derive(Debug, Clone, Copy)]
struct Frame {
    offset: u32,
    len: u32,
    lsn: Lsn,
    /// `lsn - unsynced_run` was durable when it was written.
    unsynced_run: u32,
    batch_end: bool,
    /// An event record whose payload flags a NIP-40 expiration, of a
    /// kind whose expiry compaction acts on (see `expiry_applies`).
    expiring: bool,
    /// What it is: an event record (with its id), an earlier compacted
    /// run (with its record count), or anything else.
    what: FrameKind,
}

#[derive(Debug, Clone, Copy)]
enum FrameKind {
    Event(EventId),
    Compacted { records: u32, last: Lsn },
    Other,
}

/// A sealed segment's frames, and which event records left the indexes.
struct Examined {
    segment: Arc<Segment>,
    frames: Vec<Frame>,
    /// Indexes into `frames` of event records no index holds.
    removed: Vec<usize>,
    /// Stored events past their NIP-40 expiration (when asked for).
    expired: Vec<EventId>,
}

impl Examined {
    /// The bytes of the frames in `removed`.
    fn removed_bytes(&self) -> u64 {
        self.removed
            .iter()
            .map(|&i| u64::from(self.frames[i].len))
            .sum()
    }
}

/// Whether each id is stored at its location (looked up in the primary
/// index), for a slice of records at a time.
pub(crate) type StoredAt<'a> = dyn Fn(&[(EventId, Location)]) -> Result<Vec<bool>, Error> + 'a;

/// What one shard's compaction needs from the store.
pub(crate) struct ShardAccess<'a> {
    pub log: &'a Arc<crate::wal::Log>,
    /// The position every checkpoint (indexes and analytics) reaches.
    pub floor: Option<Location>,
    pub stored: &'a StoredAt<'a>,
    /// The shard's reopenings in place so far: one (after a failed write,
    /// which may cut unsynced removals) makes what was found stale.
    pub epoch: &'a dyn Fn() -> u64,
    /// Told the removed bytes each sealed segment holds after the pass.
    pub garbage: &'a GarbageLedger,
    /// Stored events whose NIP-40 expiration is at or before this (Unix
    /// seconds) are reported; 0: none are looked for.
    pub expired_before: u64,
}

/// Compacts one shard's sealed segments (see the module doc); `mark`
/// makes the manifest say compacted records may exist, before the first
/// one is written. Returns the stored events of those segments past their
/// NIP-40 expiration (see `ShardAccess::expired_before`), which the caller
/// removes (a later pass takes their bytes).
pub(crate) fn compact_shard(
    store_dir: &Path,
    access: &ShardAccess<'_>,
    options: &CompactOptions,
    mark: &mut dyn FnMut() -> Result<(), Error>,
    report: &mut CompactReport,
    pace: &mut Pace<'_>,
) -> Result<Vec<EventId>, Error> {
    let log = access.log;
    let mut expired = Vec::new();
    let snapshot = log.snapshot();
    let segments = snapshot.segments();
    // The last segment is the active one: never compacted.
    let sealed = &segments[..segments.len().saturating_sub(1)];
    let Some(floor) = access.floor else {
        // Some checkpoint would replay the whole log: nothing may go yet.
        for segment in sealed {
            pace.go_on()?;
            report.segments_examined += 1;
            let seen = examine(segment, access, pace)?;
            report.records_left += seen.removed.len() as u64;
            access.garbage.set(segment.id(), seen.removed_bytes());
            expired.extend_from_slice(&seen.expired);
        }
        return Ok(expired);
    };
    let epoch = (access.epoch)();
    let mut examined = Vec::new();
    for segment in sealed {
        pace.go_on()?;
        report.segments_examined += 1;
        let mut seen = examine(segment, access, pace)?;
        expired.append(&mut seen.expired);
        let all = seen.removed_bytes();
        // Only records the checkpoints passed: one past the floor may
        // belong to a group the writer has not applied yet (a group can
        // seal a segment part-way), and its look-up says nothing.
        let before = seen.removed.len();
        seen.removed.retain(|&i| {
            let frame = &seen.frames[i];
            segment.id() < floor.segment
                || (segment.id() == floor.segment && frame.offset + frame.len <= floor.offset)
        });
        report.records_left += (before - seen.removed.len()) as u64;
        if seen.removed.is_empty() {
            access.garbage.set(segment.id(), all);
        } else {
            examined.push((seen, all));
        }
    }
    if examined.is_empty() {
        return Ok(expired);
    }
    // Removals the checkpoints do not reflect yet: read after the look-ups
    // above, so every removal they saw is here if it is that new.
    let newer = removes_from(&log.snapshot(), floor)?;
    let unchanged = || (access.epoch)() == epoch;
    for (seen, all) in examined {
        pace.go_on()?;
        let segment = &seen.segment;
        // What stays until a later pass, unless the rewrite below works.
        access.garbage.set(segment.id(), all);
        let (go, stay): (Vec<usize>, Vec<usize>) = seen.removed.iter().partition(|&&i| {
            !newer.contains(&Location {
                segment: segment.id(),
                offset: seen.frames[i].offset,
            })
        });
        report.records_left += stay.len() as u64;
        let bytes: u64 = go.iter().map(|&i| u64::from(seen.frames[i].len)).sum();
        let total = segment.file_len().max(1) as f64;
        if go.is_empty() || (bytes as f64) < options.min_garbage * total {
            report.records_left += go.len() as u64;
            continue;
        }
        if !unchanged() {
            report.records_left += go.len() as u64;
            continue;
        }
        mark()?;
        let Some(written) = rewrite(store_dir, log, &seen, &go, pace, &unchanged)? else {
            report.records_left += go.len() as u64;
            continue;
        };
        access.garbage.set(segment.id(), all - bytes);
        report.segments_rewritten += 1;
        report.records_compacted += go.len() as u64;
        report.bytes_compacted += bytes;
        report.bytes_written += written;
    }
    Ok(expired)
}

/// Whether the shard's active segment holds event records no index holds
/// (records written but not yet applied count too: they are few, and the
/// answer only decides whether to seal the segment).
pub(crate) fn active_holds_removed(access: &ShardAccess<'_>) -> Result<bool, Error> {
    let snapshot = access.log.snapshot();
    let Some(active) = snapshot.segments().last() else {
        return Ok(false);
    };
    // Looked up a slice at a time, stopping at the first removed record.
    let mut asks: Vec<(EventId, Location)> = Vec::with_capacity(512);
    let mut scan = active.scan_from(SEGMENT_HEADER_LEN as u32);
    loop {
        let next = scan.next();
        if let Some((offset, record)) = &next
            && record.record_type == RecordType::Event
            && let Some(id) = record.payload.get(..32).and_then(|b| b.try_into().ok())
        {
            asks.push((EventId(id), active.location(*offset as usize)));
        }
        if asks.len() == 512 || (next.is_none() && !asks.is_empty()) {
            if (access.stored)(&asks)?.contains(&false) {
                return Ok(true);
            }
            asks.clear();
        }
        if next.is_none() {
            break;
        }
    }
    match scan.stop() {
        Some(FrameError::End) | None => Ok(false),
        Some(why) => Err(Error::corrupt(format!(
            "{} at offset {}: {why}; compaction reads whole segments (`megalith repair` first)",
            active.path().display(),
            scan.offset()
        ))),
    }
}

/// Reads a sealed segment's frames to its last byte and finds the event
/// records that no index holds.
fn examine(
    segment: &Arc<Segment>,
    access: &ShardAccess<'_>,
    pace: &Pace<'_>,
) -> Result<Examined, Error> {
    let mut frames = Vec::new();
    let mut scan = segment.scan_from(SEGMENT_HEADER_LEN as u32);
    for (offset, record) in scan.by_ref() {
        let what = match record.record_type {
            RecordType::Event => {
                let id: [u8; 32] = record
                    .payload
                    .get(..32)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        Error::corrupt(format!(
                            "event record at offset {offset} of {} is too short",
                            segment.path().display()
                        ))
                    })?;
                FrameKind::Event(EventId(id))
            }
            RecordType::Compacted => {
                let payload = CompactedPayload::decode(record.payload).ok_or_else(|| {
                    Error::corrupt(format!(
                        "malformed compacted record at offset {offset} of {}",
                        segment.path().display()
                    ))
                })?;
                FrameKind::Compacted {
                    records: payload.records,
                    last: payload.last,
                }
            }
            _ => FrameKind::Other,
        };
        let expiring = matches!(what, FrameKind::Event(_)) && expiry_applies(record.payload);
        frames.push(Frame {
            offset,
            len: record.frame_len() as u32,
            lsn: record.lsn,
            unsynced_run: record.unsynced_run,
            batch_end: record.batch_end,
            expiring,
            what,
        });
    }
    if scan.offset() != segment.sealed_end() {
        let why = scan
            .stop()
            .map_or_else(|| "the scan stopped".to_string(), ToString::to_string);
        return Err(Error::corrupt(format!(
            "{} at offset {}: {why}; compaction reads sealed segments whole \
             (`megalith repair` first)",
            segment.path().display(),
            scan.offset()
        )));
    }
    let events: Vec<(usize, EventId, Location)> = frames
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match f.what {
            FrameKind::Event(id) => Some((i, id, segment.location(f.offset as usize))),
            _ => None,
        })
        .collect();
    let mut removed = Vec::new();
    let mut expired = Vec::new();
    // A slice at a time: the look-ups hold the shard's read lock.
    for chunk in events.chunks(512) {
        pace.go_on()?;
        let asks: Vec<(EventId, Location)> = chunk.iter().map(|&(_, id, at)| (id, at)).collect();
        let stored = (access.stored)(&asks)?;
        for (&(i, id, _), stored) in chunk.iter().zip(stored) {
            if !stored {
                removed.push(i);
            } else if access.expired_before > 0
                && expires_before(segment, &frames[i], access.expired_before)?
            {
                expired.push(id);
            }
        }
    }
    Ok(Examined {
        segment: Arc::clone(segment),
        frames,
        removed,
        expired,
    })
}

/// Whether the event record `frame` has a NIP-40 expiration at or before
/// `now` (the payload's flag says whether it has one at all, so only
/// those are parsed).
fn expires_before(segment: &Segment, frame: &Frame, now: u64) -> Result<bool, Error> {
    if !frame.expiring {
        return Ok(false);
    }
    let record = segment.read(frame.offset).map_err(|e| {
        Error::corrupt(format!(
            "{} at offset {}: {e}",
            segment.path().display(),
            frame.offset
        ))
    })?;
    let event = crate::event::EventRef::parse(record.payload).map_err(|e| {
        Error::corrupt(format!(
            "event record at offset {} of {}: {e}",
            frame.offset,
            segment.path().display()
        ))
    })?;
    Ok(event.expiration().is_some_and(|at| at <= now))
}

/// Whether the event record `payload` flags a NIP-40 expiration that
/// compaction acts on: not for deletion requests (kind 5) and requests to
/// vanish (kind 62), which keep what they removed out while they are
/// stored, expired or not (removing one would let those events be stored
/// again).
fn expiry_applies(payload: &[u8]) -> bool {
    use crate::event::{FLAG_EXPIRATION, FLAGS_OFFSET};
    let kind = payload
        .get(FLAGS_OFFSET - 2..FLAGS_OFFSET)
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    payload
        .get(FLAGS_OFFSET)
        .is_some_and(|flags| flags & FLAG_EXPIRATION != 0)
        && !matches!(kind, Some(5 | 62) | None)
}

/// The targets of every remove record at or after `from`.
fn removes_from(snapshot: &LogSnapshot, from: Location) -> Result<HashSet<Location>, Error> {
    let mut targets = HashSet::new();
    for segment in snapshot.segments() {
        if segment.id() < from.segment {
            continue;
        }
        let start = if segment.id() == from.segment {
            from.offset
        } else {
            SEGMENT_HEADER_LEN as u32
        };
        let mut scan = segment.scan_from(start);
        for (offset, record) in scan.by_ref() {
            if record.record_type == RecordType::Remove {
                let remove = RemovePayload::decode(record.payload).ok_or_else(|| {
                    Error::corrupt(format!(
                        "malformed remove record at offset {offset} of {}",
                        segment.path().display()
                    ))
                })?;
                targets.insert(remove.target);
            }
        }
        if let Some(stop) = scan.stop()
            && !matches!(stop, FrameError::End)
        {
            return Err(Error::corrupt(format!(
                "{} at offset {}: {stop}",
                segment.path().display(),
                scan.offset()
            )));
        }
    }
    Ok(targets)
}

/// Keeps the bytes written per second under a limit.
#[derive(Debug)]
pub(crate) struct Pace<'a> {
    limit: Option<u64>,
    started: Instant,
    written: u64,
    /// Once set, the run gives up (`Error::Interrupted`) at its next write
    /// or segment.
    stop: &'a AtomicBool,
}

impl<'a> Pace<'a> {
    pub fn new(limit: Option<u64>, stop: &'a AtomicBool) -> Pace<'a> {
        Pace {
            limit,
            started: Instant::now(),
            written: 0,
            stop,
        }
    }

    /// `Error::Interrupted` once the run was asked to stop.
    fn go_on(&self) -> Result<(), Error> {
        if self.stop.load(Ordering::Relaxed) {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }

    fn wrote(&mut self, bytes: usize) -> Result<(), Error> {
        self.written += bytes as u64;
        if let Some(limit) = self.limit.filter(|&l| l > 0) {
            let due = Duration::from_secs_f64(self.written as f64 / limit as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        self.go_on()
    }
}

/// Bytes written per call when copying what stays.
const COPY_CHUNK: usize = 1 << 20;

/// A run of neighbouring frames that becomes one `Compacted` frame.
struct Run {
    start: u32,
    end: u32,
    first: Frame,
    last_lsn: Lsn,
    batch_end: bool,
    records: u32,
}

/// Writes `seen`'s segment again, packed (`docs/format.md`, "Packed
/// segments"), without the event records `go` names, puts it in place (if
/// `unchanged` still holds just before) and returns the bytes written.
fn rewrite(
    store_dir: &Path,
    log: &crate::wal::Log,
    seen: &Examined,
    go: &[usize],
    pace: &mut Pace<'_>,
    unchanged: &dyn Fn() -> bool,
) -> Result<Option<u64>, Error> {
    let segment = &seen.segment;
    let storage: &dyn Storage = &**log.storage();
    let runs = runs_of(&seen.frames, go);
    let path = segment.path().to_path_buf();
    let temp = compacting_path(&path);
    let layout = packed_layout(segment, &seen.frames, &runs)?;
    if storage.exists(&temp).map_err(io_error(&temp, "stat"))? {
        storage
            .remove_file(&temp)
            .map_err(io_error(&temp, "remove"))?;
    }
    let file = storage
        .open(&temp, OpenMode::CreateNew)
        .map_err(io_error(&temp, "create"))?;
    let mut out = Output {
        file: &*file,
        path: &temp,
        at: 0,
        buffer: Vec::with_capacity(COPY_CHUNK),
    };
    out.put(
        &encode_packed_segment_header(log.shard(), segment.id(), layout.table.records_end()),
        pace,
    )?;
    let bytes = segment.bytes();
    for piece in &layout.pieces {
        match *piece {
            Piece::Copy { from, len } => {
                out.put(&bytes[from as usize..(from + len) as usize], pace)?;
            }
            Piece::Compacted(run) => {
                out.put(&compacted_frame(segment.id(), &runs[run])?, pace)?;
            }
        }
    }
    out.put(&layout.table.encode(), pace)?;
    let written = out.finish(pace)?;
    file.sync().map_err(io_error(&temp, "sync"))?;
    drop(file);
    // Read back before it takes the segment's place: the same records at
    // the same locations, to the end of its records.
    let fresh = Segment::open(storage, &temp, log.shard(), segment.id())?;
    check_rewritten(segment, &fresh, &seen.frames, &runs)?;
    drop(fresh);
    // Waits for a live backup to finish copying (a stop meanwhile waits too).
    pace.go_on()?;
    let lock = crate::eventstore::hold_segments(store_dir, false)?;
    if !unchanged() {
        storage
            .remove_file(&temp)
            .map_err(io_error(&temp, "remove"))?;
        return Ok(None);
    }
    storage
        .rename(&temp, &path)
        .map_err(io_error(&path, "rename"))?;
    storage
        .sync_dir(log.dir())
        .map_err(io_error(log.dir(), "sync directory"))?;
    let fresh = Arc::new(Segment::open(storage, &path, log.shard(), segment.id())?);
    log.replace_sealed(fresh);
    drop(lock);
    Ok(Some(written))
}

/// Writes what it is given back to back, `COPY_CHUNK` bytes at a time.
struct Output<'a> {
    file: &'a dyn crate::storage::StorageFile,
    path: &'a Path,
    at: u64,
    buffer: Vec<u8>,
}

impl Output<'_> {
    fn put(&mut self, mut bytes: &[u8], pace: &mut Pace<'_>) -> Result<(), Error> {
        while !bytes.is_empty() {
            let room = COPY_CHUNK - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.len() == COPY_CHUNK {
                self.flush(pace)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, pace: &mut Pace<'_>) -> Result<(), Error> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buffer, self.at)
            .map_err(io_error(self.path, "write"))?;
        self.at += self.buffer.len() as u64;
        let len = self.buffer.len();
        self.buffer.clear();
        // Stopped: the unfinished file goes at the next run or open.
        pace.wrote(len)
    }

    /// Writes what is left; returns the bytes written in all.
    fn finish(mut self, pace: &mut Pace<'_>) -> Result<u64, Error> {
        self.flush(pace)?;
        Ok(self.at)
    }
}

/// What a packed segment holds after its header, in order.
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// Bytes copied from the old file (file offsets): frames that stay.
    Copy { from: u32, len: u32 },
    /// The `Compacted` frame of run `n`.
    Compacted(usize),
}

struct Layout {
    pieces: Vec<Piece>,
    table: PackTable,
}

/// Where everything goes in the packed copy: every frame outside the runs
/// copied from where the old file holds it (neighbours in one piece), each
/// run one `Compacted` frame, and the relocation table of their lengths.
fn packed_layout(old: &Segment, frames: &[Frame], runs: &[Run]) -> Result<Layout, Error> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut entries = Vec::with_capacity(runs.len());
    let mut at = SEGMENT_HEADER_LEN as u32;
    let mut next_run = 0;
    let mut frames = frames.iter().peekable();
    while let Some(frame) = frames.next() {
        if let Some(run) = runs.get(next_run)
            && frame.offset == run.start
        {
            let skip = (run.end - run.start)
                .checked_sub(COMPACTED_FRAME_LEN)
                .ok_or_else(|| {
                    Error::corrupt(format!(
                        "a run of {} bytes at offset {} is shorter than a compacted frame",
                        run.end - run.start,
                        run.start
                    ))
                })?;
            entries.push((at, skip));
            pieces.push(Piece::Compacted(next_run));
            at += COMPACTED_FRAME_LEN;
            while frames.peek().is_some_and(|f| f.offset < run.end) {
                frames.next();
            }
            next_run += 1;
            continue;
        }
        // Outside the runs a frame is copied as the file holds it. One
        // that covers compacted frames of the old table (a quarantined
        // range a repair wrote over a damaged one) keeps their entries.
        let placed = |logical: u32| {
            old.file_offset(logical).ok_or_else(|| {
                Error::corrupt(format!(
                    "frame at offset {logical} of {} lies in bytes the file leaves out",
                    old.path().display()
                ))
            })
        };
        let from = placed(frame.offset)?;
        let len = placed(frame.offset + frame.len)? - from;
        if let Some(table) = old.pack_table() {
            for (file, skip) in table.entries_within(from, from + len) {
                entries.push((at + (file - from), skip));
            }
        }
        match pieces.last_mut() {
            Some(Piece::Copy {
                from: start,
                len: piece,
            }) if *start + *piece == from => *piece += len,
            _ => pieces.push(Piece::Copy { from, len }),
        }
        at += len;
    }
    let table = PackTable::new(at, &entries).map_err(Error::corrupt)?;
    Ok(Layout { pieces, table })
}

fn compacting_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(COMPACTING_SUFFIX);
    PathBuf::from(name)
}

/// Groups the frames to take out, with any earlier compacted frame beside
/// them, into runs of neighbours.
fn runs_of(frames: &[Frame], go: &[usize]) -> Vec<Run> {
    let going: HashSet<usize> = go.iter().copied().collect();
    let mut runs: Vec<Run> = Vec::new();
    let mut open: Option<Run> = None;
    for (i, frame) in frames.iter().enumerate() {
        let records = match frame.what {
            _ if going.contains(&i) => Some((1, frame.lsn)),
            FrameKind::Compacted { records, last } => Some((records, last)),
            _ => None,
        };
        match (records, open.as_mut()) {
            (Some((records, last)), Some(run)) => {
                run.end = frame.offset + frame.len;
                run.last_lsn = last;
                run.batch_end = frame.batch_end;
                run.records += records;
            }
            (Some((records, last)), None) => {
                open = Some(Run {
                    start: frame.offset,
                    end: frame.offset + frame.len,
                    first: *frame,
                    last_lsn: last,
                    batch_end: frame.batch_end,
                    records,
                });
            }
            (None, _) => runs.extend(open.take()),
        }
    }
    runs.extend(open);
    // An earlier compacted frame alone is a run too: it is written again
    // with its length in the table.
    runs
}

/// The `Compacted` frame that takes `run`'s place: the LSN, durability
/// claim and batch end of the records it replaces.
fn compacted_frame(segment: crate::ids::SegmentId, run: &Run) -> Result<Vec<u8>, Error> {
    // A packed segment's frame says 0: its run's length is in the table.
    let payload = CompactedPayload {
        skip: 0,
        records: run.records,
        last: run.last_lsn,
    };
    let durable = Lsn(run
        .first
        .lsn
        .0
        .saturating_sub(u64::from(run.first.unsynced_run)));
    let mut out = Vec::with_capacity(COMPACTED_FRAME_LEN as usize);
    encode_frame(
        &mut out,
        segment,
        RecordType::Compacted,
        run.batch_end,
        run.first.lsn,
        durable,
        &payload.encode(),
    )?;
    Ok(out)
}

/// Checks that `fresh` holds `old`'s frames at the same offsets, the runs
/// replaced by compacted frames, up to the end of the file.
fn check_rewritten(
    old: &Segment,
    fresh: &Segment,
    frames: &[Frame],
    runs: &[Run],
) -> Result<(), Error> {
    let mut expected = Vec::new();
    let mut runs = runs.iter().peekable();
    for frame in frames {
        match runs.peek() {
            Some(run) if frame.offset >= run.start && frame.offset < run.end => {
                if frame.offset == run.start {
                    expected.push((run.start, run.first.lsn, run.end - run.start));
                }
                if frame.offset + frame.len >= run.end {
                    runs.next();
                }
            }
            _ => expected.push((frame.offset, frame.lsn, frame.len)),
        }
    }
    let mut scan = fresh.scan_from(SEGMENT_HEADER_LEN as u32);
    let found: Vec<(u32, Lsn, u32)> = scan
        .by_ref()
        .map(|(offset, record)| (offset, record.lsn, record.frame_len() as u32))
        .collect();
    if found != expected
        || scan.offset() != fresh.sealed_end()
        || fresh.sealed_end() != old.sealed_end()
        || !matches!(scan.stop(), Some(FrameError::End))
    {
        return Err(Error::corrupt(format!(
            "the compacted copy of {} does not read back as written ({} frames expected, {} \
             read, ending at {} of {} bytes); the segment is left as it was",
            old.path().display(),
            expected.len(),
            found.len(),
            scan.offset(),
            fresh.sealed_end()
        )));
    }
    Ok(())
}
