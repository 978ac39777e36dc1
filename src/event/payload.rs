//! The binary payload codec: the on-disk layout of one event, its varints, and the encoder.
//!
//! Decoding lives in [`super::event_ref`], which validates a payload once and then reads it
//! without copying.

use super::canonical::{self, IdForm};
use super::error::{EventError, EventErrorKind};
use super::event::Event;
use super::event_ref::TagField;
use super::types::{hex_nibble, is_lower_hex_even};

// Payload layout (all integers little-endian):
//
// offset size      field
// 0      32        id (raw bytes)
// 32     32        pubkey (raw)
// 64     64        sig (raw)
// 128    8         created_at  u64
// 136    2         kind        u16
// 138    1         flags       bit 0: Event::expiration() is Some
//                              bit 1: the id hashes the JSON-escaped form (IdForm::JsonEscaped);
//                                     set only when some string holds a character the forms
//                                     write differently
//                              other bits must be 0
// 139    4         tags_len    u32: byte length of the tags section
// 143    tags_len  tags section:
//                    varint tag_count
//                    per tag: varint field_count, then per field: varint header h, then
//                      h & 1 == 1: (h >> 1) raw bytes standing for 2 * (h >> 1) lowercase hex chars
//                      h & 1 == 0: (h >> 1) bytes of UTF-8 text
// 143+tags_len     content: UTF-8, the rest of the payload
pub(crate) const ID_OFFSET: usize = 0;
pub(crate) const PUBKEY_OFFSET: usize = ID_OFFSET + 32;
pub(crate) const SIG_OFFSET: usize = PUBKEY_OFFSET + 32;
pub(crate) const CREATED_AT_OFFSET: usize = SIG_OFFSET + 64;
pub(crate) const KIND_OFFSET: usize = CREATED_AT_OFFSET + 8;
pub(crate) const FLAGS_OFFSET: usize = KIND_OFFSET + 2;
pub(crate) const TAGS_LEN_OFFSET: usize = FLAGS_OFFSET + 1;
/// Where the tags section starts; also the size of the fixed header.
pub(crate) const TAGS_OFFSET: usize = TAGS_LEN_OFFSET + 4;
pub(crate) const HEADER_LEN: usize = TAGS_OFFSET;

const _: () = assert!(HEADER_LEN == 143, "the documented on-disk layout");

/// Flag bit 0: the event has an `expiration` tag with a decimal u64 value.
pub(crate) const FLAG_EXPIRATION: u8 = 0b0000_0001;
/// Flag bit 1: the id is the hash of the JSON-escaped serialization (`IdForm::JsonEscaped`), not
/// of NIP-01's text. Clear for every event whose strings hold no control character the two
/// forms write differently (their serializations are the same bytes), and for an event whose
/// id matches neither form (only a trusted insert stores one).
pub(crate) const FLAG_JSON_ESCAPED_ID: u8 = 0b0000_0010;
/// Every flag bit this version understands; payloads with others set are rejected.
pub(crate) const KNOWN_FLAGS: u8 = FLAG_EXPIRATION | FLAG_JSON_ESCAPED_ID;

/// A varint holds a u32 in at most this many bytes of unsigned LEB128.
const MAX_VARINT_LEN: usize = 5;

/// Header bit marking a hex-compacted field.
const HEX_BIT: u32 = 1;

/// Longest field (in stored bytes) whose header `len << 1 | bit` fits in a u32.
const MAX_FIELD_BYTES: usize = (u32::MAX >> 1) as usize;

/// `N` bytes of `header` starting at `OFF`, checked against the header size at compile time.
#[inline]
pub(crate) fn header_field<const OFF: usize, const N: usize>(header: &[u8; HEADER_LEN]) -> [u8; N] {
    const { assert!(OFF + N <= HEADER_LEN) };
    // In bounds by the assertion above, so the fallback is never taken.
    header
        .get(OFF..OFF + N)
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .unwrap_or([0; N])
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended before the last byte.
    Truncated,
    /// A multi-byte encoding whose last byte is zero: the same value has a shorter form.
    Overlong,
    /// More than 32 bits, or more than five bytes.
    Overflow,
}

