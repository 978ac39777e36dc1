//! The changes a shard's log states, in commit order: each event record
//! stores an event, each remove record takes one out (the event it names
//! is read from the log). Read by the analytics (to catch up) and by the
//! change feed (`EventStore::changes`).

use crate::error::Error;
use crate::event::EventRef;
use crate::ids::Location;

use super::{FrameError, LogSnapshot, RecordType, RemovePayload, SEGMENT_HEADER_LEN};

/// One change: the log position just after its record, whether the event
/// was stored (or removed), and the event.
pub(crate) struct LogChange<'a> {
    pub next: Location,
    pub stored: bool,
    pub event: EventRef<'a>,
}

/// Walks the changes of `snapshot` from `from` up to `to` (or the log's
/// end), calling `each` until it returns false. Returns the position after
/// the last record read (`from` when none was). Quarantined and compacted
/// records, and removals of events moved to quarantine or compacted away,
/// are skipped.
pub(crate) fn scan_changes<'a>(
    snapshot: &'a LogSnapshot,
    from: Location,
    to: Option<Location>,
    mut each: impl FnMut(LogChange<'a>) -> bool,
) -> Result<Location, Error> {
    let mut position = from;
    let count = snapshot.segments().len();
    for (n, segment) in snapshot.segments().iter().enumerate() {
        if segment.id() < from.segment {
            continue;
        }
        let mut start = if segment.id() == from.segment {
            from.offset.max(SEGMENT_HEADER_LEN as u32)
        } else {
            SEGMENT_HEADER_LEN as u32
        };
        // A position kept from before a compaction may lie inside the
        // records it took (they are gone): reading resumes after them.
        if let Some((first, end)) = segment.vacated_range(start)
            && first < start
        {
            start = end;
        }
        let mut scan = segment.scan_from(start);
        #[allow(clippy::while_let_on_iterator)] // `scan` is read after the loop
        while let Some((offset, record)) = scan.next() {
            let location = segment.location(offset as usize);
            if to.is_some_and(|to| location >= to) {
                return Ok(position);
            }
            let next = segment.location(scan.offset());
            let change = match record.record_type {
                RecordType::Event => {
                    let event = EventRef::parse(record.payload)
                        .map_err(|e| Error::corrupt(format!("event record at {location}: {e}")))?;
                    Some((true, event))
                }
                RecordType::Remove => {
                    let remove = RemovePayload::decode(record.payload).ok_or_else(|| {
                        Error::corrupt(format!("malformed remove record at {location}"))
                    })?;
                    match snapshot.read_event(remove.target) {
                        Ok(target) => Some((false, target)),
                        // Moved to quarantine with damaged bytes (it was in
                        // no index), or compacted away: nothing is left to
                        // remove.
                        Err(_) if snapshot.vacated(remove.target) => None,
                        Err(e) => return Err(e.into()),
                    }
                }
                RecordType::Quarantined | RecordType::Compacted => None,
            };
            position = next;
            if let Some((stored, event)) = change
                && !each(LogChange {
                    next,
                    stored,
                    event,
                })
            {
                return Ok(position);
            }
        }
        // The walk stopped at or past `to` (a torn tail can start right
        // there, beside no writer): all that was asked for was read.
        if to.is_some_and(|to| segment.location(scan.offset()) >= to) {
            return Ok(position);
        }
        // The walk ended before `to`: only a clean end of the written log
        // is one. Anything else (a bad frame where a record should start:
        // damage, or a position that is not a record boundary) is refused,
        // never skipped.
        if let Some(stop) = scan.stop()
            && !matches!(stop, FrameError::End)
        {
            return Err(Error::corrupt(format!(
                "{} at offset {}: {stop} (reading from {from})",
                segment.path().display(),
                scan.offset()
            )));
        }
        // A sealed segment ends exactly after its last record: zeros
        // before that are no end.
        if n + 1 < count && scan.offset() < segment.sealed_end() {
            return Err(Error::corrupt(format!(
                "{} at offset {}: zeros where a record should start, {} bytes before the \
                 segment's end (reading from {from})",
                segment.path().display(),
                scan.offset(),
                segment.sealed_end() - scan.offset()
            )));
        }
    }
    Ok(position)
}
