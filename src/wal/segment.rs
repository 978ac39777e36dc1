//! One log segment file, memory-mapped for reading, and a scanner that walks
//! its records in order.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::error::{WalError, io_error};
use super::format::{
    FrameError, RecordRef, RecordType, SEGMENT_HEADER_LEN, decode_frame, decode_frame_checking,
    decode_segment_header,
};
use super::packed::PackTable;
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

/// A read-only memory map of one segment. The writer maps the active
/// segment with an address range as large as the segment may grow, so
/// records appended later (the file grows under the map) are visible
/// through the same map (Linux keeps `write` and shared maps of one file
/// coherent).
///
/// Only the first `readable` bytes are ever read through the map: what was
/// written (for the active segment, up to where the writer has appended).
/// Past them the file is a hole or ends, and reading a hole through a map
/// on a file system that has run out of space (tmpfs) raises SIGBUS (it
/// must allocate a page for it and cannot), as does reading past the end.
#[derive(Debug)]
pub struct Segment {
    id: SegmentId,
    path: PathBuf,
    map: Option<Mapping>,
    readable: AtomicUsize,
    /// Offsets of frames whose checksum [`Segment::read_once_verified`]
    /// has verified, made at its first call.
    verified: OnceLock<VerifiedFrames>,
    /// The byte ranges of quarantined and compacted frames (holes
    /// included), found by one scan at the first call of
    /// [`Segment::vacated_range`]. The writer appends only event and
    /// remove records, so the list never grows after it is made.
    vacated: OnceLock<Vec<(u32, u32)>>,
    /// A packed segment's relocation table (`packed.rs`): offsets given
    /// to and returned by every method but [`Segment::bytes`] are logical
    /// (locations), and the table says where they are in the file.
    packed: Option<PackTable>,
}

/// Offsets of frames whose checksum was verified, in a table of fixed size
/// (a slot per offset's hash; a newer offset takes the slot of an older
/// one, which is then verified again at its next read). A frame's bytes
/// below the readable end never change while the segment is mapped (the
/// log only appends; a writer that fails is opened again with new
/// segments), so a frame verified once needs no second check, like an
/// index page. Keyed by the exact offset: a location that points into the
/// middle of a frame, or at another frame, is checked as before.
#[derive(Debug)]
struct VerifiedFrames(Box<[AtomicU32]>);

impl VerifiedFrames {
    /// A slot per KiB of the segment's file, between 4,096 and 1,048,576
    /// (4 MiB for a full 1 GiB segment).
    fn for_file(len: usize) -> VerifiedFrames {
        let slots = (len / 1024).clamp(4096, 1 << 20).next_power_of_two();
        VerifiedFrames((0..slots).map(|_| AtomicU32::new(0)).collect())
    }

    fn slot(&self, offset: u32) -> &AtomicU32 {
        let hash = u64::from(offset).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.0[hash as usize & (self.0.len() - 1)]
    }

    /// Offset 0 (the segment header) is never a frame, so 0 marks an empty slot.
    fn contains(&self, offset: u32) -> bool {
        offset != 0 && self.slot(offset).load(Ordering::Relaxed) == offset
    }

    fn insert(&self, offset: u32) {
        self.slot(offset).store(offset, Ordering::Relaxed);
    }
}

impl Segment {
    /// Maps `path` and checks that its header names `shard` and `id`.
    pub(crate) fn open(
        storage: &dyn Storage,
        path: &Path,
        shard: ShardId,
        id: SegmentId,
    ) -> Result<Segment, WalError> {
        Segment::open_growing(storage, path, shard, id, 0)
    }

