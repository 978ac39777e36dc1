//! Key encodings: which entries an event puts in each index, and the key
//! bounds queries scan. Every entry is fixed-width and memcmp-sortable
//! (big-endian fields); time-ordered indexes store `u64::MAX - created_at`
//! so a forward scan yields newest first, then the id's first 8 bytes so ties
//! come out by lowest id, then the record location, which makes entries unique.
//!
//! ```text
//! primary           id[32] location[8]                                     40
//! author_time       pubkey[32] rtime[8] id8[8] location[8]                 56
//! author_kind_time  pubkey[32] kind[2] rtime[8] id8[8] location[8]         58
//! kind_time         kind[2] rtime[8] id8[8] ahash[4] location[8]           30
//! tag_time          letter[1] slot[33] rtime[8] id8[8] location[8]         58
//! time              rtime[8] id8[8] ahash[4] location[8]                   28
//! address           kind[2] pubkey[32] slot[33] location[8]                75
//! term_time         term_hash[8] rtime[8] id8[8] location[8]               32
//! ```
//! A tag slot holds a tag value: byte 0 = n <= 32 then the n UTF-8 bytes
//! zero-padded to 32; byte 0 = 0x40 then the 32 bytes a 64-char lowercase hex
//! value stands for; byte 0 = 0x80 then sha256 of a longer value. Hashed
//! slots are confirmed on the record.
//!
//! `ahash` (store format 3) is [`author_hash`] of the event's pubkey: a scan
//! of kind_time or time for many authors (a follow feed) skips the entries
//! of other authors without reading their records. It sits after the id
//! prefix, so the order is the same as without it.

use sha2::{Digest, Sha256};

use crate::event::{EventId, EventRef, KindClass, Pubkey, TagField};
use crate::ids::Location;
use crate::search;

/// The indexes of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexKind {
    Primary,
    AuthorTime,
    AuthorKindTime,
    KindTime,
    TagTime,
    Time,
    Address,
    TermTime,
}

pub(crate) const ID_PREFIX_LEN: usize = 8;
pub(crate) const TAG_SLOT_LEN: usize = 33;
const TIME_LEN: usize = 8;
const LOCATION_LEN: usize = Location::ENCODED_LEN;
/// What follows the time prefix in a time-ordered entry without an author
/// hash (term_time's, for one).
pub(crate) const TIME_SUFFIX_LEN: usize = TIME_LEN + ID_PREFIX_LEN + LOCATION_LEN;
/// The author hash's length, and where it sits in the suffix of the
/// indexes that carry it (after the reversed time and the id prefix).
pub(crate) const AUTHOR_HASH_LEN: usize = 4;
pub(crate) const AUTHOR_HASH_AT: usize = TIME_LEN + ID_PREFIX_LEN;
/// The longest suffix (after the prefix) of a time-ordered entry.
const MAX_TIME_SUFFIX_LEN: usize = TIME_SUFFIX_LEN + AUTHOR_HASH_LEN;

impl IndexKind {
    /// Whether new entries land anywhere in the key space (keys start with
    /// an id, a pubkey, a tag value or a word) rather than near its right
    /// edge (keys that start with a kind or a time): the indexes whose
    /// inserts the writer stages in the sorted in-memory level.
    pub fn random_order(self) -> bool {
        !matches!(self, IndexKind::KindTime | IndexKind::Time)
    }

    pub const ALL: [IndexKind; 8] = [
        IndexKind::Primary,
        IndexKind::AuthorTime,
        IndexKind::AuthorKindTime,
        IndexKind::KindTime,
        IndexKind::TagTime,
        IndexKind::Time,
        IndexKind::Address,
        IndexKind::TermTime,
    ];

    /// The number stored in the index file's meta page.
    pub fn id(self) -> u8 {
        self as u8 + 1
    }

