//! The log as offline tools see it: segment file names, the segment header,
//! one record frame, and [`SegmentWalk`], a damage-tolerant walk over the
//! bytes of a whole segment file (read with `std::fs::read`).
//!
//! Everything here decodes with the same functions the engine uses
//! (`wal::format`); nothing re-implements the framing.

use crate::ids::{Lsn, SegmentId, ShardId};
use crate::wal;
pub use crate::wal::{
    CompactedPayload, FrameError, FrameHeader, QuarantinePayload, RecordRef, RecordType,
    RemovePayload, RemoveReason, SegmentHeader, WalError,
};

/// Bytes of the segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: usize = wal::SEGMENT_HEADER_LEN;
/// Bytes of a frame before its payload (length, type, LSN).
pub const FRAME_HEADER_LEN: usize = wal::FRAME_HEADER_LEN;
/// Bytes a frame adds around its payload (header and checksum).
pub const FRAME_OVERHEAD: usize = wal::FRAME_OVERHEAD;

/// File name of segment `id` (`00000000000000000001.seg`).
pub fn segment_file_name(id: SegmentId) -> String {
    wal::segment_file_name(id)
}

/// The id a segment file name stands for, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<SegmentId> {
    wal::parse_segment_file_name(name)
}

/// The shard a store sub-directory name (`shard-0000`) stands for, if it is one.
pub fn parse_shard_dir_name(name: &str) -> Option<ShardId> {
    let digits = name.strip_prefix("shard-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(ShardId)
}

/// Checks and decodes the segment header at the start of `bytes`.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    wal::decode_segment_header(bytes)
}

/// The header the engine writes at the start of segment `segment` of `shard`.
pub fn encode_segment_header(shard: ShardId, segment: SegmentId) -> [u8; SEGMENT_HEADER_LEN] {
    wal::encode_segment_header(shard, segment)
}

/// Decodes the frame at the start of `bytes`, which belongs to `segment`
/// (its id is part of the checksum), and checks its checksum.
pub fn decode_record(bytes: &[u8], segment: SegmentId) -> Result<RecordRef<'_>, FrameError> {
    wal::decode_frame(bytes, segment)
}

/// The bytes of one frame, exactly as the engine writes it; `durable` is the
/// last LSN durable when its batch was written.
pub fn encode_record(
    segment: SegmentId,
    record_type: RecordType,
    batch_end: bool,
    lsn: Lsn,
    durable: Lsn,
    payload: &[u8],
) -> Result<Vec<u8>, WalError> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
    wal::encode_frame(
        &mut out,
        segment,
        record_type,
        batch_end,
        lsn,
        durable,
        payload,
    )?;
    Ok(out)
}

/// The header fields a frame at the start of `bytes` claims, unchecked
/// (`None` if fewer than [`FRAME_HEADER_LEN`] bytes are left).
pub fn peek_frame_header(bytes: &[u8]) -> Option<FrameHeader> {
    wal::peek_frame_header(bytes)
}

/// One step of a [`SegmentWalk`].
#[derive(Debug, Clone)]
pub enum WalkItem<'a> {
    /// A record whose checksum is valid, at `offset` in the file.
    Record {
        offset: usize,
        record: RecordRef<'a>,
    },
    /// Something is wrong at `offset`; the walk goes on at `resumes_at`
    /// (the next offset where a valid frame starts), or ends if `None`.
    Damage {
        offset: usize,
        problem: Problem,
        resumes_at: Option<usize>,
    },
    /// The written log ends at `offset`; `zero_bytes` of zeros (the
    /// grown but unwritten tail) follow it to the end of the file. Always
    /// the last item when the walk reaches the end of the file cleanly.
    End { offset: usize, zero_bytes: usize },
}

