//! Byte layout of log segments: the segment header and the record frame.
//! `docs/format.md` draws the same layout; keep the two in step.
//!
//! ```text
//! segment header (32 bytes)
//!   0  magic           [u8; 8]  b"MEGALOG\0"
//!   8  format_version  u32 LE
//!  12  shard           u32 LE
//!  16  segment_id      u32 LE
//!  20  packed_end      u32 LE   0, or where a packed segment's records end
//!                               (its relocation table follows: packed.rs)
//!  24  header_crc      u64 LE   crc64 of bytes 0..24
//!
//! record frame (25 + payload_len bytes), records follow each other with no padding
//!   0  payload_len     u32 LE
//!   4  record_type     u8       low 7 bits: RecordType; bit 7: last record of its batch
//!   5  lsn             u64 LE
//!  13  unsynced_run    u32 LE   lsn minus the last LSN that was durable when this
//!                               record's batch was written (>= 1; u32::MAX: no claim)
//!  17  payload         [u8; payload_len]
//!  17+payload_len crc  u64 LE   crc64 of (segment_id u32 LE, bytes 0..17+payload_len)
//! ```
//!
//! Mixing the segment id into every record checksum means bytes left over
//! from another segment (a recycled or copied file) never validate here.
//!
//! `unsynced_run` is what tells damage from a torn tail (`damage.rs`): a
//! valid record that says record `n` was durable before its batch was
//! written proves that an unreadable record `n` was synced, so it is
//! damage, never a tail to cut.

use super::error::WalError;
use crate::ids::{Lsn, SegmentId, ShardId, crc64};

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"MEGALOG\0";
/// Version 2 added `unsynced_run` to every frame. Version 1 segments are
/// refused with a message saying how to move their events.
pub(crate) const SEGMENT_FORMAT_VERSION: u32 = 2;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + SEGMENT_MAGIC.len();
const SHARD_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
const SEGMENT_ID_OFFSET: usize = SHARD_OFFSET + size_of::<u32>();
const RESERVED_OFFSET: usize = SEGMENT_ID_OFFSET + size_of::<u32>();
const HEADER_CRC_OFFSET: usize = RESERVED_OFFSET + size_of::<u32>();
pub(crate) const SEGMENT_HEADER_LEN: usize = HEADER_CRC_OFFSET + size_of::<u64>();

const LEN_OFFSET: usize = 0;
const TYPE_OFFSET: usize = LEN_OFFSET + size_of::<u32>();
const LSN_OFFSET: usize = TYPE_OFFSET + size_of::<u8>();
const UNSYNCED_RUN_OFFSET: usize = LSN_OFFSET + size_of::<u64>();
pub(crate) const FRAME_HEADER_LEN: usize = UNSYNCED_RUN_OFFSET + size_of::<u32>();
pub(crate) const FRAME_TRAILER_LEN: usize = size_of::<u64>();
/// Bytes a frame adds around its payload.
pub(crate) const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + FRAME_TRAILER_LEN;

const BATCH_END_BIT: u8 = 0x80;

/// What a log record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// A stored event; the payload is the event's binary layout (`event::payload`).
    Event = 1,
    /// An earlier event leaves the indexes (replaced, deleted by NIP-09, ...);
    /// the payload is a [`RemovePayload`].
    Remove = 2,
    /// Written by a repair over damaged bytes, which were moved to a
    /// quarantine file; the frame spans exactly the damaged range, so every
    /// other record keeps its location. The payload is a
    /// [`QuarantinePayload`] padded with zeros. It changes no index.
    Quarantined = 3,
    /// Written by compaction over event records that had left the indexes
    /// (replaced, deleted, vanished) before every index checkpoint: the
    /// frame is followed by [`CompactedPayload::skip`] bytes that held
    /// them and are now a hole (zeros, never read), so every other record
    /// keeps its location. It changes no index.
    Compacted = 4,
}

