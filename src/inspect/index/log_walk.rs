//! Walks one shard's log from its segment files, the way opening the store
//! reads it (whole batches only in the active segment; a sealed segment must
//! end exactly after its last record), and records for every event record
//! when it was written, when a remove record took it away, and the entries
//! it must have in each index. Frames are decoded by the log's own decoder.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, io_error};
use crate::event::EventRef;
use crate::ids::{Location, Lsn, SegmentId, ShardId};
use crate::index::{IndexKind, for_each_entry};
use crate::wal::{
    FRAME_OVERHEAD, FrameError, PackTable, RecordRef, RecordType, RemovePayload,
    SEGMENT_HEADER_LEN, covers_runs, decode_frame, decode_segment_header, logical_extra,
    parse_segment_file_name,
};

use super::Problem;

/// Bytes read at a time; a frame is decoded only with at least this much
/// ahead of it (or the file's end), so a zero run cut by the buffer's end is
/// never mistaken for the end of the log.
const CHUNK: usize = 1 << 20;

/// An event record of the log.
#[derive(Debug, Clone)]
pub(super) struct EventRecord {
    pub location: Location,
    pub lsn: Lsn,
    pub id: [u8; 32],
    /// LSN of the first remove record naming it.
    pub removed_at: Option<Lsn>,
}

impl EventRecord {
    /// Whether the indexes hold this event once every record up to `lsn` is applied.
    pub fn live_at(&self, lsn: Lsn) -> bool {
        self.lsn <= lsn && self.removed_at.is_none_or(|r| r > lsn)
    }
}

/// Every entry the log's event records put in one index (live or not):
/// fixed-width entries back to back, and the event each belongs to.
#[derive(Debug, Default)]
pub(super) struct KindEntries {
    pub bytes: Vec<u8>,
    pub owners: Vec<u32>,
}

#[derive(Debug, Default)]
pub(super) struct LogWalk {
    pub events: Vec<EventRecord>,
    pub by_location: HashMap<Location, u32>,
    /// Where remove records start (an index entry pointing there is wrong).
    pub remove_locations: HashSet<Location>,
    /// LSN of every record of the log, ascending.
    pub lsns: Vec<Lsn>,
    pub entries: [KindEntries; IndexKind::ALL.len()],
    pub segments: usize,
    pub removes: u64,
    /// Quarantined records (damaged ranges a repair moved aside).
    pub quarantined: u64,
    /// Compacted records (removed events whose bytes compaction took away).
    pub compacted: u64,
    /// The byte ranges quarantined and compacted records cover, per
    /// segment: a remove record naming an event inside one is skipped, as
    /// replay does.
    pub vacated_ranges: HashMap<SegmentId, Vec<(u32, u32)>>,
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
    /// Whether the store keeps term_time (search) entries.
    pub terms: bool,
}

impl LogWalk {
    pub fn last_lsn(&self) -> Lsn {
        self.lsns.last().copied().unwrap_or(Lsn::ZERO)
    }

    /// Records after `lsn`: what opening the store replays into an index
    /// checkpointed at `lsn`.
    pub fn records_after(&self, lsn: Lsn) -> u64 {
        (self.lsns.len() - self.lsns.partition_point(|&l| l <= lsn)) as u64
    }

    fn problem(&mut self, file: &Path, offset: Option<u64>, reason: String) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            page: None,
            offset,
            index: None,
            event_id: None,
            reason,
        });
    }

    fn apply(&mut self, path: &Path, record: &PendingRecord) {
        let location = record.location;
        let offset = Some(u64::from(location.offset));
        match record.record_type {
            RecordType::Event => {
                let event = match EventRef::parse(&record.payload) {
                    Ok(event) => event,
                    Err(e) => {
                        self.problem(path, offset, format!("event record does not parse: {e}"));
                        return;
                    }
                };
                let owner = self.events.len() as u32;
                self.events.push(EventRecord {
                    location,
                    lsn: record.lsn,
                    id: event.id().0,
                    removed_at: None,
                });
                self.by_location.insert(location, owner);
                let entries = &mut self.entries;
                for_each_entry(&event, location, self.terms, |kind, entry| {
                    let list = &mut entries[kind as usize];
                    list.bytes.extend_from_slice(entry);
                    list.owners.push(owner);
                });
            }
            // Damaged bytes a repair moved aside, or removed events
            // compaction took away: nothing for the indexes.
            RecordType::Quarantined | RecordType::Compacted => {
                if record.record_type == RecordType::Quarantined {
                    self.quarantined += 1;
                } else {
                    self.compacted += 1;
                }
                let end =
                    location.offset + (FRAME_OVERHEAD + record.payload.len()) as u32 + record.skip;
                self.vacated_ranges
                    .entry(location.segment)
                    .or_default()
                    .push((location.offset, end));
            }
            RecordType::Remove => {
                self.removes += 1;
                self.remove_locations.insert(location);
                let Some(remove) = RemovePayload::decode(&record.payload) else {
                    self.problem(path, offset, "malformed remove record".to_string());
                    return;
                };
                let Some(&target) = self.by_location.get(&remove.target) else {
                    // The event went to quarantine with damaged bytes, or
                    // compaction took it away: it is in no index, and replay
                    // skips this record.
                    let target = remove.target;
                    let vacated = self.vacated_ranges.get(&target.segment);
                    if vacated.is_some_and(|ranges| {
                        ranges
                            .iter()
                            .any(|&(start, end)| (start..end).contains(&target.offset))
                    }) {
                        return;
                    }
                    let what = if self.remove_locations.contains(&remove.target) {
                        "a remove record"
                    } else {
                        "no earlier event record"
                    };
                    self.problem(
                        path,
                        offset,
                        format!(
                            "remove record names {}, which holds {what} (opening the store fails here)",
                            remove.target
                        ),
                    );
                    return;
                };
                let event = &mut self.events[target as usize];
                if event.id != remove.target_id {
                    let reason = format!(
                        "remove record names event {} at {}, which holds {} (opening the store fails here)",
                        crate::hex::encode(&remove.target_id),
                        remove.target,
                        crate::hex::encode(&event.id)
                    );
                    self.problem(path, offset, reason);
                    return;
                }
                if event.removed_at.is_none() {
                    event.removed_at = Some(record.lsn);
                }
            }
        }
    }
}