    pub fn name(self) -> &'static str {
        match self {
            IndexKind::Primary => "primary",
            IndexKind::AuthorTime => "author_time",
            IndexKind::AuthorKindTime => "author_kind_time",
            IndexKind::KindTime => "kind_time",
            IndexKind::TagTime => "tag_time",
            IndexKind::Time => "time",
            IndexKind::Address => "address",
            IndexKind::TermTime => "term_time",
        }
    }

    pub fn file_name(self) -> String {
        format!("{}.idx", self.name())
    }

    /// Bytes before the reversed created_at, for the time-ordered indexes.
    pub fn time_prefix_len(self) -> Option<usize> {
        match self {
            IndexKind::AuthorTime => Some(32),
            IndexKind::AuthorKindTime => Some(34),
            IndexKind::KindTime => Some(2),
            IndexKind::TagTime => Some(1 + TAG_SLOT_LEN),
            IndexKind::Time => Some(0),
            IndexKind::TermTime => Some(8),
            IndexKind::Primary | IndexKind::Address => None,
        }
    }

    /// Whether the entries carry the author's hash after the id prefix:
    /// the indexes a many-author scan reads (kind_time and time).
    pub fn author_hashed(self) -> bool {
        matches!(self, IndexKind::KindTime | IndexKind::Time)
    }

    /// The bytes after the prefix of a time-ordered index's entry.
    pub fn time_suffix_len(self) -> usize {
        if self.author_hashed() {
            MAX_TIME_SUFFIX_LEN
        } else {
            TIME_SUFFIX_LEN
        }
    }

    pub fn width(self) -> usize {
        match self {
            IndexKind::Primary => 32 + LOCATION_LEN,
            IndexKind::Address => 2 + 32 + TAG_SLOT_LEN + LOCATION_LEN,
            time_ordered => {
                time_ordered.time_prefix_len().unwrap_or(0) + time_ordered.time_suffix_len()
            }
        }
    }
}

/// A tag value as it sits in a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TagSlot(pub [u8; TAG_SLOT_LEN]);

const SLOT_HEX: u8 = 0x40;
const SLOT_HASH: u8 = 0x80;

impl TagSlot {
    pub fn from_str(value: &str) -> TagSlot {
        let mut slot = [0u8; TAG_SLOT_LEN];
        let bytes = value.as_bytes();
        if bytes.len() == 64 && bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            slot[0] = SLOT_HEX;
            for (i, pair) in bytes.chunks_exact(2).enumerate() {
                slot[1 + i] = (hex_nibble(pair[0]) << 4) | hex_nibble(pair[1]);
            }
        } else if bytes.len() < TAG_SLOT_LEN {
            slot[0] = bytes.len() as u8;
            slot[1..=bytes.len()].copy_from_slice(bytes);
        } else {
            slot[0] = SLOT_HASH;
            slot[1..].copy_from_slice(&Sha256::digest(bytes));
        }
        TagSlot(slot)
    }

    pub fn from_field(field: TagField<'_>) -> TagSlot {
        match field {
            TagField::Text(text) => TagSlot::from_str(text),
            TagField::Hex(raw) if raw.len() == 32 => {
                let mut slot = [0u8; TAG_SLOT_LEN];
                slot[0] = SLOT_HEX;
                slot[1..].copy_from_slice(raw);
                TagSlot(slot)
            }
            hex => TagSlot::from_str(&hex.to_string()),
        }
    }
}

fn hex_nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

pub(crate) fn reversed_time(created_at: u64) -> [u8; 8] {
    (u64::MAX - created_at).to_be_bytes()
}

/// The location every entry ends with.
pub(crate) fn location_at_end(entry: &[u8]) -> Location {
    let mut bytes = [0u8; LOCATION_LEN];
    bytes.copy_from_slice(&entry[entry.len() - LOCATION_LEN..]);
    Location::from_bytes(bytes)
}

/// Lower and upper scan bounds (inclusive, full entries) of the
/// time-ordered index `index` for the entries under `prefix` with
/// `since <= created_at <= until`.
pub(crate) fn time_range(
    index: IndexKind,
    prefix: &[u8],
    since: u64,
    until: u64,
) -> (Vec<u8>, Vec<u8>) {
    let width = prefix.len() + index.time_suffix_len();
    let mut lower = Vec::with_capacity(width);
    lower.extend_from_slice(prefix);
    lower.extend_from_slice(&reversed_time(until));
    lower.resize(width, 0);
    let mut upper = Vec::with_capacity(width);
    upper.extend_from_slice(prefix);
    upper.extend_from_slice(&reversed_time(since));
    upper.resize(width, 0xFF);
    (lower, upper)
}