impl VarintError {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            VarintError::Truncated => "truncated varint",
            VarintError::Overlong => "overlong varint",
            VarintError::Overflow => "varint overflows 32 bits",
        }
    }
}

/// Reads one canonical unsigned LEB128 u32 from the front of `bytes`; returns it with the rest.
pub(crate) fn read_varint(bytes: &[u8]) -> Result<(u32, &[u8]), VarintError> {
    let mut value: u32 = 0;
    let shifts: [u32; MAX_VARINT_LEN] = [0, 7, 14, 21, 28];
    for (i, (&byte, shift)) in bytes.iter().zip(shifts).enumerate() {
        let payload = u32::from(byte & 0x7f);
        // The fifth byte may only carry the top 4 bits of a u32.
        if shift == 28 && byte > 0x0f {
            return Err(VarintError::Overflow);
        }
        value |= payload << shift;
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(VarintError::Overlong);
            }
            let rest = bytes.get(i + 1..).unwrap_or_default();
            return Ok((value, rest));
        }
    }
    if bytes.len() >= MAX_VARINT_LEN {
        Err(VarintError::Overflow)
    } else {
        Err(VarintError::Truncated)
    }
}

/// Appends `value` as unsigned LEB128.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        // Low 7 bits plus the continuation bit; the mask makes the narrowing lossless.
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    // The loop left value < 0x80, so the narrowing is lossless.
    out.push(value as u8);
}

/// The number of bytes `put_varint` writes for `value` (any size, for length arithmetic).
pub(crate) fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

/// The stored form of one tag field: whether it is hex-compacted and how many bytes it stores.
fn field_repr(s: &str) -> (bool, usize) {
    if is_lower_hex_even(s.as_bytes()) {
        (true, s.len() / 2)
    } else {
        (false, s.len())
    }
}

/// The varint header of a field storing `stored` bytes, or None if it does not fit a u32.
fn field_header(hex: bool, stored: usize) -> Option<u32> {
    if stored > MAX_FIELD_BYTES {
        return None;
    }
    let len = u32::try_from(stored).ok()?;
    Some((len << 1) | if hex { HEX_BIT } else { 0 })
}

/// Bytes one field takes in the tags section.
fn field_encoded_len(s: &str) -> usize {
    let (hex, stored) = field_repr(s);
    varint_len((stored << 1) | usize::from(hex)) + stored
}

/// Bytes the tags section takes.
fn tags_section_len(tags: &[Vec<String>]) -> usize {
    tags.iter().fold(varint_len(tags.len()), |len, tag| {
        len + varint_len(tag.len()) + tag.iter().map(|f| field_encoded_len(f)).sum::<usize>()
    })
}

fn too_large(what: String) -> EventError {
    EventError::new(
        EventErrorKind::TooLarge,
        format!("{what} does not fit the storage format"),
    )
}

impl Event {
    /// The exact length of [`Event::encode_payload`]'s output, computed without allocating.
    pub fn payload_len(&self) -> usize {
        HEADER_LEN + tags_section_len(&self.tags) + self.content.len()
    }

