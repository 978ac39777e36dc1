//! Telling damage from a torn tail, and finding where valid records resume.
//!
//! A crash can leave the end of the log torn: the last batches were written
//! but not all of their bytes reached the disk before power went. Those
//! batches were never acknowledged as durable, so opening the store may cut
//! them. Anything else that makes a frame unreadable (a flipped bit, a lost
//! page in the middle of synced data) is damage, and cutting there would
//! throw away acknowledged records.
//!
//! The two are told apart by evidence, never by position alone. Every frame
//! says which records were durable when its batch was written (its
//! `unsynced_run`, see `format.rs`). A bad frame at LSN `n` followed,
//! anywhere later in the written data, by a valid frame whose batch was
//! written after record `n` had been synced proves that the bad frame once
//! held an acknowledged, synced record: damage. With no such frame after
//! it, the bad frame may be part of an unsynced tail: a torn tail.
//!
//! After damage, [`resync`] finds the next offset where a frame decodes,
//! with a checksum, an LSN that can follow the last good record, and a valid
//! frame (or the clean end) right after it, so bytes of an event's content
//! that happen to look like a frame are not taken for one.

use super::format::{
    FRAME_HEADER_LEN, FRAME_OVERHEAD, FrameError, RecordRef, RecordType, decode_frame,
    peek_frame_header,
};
use super::log::next_data;
use super::packed::PackTable;
use crate::ids::{Lsn, SegmentId};

/// What the written bytes after a bad frame hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AfterProblem {
    /// Where the first valid record after the problem starts.
    pub resumes_at: Option<usize>,
    /// LSN of that record.
    pub resume_lsn: Option<Lsn>,
    /// Valid records from there to the end of the bytes (further damage is
    /// skipped the same way).
    pub valid_records: u64,
    /// The first valid record whose batch was written after the record at
    /// the problem had been synced: (offset, its LSN, the LSN it says was
    /// durable). `Some` proves the problem is damage, not a torn tail.
    pub proof: Option<(usize, Lsn, Lsn)>,
}

/// Looks at the bytes after a bad frame at `problem` (an offset in `bytes`,
/// the written bytes of one segment from its start), where `last_good` is
/// the LSN of the last valid record before it.
/// `table`: a packed segment's relocation table (`bytes` are then the
/// file's, and the runs it leaves out count in the distances that bound
/// how many records can have been lost).
pub(crate) fn examine_after(
    bytes: &[u8],
    segment: SegmentId,
    problem: usize,
    last_good: Lsn,
    table: Option<&PackTable>,
) -> AfterProblem {
    let mut after = AfterProblem::default();
    let first_lost = last_good.next();
    let mut previous = last_good;
    // A frame started at `problem`, and none is shorter than its overhead.
    let mut search_from = problem + FRAME_OVERHEAD;
    while let Some((offset, _)) = resync(bytes, segment, search_from, previous, table) {
        let mut at = offset;
        while let Ok(record) = decode_frame(bytes.get(at..).unwrap_or(&[]), segment) {
            if record.lsn <= previous {
                break;
            }
            if after.resumes_at.is_none() {
                after.resumes_at = Some(at);
                after.resume_lsn = Some(record.lsn);
            }
            after.valid_records += 1;
            let durable = record.durable_lsn();
            if after.proof.is_none() && durable >= first_lost {
                after.proof = Some((at, record.lsn, durable));
            }
            previous = record.last_lsn();
            at += record.frame_len();
        }
        if next_data(bytes, at).is_none() {
            break;
        }
        // More damage further on: look past it the same way.
        search_from = at + 1;
    }
    after
}

/// The first offset at or after `from` where a valid frame starts whose LSN
/// can follow `after`, and which is followed by a valid frame with the next
/// LSN or by the clean end of the written bytes; with the record there.
pub(crate) fn resync<'b>(
    bytes: &'b [u8],
    segment: SegmentId,
    from: usize,
    after: Lsn,
    table: Option<&PackTable>,
) -> Option<(usize, RecordRef<'b>)> {
    // Bytes between two file offsets as the log counts them: with a
    // packed segment's runs (the records a damaged compacted frame held).
    let logical = |at: usize| match (table, u32::try_from(at)) {
        (Some(table), Ok(at)) => table.logical(at) as usize,
        _ => at,
    };
    let mut at = from;
    while at + FRAME_OVERHEAD <= bytes.len() {
        // Cheap tests before the checksum: a known record type, a frame
        // that fits, and an LSN that could follow: no more records can have
        // been lost than fit in the bytes skipped.
        let header = peek_frame_header(&bytes[at..])?;
        let fits = (header.payload_len as usize)
            .checked_add(FRAME_OVERHEAD)
            .is_some_and(|len| at + len <= bytes.len());
        let skipped =
            logical(at).saturating_sub(logical(from.min(at))) as u64 / FRAME_OVERHEAD as u64;
        let plausible_lsn = header.lsn > after && header.lsn.0 - after.0 <= skipped + 2;
        if header.record_type().is_some()
            && fits
            && plausible_lsn
            && let Ok(record) = decode_frame(&bytes[at..], segment)
            && follows(bytes, segment, at + record.frame_len(), record.last_lsn())
        {
            return Some((at, record));
        }
        at += 1;
    }
    None
}

/// Whether what starts at `at` can follow a record with LSN `lsn`: a valid
/// frame with the next LSN, or the clean end of the written bytes.
fn follows(bytes: &[u8], segment: SegmentId, at: usize, lsn: Lsn) -> bool {
    match decode_frame(bytes.get(at..).unwrap_or(&[]), segment) {
        Ok(next) => next.lsn == lsn.next(),
        Err(FrameError::End) => true,
        Err(_) => false,
    }
}

/// Event ids that can still be read from the damaged bytes `range` (frames
/// followed by their claimed lengths; their checksums fail, so the ids are
/// unverified).
pub(crate) fn readable_ids(range: &[u8]) -> Vec<[u8; 32]> {
    let mut ids = Vec::new();
    let mut at = 0;
    while let Some(header) = peek_frame_header(&range[at..]) {
        let len = header.payload_len as usize;
        let Some(end) = (at + FRAME_OVERHEAD).checked_add(len) else {
            break;
        };
        if header.record_type() == Some(RecordType::Event)
            && let Some(payload) =
                range.get(at + FRAME_HEADER_LEN..end - FRAME_OVERHEAD + FRAME_HEADER_LEN)
            && let Ok(event) = crate::event::EventRef::parse(payload)
        {
            ids.push(event.id().0);
        }
        if end > range.len() || len == 0 && header.type_byte == 0 {
            break;
        }
        at = end;
    }
    ids
}