/// A record held until its batch is known to be whole.
#[derive(Debug)]
struct PendingRecord {
    location: Location,
    lsn: Lsn,
    record_type: RecordType,
    payload: Vec<u8>,
    skip: u32,
}

/// Where and why decoding a segment stopped.
#[derive(Debug)]
struct SegmentEnd {
    offset: u64,
    stop: FrameError,
    file_len: u64,
}

/// Walks every segment of the log in `dir`. `Err` only when a file cannot be read.
pub(super) fn walk_log(dir: &Path, shard: ShardId, terms: bool) -> Result<LogWalk, Error> {
    let mut walk = LogWalk {
        terms,
        ..LogWalk::default()
    };
    let mut ids = Vec::new();
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            walk.problem(dir, None, "the log directory is missing".to_string());
            return Ok(walk);
        }
        Err(e) => return Err(io_error(dir, "list")(e)),
    };
    for entry in listing {
        let entry = entry.map_err(io_error(dir, "list"))?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            ids.push((id, entry.path()));
        }
    }
    ids.sort();
    for pair in ids.windows(2) {
        if pair[1].0.0 != pair[0].0.0 + 1 {
            let reason = format!(
                "segments {} to {} are missing (opening the store fails)",
                pair[0].0.0 + 1,
                pair[1].0.0 - 1
            );
            walk.problem(dir, None, reason);
        }
    }
    // A crash during rotation can leave a last segment without a header;
    // opening the store removes it.
    if ids.len() > 1
        && let Some((_, path)) = ids.last()
        && header_never_written(path)?
    {
        walk.notes.push(format!(
            "{}: segment without a header (an unfinished rotation); removed at the next open",
            path.display()
        ));
        ids.pop();
    }
    walk.segments = ids.len();
    let mut previous = Lsn::ZERO;
    for (i, (id, path)) in ids.iter().enumerate() {
        let active = i + 1 == ids.len();
        let mut pending: Vec<PendingRecord> = Vec::new();
        let mut lsn_problem = None;
        let end = read_frames(path, shard, *id, &mut walk, |walk, offset, record| {
            if lsn_problem.is_some() {
                return;
            }
            if record.lsn <= previous {
                lsn_problem = Some((offset, record.lsn, previous));
                return;
            }
            previous = record.last_lsn();
            pending.push(PendingRecord {
                location: Location {
                    segment: *id,
                    offset,
                },
                lsn: record.lsn,
                record_type: record.record_type,
                payload: record.payload.to_vec(),
                skip: record.skip,
            });
            if record.batch_end {
                for record in pending.drain(..) {
                    walk.lsns.push(record.lsn);
                    walk.apply(path, &record);
                }
            }
        })?;
        let Some(end) = end else {
            continue; // the header was bad: reported
        };
        if let Some((offset, lsn, before)) = lsn_problem {
            let reason = format!("LSN {lsn} does not follow {before}");
            if !active {
                walk.problem(path, Some(u64::from(offset)), reason);
            }
        }
        if active {
            // What the next open does with the end (cut a torn tail, or
            // refuse damage) is said by `predict_open`, from the open's code.
        } else {
            // Replay applies a sealed segment's records whole batch or not.
            for record in pending.drain(..) {
                walk.lsns.push(record.lsn);
                walk.apply(path, &record);
            }
            let clean = matches!(end.stop, FrameError::End) && end.offset == end.file_len;
            if !clean && lsn_problem.is_none() {
                let reason = match end.stop {
                    FrameError::End => format!(
                        "zeros where a record should start, {} bytes before the segment's end",
                        end.file_len - end.offset
                    ),
                    other => other.to_string(),
                };
                walk.problem(
                    path,
                    Some(end.offset),
                    format!(
                        "sealed segment damaged: {reason} (reading the events there fails, and \
                         an open that replays this segment refuses the store; `megalith repair` \
                         moves the damaged bytes to a quarantine file and keeps every valid record)"
                    ),
                );
            }
        }
    }
    Ok(walk)
}