    /// [`Segment::open`], with an address range of at least `reach` bytes:
    /// the writer's map of the active segment, which grows up to that.
    pub(crate) fn open_growing(
        storage: &dyn Storage,
        path: &Path,
        shard: ShardId,
        id: SegmentId,
        reach: u64,
    ) -> Result<Segment, WalError> {
        // The map outlives the file handle. Megalith only ever appends to a
        // segment past every offset a reader can reach (readers follow index
        // entries and scans that stop at the written end), and truncates a
        // segment only past its written end, so mapped bytes that are read
        // are never changed underneath (the `Mapping` contract).
        let file = storage
            .open(path, OpenMode::Read)
            .map_err(io_error(path, "open"))?;
        let map = file.map(reach).map_err(io_error(path, "map"))?;
        // Past the end of the file's data there are only holes (or nothing).
        let data_end = file
            .data_end()
            .map_err(io_error(path, "find the end of data"))?;
        let mapped = map.as_deref().map_or(0, <[u8]>::len);
        let mut segment = Segment {
            id,
            path: path.to_path_buf(),
            map,
            readable: AtomicUsize::new((data_end as usize).min(mapped)),
            verified: OnceLock::new(),
            vacated: OnceLock::new(),
            packed: None,
        };
        let header =
            decode_segment_header(segment.bytes()).map_err(|reason| WalError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason,
            })?;
        if let Some(records_end) = header.packed_end {
            // Sealed and written whole: the map covers the file.
            let file_bytes = segment.map.as_deref().unwrap_or(&[]);
            let table =
                PackTable::decode(file_bytes, records_end).map_err(|reason| WalError::Corrupt {
                    path: path.to_path_buf(),
                    offset: u64::from(records_end),
                    reason,
                })?;
            segment.readable = AtomicUsize::new(records_end as usize);
            segment.packed = Some(table);
        }
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

    /// Whether compaction wrote this segment densely (`packed.rs`).
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// A packed segment's relocation table.
    pub fn pack_table(&self) -> Option<&PackTable> {
        self.packed.as_ref()
    }

    /// Where the logical offset `offset` (a location's) is in the file;
    /// `None` inside bytes a packed segment leaves out.
    pub fn file_offset(&self, offset: u32) -> Option<u32> {
        match &self.packed {
            Some(table) => table.file_offset(offset),
            None => Some(offset),
        }
    }

    /// The logical offset just past the last readable record (for a
    /// segment that is not packed, the readable length).
    pub fn logical_end(&self) -> usize {
        let readable = self.readable.load(Ordering::Acquire);
        match &self.packed {
            Some(table) => table.logical(readable as u32) as usize,
            None => readable,
        }
    }

    /// Where a sealed segment's records end, as a logical offset: the
    /// file's length (a sealed segment ends exactly after its last
    /// record), or a packed segment's last record's logical end.
    pub fn sealed_end(&self) -> usize {
        match &self.packed {
            Some(table) => table.logical_end() as usize,
            None => self.file_len(),
        }
    }

    /// The readable bytes **of the file**, header included (for a packed
    /// segment, file offsets: see [`Segment::file_offset`]): the file's data (whole pages;
    /// unwritten space in them reads as zeros), or for the active segment once
    /// the log is open, what the writer has appended.
    pub fn bytes(&self) -> &[u8] {
        // Past the file's length when mapped, for an active segment that
        // grew since: `readable` never passes what was written.
        self.map
            .as_ref()
            .map_or(&[], |map| map.prefix(self.readable.load(Ordering::Acquire)))
    }

    /// The file's length when it was mapped (a sealed segment ends exactly
    /// after its last record; the readable bytes may stop earlier where the
    /// file's tail is a hole).
    pub fn file_len(&self) -> usize {
        self.map.as_deref().map_or(0, <[u8]>::len)
    }

    /// How far the segment can be read through its map: the file's length
    /// when mapped, or for the writer's active segment as far as it may grow.
    fn reach(&self) -> usize {
        self.map.as_ref().map_or(0, Mapping::reserved)
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
        // A packed segment is sealed and read to its records' end, always
        // (a length asked for here would be a logical offset).
        if self.packed.is_some() {
            return;
        }
        self.readable.store(len, Ordering::Release);
    }

