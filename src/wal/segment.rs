//! One log segment file, memory-mapped for reading, and a scanner that walks
//! its records in order.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::error::{WalError, io_error};
use super::format::{
    FrameError, RecordRef, SEGMENT_HEADER_LEN, decode_frame, decode_segment_header,
};
use crate::ids::{Location, SegmentId, ShardId};
use crate::storage::{Mapping, OpenMode, Storage};

/// File name of a segment: the id zero-padded to 20 digits, so names sort like ids.
pub(crate) fn segment_file_name(id: SegmentId) -> String {
    format!("{:020}.seg", id.0)
}

/// Parses a segment file name back into its id.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<SegmentId> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u32>().ok().map(SegmentId)
}

/// A read-only memory map of one segment. The active segment is mapped at its
/// pre-sized length, so records appended later are visible through the same
/// map (Linux keeps `write` and shared maps of one file coherent).
///
/// Only the first `readable` bytes are ever read through the map: what was
/// written (for the active segment, up to where the writer has appended).
/// The rest of a pre-sized file is a hole, and reading a hole through a map
/// on a file system that has run out of space (tmpfs) raises SIGBUS: it
/// must allocate a page for it and cannot.
#[derive(Debug)]
pub struct Segment {
    id: SegmentId,
    path: PathBuf,
    map: Option<Mapping>,
    readable: AtomicUsize,
}

impl Segment {
    /// Maps `path` and checks that its header names `shard` and `id`.
    pub(crate) fn open(
        storage: &dyn Storage,
        path: &Path,
        shard: ShardId,
        id: SegmentId,
    ) -> Result<Segment, WalError> {
        // The map outlives the file handle. Megalith only ever appends to a
        // segment past every offset a reader can reach (readers follow index
        // entries and scans that stop at the written end), and truncates a
        // segment only past its written end, so mapped bytes that are read
        // are never changed underneath (the `Mapping` contract).
        let file = storage
            .open(path, OpenMode::Read)
            .map_err(io_error(path, "open"))?;
        let map = file.map(0).map_err(io_error(path, "map"))?;
        // Past the end of the file's data there are only holes (or nothing).
        let data_end = file
            .data_end()
            .map_err(io_error(path, "find the end of data"))?;
        let mapped = map.as_deref().map_or(0, <[u8]>::len);
        let segment = Segment {
            id,
            path: path.to_path_buf(),
            map,
            readable: AtomicUsize::new((data_end as usize).min(mapped)),
        };
        let header =
            decode_segment_header(segment.bytes()).map_err(|reason| WalError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason,
            })?;
        if header.shard != shard || header.segment != id {
            return Err(WalError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!(
                    "header says shard {} segment {}, expected shard {shard} segment {id}",
                    header.shard, header.segment
                ),
            });
        }
        Ok(segment)
    }

    pub fn id(&self) -> SegmentId {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The readable bytes, header included: the file's data (whole pages;
    /// unwritten space in them reads as zeros), or for the active segment once
    /// the log is open, what the writer has appended.
    pub fn bytes(&self) -> &[u8] {
        let map = self.map.as_deref().unwrap_or(&[]);
        &map[..self.readable.load(Ordering::Acquire).min(map.len())]
    }

    /// The file's length when it was mapped (a sealed segment ends exactly
    /// after its last record; the readable bytes may stop earlier where the
    /// file's tail is a hole).
    pub fn file_len(&self) -> usize {
        self.map.as_deref().map_or(0, <[u8]>::len)
    }

    /// Maps the readable pages the page cache already holds (see
    /// [`Mapping::map_resident`]); returns the bytes mapped.
    pub(crate) fn map_resident(&self) -> std::io::Result<u64> {
        let readable = self.readable.load(Ordering::Acquire);
        self.map
            .as_ref()
            .map_or(Ok(0), |map| map.map_resident(readable))
    }

    /// Lets readers see the first `len` bytes (the writer, once they are
    /// written: nothing past them is read).
    pub(crate) fn set_readable(&self, len: usize) {
        self.readable.store(len, Ordering::Release);
    }

    /// Decodes and checksums the record whose frame starts at `offset`.
    pub fn read(&self, offset: u32) -> Result<RecordRef<'_>, FrameError> {
        let offset = offset as usize;
        if offset < SEGMENT_HEADER_LEN {
            return Err(FrameError::Truncated {
                needed: SEGMENT_HEADER_LEN,
                available: offset,
            });
        }
        let bytes = self.bytes().get(offset..).unwrap_or(&[]);
        decode_frame(bytes, self.id)
    }

    /// Walks the records from `offset` (the first frame: `SEGMENT_HEADER_LEN`).
    pub fn scan_from(&self, offset: u32) -> SegmentScan<'_> {
        SegmentScan {
            segment: self,
            offset: (offset as usize).max(SEGMENT_HEADER_LEN),
            stop: None,
        }
    }

    pub(crate) fn location(&self, offset: usize) -> Location {
        Location {
            segment: self.id,
            offset: offset as u32,
        }
    }
}

/// Iterator over `(offset, record)` of one segment; after it ends,
/// [`SegmentScan::stop`] says why and where.
#[derive(Debug)]
pub struct SegmentScan<'a> {
    segment: &'a Segment,
    offset: usize,
    stop: Option<FrameError>,
}

impl<'a> SegmentScan<'a> {
    /// Offset just past the last record returned so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Why the scan ended (`FrameError::End` for the clean end of the written log).
    pub fn stop(&self) -> Option<&FrameError> {
        self.stop.as_ref()
    }
}

impl<'a> Iterator for SegmentScan<'a> {
    type Item = (u32, RecordRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.stop.is_some() {
            return None;
        }
        let Ok(offset) = u32::try_from(self.offset) else {
            self.stop = Some(FrameError::End);
            return None;
        };
        let bytes = self.segment.bytes().get(self.offset..).unwrap_or(&[]);
        match decode_frame(bytes, self.segment.id) {
            Ok(record) => {
                self.offset += record.frame_len();
                Some((offset, record))
            }
            Err(error) => {
                self.stop = Some(error);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let name = segment_file_name(SegmentId(42));
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_segment_file_name(&name), Some(SegmentId(42)));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
    }
}