/// The 4-byte author hash kind_time and time entries carry: bytes 16..24
/// of the pubkey (random even for vanity keys, which fix leading bytes; the
/// shard is chosen by bytes 24..32) through SplitMix64's finalizer, high
/// half. Part of the on-disk format. Equal hashes do not prove equal
/// authors: a scan skips entries whose hash is not among its authors' and
/// checks the rest on the record.
pub(crate) fn author_hash(pubkey: &Pubkey) -> [u8; AUTHOR_HASH_LEN] {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&pubkey.0[16..24]);
    let z = crate::ids::mix64(u64::from_le_bytes(bytes));
    ((z >> 32) as u32).to_be_bytes()
}

pub(crate) fn author_kind_prefix(pubkey: &Pubkey, kind: u16) -> [u8; 34] {
    let mut prefix = [0u8; 34];
    prefix[..32].copy_from_slice(&pubkey.0);
    prefix[32..].copy_from_slice(&kind.to_be_bytes());
    prefix
}

pub(crate) fn tag_prefix(letter: u8, slot: &TagSlot) -> [u8; 1 + TAG_SLOT_LEN] {
    let mut prefix = [0u8; 1 + TAG_SLOT_LEN];
    prefix[0] = letter;
    prefix[1..].copy_from_slice(&slot.0);
    prefix
}

/// Every address entry of one (kind, pubkey, d) starts with this.
pub(crate) fn address_prefix(
    kind: u16,
    pubkey: &Pubkey,
    d: &TagSlot,
) -> [u8; 2 + 32 + TAG_SLOT_LEN] {
    let mut prefix = [0u8; 2 + 32 + TAG_SLOT_LEN];
    prefix[..2].copy_from_slice(&kind.to_be_bytes());
    prefix[2..34].copy_from_slice(&pubkey.0);
    prefix[34..].copy_from_slice(&d.0);
    prefix
}

/// The first possible primary entry of `id`.
pub(crate) fn primary_lower(id: &EventId) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&id.0);
    key
}