impl RecordType {
    pub fn from_byte(byte: u8) -> Option<RecordType> {
        match byte {
            1 => Some(RecordType::Event),
            2 => Some(RecordType::Remove),
            3 => Some(RecordType::Quarantined),
            4 => Some(RecordType::Compacted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordType::Event => "event",
            RecordType::Remove => "remove",
            RecordType::Quarantined => "quarantined",
            RecordType::Compacted => "compacted",
        }
    }
}

/// Payload of a Compacted record (16 bytes):
///
/// ```text
///  0  skip            u32 LE   bytes after the frame that it covers (a hole)
///  4  records         u32 LE   records those bytes held
///  8  last LSN        u64 LE   the LSN of the last of them (the frame's own
///                              LSN is the first one's)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactedPayload {
    pub skip: u32,
    pub records: u32,
    pub last: Lsn,
}

impl CompactedPayload {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.skip.to_le_bytes());
        out[4..8].copy_from_slice(&self.records.to_le_bytes());
        out[8..].copy_from_slice(&self.last.0.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<CompactedPayload> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        Some(CompactedPayload {
            skip: read_u32(bytes, 0),
            records: read_u32(bytes, 4),
            last: Lsn(read_u64(bytes, 8)),
        })
    }
}

/// Payload of a Quarantined record (at least 16 bytes; a shorter payload,
/// for a damaged range too small to describe, holds only zeros):
///
/// ```text
///  0  first lost LSN  u64 LE   the LSN the damaged range's first record had
///  8  next LSN        u64 LE   the LSN of the first valid record after it
/// 16  file name       UTF-8    the quarantine file, zero-padded to the end
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinePayload {
    pub first_lost: Lsn,
    pub next: Lsn,
    pub file_name: String,
}

impl QuarantinePayload {
    /// Encodes into exactly `len` bytes (the name is cut to fit).
    pub fn encode(&self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        if len >= 16 {
            out[..8].copy_from_slice(&self.first_lost.0.to_le_bytes());
            out[8..16].copy_from_slice(&self.next.0.to_le_bytes());
            let name = self.file_name.as_bytes();
            let room = (len - 16).min(name.len());
            // Cut at a character boundary.
            let cut = (0..=room)
                .rev()
                .find(|&n| self.file_name.is_char_boundary(n))
                .unwrap_or(0);
            out[16..16 + cut].copy_from_slice(&name[..cut]);
        }
        out
    }

    /// Decodes what `encode` wrote (`None` when the payload was too small to
    /// hold a description, or its name is not UTF-8).
    pub fn decode(bytes: &[u8]) -> Option<QuarantinePayload> {
        let (first, rest) = bytes.split_first_chunk::<8>()?;
        let (next, name) = rest.split_first_chunk::<8>()?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(QuarantinePayload {
            first_lost: Lsn(u64::from_le_bytes(*first)),
            next: Lsn(u64::from_le_bytes(*next)),
            file_name: String::from_utf8(name[..end].to_vec()).ok()?,
        })
    }
}

/// Why an event left the indexes; stored in a Remove record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// A newer version of a replaceable or addressable event arrived.
    Replaced = 1,
    /// A NIP-09 deletion from the same author named it (or a NIP-62
    /// request to vanish covered it).
    Deleted = 2,
    /// The store's operator removed it (`EventStore::purge`: `megalith
    /// delete`, a retention rule). Nothing stops the same event from being
    /// stored again. Written only once the manifest's purge feature bit is
    /// set, so older builds refuse the store instead of calling it damage.
    Purged = 3,
}

impl RemoveReason {
    /// Its name in tools' output.
    pub fn name(self) -> &'static str {
        match self {
            RemoveReason::Replaced => "replaced",
            RemoveReason::Deleted => "deleted",
            RemoveReason::Purged => "purged",
        }
    }

    pub fn from_byte(byte: u8) -> Option<RemoveReason> {
        match byte {
            1 => Some(RemoveReason::Replaced),
            2 => Some(RemoveReason::Deleted),
            3 => Some(RemoveReason::Purged),
            _ => None,
        }
    }
}

