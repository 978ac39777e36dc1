//! Finding every damaged range of a shard's log, and moving each aside.
//!
//! [`scan_log`] reads every segment and lists the damage (see `damage.rs`
//! for what counts as damage rather than a torn tail). [`quarantine`] then,
//! for each damaged range: copies its bytes to a file in the shard's
//! `quarantine/` directory (synced before anything else changes), and
//! writes one `Quarantined` record over exactly that range, so every other
//! record keeps its location (indexes and remove records point at
//! locations). A damaged segment header is rewritten (it holds nothing but
//! the segment's own identity). Nothing is ever deleted.
//!
//! Crash safety: quarantine files, then the shard's `repair-pending` marker,
//! then the segment writes, each synced before the next step. Until the
//! marker is gone, every open rebuilds the shard's indexes and re-applies
//! the removals the damaged batches owed (`eventstore` does that, then
//! removes the marker). A crash before the segment writes leaves the damage
//! in place, and repairing again writes the same files.

use std::path::{Path, PathBuf};

use super::damage::{examine_after, readable_ids};
use super::error::{WalError, io_error};
use super::format::{
    FRAME_OVERHEAD, FrameError, QuarantinePayload, RecordType, SEGMENT_HEADER_LEN, decode_frame,
    decode_segment_header, encode_frame, encode_packed_segment_header,
};
use super::log::{list_segment_ids, next_data, sync_dir};
use super::packed::PackTable;
use super::segment::segment_file_name;
use crate::ids::{Lsn, SegmentId, ShardId};
use crate::storage::{OpenMode, Storage};

/// The file in a shard's directory that says a repair is not finished.
pub(crate) const REPAIR_MARKER: &str = "repair-pending";
/// The directory in a shard's directory that holds quarantined bytes.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";

/// One damaged range of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DamagedRange {
    pub segment: SegmentId,
    pub path: PathBuf,
    /// The range's first byte (a frame's start) and the byte after it (the
    /// next valid frame, or the end of the segment's data).
    pub start: u64,
    pub end: u64,
    /// The segment header itself is damaged (`start` is 0).
    pub header: bool,
    /// For a damaged header: the segment is packed, and its records end
    /// here (found from its relocation table, which the new header names).
    pub packed_end: Option<u32>,
    pub reason: String,
    /// LSN of the last valid record before the range.
    pub last_good: Lsn,
    /// LSN of the first valid record after it (`None`: none follows in
    /// this segment).
    pub next: Option<Lsn>,
    /// Event ids still readable in the damaged bytes (unverified).
    pub readable_ids: Vec<[u8; 32]>,
    /// Valid records after the range in the same segment.
    pub valid_after: u64,
    /// Why this is damage and not a torn tail.
    pub evidence: String,
}