    /// Decodes and checksums the record whose frame starts at `offset`.
    pub fn read(&self, offset: u32) -> Result<RecordRef<'_>, FrameError> {
        if (offset as usize) < SEGMENT_HEADER_LEN {
            return Err(FrameError::Truncated {
                needed: SEGMENT_HEADER_LEN,
                available: offset as usize,
            });
        }
        // Inside bytes a packed segment left out: as the zeros of a hole.
        let at = self.file_offset(offset).ok_or(FrameError::End)?;
        let bytes = self.bytes().get(at as usize..).unwrap_or(&[]);
        self.logical_record(at, decode_frame(bytes, self.id))
    }

    /// A record read at file offset `at`, made as long as the log counts
    /// it: a packed segment's `Compacted` frame with its run's bytes (the
    /// file says 0), and a frame that covers one (a quarantined range a
    /// repair wrote over a damaged compacted frame) with those too.
    fn logical_record<'s>(
        &self,
        at: u32,
        record: Result<RecordRef<'s>, FrameError>,
    ) -> Result<RecordRef<'s>, FrameError> {
        let mut record = record?;
        if let Some(table) = &self.packed
            && covers_runs(record.record_type)
        {
            record.skip += logical_extra(table, at, record.frame_len());
        }
        Ok(record)
    }

    /// [`Segment::read`], with the checksum verified only the first time
    /// the frame at `offset` is read (as far as the table of verified
    /// frames remembers): every read by location (`LogSnapshot::read_event`:
    /// queries, which read the same popular records again and again, and
    /// the writer's checks). Scans check every frame.
    pub fn read_once_verified(&self, offset: u32) -> Result<RecordRef<'_>, FrameError> {
        let verified = self
            .verified
            .get_or_init(|| VerifiedFrames::for_file(self.reach()));
        if verified.contains(offset) {
            let at = self.file_offset(offset).ok_or(FrameError::End)?;
            let bytes = self.bytes().get(at as usize..).unwrap_or(&[]);
            return self.logical_record(at, decode_frame_checking(bytes, self.id, false));
        }
        let record = self.read(offset)?;
        verified.insert(offset);
        Ok(record)
    }

    /// The quarantined or compacted frame (start, end; a compacted frame's
    /// hole included) that `offset` lies in, if any.
    pub fn vacated_range(&self, offset: u32) -> Option<(u32, u32)> {
        let ranges = self.vacated.get_or_init(|| {
            self.scan_from(SEGMENT_HEADER_LEN as u32)
                .filter(|(_, record)| {
                    matches!(
                        record.record_type,
                        RecordType::Quarantined | RecordType::Compacted
                    )
                })
                .map(|(at, record)| (at, at + record.frame_len() as u32))
                .collect()
        });
        let after = ranges.partition_point(|&(start, _)| start <= offset);
        let &(start, end) = ranges.get(after.checked_sub(1)?)?;
        (offset < end).then_some((start, end))
    }

    /// Walks the records from `offset` (the first frame: `SEGMENT_HEADER_LEN`;
    /// an offset inside bytes a packed segment left out starts at the
    /// record after them).
    pub fn scan_from(&self, offset: u32) -> SegmentScan<'_> {
        let offset = offset.max(SEGMENT_HEADER_LEN as u32);
        let at = match &self.packed {
            Some(table) => table.file_offset_at_or_after(offset),
            None => offset,
        };
        SegmentScan {
            segment: self,
            offset: at as usize,
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

/// Whether a frame of this type can hold a packed segment's left-out run:
/// a `Compacted` frame, or a `Quarantined` range written over one (an
/// event or remove frame that checks cannot; reads of events skip the
/// look-up).
pub(crate) fn covers_runs(record_type: RecordType) -> bool {
    matches!(record_type, RecordType::Compacted | RecordType::Quarantined)
}

/// The bytes a packed segment leaves out inside the frame of `len` bytes
/// at file offset `at`: the runs of the compacted frames it holds.
pub(crate) fn logical_extra(table: &PackTable, at: u32, len: usize) -> u32 {
    let end = u32::try_from(at as usize + len).unwrap_or(u32::MAX);
    (table.logical(end) - table.logical(at)).saturating_sub(end - at)
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
    /// Offset (logical) just past the last record returned so far.
    pub fn offset(&self) -> usize {
        match &self.segment.packed {
            Some(table) => {
                u32::try_from(self.offset).map_or(self.offset, |at| table.logical(at) as usize)
            }
            None => self.offset,
        }
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
                // The file holds the frame only; its run's length comes
                // from the table.
                self.offset += record.frame_len();
                match &self.segment.packed {
                    Some(table) => self
                        .segment
                        .logical_record(offset, Ok(record))
                        .ok()
                        .map(|record| (table.logical(offset), record)),
                    None => Some((offset, record)),
                }
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
    use crate::ids::Lsn;
    use crate::storage::FileStorage;
    use crate::wal::format::{RecordType, encode_frame, encode_segment_header};

    /// Reads through the table of verified frames give what checked reads
    /// give, again and again; a frame damaged before its first read, and an
    /// offset into the middle of a frame already verified, are refused.
    #[test]
    fn frames_verified_once_read_like_checked_ones_and_damage_is_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(SegmentId(3)));
        let mut bytes = encode_segment_header(ShardId(1), SegmentId(3)).to_vec();
        let mut offsets = Vec::new();
        for n in 0..200u64 {
            offsets.push(bytes.len() as u32);
            let payload = vec![(n % 251) as u8; 40 + (n as usize * 37) % 300];
            encode_frame(
                &mut bytes,
                SegmentId(3),
                RecordType::Event,
                true,
                Lsn(n + 1),
                Lsn(n),
                &payload,
            )
            .unwrap();
        }
        // The last frame's payload gets one flipped byte.
        let damaged = *offsets.last().unwrap();
        bytes[damaged as usize + 40] ^= 0x10;
        let file = FileStorage.open(&path, OpenMode::ReadWriteCreate).unwrap();
        file.write_all_at(&bytes, 0).unwrap();
        drop(file);
        let segment = Segment::open(&FileStorage, &path, ShardId(1), SegmentId(3)).unwrap();
        for _ in 0..3 {
            for &offset in &offsets[..offsets.len() - 1] {
                let checked = segment.read(offset).unwrap();
                let once = segment.read_once_verified(offset).unwrap();
                assert_eq!((once.lsn, once.payload), (checked.lsn, checked.payload));
                assert!(
                    segment.read_once_verified(offset + 1).is_err(),
                    "an offset inside the frame at {offset} was read"
                );
            }
            assert_eq!(
                segment.read_once_verified(damaged).err(),
                Some(FrameError::ChecksumMismatch)
            );
        }
    }

    /// The same logical layout written with holes after compacted frames
    /// and written packed: every read, scan and vacated range the same,
    /// at every offset.
    #[test]
    fn a_packed_segment_reads_like_its_twin_with_holes() {
        use crate::wal::format::{CompactedPayload, encode_packed_segment_header};
        use crate::wal::packed::PackTable;
        let dir = tempfile::tempdir().unwrap();
        let id = SegmentId(5);
        let mut holes = encode_segment_header(ShardId(2), id).to_vec();
        let mut packed = Vec::new();
        let mut entries = Vec::new();
        let mut lsn = 1u64;
        for n in 0..120u64 {
            let compacted = n % 4 == 1 || n % 9 == 0;
            let (record_type, payload, skip) = if compacted {
                let skip = (40 + n * 131 % 2000) as u32;
                let run = CompactedPayload {
                    skip,
                    records: 3,
                    last: Lsn(lsn + 2),
                };
                (RecordType::Compacted, run, skip)
            } else {
                let run = CompactedPayload {
                    skip: 0,
                    records: 0,
                    last: Lsn(0),
                };
                (RecordType::Event, run, 0)
            };
            let body = if compacted {
                payload.encode().to_vec()
            } else {
                vec![(n % 251) as u8; 30 + (n as usize * 53) % 700]
            };
            let mut hole_frame = Vec::new();
            encode_frame(
                &mut hole_frame,
                id,
                record_type,
                true,
                Lsn(lsn),
                Lsn(lsn - 1),
                &body,
            )
            .unwrap();
            holes.extend_from_slice(&hole_frame);
            holes.resize(holes.len() + skip as usize, 0);
            let stored = if compacted {
                entries.push(((packed.len() + SEGMENT_HEADER_LEN) as u32, skip));
                let zero = CompactedPayload { skip: 0, ..payload };
                let mut frame = Vec::new();
                encode_frame(
                    &mut frame,
                    id,
                    record_type,
                    true,
                    Lsn(lsn),
                    Lsn(lsn - 1),
                    &zero.encode(),
                )
                .unwrap();
                frame
            } else {
                hole_frame
            };
            packed.extend_from_slice(&stored);
            lsn += if compacted { 3 } else { 1 };
        }
        let records_end = (packed.len() + SEGMENT_HEADER_LEN) as u32;
        let table = PackTable::new(records_end, &entries).unwrap();
        let mut packed_file = encode_packed_segment_header(ShardId(2), id, records_end).to_vec();
        packed_file.extend_from_slice(&packed);
        packed_file.extend_from_slice(&table.encode());
        let open = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            Segment::open(&FileStorage, &path, ShardId(2), id).unwrap()
        };
        let with_holes = open("holes.seg", &holes);
        let dense = open("packed.seg", &packed_file);
        assert!(dense.is_packed() && !with_holes.is_packed());
        assert!((records_end as usize) < holes.len() / 2);
        assert_eq!(dense.sealed_end(), with_holes.sealed_end());
        let walk = |s: &Segment, from: u32| -> Vec<(u32, Lsn, usize, u32)> {
            s.scan_from(from)
                .map(|(at, r)| (at, r.lsn, r.frame_len(), r.skip))
                .collect()
        };
        let all = walk(&with_holes, SEGMENT_HEADER_LEN as u32);
        assert_eq!(all.len(), 120);
        assert_eq!(walk(&dense, SEGMENT_HEADER_LEN as u32), all);
        for offset in SEGMENT_HEADER_LEN as u32..with_holes.sealed_end() as u32 {
            let (a, b) = (with_holes.read(offset), dense.read(offset));
            // A compacted frame's payload says its hole's length only in
            // the segment with holes (the packed one keeps it in the table).
            let seen = |r: &RecordRef<'_>| {
                let from = if r.record_type == RecordType::Compacted {
                    4
                } else {
                    0
                };
                (r.lsn, r.payload[from..].to_vec(), r.skip)
            };
            assert_eq!(
                a.as_ref().map(seen).ok(),
                b.as_ref().map(seen).ok(),
                "read at {offset}"
            );
            assert_eq!(
                with_holes.vacated_range(offset),
                dense.vacated_range(offset),
                "vacated at {offset}"
            );
            if all.iter().any(|&(at, ..)| at == offset) {
                assert_eq!(walk(&dense, offset), walk(&with_holes, offset));
                assert_eq!(
                    dense.read_once_verified(offset).unwrap().lsn,
                    a.unwrap().lsn
                );
            }
        }
    }

    /// A packed segment with one copy of its table damaged opens; with
    /// both damaged it is refused with an error that names the table.
    #[test]
    fn a_packed_segment_survives_one_damaged_table_copy() {
        use crate::wal::format::{CompactedPayload, encode_packed_segment_header};
        use crate::wal::packed::PackTable;
        let dir = tempfile::tempdir().unwrap();
        let id = SegmentId(1);
        let mut frame = Vec::new();
        let run = CompactedPayload {
            skip: 0,
            records: 2,
            last: Lsn(2),
        };
        encode_frame(
            &mut frame,
            id,
            RecordType::Compacted,
            true,
            Lsn(1),
            Lsn(0),
            &run.encode(),
        )
        .unwrap();
        encode_frame(
            &mut frame,
            id,
            RecordType::Event,
            true,
            Lsn(3),
            Lsn(2),
            &[9u8; 64],
        )
        .unwrap();
        let records_end = (SEGMENT_HEADER_LEN + frame.len()) as u32;
        let table = PackTable::new(records_end, &[(SEGMENT_HEADER_LEN as u32, 1000)]).unwrap();
        let mut file = encode_packed_segment_header(ShardId(0), id, records_end).to_vec();
        file.extend_from_slice(&frame);
        let table = table.encode();
        file.extend_from_slice(&table);
        let path = dir.path().join("s.seg");
        // The second copy starts at the file's first 4 KiB boundary after.
        let first = records_end as usize + 20;
        let second = 4096 + 20;
        for damaged in [vec![first], vec![second], vec![first, second]] {
            let mut bytes = file.clone();
            for &at in &damaged {
                bytes[at] ^= 0x40;
            }
            std::fs::write(&path, &bytes).unwrap();
            match Segment::open(&FileStorage, &path, ShardId(0), id) {
                Ok(segment) => {
                    assert_eq!(damaged.len(), 1);
                    let event = 32 + 41 + 1000;
                    assert_eq!(segment.read(event).unwrap().lsn, Lsn(3));
                }
                Err(error) => {
                    assert_eq!(damaged.len(), 2);
                    assert!(
                        error.to_string().contains("damaged in both copies"),
                        "{error}"
                    );
                }
            }
        }
    }

    #[test]
    fn file_names_round_trip() {
        let name = segment_file_name(SegmentId(42));
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_segment_file_name(&name), Some(SegmentId(42)));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
    }
}
