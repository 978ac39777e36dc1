//! Packed segments: a sealed segment that compaction wrote densely
//! (`docs/format.md`, "Packed segments").
//!
//! Compaction replaces each run of removed event records with one
//! `Compacted` frame. In a packed segment the frame is followed directly by
//! the next record, and the file does not hold the run's other bytes at
//! all. Every location keeps its meaning: a record's **logical** offset
//! (the one in locations, index entries, remove records and change-feed
//! positions) is its offset in the file plus the bytes of every run before
//! it. The **relocation table** after the records lists each `Compacted`
//! frame's file offset and how many bytes its run held past the frame, so
//! logical and file offsets translate both ways with a binary search.
//!
//! Inside the file every frame reads as in any other segment: a
//! `Compacted` frame says `skip = 0` there, so tools that walk the frames
//! of the file (damage checks, repair, the hexdump) walk them unchanged;
//! only the table knows how long each run was. The table is written twice,
//! each copy with its own checksum, because losing it would lose the
//! meaning of every location after the first run.

use crate::ids::crc64;

use super::format::{CompactedPayload, FRAME_OVERHEAD, SEGMENT_HEADER_LEN};

/// Bytes of a `Compacted` frame (its header, payload and checksum).
pub(crate) const COMPACTED_FRAME_LEN: u32 = (FRAME_OVERHEAD + CompactedPayload::LEN) as u32;

const TABLE_MAGIC: [u8; 8] = *b"MGPACK01";
/// Magic, records end (u32), entries (u32).
const COPY_HEAD: usize = 16;
const ENTRY_LEN: usize = 8;
const COPY_CRC: usize = 8;
/// The second copy starts at a multiple of this in the file.
const BLOCK: usize = 4096;

/// One `Compacted` frame of a packed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedFrame {
    /// Where the frame starts in the file.
    file: u32,
    /// Where it starts in the segment's logical layout (its location).
    logical: u32,
    /// Logical bytes of its run after the frame, which the file leaves out.
    skip: u32,
}

/// A packed segment's relocation table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackTable {
    records_end: u32,
    frames: Vec<PackedFrame>,
}

impl PackTable {
    /// A table for records that end at `records_end` in the file, with a
    /// `Compacted` frame at each `(file offset, skip)`, in file order.
    pub(crate) fn new(records_end: u32, entries: &[(u32, u32)]) -> Result<PackTable, String> {
        let mut frames = Vec::with_capacity(entries.len());
        let mut shift: u64 = 0;
        let mut next_free = SEGMENT_HEADER_LEN as u64;
        for (n, &(file, skip)) in entries.iter().enumerate() {
            let end = u64::from(file) + u64::from(COMPACTED_FRAME_LEN);
            if u64::from(file) < next_free || end > u64::from(records_end) {
                return Err(format!(
                    "relocation entry {n} puts a compacted frame at offset {file}, outside the \
                     records or over the one before"
                ));
            }
            let logical = u64::from(file) + shift;
            shift += u64::from(skip);
            if logical + u64::from(COMPACTED_FRAME_LEN) + u64::from(skip) > u64::from(u32::MAX) {
                return Err(format!(
                    "relocation entry {n} reaches past the largest offset a location can name"
                ));
            }
            frames.push(PackedFrame {
                file,
                logical: logical as u32,
                skip,
            });
            next_free = end;
        }
        if u64::from(records_end) + shift > u64::from(u32::MAX) {
            return Err("the relocation table's runs reach past the largest offset".to_string());
        }
        Ok(PackTable {
            records_end,
            frames,
        })
    }

    /// Where the records end in the file (the table starts there).
    pub fn records_end(&self) -> u32 {
        self.records_end
    }

    /// The logical offset just past the last record.
    pub fn logical_end(&self) -> u32 {
        self.logical(self.records_end)
    }

    /// The logical offset of the byte at `file` in the file.
    pub fn logical(&self, file: u32) -> u32 {
        let after = self.frames.partition_point(|f| f.file <= file);
        let Some(frame) = after.checked_sub(1).map(|i| self.frames[i]) else {
            return file;
        };
        let shift = frame.logical - frame.file;
        if file < frame.file + COMPACTED_FRAME_LEN {
            file + shift
        } else {
            file + shift + frame.skip
        }
    }

    /// Where the logical offset `logical` is in the file; `None` inside a
    /// run's bytes that the file leaves out (the hole after its frame).
    pub fn file_offset(&self, logical: u32) -> Option<u32> {
        let after = self.frames.partition_point(|f| f.logical <= logical);
        let Some(frame) = after.checked_sub(1).map(|i| self.frames[i]) else {
            return Some(logical);
        };
        let into = logical - frame.logical;
        if into < COMPACTED_FRAME_LEN {
            Some(frame.file + into)
        } else if into - COMPACTED_FRAME_LEN < frame.skip {
            None
        } else {
            Some(logical - (frame.logical - frame.file) - frame.skip)
        }
    }