    /// Appends the binary payload (the on-disk format) to `out`.
    ///
    /// The flags byte records which [`IdForm`] the id hashes; finding out costs a second hash
    /// only for an event holding a control character the two forms write differently.
    ///
    /// Fails with TooLarge, leaving `out` untouched, only for an event whose counts or lengths
    /// do not fit the format's u32 fields (a tags section of 4 GiB or more); any event that
    /// passes [`Event::check_limits`] with sane limits encodes.
    pub fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), EventError> {
        let section = tags_section_len(&self.tags);
        let tags_len = u32::try_from(section)
            .map_err(|_| too_large(format!("a {section}-byte tags section")))?;
        let tag_count = u32::try_from(self.tags.len())
            .map_err(|_| too_large(format!("{} tags", self.tags.len())))?;
        // Validate every count and header before writing, so failure leaves `out` unchanged.
        // The same pass looks for a character the two id forms write differently.
        let mut forms_differ = canonical::forms_differ(&self.content);
        for tag in &self.tags {
            u32::try_from(tag.len())
                .map_err(|_| too_large(format!("a tag of {} fields", tag.len())))?;
            for field in tag {
                let (hex, stored) = field_repr(field);
                field_header(hex, stored)
                    .ok_or_else(|| too_large(format!("a {}-byte tag field", field.len())))?;
                // Hex digits are the same in both forms: only text fields are scanned.
                forms_differ = forms_differ || (!hex && canonical::forms_differ(field));
            }
        }

        out.reserve(self.payload_len());
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.pubkey.as_bytes());
        out.extend_from_slice(self.sig.as_bytes());
        out.extend_from_slice(&self.created_at.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.push(self.payload_flags(forms_differ));
        out.extend_from_slice(&tags_len.to_le_bytes());
        put_varint(out, tag_count);
        for tag in &self.tags {
            // Both conversions were checked above.
            put_varint(out, u32::try_from(tag.len()).unwrap_or(u32::MAX));
            for field in tag {
                let (hex, stored) = field_repr(field);
                put_varint(out, field_header(hex, stored).unwrap_or(0));
                if hex {
                    push_hex_decoded(out, field.as_bytes());
                } else {
                    out.extend_from_slice(field.as_bytes());
                }
            }
        }
        out.extend_from_slice(self.content.as_bytes());
        Ok(())
    }

    /// The flags byte of this event's payload; `forms_differ` is [`Event::id_forms_differ`].
    fn payload_flags(&self, forms_differ: bool) -> u8 {
        let mut flags = 0;
        if self.expiration().is_some() {
            flags |= FLAG_EXPIRATION;
        }
        // The second hash is paid only by the rare event holding such a character. Encoding
        // decides on its own (rather than being told by `verify_id`) so that a trusted insert
        // stores the right form too.
        if forms_differ && self.compute_id_as(IdForm::JsonEscaped) == self.id {
            flags |= FLAG_JSON_ESCAPED_ID;
        }
        flags
    }
}

/// Appends the bytes a lowercase hex string stands for; `hex` was checked by
/// `is_lower_hex_even`, so every pair decodes.
fn push_hex_decoded(out: &mut Vec<u8>, hex: &[u8]) {
    for pair in hex.chunks_exact(2) {
        let mut nibbles = pair.iter().map(|&c| hex_nibble(c).unwrap_or(0));
        let hi = nibbles.next().unwrap_or(0);
        let lo = nibbles.next().unwrap_or(0);
        out.push((hi << 4) | lo);
    }
}

/// Splits one field (header and data) off the front of `bytes`; returns it with the rest.
pub(crate) fn split_field(bytes: &[u8]) -> Result<(FieldBytes<'_>, &[u8]), FieldError> {
    let (header, rest) = read_varint(bytes).map_err(FieldError::Header)?;
    let stored = (header >> 1) as usize;
    let (data, rest) = rest.split_at_checked(stored).ok_or(FieldError::Length {
        stored,
        available: rest.len(),
    })?;
    Ok((
        FieldBytes {
            hex: header & HEX_BIT == HEX_BIT,
            data,
        },
        rest,
    ))
}

/// One field's stored bytes, before UTF-8 validation of text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldBytes<'a> {
    pub hex: bool,
    pub data: &'a [u8],
}

impl<'a> FieldBytes<'a> {
    /// The field as the string view it stands for; `Err` holds the offset of invalid UTF-8.
    pub(crate) fn to_field(self) -> Result<TagField<'a>, usize> {
        if self.hex {
            Ok(TagField::Hex(self.data))
        } else {
            utf8(self.data).map(TagField::Text)
        }
    }
}

/// `bytes` as a string, or the offset of its first invalid UTF-8. Records
/// are validated as they are read (a query reads each candidate's), so the
/// common valid case takes the vectorized check; only an invalid one asks
/// the standard library where it goes wrong.
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, usize> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => Err(std::str::from_utf8(bytes).map_or_else(|e| e.valid_up_to(), str::len)),
    }
}