/// What a [`WalkItem::Damage`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The segment header failed its checks.
    BadHeader(String),
    /// The header is valid but names another segment than the file name.
    WrongSegmentId {
        expected: SegmentId,
        found: SegmentId,
    },
    /// No valid frame here. `claimed` is what the frame header says, when
    /// there were enough bytes to read one.
    BadFrame {
        error: FrameError,
        claimed: Option<FrameHeader>,
    },
    /// A run of `zero_bytes` zeros (what the end of the log looks like)
    /// followed by more data.
    ZerosBeforeData { zero_bytes: usize },
    /// A valid record whose LSN does not follow the previous record's.
    LsnNotIncreasing { lsn: Lsn, previous: Lsn },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::BadHeader(reason) => write!(f, "bad segment header: {reason}"),
            Problem::WrongSegmentId { expected, found } => write!(
                f,
                "header names segment {found}, the file name segment {expected}"
            ),
            Problem::BadFrame { error, claimed } => {
                match error {
                    FrameError::ChecksumMismatch => write!(f, "bad checksum")?,
                    FrameError::Truncated { needed, available } => write!(
                        f,
                        "truncated frame: needs {needed} bytes, {available} left in the file"
                    )?,
                    other => write!(f, "{other}")?,
                }
                if let Some(claimed) = claimed {
                    write!(
                        f,
                        " (frame claims LSN {}, type byte {:#04x}, payload {} bytes)",
                        claimed.lsn, claimed.type_byte, claimed.payload_len
                    )?;
                }
                Ok(())
            }
            Problem::ZerosBeforeData { zero_bytes } => write!(
                f,
                "{zero_bytes} zero bytes (an unwritten gap) followed by more data"
            ),
            Problem::LsnNotIncreasing { lsn, previous } => {
                write!(f, "LSN {lsn} does not follow LSN {previous}")
            }
        }
    }
}

/// Walks every record of one segment file's bytes, in order, reporting
/// damage instead of stopping at it: after a bad frame it resynchronises at
/// the next offset where a frame decodes with a valid checksum, so a dump
/// shows both where the file goes wrong and what follows.
///
/// Record checksums mix in the segment id; the walk uses the header's id,
/// or the one the caller knows (from the file name) when the header is
/// damaged, or else the header's id field read unchecked.
#[derive(Debug)]
pub struct SegmentWalk<'a> {
    bytes: &'a [u8],
    segment: SegmentId,
    header: Result<SegmentHeader, String>,
    offset: usize,
    previous_lsn: Option<Lsn>,
    /// Items decided but not handed out yet (the walk may find two at once).
    queue: std::collections::VecDeque<WalkItem<'a>>,
    done: bool,
}

impl<'a> SegmentWalk<'a> {
    /// A walk over `bytes`, the whole file; `file_segment` is the id the file
    /// name gives, if known.
    pub fn new(bytes: &'a [u8], file_segment: Option<SegmentId>) -> SegmentWalk<'a> {
        let header = wal::decode_segment_header(bytes);
        // A packed segment's frames end where its relocation table starts;
        // offsets stay the file's (a compacted frame's run is in the table).
        let bytes = match &header {
            Ok(SegmentHeader {
                packed_end: Some(end),
                ..
            }) => &bytes[..(*end as usize).min(bytes.len())],
            _ => bytes,
        };
        let segment = match (&header, file_segment) {
            (Ok(h), _) => h.segment,
            (Err(_), Some(id)) => id,
            (Err(_), None) => wal::unchecked_segment_id(bytes).unwrap_or(SegmentId(0)),
        };
        let mut queue = std::collections::VecDeque::new();
        match (&header, file_segment) {
            (Err(reason), _) => queue.push_back(WalkItem::Damage {
                offset: 0,
                problem: Problem::BadHeader(reason.clone()),
                resumes_at: resync(bytes, segment, SEGMENT_HEADER_LEN),
            }),
            (Ok(h), Some(expected)) if h.segment != expected => {
                queue.push_back(WalkItem::Damage {
                    offset: 0,
                    problem: Problem::WrongSegmentId {
                        expected,
                        found: h.segment,
                    },
                    resumes_at: Some(SEGMENT_HEADER_LEN),
                });
            }
            _ => {}
        }
        let offset = match queue.front() {
            Some(WalkItem::Damage { resumes_at, .. }) => resumes_at.unwrap_or(bytes.len()),
            _ => SEGMENT_HEADER_LEN,
        };
        // A header so damaged that no frame follows it ends the walk there.
        let done = matches!(
            queue.front(),
            Some(WalkItem::Damage {
                resumes_at: None,
                ..
            })
        );
        SegmentWalk {
            bytes,
            segment,
            header,
            offset,
            previous_lsn: None,
            queue,
            done,
        }
    }

    /// The checked segment header, or why it failed.
    pub fn header(&self) -> Result<&SegmentHeader, &str> {
        self.header.as_ref().map_err(String::as_str)
    }

    /// The segment id record checksums are checked against.
    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// Finds what is at `self.offset` and queues it.
    fn step(&mut self) {
        let at = self.offset;
        let rest = self.bytes.get(at..).unwrap_or(&[]);
        match wal::decode_frame(rest, self.segment) {
            Ok(record) => {
                if let Some(previous) = self.previous_lsn
                    && record.lsn <= previous
                {
                    self.queue.push_back(WalkItem::Damage {
                        offset: at,
                        problem: Problem::LsnNotIncreasing {
                            lsn: record.lsn,
                            previous,
                        },
                        resumes_at: Some(at),
                    });
                }
                self.previous_lsn = Some(record.lsn);
                self.offset = at + record.frame_len();
                self.queue
                    .push_back(WalkItem::Record { offset: at, record });
            }
            Err(FrameError::End) => {
                let zero_bytes = rest.iter().take_while(|&&b| b == 0).count();
                if zero_bytes == rest.len() {
                    self.queue.push_back(WalkItem::End {
                        offset: at,
                        zero_bytes,
                    });
                    self.done = true;
                } else {
                    self.damage(at, Problem::ZerosBeforeData { zero_bytes });
                }
            }
            Err(error) => {
                let claimed = wal::peek_frame_header(rest);
                self.damage(at, Problem::BadFrame { error, claimed });
            }
        }
    }

    fn damage(&mut self, at: usize, problem: Problem) {
        let resumes_at = resync(self.bytes, self.segment, at + 1);
        self.queue.push_back(WalkItem::Damage {
            offset: at,
            problem,
            resumes_at,
        });
        match resumes_at {
            Some(next) => self.offset = next,
            None => self.done = true,
        }
    }
}

impl<'a> Iterator for SegmentWalk<'a> {
    type Item = WalkItem<'a>;