/// Reads segment `path` a chunk at a time and hands each record to
/// `on_record` until the written log ends. `None` if the header is bad
/// (reported in `walk`).
fn read_frames(
    path: &Path,
    shard: ShardId,
    id: SegmentId,
    walk: &mut LogWalk,
    mut on_record: impl FnMut(&mut LogWalk, u32, RecordRef<'_>),
) -> Result<Option<SegmentEnd>, Error> {
    let mut file = File::open(path)
        .map_err(io_error(path, "open"))?
        .take(u64::MAX);
    let mut file_len = file
        .get_ref()
        .metadata()
        .map_err(io_error(path, "stat"))?
        .len();
    let mut buf: Vec<u8> = Vec::new();
    let mut eof = false;
    let read_more =
        |file: &mut std::io::Take<File>, buf: &mut Vec<u8>, at_least: usize, eof: &mut bool| {
            let want = at_least.max(CHUNK) as u64;
            let n = file
                .take(want)
                .read_to_end(buf)
                .map_err(io_error(path, "read"))?;
            if (n as u64) < want {
                *eof = true;
            }
            Ok::<(), Error>(())
        };
    read_more(&mut file, &mut buf, SEGMENT_HEADER_LEN, &mut eof)?;
    let packed_end = match decode_segment_header(&buf) {
        Ok(header) if header.shard == shard && header.segment == id => header.packed_end,
        Ok(header) => {
            let reason = format!(
                "header says shard {} segment {}, expected shard {shard} segment {id}",
                header.shard, header.segment
            );
            walk.problem(path, Some(0), reason);
            return Ok(None);
        }
        Err(reason) => {
            walk.problem(path, Some(0), format!("{reason} (opening the store fails)"));
            return Ok(None);
        }
    };
    // A packed segment: its frames end where its relocation table starts,
    // and offsets are translated to logical ones (locations).
    let table = match packed_end {
        Some(end) => {
            let mut tail = Vec::new();
            {
                use std::io::{Seek, SeekFrom};
                let mut reader = File::open(path).map_err(io_error(path, "open"))?;
                reader
                    .seek(SeekFrom::Start(u64::from(end)))
                    .and_then(|_| reader.read_to_end(&mut tail))
                    .map_err(io_error(path, "read"))?;
            }
            match PackTable::decode_tail(&tail, end) {
                Ok(table) => {
                    buf.truncate(end as usize);
                    file.set_limit(u64::from(end).saturating_sub(buf.len() as u64));
                    eof = buf.len() == end as usize;
                    file_len = u64::from(end);
                    Some(table)
                }
                Err(reason) => {
                    walk.problem(
                        path,
                        Some(u64::from(end)),
                        format!("{reason} (opening the store fails)"),
                    );
                    return Ok(None);
                }
            }
        }
        None => None,
    };
    let logical = |offset: u64| -> u64 {
        match (&table, u32::try_from(offset)) {
            (Some(table), Ok(at)) => u64::from(table.logical(at)),
            _ => offset,
        }
    };
    let stop_at = |offset: u64, stop: FrameError| SegmentEnd {
        offset: logical(offset),
        stop,
        file_len: logical(file_len),
    };
    // `buf[0]` is at file offset `base`; the next frame starts at `buf[at]`.
    let mut base: u64 = 0;
    let mut at = SEGMENT_HEADER_LEN;
    loop {
        if !eof && buf.len() - at < CHUNK {
            buf.drain(..at);
            base += at as u64;
            at = 0;
            read_more(&mut file, &mut buf, CHUNK, &mut eof)?;
        }
        let offset = base + at as u64;
        let Ok(frame_offset) = u32::try_from(offset) else {
            return Ok(Some(stop_at(offset, FrameError::End)));
        };
        match decode_frame(&buf[at..], id) {
            Ok(mut record) => {
                let len = record.frame_len();
                if let Some(table) = &table
                    && covers_runs(record.record_type)
                {
                    record.skip += logical_extra(table, frame_offset, len);
                }
                on_record(walk, logical(offset) as u32, record);
                at += len;
            }
            Err(FrameError::Truncated { needed, .. }) if !eof => {
                buf.drain(..at);
                base += at as u64;
                at = 0;
                let missing = needed.saturating_sub(buf.len());
                read_more(&mut file, &mut buf, missing, &mut eof)?;
            }
            Err(stop) => return Ok(Some(stop_at(offset, stop))),
        }
    }
}

pub(super) fn header_never_written(path: &Path) -> Result<bool, Error> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN);
    File::open(path)
        .and_then(|f| f.take(SEGMENT_HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(io_error(path, "read"))?;
    Ok(header.len() < SEGMENT_HEADER_LEN || header.iter().all(|&b| b == 0))
}