/// Payload of a Remove record (41 bytes):
///
/// ```text
///  0  target segment  u32 LE
///  4  target offset   u32 LE
///  8  reason          u8
///  9  target event id [u8; 32]   lets tools and recovery confirm the target
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovePayload {
    pub target: crate::ids::Location,
    pub reason: RemoveReason,
    pub target_id: [u8; 32],
}

impl RemovePayload {
    pub const LEN: usize = 4 + 4 + 1 + 32;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.target.segment.0.to_le_bytes());
        out.extend_from_slice(&self.target.offset.to_le_bytes());
        out.push(self.reason as u8);
        out.extend_from_slice(&self.target_id);
    }

    pub fn decode(bytes: &[u8]) -> Option<RemovePayload> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        let (segment, rest) = bytes.split_first_chunk::<4>()?;
        let (offset, rest) = rest.split_first_chunk::<4>()?;
        let (reason, rest) = rest.split_first()?;
        let target_id: [u8; 32] = rest.try_into().ok()?;
        Some(RemovePayload {
            target: crate::ids::Location {
                segment: SegmentId(u32::from_le_bytes(*segment)),
                offset: u32::from_le_bytes(*offset),
            },
            reason: RemoveReason::from_byte(*reason)?,
            target_id,
        })
    }
}

pub(crate) fn encode_segment_header(
    shard: ShardId,
    segment: SegmentId,
) -> [u8; SEGMENT_HEADER_LEN] {
    encode_packed_segment_header(shard, segment, 0)
}

/// The header of a packed segment (`docs/format.md`, "Packed segments"):
/// its records end at `records_end`, where its relocation table starts
/// (0: not packed).
pub(crate) fn encode_packed_segment_header(
    shard: ShardId,
    segment: SegmentId,
    records_end: u32,
) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[RESERVED_OFFSET..HEADER_CRC_OFFSET].copy_from_slice(&records_end.to_le_bytes());
    header[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    header[VERSION_OFFSET..SHARD_OFFSET].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header[SHARD_OFFSET..SEGMENT_ID_OFFSET].copy_from_slice(&shard.0.to_le_bytes());
    header[SEGMENT_ID_OFFSET..RESERVED_OFFSET].copy_from_slice(&segment.0.to_le_bytes());
    let crc = crc64(&[&header[..HEADER_CRC_OFFSET]]);
    header[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The fields of a valid segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: ShardId,
    pub segment: SegmentId,
    /// A packed segment's records end here; its relocation table follows.
    pub packed_end: Option<u32>,
}

pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return Err(format!(
            "file is {} bytes, shorter than the {SEGMENT_HEADER_LEN}-byte segment header",
            bytes.len()
        ));
    };
    if header[MAGIC_OFFSET..VERSION_OFFSET] != SEGMENT_MAGIC {
        return Err("not a Megalith log segment (bad magic bytes)".to_string());
    }
    let stored_crc = read_u64(header, HEADER_CRC_OFFSET);
    if crc64(&[&header[..HEADER_CRC_OFFSET]]) != stored_crc {
        return Err("segment header checksum mismatch".to_string());
    }
    let version = read_u32(header, VERSION_OFFSET);
    if version != SEGMENT_FORMAT_VERSION {
        if version < SEGMENT_FORMAT_VERSION {
            return Err(format!(
                "segment format version {version} was written by an earlier Megalith, which this \
                 build cannot read (it reads version {SEGMENT_FORMAT_VERSION}): export the events \
                 with that build (`megalith query --data DIR '{{}}' > events.jsonl`) and import \
                 them into a new store (`megalith import --data NEW events.jsonl`)"
            ));
        }
        return Err(format!(
            "segment format version {version} is newer than this build reads (version \
             {SEGMENT_FORMAT_VERSION}): open the store with a newer Megalith"
        ));
    }
    // Zero, or where a packed segment's records end (past the header).
    let packed_end = read_u32(header, RESERVED_OFFSET);
    if packed_end != 0 && (packed_end as usize) < SEGMENT_HEADER_LEN {
        return Err(format!(
            "segment header says its records end at offset {packed_end}, inside the header"
        ));
    }
    Ok(SegmentHeader {
        shard: ShardId(read_u32(header, SHARD_OFFSET)),
        segment: SegmentId(read_u32(header, SEGMENT_ID_OFFSET)),
        packed_end: (packed_end != 0).then_some(packed_end),
    })
}