    fn next(&mut self) -> Option<WalkItem<'a>> {
        if self.queue.is_empty() && !self.done {
            self.step();
        }
        self.queue.pop_front()
    }
}

/// The first offset at or after `from` where a frame decodes with a valid
/// checksum. A 64-bit checksum that also covers the segment id makes a
/// false match among damaged bytes vanishingly unlikely.
fn resync(bytes: &[u8], segment: SegmentId, from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&at| wal::decode_frame(&bytes[at..], segment).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment with `n` event-typed records of distinct payloads, batch
    /// end on every second one; returns the bytes and each frame's offset.
    fn segment_bytes(id: u32, n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = encode_segment_header(ShardId(0), SegmentId(id)).to_vec();
        let mut offsets = Vec::new();
        for i in 1..=n {
            offsets.push(bytes.len());
            let payload = format!("payload number {i}").repeat(i as usize);
            let frame = encode_record(
                SegmentId(id),
                RecordType::Event,
                i % 2 == 0,
                Lsn(i),
                Lsn(i - 1),
                payload.as_bytes(),
            )
            .unwrap();
            bytes.extend_from_slice(&frame);
        }
        (bytes, offsets)
    }

    fn records(walk: SegmentWalk<'_>) -> Vec<(usize, u64)> {
        walk.filter_map(|item| match item {
            WalkItem::Record { offset, record } => Some((offset, record.lsn.0)),
            _ => None,
        })
        .collect()
    }

    #[test]
    fn a_clean_segment_walks_to_its_zero_tail() {
        let (mut bytes, offsets) = segment_bytes(3, 5);
        let written = bytes.len();
        bytes.resize(written + 100, 0);
        let items: Vec<_> = SegmentWalk::new(&bytes, Some(SegmentId(3))).collect();
        assert_eq!(items.len(), 6);
        for (i, item) in items[..5].iter().enumerate() {
            let WalkItem::Record { offset, record } = item else {
                panic!("{item:?}")
            };
            assert_eq!((*offset, record.lsn), (offsets[i], Lsn(i as u64 + 1)));
            assert_eq!(record.batch_end, i % 2 == 1);
        }
        assert!(matches!(
            items[5],
            WalkItem::End { offset, zero_bytes: 100 } if offset == written
        ));
    }

    #[test]
    fn a_bad_checksum_is_reported_and_the_walk_resumes_at_the_next_frame() {
        let (mut bytes, offsets) = segment_bytes(1, 4);
        bytes[offsets[1] + FRAME_HEADER_LEN + 2] ^= 0x01;
        let items: Vec<_> = SegmentWalk::new(&bytes, None).collect();
        let damage = items
            .iter()
            .find_map(|item| match item {
                WalkItem::Damage {
                    offset,
                    problem,
                    resumes_at,
                } => Some((*offset, problem.clone(), *resumes_at)),
                _ => None,
            })
            .unwrap();
        assert_eq!(damage.0, offsets[1]);
        assert!(matches!(
            damage.1,
            Problem::BadFrame {
                error: FrameError::ChecksumMismatch,
                claimed: Some(FrameHeader { lsn: Lsn(2), .. })
            }
        ));
        assert_eq!(damage.2, Some(offsets[2]));
        assert_eq!(
            records(SegmentWalk::new(&bytes, None)),
            vec![(offsets[0], 1), (offsets[2], 3), (offsets[3], 4)]
        );
    }

    #[test]
    fn zeros_before_data_and_truncation_are_damage() {
        let (bytes, offsets) = segment_bytes(1, 3);
        let mut zeroed = bytes.clone();
        zeroed[offsets[1]..offsets[2]].fill(0);
        let problems: Vec<_> = SegmentWalk::new(&zeroed, None)
            .filter_map(|item| match item {
                WalkItem::Damage {
                    offset, problem, ..
                } => Some((offset, problem)),
                _ => None,
            })
            .collect();
        assert_eq!(
            problems,
            vec![(
                offsets[1],
                Problem::ZerosBeforeData {
                    zero_bytes: offsets[2] - offsets[1]
                }
            )]
        );

        let cut = &bytes[..bytes.len() - 3];
        let last = SegmentWalk::new(cut, None).last().unwrap();
        assert!(
            matches!(
                last,
                WalkItem::Damage {
                    offset,
                    problem: Problem::BadFrame {
                        error: FrameError::Truncated { .. },
                        ..
                    },
                    resumes_at: None
                } if offset == offsets[2]
            ),
            "{last:?}"
        );
    }

    #[test]
    fn a_damaged_header_still_lets_the_records_be_read() {
        let (mut bytes, offsets) = segment_bytes(7, 2);
        bytes[0] ^= 0xff;
        let mut walk = SegmentWalk::new(&bytes, Some(SegmentId(7)));
        assert!(walk.header().is_err());
        assert!(matches!(
            walk.next(),
            Some(WalkItem::Damage {
                offset: 0,
                problem: Problem::BadHeader(_),
                resumes_at: Some(32)
            })
        ));
        assert_eq!(records(walk), vec![(offsets[0], 1), (offsets[1], 2)]);
        // The wrong id from a misnamed file: the header is believed.
        let (bytes, _) = segment_bytes(7, 1);
        let items: Vec<_> = SegmentWalk::new(&bytes, Some(SegmentId(8))).collect();
        assert!(matches!(
            items[0],
            WalkItem::Damage {
                problem: Problem::WrongSegmentId { .. },
                ..
            }
        ));
        assert!(matches!(items[1], WalkItem::Record { .. }));
    }

    #[test]
    fn lsns_that_go_backwards_are_reported() {
        let (mut bytes, _) = segment_bytes(1, 1);
        let again = encode_record(
            SegmentId(1),
            RecordType::Remove,
            true,
            Lsn(1),
            Lsn(0),
            &[0; 41],
        );
        bytes.extend_from_slice(&again.unwrap());
        let problems: Vec<_> = SegmentWalk::new(&bytes, None)
            .filter_map(|item| match item {
                WalkItem::Damage { problem, .. } => Some(problem),
                _ => None,
            })
            .collect();
        assert_eq!(
            problems,
            vec![Problem::LsnNotIncreasing {
                lsn: Lsn(1),
                previous: Lsn(1)
            }]
        );
    }

    #[test]
    fn every_prefix_and_byte_flip_walks_without_panicking() {
        let (bytes, _) = segment_bytes(2, 3);
        for cut in 0..bytes.len() {
            let _ = SegmentWalk::new(&bytes[..cut], Some(SegmentId(2))).count();
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let items: Vec<_> = SegmentWalk::new(&bad, Some(SegmentId(2))).collect();
            assert!(
                items.iter().any(|i| matches!(i, WalkItem::Damage { .. })),
                "flip at {at} went unnoticed"
            );
        }
    }

    #[test]
    fn shard_dir_names() {
        assert_eq!(parse_shard_dir_name("shard-0003"), Some(ShardId(3)));
        assert_eq!(parse_shard_dir_name("shard-"), None);
        assert_eq!(parse_shard_dir_name("shard-x1"), None);
        assert_eq!(parse_shard_dir_name("index"), None);
    }
}