/// Calls `f` with every entry `event` (stored at `location`) has, index by
/// index; term_time entries only with `terms` (a store that keeps search).
pub(crate) fn for_each_entry(
    event: &EventRef<'_>,
    location: Location,
    terms: bool,
    mut f: impl FnMut(IndexKind, &[u8]),
) {
    let id = event.id();
    let pubkey = event.pubkey();
    let kind = event.kind();
    let mut tail = [0u8; TIME_SUFFIX_LEN];
    tail[..TIME_LEN].copy_from_slice(&reversed_time(event.created_at()));
    tail[TIME_LEN..TIME_LEN + ID_PREFIX_LEN].copy_from_slice(&id.0[..ID_PREFIX_LEN]);
    tail[TIME_LEN + ID_PREFIX_LEN..].copy_from_slice(&location.to_bytes());
    let mut hashed_tail = [0u8; MAX_TIME_SUFFIX_LEN];
    hashed_tail[..AUTHOR_HASH_AT].copy_from_slice(&tail[..AUTHOR_HASH_AT]);
    hashed_tail[AUTHOR_HASH_AT..AUTHOR_HASH_AT + AUTHOR_HASH_LEN]
        .copy_from_slice(&author_hash(&pubkey));
    hashed_tail[AUTHOR_HASH_AT + AUTHOR_HASH_LEN..].copy_from_slice(&location.to_bytes());
    let mut entry = Vec::with_capacity(IndexKind::Address.width());

    entry.extend_from_slice(&id.0);
    entry.extend_from_slice(&location.to_bytes());
    f(IndexKind::Primary, &entry);

    let mut time_ordered = |index: IndexKind, prefix: &[u8], entry: &mut Vec<u8>| {
        entry.clear();
        entry.extend_from_slice(prefix);
        if index.author_hashed() {
            entry.extend_from_slice(&hashed_tail);
        } else {
            entry.extend_from_slice(&tail);
        }
        f(index, entry);
    };
    time_ordered(IndexKind::AuthorTime, &pubkey.0, &mut entry);
    time_ordered(
        IndexKind::AuthorKindTime,
        &author_kind_prefix(&pubkey, kind),
        &mut entry,
    );
    time_ordered(IndexKind::KindTime, &kind.to_be_bytes(), &mut entry);
    time_ordered(IndexKind::Time, &[], &mut entry);
    // One entry per distinct (letter, first value): an event naming the same
    // pubkey twice is found once. Sorted and deduplicated, not checked
    // against a list of those seen: that was quadratic in the tags (a
    // contact list of 880 `p` tags made 387,000 comparisons).
    let mut prefixes: Vec<[u8; 1 + TAG_SLOT_LEN]> = event
        .tags()
        .filter_map(|tag| {
            let letter = tag.name()?.is_single_letter()?;
            Some(tag_prefix(letter, &TagSlot::from_field(tag.value()?)))
        })
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    for prefix in &prefixes {
        time_ordered(IndexKind::TagTime, prefix, &mut entry);
    }
    if matches!(
        KindClass::of(kind),
        KindClass::Replaceable | KindClass::Addressable
    ) {
        let d = match KindClass::of(kind) {
            KindClass::Addressable => event
                .d_tag()
                .map_or_else(|| TagSlot::from_str(""), TagSlot::from_field),
            _ => TagSlot::from_str(""),
        };
        entry.clear();
        entry.extend_from_slice(&address_prefix(kind, &pubkey, &d));
        entry.extend_from_slice(&location.to_bytes());
        f(IndexKind::Address, &entry);
    }
    if !terms {
        return;
    }
    // Two terms with one hash (FNV-1a collides, rarely) share an entry.
    for hash in search::event_term_hashes(event) {
        entry.clear();
        entry.extend_from_slice(&hash.to_be_bytes());
        entry.extend_from_slice(&tail);
        f(IndexKind::TermTime, &entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_match_the_documented_layout() {
        let widths: Vec<usize> = IndexKind::ALL.iter().map(|k| k.width()).collect();
        assert_eq!(widths, vec![40, 56, 58, 30, 58, 28, 75, 32]);
    }

    /// Each distinct (letter, value) once, however often and in whatever
    /// order the tags repeat it; other tags and names are not indexed.
    #[test]
    fn tag_entries_are_one_per_distinct_letter_and_value() {
        let pk = |n: u8| format!("{n:02x}").repeat(32);
        let mut tags: Vec<Vec<String>> = Vec::new();
        for round in 0..3u8 {
            for n in (0..40u8).rev() {
                tags.push(vec!["p".into(), pk(n)]);
                if n % 4 == round {
                    tags.push(vec!["t".into(), format!("topic{n}")]);
                }
            }
        }
        tags.push(vec!["P".into(), pk(1)]);
        tags.push(vec!["title".into(), "not a letter".into()]);
        tags.push(vec!["e".into()]);
        let event = crate::event::Keys::from_seed(1).sign(1_700_000_000, 1, tags, String::new());
        let mut payload = Vec::new();
        event.encode_payload(&mut payload).unwrap();
        let event = EventRef::parse(&payload).unwrap();
        let mut prefixes = Vec::new();
        let location = Location {
            segment: crate::ids::SegmentId(1),
            offset: 64,
        };
        for_each_entry(&event, location, false, |kind, entry| {
            if kind == IndexKind::TagTime {
                prefixes.push(entry[..1 + TAG_SLOT_LEN].to_vec());
            }
        });
        let distinct: std::collections::BTreeSet<_> = prefixes.iter().cloned().collect();
        assert_eq!(prefixes.len(), distinct.len(), "an entry twice");
        // 40 pubkeys, 30 topics (three rounds of every fourth), one `P`.
        assert_eq!(prefixes.len(), 40 + 30 + 1);
    }

    /// kind_time and time entries carry the author hash between the id
    /// prefix and the location; the other time-ordered entries do not, and
    /// all of them end with the same time, id prefix and location.
    #[test]
    fn author_hashed_entries_carry_the_hash_before_the_location() {
        let keys = crate::event::Keys::from_seed(9);
        let event = keys.sign(
            1_700_000_123,
            1,
            vec![vec!["t".into(), "x".into()]],
            "hi".into(),
        );
        let mut payload = Vec::new();
        event.encode_payload(&mut payload).unwrap();
        let event = EventRef::parse(&payload).unwrap();
        let location = Location {
            segment: crate::ids::SegmentId(3),
            offset: 4096,
        };
        let hash = author_hash(&keys.pubkey());
        let mut seen = 0;
        for_each_entry(&event, location, true, |kind, entry| {
            assert_eq!(entry.len(), kind.width(), "{}", kind.name());
            let Some(prefix_len) = kind.time_prefix_len() else {
                return;
            };
            let suffix = &entry[prefix_len..];
            assert_eq!(suffix[..8], reversed_time(1_700_000_123));
            assert_eq!(suffix[8..16], event.id().0[..8]);
            assert_eq!(location_at_end(entry), location);
            if kind.author_hashed() {
                assert_eq!(
                    suffix[AUTHOR_HASH_AT..AUTHOR_HASH_AT + AUTHOR_HASH_LEN],
                    hash
                );
                seen += 1;
            } else {
                assert_eq!(suffix.len(), TIME_SUFFIX_LEN);
            }
        });
        assert_eq!(seen, 2, "kind_time and time");
        // Pubkeys that differ only in the bytes the hash reads get
        // different hashes; the shard bytes do not move it.
        let a = Pubkey([7; 32]);
        let mut b = a;
        b.0[20] ^= 1;
        let mut c = a;
        c.0[30] ^= 1;
        c.0[3] ^= 1;
        assert_ne!(author_hash(&a), author_hash(&b));
        assert_eq!(author_hash(&a), author_hash(&c));
    }

    #[test]
    fn slots_keep_distinct_values_apart() {
        let hex = "ab".repeat(32);
        let slots = [
            TagSlot::from_str(""),
            TagSlot::from_str("bitcoin"),
            TagSlot::from_str(&hex),
            TagSlot::from_str(&"AB".repeat(32)),
            TagSlot::from_str(&"x".repeat(32)),
            TagSlot::from_str(&"x".repeat(33)),
        ];
        for (i, a) in slots.iter().enumerate() {
            for b in &slots[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let raw = [0xABu8; 32];
        assert_eq!(
            TagSlot::from_field(TagField::Hex(&raw)),
            TagSlot::from_str(&hex)
        );
        assert_eq!(
            TagSlot::from_field(TagField::Hex(&[0x0a, 0x1b])),
            TagSlot::from_str("0a1b")
        );
    }

    #[test]
    fn newer_events_sort_first_and_bounds_enclose_the_range() {
        assert!(reversed_time(200) < reversed_time(100));
        let (lower, upper) = time_range(IndexKind::KindTime, &[7, 7], 100, 200);
        assert_eq!(lower.len(), IndexKind::KindTime.width());
        assert_eq!(upper.len(), IndexKind::KindTime.width());
        let mut inside = vec![7, 7];
        inside.extend_from_slice(&reversed_time(150));
        inside.extend_from_slice(&[0x55; 20]);
        assert!(lower <= inside && inside <= upper);
        // The newest and oldest possible entries of the range are inside it.
        let mut newest = vec![7, 7];
        newest.extend_from_slice(&reversed_time(200));
        newest.extend_from_slice(&[0; 20]);
        let mut oldest = vec![7, 7];
        oldest.extend_from_slice(&reversed_time(100));
        oldest.extend_from_slice(&[0xFF; 20]);
        assert!(lower <= newest && oldest <= upper);
    }
}