/// The segment id field of a header, read without any check (tools use it
/// to checksum the records of a segment whose header is damaged).
pub(crate) fn unchecked_segment_id(bytes: &[u8]) -> Option<SegmentId> {
    let field = bytes.get(SEGMENT_ID_OFFSET..RESERVED_OFFSET)?;
    Some(SegmentId(read_u32(field, 0)))
}

/// The header fields of a frame as written, before any check: what a damaged
/// frame claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    /// The raw type byte, batch-end bit included.
    pub type_byte: u8,
    pub lsn: Lsn,
    pub unsynced_run: u32,
}

impl FrameHeader {
    /// The record type the low 7 bits name, if this build knows it.
    pub fn record_type(&self) -> Option<RecordType> {
        RecordType::from_byte(self.type_byte & !BATCH_END_BIT)
    }

    pub fn batch_end(&self) -> bool {
        self.type_byte & BATCH_END_BIT != 0
    }
}

/// Reads the frame header at the start of `bytes` without checking anything.
pub(crate) fn peek_frame_header(bytes: &[u8]) -> Option<FrameHeader> {
    let header = bytes.get(..FRAME_HEADER_LEN)?;
    Some(FrameHeader {
        payload_len: read_u32(header, LEN_OFFSET),
        type_byte: header[TYPE_OFFSET],
        lsn: Lsn(read_u64(header, LSN_OFFSET)),
        unsynced_run: read_u32(header, UNSYNCED_RUN_OFFSET),
    })
}

/// `unsynced_run` for a record with LSN `lsn` written when everything up to
/// `durable` was durable (saturated: no claim).
pub(crate) fn unsynced_run(lsn: Lsn, durable: Lsn) -> u32 {
    u32::try_from(lsn.0.saturating_sub(durable.0)).unwrap_or(u32::MAX)
}