    /// The file offset of the first record at or after `logical` (past
    /// the end of a hole it lies in).
    pub fn file_offset_at_or_after(&self, logical: u32) -> u32 {
        self.file_offset(logical).unwrap_or_else(|| {
            let after = self.frames.partition_point(|f| f.logical <= logical);
            self.frames[after - 1].file + COMPACTED_FRAME_LEN
        })
    }

    /// The entries (file offset, run bytes) of the compacted frames that
    /// start at file offsets in `from..to`.
    pub fn entries_within(&self, from: u32, to: u32) -> Vec<(u32, u32)> {
        let first = self.frames.partition_point(|f| f.file < from);
        self.frames[first..]
            .iter()
            .take_while(|f| f.file < to)
            .map(|f| (f.file, f.skip))
            .collect()
    }

    /// The run length past the `Compacted` frame at file offset `file`
    /// (`None`: no frame of the table starts there).
    #[cfg(test)]
    pub fn skip_at(&self, file: u32) -> Option<u32> {
        self.frames
            .binary_search_by_key(&file, |f| f.file)
            .ok()
            .map(|i| self.frames[i].skip)
    }

    /// The table as stored after the records: two identical copies, the
    /// second from the next 4 KiB boundary of the file on (so that one
    /// lost block cannot take both), and ending the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut copy = Vec::with_capacity(COPY_HEAD + self.frames.len() * ENTRY_LEN + COPY_CRC);
        copy.extend_from_slice(&TABLE_MAGIC);
        copy.extend_from_slice(&self.records_end.to_le_bytes());
        copy.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        for frame in &self.frames {
            copy.extend_from_slice(&frame.file.to_le_bytes());
            copy.extend_from_slice(&frame.skip.to_le_bytes());
        }
        let crc = crc64(&[&copy]);
        copy.extend_from_slice(&crc.to_le_bytes());
        let mut out = copy.clone();
        let second = (self.records_end as usize + out.len()).next_multiple_of(BLOCK);
        out.resize(second - self.records_end as usize, 0);
        out.extend_from_slice(&copy);
        out
    }

    /// Reads the table of a file whose header says its records end at
    /// `records_end`: `file` is the whole file. One damaged copy is enough
    /// to read it; both damaged is an error that says so.
    pub fn decode(file: &[u8], records_end: u32) -> Result<PackTable, String> {
        let tail = file.get(records_end as usize..).ok_or_else(|| {
            format!(
                "the header says the records end at offset {records_end}, past the file's {} \
                 bytes",
                file.len()
            )
        })?;
        PackTable::decode_tail(tail, records_end)
    }

    /// [`PackTable::decode`] of the file's bytes from `records_end` on.
    pub fn decode_tail(tail: &[u8], records_end: u32) -> Result<PackTable, String> {
        // The first copy starts the tail and says its own length.
        let first = match tail.get(12..16) {
            Some(n) => {
                let len = (read_u32(n, 0) as usize)
                    .checked_mul(ENTRY_LEN)
                    .and_then(|n| n.checked_add(COPY_HEAD + COPY_CRC));
                match len.and_then(|len| tail.get(..len)) {
                    Some(copy) => decode_copy(copy, records_end),
                    None => Err("the first copy's length runs past the file".to_string()),
                }
            }
            None => Err("no relocation table after the records".to_string()),
        };
        if let Ok(table) = first {
            return Ok(table);
        }
        // The second one ends the file.
        let second = last_copy(tail, |_| records_end).ok_or("no valid second copy");
        second.map_err(|second| {
            format!(
                "the relocation table after offset {records_end} is damaged in both copies ({}; \
                 {second})",
                first.err().unwrap_or_default()
            )
        })
    }

    /// Finds the table of a packed segment whose header is damaged, from
    /// the end of the file: the second copy ends there.
    pub fn find_from_end(file: &[u8]) -> Option<PackTable> {
        last_copy(file, |copy| read_u32(copy, 8)).filter(|table| {
            (SEGMENT_HEADER_LEN..file.len()).contains(&(table.records_end as usize))
        })
    }
}

/// The valid copy of a table that ends `bytes` (a copy's length is a
/// multiple of 8: it starts at `bytes.len()` less 24, 32, 40...), whose
/// records end where `records_end` of the copy says.
fn last_copy(bytes: &[u8], records_end: impl Fn(&[u8]) -> u32) -> Option<PackTable> {
    let mut start = bytes.len().checked_sub(COPY_HEAD + COPY_CRC)?;
    loop {
        let copy = &bytes[start..];
        if copy.starts_with(&TABLE_MAGIC)
            && let Ok(table) = decode_copy(copy, records_end(copy))
        {
            return Some(table);
        }
        start = start.checked_sub(ENTRY_LEN)?;
    }
}

