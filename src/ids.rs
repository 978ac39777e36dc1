//! Newtypes that cross module boundaries: log sequence numbers, segment and
//! page identifiers, shard numbers and log locations.

use std::fmt;

/// A log sequence number. Strictly increasing per shard, starting at 1;
/// `Lsn(0)` means "nothing" (an empty log, an index that has seen no record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Number of a log segment within a shard, starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u32);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Number of a shard within a store, starting at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Number of a page within an index file; page `n` starts at byte `n * PAGE_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(pub u64);

/// Where a record starts in a shard's log: the segment and the byte offset of
/// the record frame within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub segment: SegmentId,
    pub offset: u32,
}

impl Location {
    /// Size of [`Location::to_bytes`].
    pub const ENCODED_LEN: usize = 8;

    /// Big-endian so that encoded locations sort like locations (they end index keys).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.segment.0.to_be_bytes());
        out[4..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: [u8; 8]) -> Location {
        let [a, b, c, d, e, f, g, h] = bytes;
        Location {
            segment: SegmentId(u32::from_be_bytes([a, b, c, d])),
            offset: u32::from_be_bytes([e, f, g, h]),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {} offset {}", self.segment.0, self.offset)
    }
}

/// SplitMix64's finalizer (Steele, Lea and Flood): a bijection of u64 whose
/// every output bit depends on every input bit. Shard routing and the
/// author hash put it on disk; the id filter and the generator use it too.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// CRC-64 (crc64fast's ECMA polynomial) of the given parts, in order.
pub(crate) fn crc64(parts: &[&[u8]]) -> u64 {
    let mut digest = crc64fast::Digest::new();
    for part in parts {
        digest.write(part);
    }
    digest.sum64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_bytes_round_trip_and_sort_like_locations() {
        let a = Location {
            segment: SegmentId(1),
            offset: 0xFFFF_FFF0,
        };
        let b = Location {
            segment: SegmentId(2),
            offset: 32,
        };
        assert_eq!(Location::from_bytes(a.to_bytes()), a);
        assert!(a < b);
        assert!(a.to_bytes() < b.to_bytes());
    }

    #[test]
    fn crc_of_parts_equals_crc_of_concatenation() {
        assert_eq!(crc64(&[b"ab", b"cd"]), crc64(&[b"abcd"]));
        assert_ne!(crc64(&[b"abcd"]), crc64(&[b"abce"]));
    }
}