/// Appends one framed record to `out`. `durable` is the last LSN known to
/// be durable (synced) before this record's batch is written.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    segment: SegmentId,
    record_type: RecordType,
    batch_end: bool,
    lsn: Lsn,
    durable: Lsn,
    payload: &[u8],
) -> Result<(), WalError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| WalError::RecordTooLarge { len: payload.len() })?;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.push(record_type as u8 | if batch_end { BATCH_END_BIT } else { 0 });
    out.extend_from_slice(&lsn.0.to_le_bytes());
    out.extend_from_slice(&unsynced_run(lsn, durable).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc64(&[&segment.0.to_le_bytes(), &out[start..]]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Marks the frame that starts at `frame_start` in `buf` as the last of its
/// batch, re-computing its checksum.
pub(crate) fn mark_batch_end(buf: &mut [u8], frame_start: usize, segment: SegmentId) {
    let len = read_u32(&buf[frame_start..], LEN_OFFSET) as usize;
    buf[frame_start + TYPE_OFFSET] |= BATCH_END_BIT;
    let crc_at = frame_start + FRAME_HEADER_LEN + len;
    let crc = crc64(&[&segment.0.to_le_bytes(), &buf[frame_start..crc_at]]);
    buf[crc_at..crc_at + FRAME_TRAILER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// A record read back from a segment.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub lsn: Lsn,
    pub record_type: RecordType,
    pub batch_end: bool,
    /// See the frame layout: `lsn - unsynced_run` was durable when this
    /// record's batch was written.
    pub unsynced_run: u32,
    pub payload: &'a [u8],
    /// Bytes after the frame that belong to it: a Compacted record's hole
    /// (0 for every other type).
    pub skip: u32,
}

impl RecordRef<'_> {
    /// Bytes the whole frame takes, up to where the next one starts (a
    /// Compacted record's hole included).
    pub fn frame_len(&self) -> usize {
        FRAME_OVERHEAD + self.payload.len() + self.skip as usize
    }

    /// The LSN of the last record this frame stands for: a compacted
    /// frame's run ends at [`CompactedPayload::last`]; any other frame is
    /// one record.
    pub fn last_lsn(&self) -> Lsn {
        match self.record_type {
            RecordType::Compacted => {
                CompactedPayload::decode(self.payload).map_or(self.lsn, |c| c.last.max(self.lsn))
            }
            _ => self.lsn,
        }
    }

    /// The last LSN that was durable when this record's batch was written
    /// (`Lsn::ZERO` when the record makes no claim).
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.lsn.0.saturating_sub(u64::from(self.unsynced_run)))
    }
}

/// Why no record could be decoded at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Zero bytes where a frame would start: the clean end of the written log
    /// (the active segment grows ahead of its writes, and unwritten space
    /// reads as zeros).
    End,
    /// Fewer bytes left than the frame needs.
    Truncated { needed: usize, available: usize },
    /// A record type this build does not know.
    UnknownType(u8),
    /// The checksum does not match the bytes.
    ChecksumMismatch,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::End => write!(f, "end of written log"),
            FrameError::Truncated { needed, available } => {
                write!(
                    f,
                    "record truncated: needs {needed} bytes, {available} left"
                )
            }
            FrameError::UnknownType(t) => write!(f, "unknown record type {t}"),
            FrameError::ChecksumMismatch => write!(f, "record checksum mismatch"),
        }
    }
}

/// Decodes the frame at the start of `bytes` and checks its checksum.
pub(crate) fn decode_frame(bytes: &[u8], segment: SegmentId) -> Result<RecordRef<'_>, FrameError> {
    decode_frame_checking(bytes, segment, true)
}