fn decode_copy(copy: &[u8], records_end: u32) -> Result<PackTable, String> {
    if copy.len() < COPY_HEAD + COPY_CRC || !copy.starts_with(&TABLE_MAGIC) {
        return Err("no relocation table magic".to_string());
    }
    let body = copy.len() - COPY_CRC;
    let stored = u64::from_le_bytes(copy[body..].try_into().unwrap_or_default());
    if crc64(&[&copy[..body]]) != stored {
        return Err("relocation table checksum mismatch".to_string());
    }
    if read_u32(copy, 8) != records_end {
        return Err(format!(
            "relocation table says the records end at {}, the header {records_end}",
            read_u32(copy, 8)
        ));
    }
    let entries = read_u32(copy, 12) as usize;
    if COPY_HEAD + entries * ENTRY_LEN != body {
        return Err(format!(
            "relocation table says {entries} entries in {} bytes",
            body - COPY_HEAD
        ));
    }
    let pairs: Vec<(u32, u32)> = copy[COPY_HEAD..body]
        .chunks_exact(ENTRY_LEN)
        .map(|e| (read_u32(e, 0), read_u32(e, 4)))
        .collect();
    PackTable::new(records_end, &pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A logical layout of frames (start, len, compacted skip or none),
    /// packed as compaction packs it; every offset checked both ways
    /// against a walk of the layout.
    #[test]
    fn offsets_translate_both_ways_like_a_walk_of_the_layout() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50 {
            // (logical start, file start, logical len, file len, skip)
            let mut frames = Vec::new();
            let (mut logical, mut file) = (SEGMENT_HEADER_LEN as u32, SEGMENT_HEADER_LEN as u32);
            let mut entries = Vec::new();
            for _ in 0..(next() % 40) {
                if next() % 3 == 0 {
                    let skip = (next() % 3000) as u32;
                    entries.push((file, skip));
                    frames.push((logical, file, COMPACTED_FRAME_LEN + skip, skip));
                    logical += COMPACTED_FRAME_LEN + skip;
                    file += COMPACTED_FRAME_LEN;
                } else {
                    let len = 30 + (next() % 900) as u32;
                    frames.push((logical, file, len, 0));
                    logical += len;
                    file += len;
                }
            }
            let table = PackTable::new(file, &entries).unwrap();
            assert_eq!(table.logical_end(), logical);
            let stored = table.encode();
            let mut bytes = vec![0u8; file as usize];
            bytes.extend_from_slice(&stored);
            assert_eq!(PackTable::decode(&bytes, file).unwrap(), table);
            assert_eq!(PackTable::find_from_end(&bytes).unwrap(), table);
            for &(l, f, len, skip) in &frames {
                assert_eq!(table.logical(f), l);
                assert_eq!(table.file_offset(l), Some(f));
                let stored_len = len - skip;
                for d in 1..len {
                    let expect = (d < stored_len).then_some(f + d);
                    assert_eq!(table.file_offset(l + d), expect, "{l}+{d}");
                    if d < stored_len {
                        assert_eq!(table.logical(f + d), l + d);
                    }
                }
                if skip > 0 {
                    assert_eq!(table.skip_at(f), Some(skip));
                    let in_hole = l + COMPACTED_FRAME_LEN + skip - 1;
                    assert_eq!(
                        table.file_offset_at_or_after(in_hole),
                        f + COMPACTED_FRAME_LEN
                    );
                } else {
                    assert_eq!(table.skip_at(f), None);
                }
            }
        }
    }

    /// Either copy alone reads (the second starts at a 4 KiB boundary);
    /// both damaged is an error naming the table; a file cut or grown by
    /// a byte still reads its first copy.
    #[test]
    fn one_damaged_copy_is_survived_and_two_are_an_error() {
        let table = PackTable::new(3000, &[(100, 500), (2000, 64)]).unwrap();
        let mut bytes = vec![0u8; 3000];
        bytes.extend_from_slice(&table.encode());
        let copy = COPY_HEAD + 2 * ENTRY_LEN + COPY_CRC;
        assert_eq!(bytes.len(), 4096 + copy);
        for at in 0..copy {
            let (first, second) = (3000 + at, 4096 + at);
            for one in [first, second] {
                let mut bad = bytes.clone();
                bad[one] ^= 0x04;
                assert_eq!(PackTable::decode(&bad, 3000).unwrap(), table, "byte {one}");
            }
            let mut both = bytes.clone();
            both[first] ^= 0x04;
            both[second] ^= 0x04;
            let error = PackTable::decode(&both, 3000).unwrap_err();
            assert!(error.contains("damaged in both copies"), "{error}");
        }
        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(PackTable::decode(cut, 3000).unwrap(), table);
        let mut grown = bytes.clone();
        grown.push(7);
        assert_eq!(PackTable::decode(&grown, 3000).unwrap(), table);
        let mut first_gone = bytes.clone();
        first_gone[3000..3000 + copy].fill(0);
        assert_eq!(PackTable::find_from_end(&first_gone).unwrap(), table);
        assert!(PackTable::decode(&bytes, 9000).is_err());
        assert!(PackTable::new(4000, &[(100, 5), (120, 5)]).is_err());
        assert!(PackTable::new(4000, &[(3990, 5)]).is_err());
    }
}