/// Why a field could not be split off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldError {
    Header(VarintError),
    Length { stored: usize, available: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::types::{EventId, Pubkey, Signature};

    fn event(tags: Vec<Vec<String>>, content: &str) -> Event {
        Event {
            id: EventId([1; 32]),
            pubkey: Pubkey([2; 32]),
            created_at: 0x0102_0304_0506_0708,
            kind: 0x1234,
            tags,
            content: content.to_owned(),
            sig: Signature([3; 64]),
        }
    }

    fn strings(fields: &[&str]) -> Vec<String> {
        fields.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn layout_constants() {
        assert_eq!(PUBKEY_OFFSET, 32);
        assert_eq!(SIG_OFFSET, 64);
        assert_eq!(CREATED_AT_OFFSET, 128);
        assert_eq!(KIND_OFFSET, 136);
        assert_eq!(FLAGS_OFFSET, 138);
        assert_eq!(TAGS_LEN_OFFSET, 139);
        assert_eq!(TAGS_OFFSET, 143);
    }

    #[test]
    fn varint_round_trip_and_lengths() {
        for v in [
            0,
            1,
            0x7f,
            0x80,
            0x3fff,
            0x4000,
            0x1f_ffff,
            0x20_0000,
            u32::MAX - 1,
            u32::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v as usize), "{v}");
            out.push(0xaa);
            let (back, rest) = read_varint(&out).unwrap();
            assert_eq!(back, v);
            assert_eq!(rest, &[0xaa]);
        }
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
    }

    #[test]
    fn varint_rejections() {
        assert_eq!(read_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(read_varint(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(read_varint(&[0x80, 0x00]), Err(VarintError::Overlong));
        assert_eq!(read_varint(&[0xff, 0x80, 0x00]), Err(VarintError::Overlong));
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x10]),
            Err(VarintError::Overflow)
        );
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x8f, 0x00]),
            Err(VarintError::Overflow)
        );
        assert_eq!(
            read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80]),
            Err(VarintError::Overflow)
        );
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Ok((u32::MAX, &[][..]))
        );
    }

    #[test]
    fn header_fields_are_little_endian_at_documented_offsets() {
        let ev = event(vec![], "hi");
        let mut out = Vec::new();
        ev.encode_payload(&mut out).unwrap();
        assert_eq!(out.len(), ev.payload_len());
        assert_eq!(&out[ID_OFFSET..PUBKEY_OFFSET], &[1; 32]);
        assert_eq!(&out[PUBKEY_OFFSET..SIG_OFFSET], &[2; 32]);
        assert_eq!(&out[SIG_OFFSET..CREATED_AT_OFFSET], &[3; 64]);
        assert_eq!(
            &out[CREATED_AT_OFFSET..KIND_OFFSET],
            &0x0102_0304_0506_0708u64.to_le_bytes()
        );
        assert_eq!(&out[KIND_OFFSET..FLAGS_OFFSET], &[0x34, 0x12]);
        assert_eq!(out[FLAGS_OFFSET], 0);
        assert_eq!(&out[TAGS_LEN_OFFSET..TAGS_OFFSET], &1u32.to_le_bytes());
        assert_eq!(out[TAGS_OFFSET], 0, "zero tags");
        assert_eq!(&out[TAGS_OFFSET + 1..], b"hi");
        let header: &[u8; HEADER_LEN] = out[..HEADER_LEN].try_into().unwrap();
        assert_eq!(header_field::<KIND_OFFSET, 2>(header), [0x34, 0x12]);
    }

    #[test]
    fn hex_fields_are_compacted_and_text_is_not() {
        let hex64 = "ab".repeat(32);
        let ev = event(
            vec![
                strings(&["e", &hex64]),
                strings(&["", "AB", "abc", "0g", "00"]),
            ],
            "",
        );
        let mut out = Vec::new();
        ev.encode_payload(&mut out).unwrap();
        let mut expected = vec![2u8];
        expected.extend([2, 1 << 1, b'e', (32 << 1) | 1]);
        expected.extend([0xab; 32]);
        expected.extend([5, 0, 2 << 1, b'A', b'B', 3 << 1, b'a', b'b', b'c']);
        expected.extend([2 << 1, b'0', b'g', (1 << 1) | 1, 0x00]);
        assert_eq!(&out[TAGS_OFFSET..], expected.as_slice());
        let tags_len = u32::from_le_bytes(out[TAGS_LEN_OFFSET..TAGS_OFFSET].try_into().unwrap());
        assert_eq!(tags_len as usize, expected.len());
        assert_eq!(out.len(), ev.payload_len());
    }

    #[test]
    fn expiration_flag_follows_event_expiration() {
        let flag = |tags: Vec<Vec<String>>| {
            let mut out = Vec::new();
            event(tags, "").encode_payload(&mut out).unwrap();
            out[FLAGS_OFFSET]
        };
        assert_eq!(
            flag(vec![strings(&["expiration", "1700000000"])]),
            FLAG_EXPIRATION
        );
        assert_eq!(flag(vec![strings(&["expiration", "soon"])]), 0);
        assert_eq!(flag(vec![strings(&["expiration"])]), 0);
        assert_eq!(
            flag(vec![
                strings(&["expiration", "x"]),
                strings(&["expiration", "5"])
            ]),
            FLAG_EXPIRATION
        );
    }

    #[test]
    fn json_escaped_id_flag_follows_the_id() {
        let flags = |ev: &Event| {
            let mut out = Vec::new();
            ev.encode_payload(&mut out).unwrap();
            assert_eq!(out.len(), ev.payload_len());
            out[FLAGS_OFFSET]
        };
        let mut ev = event(
            vec![strings(&["expiration", "5"]), strings(&["t", "\u{1}"])],
            "",
        );
        assert_eq!(flags(&ev), FLAG_EXPIRATION, "an id matching neither form");
        ev.id = ev.compute_id_as(IdForm::JsonEscaped);
        assert_eq!(flags(&ev), FLAG_EXPIRATION | FLAG_JSON_ESCAPED_ID);
        ev.id = ev.compute_id_as(IdForm::Nip01);
        assert_eq!(flags(&ev), FLAG_EXPIRATION);
        let mut ev = event(vec![], "\u{7f}\n");
        ev.id = ev.compute_id_as(IdForm::JsonEscaped);
        assert_eq!(flags(&ev), 0, "the forms are the same bytes");
        assert_eq!(KNOWN_FLAGS, 0b11);
    }

    #[test]
    fn encoding_appends() {
        let ev = event(vec![strings(&["t", "x"])], "c");
        let mut out = vec![9, 9];
        ev.encode_payload(&mut out).unwrap();
        assert_eq!(&out[..2], &[9, 9]);
        assert_eq!(out.len(), 2 + ev.payload_len());
    }

    #[test]
    fn oversized_headers_are_refused() {
        assert_eq!(field_header(false, MAX_FIELD_BYTES), Some(u32::MAX - 1));
        assert_eq!(field_header(true, MAX_FIELD_BYTES), Some(u32::MAX));
        assert_eq!(field_header(false, MAX_FIELD_BYTES + 1), None);
    }

    #[test]
    fn split_field_reports_problems() {
        assert_eq!(
            split_field(&[0x80]).unwrap_err(),
            FieldError::Header(VarintError::Truncated)
        );
        assert_eq!(
            split_field(&[4 << 1, b'a']).unwrap_err(),
            FieldError::Length {
                stored: 4,
                available: 1
            }
        );
        let (f, rest) = split_field(&[(1 << 1) | 1, 0xfe, 7]).unwrap();
        assert!(f.hex);
        assert_eq!(f.data, &[0xfe]);
        assert_eq!(rest, &[7]);
        let (f, _) = split_field(&[2 << 1, 0xff, 0xfe]).unwrap();
        assert_eq!(f.to_field(), Err(0));
    }
}