/// [`decode_frame`], with the checksum compared only if `check_crc`: for a
/// frame whose checksum was already verified at this very place in an
/// unchanging mapped segment (`Segment::read_once_verified`). Every other
/// check (length, type, bounds) is made either way.
pub(crate) fn decode_frame_checking(
    bytes: &[u8],
    segment: SegmentId,
    check_crc: bool,
) -> Result<RecordRef<'_>, FrameError> {
    let Some(header) = bytes.get(..FRAME_HEADER_LEN) else {
        return if bytes.iter().all(|&b| b == 0) {
            Err(FrameError::End)
        } else {
            Err(FrameError::Truncated {
                needed: FRAME_HEADER_LEN,
                available: bytes.len(),
            })
        };
    };
    let len = read_u32(header, LEN_OFFSET) as usize;
    let type_byte = header[TYPE_OFFSET];
    if len == 0 && type_byte == 0 {
        return Err(FrameError::End);
    }
    let record_type = RecordType::from_byte(type_byte & !BATCH_END_BIT)
        .ok_or(FrameError::UnknownType(type_byte & !BATCH_END_BIT))?;
    let total = FRAME_OVERHEAD.saturating_add(len);
    let Some(frame) = bytes.get(..total) else {
        return Err(FrameError::Truncated {
            needed: total,
            available: bytes.len(),
        });
    };
    let body_end = FRAME_HEADER_LEN + len;
    let stored_crc = read_u64(frame, body_end);
    if check_crc && crc64(&[&segment.0.to_le_bytes(), &frame[..body_end]]) != stored_crc {
        return Err(FrameError::ChecksumMismatch);
    }
    let payload = &frame[FRAME_HEADER_LEN..body_end];
    let skip = if record_type == RecordType::Compacted {
        // A checksummed frame: a payload of another size was never written.
        let compacted = CompactedPayload::decode(payload).ok_or(FrameError::ChecksumMismatch)?;
        let needed = total.saturating_add(compacted.skip as usize);
        if bytes.len() < needed {
            return Err(FrameError::Truncated {
                needed,
                available: bytes.len(),
            });
        }
        compacted.skip
    } else {
        0
    };
    Ok(RecordRef {
        lsn: Lsn(read_u64(header, LSN_OFFSET)),
        record_type,
        batch_end: type_byte & BATCH_END_BIT != 0,
        unsynced_run: read_u32(header, UNSYNCED_RUN_OFFSET),
        payload,
        skip,
    })
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            SegmentId(7),
            RecordType::Event,
            false,
            Lsn(42),
            Lsn(40),
            payload,
        )
        .unwrap();
        out
    }

    #[test]
    fn frame_round_trips() {
        let mut buf = frame(b"hello");
        let record = decode_frame(&buf, SegmentId(7)).unwrap();
        assert_eq!(
            (record.lsn, record.record_type, record.batch_end),
            (Lsn(42), RecordType::Event, false)
        );
        assert_eq!(record.payload, b"hello");
        assert_eq!((record.unsynced_run, record.durable_lsn()), (2, Lsn(40)));
        mark_batch_end(&mut buf, 0, SegmentId(7));
        assert!(decode_frame(&buf, SegmentId(7)).unwrap().batch_end);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let buf = frame(b"some payload bytes");
        for at in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[at] ^= 1 << bit;
                assert!(
                    decode_frame(&bad, SegmentId(7)).is_err(),
                    "flip at byte {at} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn other_segment_ids_do_not_validate() {
        let buf = frame(b"x");
        assert_eq!(
            decode_frame(&buf, SegmentId(8)).unwrap_err(),
            FrameError::ChecksumMismatch
        );
    }

    #[test]
    fn truncations_are_errors_not_panics() {
        let buf = frame(b"payload");
        for cut in 0..buf.len() {
            assert!(decode_frame(&buf[..cut], SegmentId(7)).is_err());
        }
        assert_eq!(
            decode_frame(&[0u8; 40], SegmentId(7)).unwrap_err(),
            FrameError::End
        );
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = encode_segment_header(ShardId(3), SegmentId(9));
        assert_eq!(
            decode_segment_header(&header).unwrap(),
            SegmentHeader {
                shard: ShardId(3),
                segment: SegmentId(9),
                packed_end: None,
            }
        );
        let packed = encode_packed_segment_header(ShardId(3), SegmentId(9), 4096);
        assert_eq!(
            decode_segment_header(&packed).unwrap().packed_end,
            Some(4096)
        );
        let inside = encode_packed_segment_header(ShardId(3), SegmentId(9), 20);
        assert!(decode_segment_header(&inside).is_err());
        for at in 0..header.len() {
            let mut bad = header;
            bad[at] ^= 0x10;
            assert!(decode_segment_header(&bad).is_err());
        }
        assert!(decode_segment_header(&header[..10]).is_err());
    }

    #[test]
    fn remove_payload_round_trips() {
        let payload = RemovePayload {
            target: crate::ids::Location {
                segment: SegmentId(2),
                offset: 1234,
            },
            reason: RemoveReason::Deleted,
            target_id: [9u8; 32],
        };
        let mut out = Vec::new();
        payload.encode(&mut out);
        assert_eq!(out.len(), RemovePayload::LEN);
        assert_eq!(RemovePayload::decode(&out), Some(payload));
        assert_eq!(RemovePayload::decode(&out[1..]), None);
    }
}