/// Scans every segment of the log in `dir` and lists the damage in order.
/// A torn tail of the last segment is not damage (opening cuts it), unless
/// `durable` says it was synced: an index checkpoint reached past it.
pub(crate) fn scan_log(
    storage: &dyn Storage,
    dir: &Path,
    shard: ShardId,
    durable: Lsn,
) -> Result<Vec<DamagedRange>, WalError> {
    let ids = list_segment_ids(storage, dir)?;
    let mut damage = Vec::new();
    let mut previous = Lsn::ZERO;
    for (i, &id) in ids.iter().enumerate() {
        let path = dir.join(segment_file_name(id));
        let last = i + 1 == ids.len();
        let file = storage
            .open(&path, OpenMode::Read)
            .map_err(io_error(&path, "open"))?;
        let map = file.map(0).map_err(io_error(&path, "map"))?;
        let data_end = file
            .data_end()
            .map_err(io_error(&path, "find the end of data"))?;
        let mut mapped = map.as_deref().unwrap_or(&[]);
        let mut bytes = &mapped[..(data_end as usize).min(mapped.len())];
        if last && bytes.iter().all(|&b| b == 0) {
            // A segment whose creation never finished: opening removes it
            // (or refuses, if a checkpoint says records reached it).
            break;
        }
        let mut at = SEGMENT_HEADER_LEN;
        // A packed segment's frames end where its relocation table starts
        // (offsets in what is reported are the file's); a damaged table is
        // refused, not repaired.
        let header = decode_segment_header(bytes);
        let packed_end = match &header {
            Ok(header) => header.packed_end,
            Err(_) => PackTable::find_from_end(mapped).map(|table| table.records_end()),
        };
        let mut table = None;
        if let Some(end) = packed_end {
            match PackTable::decode(mapped, end) {
                Ok(found) => table = Some(found),
                Err(reason) => {
                    return Err(WalError::Corrupt {
                        path,
                        offset: u64::from(end),
                        reason: format!(
                            "{reason}: without it the records after the first compacted run \
                             cannot be placed; restore the segment from a backup"
                        ),
                    });
                }
            }
            mapped = &mapped[..(end as usize).min(mapped.len())];
            bytes = &bytes[..(end as usize).min(bytes.len())];
        }
        match header {
            Ok(header) if header.shard == shard && header.segment == id => {}
            Ok(header) => {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "header says shard {} segment {}, expected shard {shard} segment {id}: \
                         a segment of another log, not damage; move it away by hand",
                        header.shard, header.segment
                    ),
                });
            }
            Err(reason) if reason.contains("version") => {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason,
                });
            }
            Err(reason) => damage.push(DamagedRange {
                segment: id,
                path: path.clone(),
                start: 0,
                end: SEGMENT_HEADER_LEN as u64,
                header: true,
                packed_end,
                reason: format!("bad segment header: {reason}"),
                last_good: previous,
                next: None,
                readable_ids: Vec::new(),
                valid_after: 0,
                evidence: "a header holds only the segment's own identity".to_string(),
            }),
        }
        loop {
            let problem = match decode_frame(bytes.get(at..).unwrap_or(&[]), id) {
                Ok(record) if record.lsn > previous => {
                    previous = record.last_lsn();
                    at += record.frame_len();
                    continue;
                }
                Ok(record) => format!("LSN {} does not follow {previous}", record.lsn),
                Err(FrameError::End) => match next_data(bytes, at) {
                    // The clean end of the active segment, or the exact end
                    // of a sealed one.
                    None if last || at >= mapped.len() => break,
                    // A sealed segment ends exactly after its last record.
                    None => format!(
                        "zeros where a record should start, {} bytes before the segment's end",
                        mapped.len() - at
                    ),
                    Some(data) => format!(
                        "{} zero bytes (an unwritten gap) followed by more data",
                        data - at
                    ),
                },
                Err(other) => other.to_string(),
            };
            let after = examine_after(bytes, id, at, previous, table.as_ref());
            // A sealed segment was synced whole before the next one began.
            let proven = !last || after.proof.is_some() || previous.next() <= durable;
            if !proven {
                break; // a torn tail: opening cuts it
            }
            // Without a valid record after it, the range runs to the end of
            // the data (active segment) or of the file (sealed: its tail may
            // be a hole, which is read with `pread`, never through the map).
            let end = after
                .resumes_at
                .unwrap_or(if last { bytes.len() } else { mapped.len() });
            let evidence = match after.proof {
                _ if !last => "the segment was sealed, so all of it had been synced".to_string(),
                Some((offset, lsn, synced)) => format!(
                    "the record at offset {offset} (LSN {lsn}) was written after LSN {synced} \
                     had been synced"
                ),
                None => {
                    format!("an index checkpoint says the log was synced through LSN {durable}")
                }
            };
            damage.push(DamagedRange {
                segment: id,
                path: path.clone(),
                start: at as u64,
                end: end as u64,
                header: false,
                packed_end: None,
                reason: problem,
                last_good: previous,
                next: after.resume_lsn,
                readable_ids: readable_ids(&bytes[at..end.min(bytes.len())]),
                valid_after: after.valid_records,
                evidence,
            });
            // The record written over the range takes the next LSN.
            previous = previous.next();
            match after.resumes_at {
                Some(resume) => at = resume,
                None => break,
            }
        }
    }
    Ok(damage)
}

/// Where the bytes of `range` go.
pub(crate) fn quarantine_path(shard_dir: &Path, range: &DamagedRange) -> PathBuf {
    shard_dir.join(QUARANTINE_DIR).join(format!(
        "{}.{}-{}.bin",
        segment_file_name(range.segment),
        range.start,
        range.end
    ))
}

