//! The synced mark (`log/SYNCED`): where a running writer's log is known
//! durable, for readers in other processes (`ChangeReader`).
//!
//! A reader that follows a log beside its writer must not deliver a batch
//! that a power loss could still take back, and must not read a segment
//! past the point a writer might cut it (reading a truncated map kills the
//! reader). The writer's durable end answers both: it only grows while the
//! writer runs (every cut, at a reopen after a failure or at the next
//! open's recovery, lies past it), and every batch before it is whole.
//!
//! Layout (32 bytes, integers little-endian; rewritten in place after every
//! sync of the log and at every open, never synced itself: it says nothing
//! after a power loss, when no writer runs):
//!
//! ```text
//!   0  magic     8 bytes  "MGSYNC01"
//!   8  segment   u32      segment of the durable end
//!  12  offset    u32      offset just past the last synced batch
//!  16  lsn       u64      LSN of the last synced record
//!  24  crc       u64      crc64 of bytes 0..24
//! ```

use std::io;
use std::path::Path;

use crate::ids::{Location, Lsn, SegmentId, crc64};
use crate::storage::{OpenMode, Storage};

/// File name of the mark, in a shard's log directory.
pub(crate) const SYNCED_FILE: &str = "SYNCED";

const MAGIC: &[u8; 8] = b"MGSYNC01";
const LEN: usize = 32;

/// The mark's bytes for a log durable up to `end` (whose last record is `lsn`).
pub(crate) fn encode(end: Location, lsn: Lsn) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&end.segment.0.to_le_bytes());
    out[12..16].copy_from_slice(&end.offset.to_le_bytes());
    out[16..24].copy_from_slice(&lsn.0.to_le_bytes());
    let crc = crc64(&[&out[..24]]);
    out[24..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The durable end a mark states; `None` for bytes that are not a whole
/// mark (a write the reader raced, or anything else).
pub(crate) fn decode(bytes: &[u8]) -> Option<(Location, Lsn)> {
    if bytes.len() != LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    if crc64(&[&bytes[..24]]) != u64_at(24) {
        return None;
    }
    Some((
        Location {
            segment: SegmentId(u32_at(8)),
            offset: u32_at(12),
        },
        Lsn(u64_at(16)),
    ))
}

/// Reads the mark of the log in `dir`: `Ok(None)` when there is none, or
/// when it did not read whole after a few tries (a reader racing the
/// writer's rewrite; the caller waits and asks again).
pub(crate) fn read(storage: &dyn Storage, dir: &Path) -> io::Result<Option<(Location, Lsn)>> {
    let path = dir.join(SYNCED_FILE);
    for _ in 0..4 {
        match storage.read_file(&path) {
            Ok(bytes) => {
                if let Some(mark) = decode(&bytes) {
                    return Ok(Some(mark));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        std::thread::yield_now();
    }
    Ok(None)
}

/// [`read`] of the real file system, for tools: the durable end only.
pub(crate) fn read_synced_mark(dir: &Path) -> Result<Option<Location>, crate::error::Error> {
    read(&crate::storage::FileStorage, dir)
        .map(|mark| mark.map(|(end, _)| end))
        .map_err(|e| crate::error::io_error(&dir.join(SYNCED_FILE), "read")(e))
}

/// Opens (creating) the mark of the log in `dir` for the writer.
pub(crate) fn open_for_writing(
    storage: &dyn Storage,
    dir: &Path,
) -> io::Result<Box<dyn crate::storage::StorageFile>> {
    storage.open(&dir.join(SYNCED_FILE), OpenMode::ReadWriteCreate)
}

/// Removes the mark (before a repair changes segments in place: readers
/// beside it then wait instead of trusting a stale mark).
pub(crate) fn remove(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    let path = dir.join(SYNCED_FILE);
    if storage.exists(&path)? {
        storage.remove_file(&path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_only_whole() {
        let end = Location {
            segment: SegmentId(7),
            offset: 123_456,
        };
        let bytes = encode(end, Lsn(99));
        assert_eq!(decode(&bytes), Some((end, Lsn(99))));
        for at in 0..LEN {
            let mut bad = bytes;
            bad[at] ^= 0x10;
            assert_eq!(decode(&bad), None, "byte {at} flipped");
        }
        assert_eq!(decode(&bytes[..31]), None);
        // A write raced half way: the old mark's tail under a new head.
        let other = encode(
            Location {
                segment: SegmentId(7),
                offset: 200_000,
            },
            Lsn(120),
        );
        let mut torn = bytes;
        torn[..16].copy_from_slice(&other[..16]);
        assert_eq!(decode(&torn), None);
    }
}