/// Moves every range in `damage` to its quarantine file and writes a
/// `Quarantined` record (or a fresh header) over it; `marker_text` goes
/// into the shard's repair marker first. Returns the quarantine files.
pub(crate) fn quarantine(
    storage: &dyn Storage,
    shard_dir: &Path,
    shard: ShardId,
    damage: &[DamagedRange],
    marker_text: &str,
) -> Result<Vec<PathBuf>, WalError> {
    // Readers in other processes trust the synced mark beside a running
    // writer; segments are about to change in place, so there is none.
    let log_dir = shard_dir.join("log");
    super::synced::remove(storage, &log_dir).map_err(io_error(
        &log_dir.join(super::synced::SYNCED_FILE),
        "remove",
    ))?;
    let aside_dir = shard_dir.join(QUARANTINE_DIR);
    storage
        .create_dir_all(&aside_dir)
        .map_err(io_error(&aside_dir, "create directory"))?;
    let mut files = Vec::with_capacity(damage.len());
    for range in damage {
        let bytes = read_range(storage, &range.path, range.start, range.end)?;
        let target = quarantine_path(shard_dir, range);
        let file = storage
            .open(&target, OpenMode::ReadWriteCreate)
            .map_err(io_error(&target, "create"))?;
        file.set_len(0).map_err(io_error(&target, "truncate"))?;
        file.write_all_at(&bytes, 0)
            .map_err(io_error(&target, "write"))?;
        file.sync().map_err(io_error(&target, "sync"))?;
        files.push(target);
    }
    sync_dir(storage, &aside_dir)?;
    sync_dir(storage, shard_dir)?;
    // The marker is durable before any segment changes, so a crash from
    // here on always finishes the repair at the next open.
    let marker = shard_dir.join(REPAIR_MARKER);
    let file = storage
        .open(&marker, OpenMode::ReadWriteCreate)
        .map_err(io_error(&marker, "create"))?;
    file.set_len(0).map_err(io_error(&marker, "truncate"))?;
    file.write_all_at(marker_text.as_bytes(), 0)
        .map_err(io_error(&marker, "write"))?;
    file.sync().map_err(io_error(&marker, "sync"))?;
    sync_dir(storage, shard_dir)?;
    for (range, aside) in damage.iter().zip(&files) {
        let file = storage
            .open(&range.path, OpenMode::ReadWrite)
            .map_err(io_error(&range.path, "open"))?;
        let patch = if range.header {
            encode_packed_segment_header(shard, range.segment, range.packed_end.unwrap_or(0))
                .to_vec()
        } else {
            filler(range, aside)?
        };
        file.write_all_at(&patch, range.start)
            .map_err(io_error(&range.path, "write"))?;
        file.sync().map_err(io_error(&range.path, "sync"))?;
    }
    Ok(files)
}

/// The `Quarantined` record that takes `range`'s place: exactly its length
/// (at least one frame's overhead), with the first lost LSN.
fn filler(range: &DamagedRange, aside: &Path) -> Result<Vec<u8>, WalError> {
    let len = ((range.end - range.start) as usize).max(FRAME_OVERHEAD);
    let lsn = range.last_good.next();
    if range.next.is_some_and(|next| next <= lsn) {
        return Err(WalError::Corrupt {
            path: range.path.clone(),
            offset: range.start,
            reason: format!(
                "cannot repair: no LSN is free between {} and {} for the record that marks \
                 the damaged range",
                range.last_good, lsn
            ),
        });
    }
    let payload = QuarantinePayload {
        first_lost: lsn,
        next: range.next.unwrap_or(Lsn::ZERO),
        file_name: aside
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
    .encode(len - FRAME_OVERHEAD);
    let mut out = Vec::with_capacity(len);
    encode_frame(
        &mut out,
        range.segment,
        RecordType::Quarantined,
        true,
        lsn,
        range.last_good,
        &payload,
    )?;
    Ok(out)
}

fn read_range(
    storage: &dyn Storage,
    path: &Path,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, WalError> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(io_error(path, "open"))?;
    let len = file.size().map_err(io_error(path, "stat"))?;
    let end = end.min(len);
    let mut bytes = vec![0u8; end.saturating_sub(start) as usize];
    file.read_exact_at(&mut bytes, start)
        .map_err(io_error(path, "read"))?;
    Ok(bytes)
}

/// LSNs of the records lost in `range`, when the next record is known.
pub(crate) fn lost_lsns(range: &DamagedRange) -> Option<(Lsn, Lsn)> {
    if range.header {
        return None;
    }
    let first = range.last_good.next();
    let last = Lsn(range.next?.0.checked_sub(1)?);
    (last >= first).then_some((first, last))
}

impl DamagedRange {
    /// The error an open that may not repair reports for this range.
    pub(crate) fn refusal(&self) -> WalError {
        WalError::Damaged(super::log::LogDamage {
            path: self.path.clone(),
            offset: self.start,
            reason: self.reason.clone(),
            valid_after: self.valid_after,
            evidence: self.evidence.clone(),
        })
    }
}
