//! Zero-copy views of the tags inside a validated payload: tags, their fields, and iterators.

use std::fmt;

use super::payload::{read_varint, split_field};
use super::types::hex_pair;

/// One tag field as stored: text, or raw bytes standing for their lowercase hex string.
///
/// Two fields are equal when they stand for the same string, whichever way each is stored.
#[derive(Debug, Clone, Copy)]
pub enum TagField<'a> {
    /// UTF-8 text, verbatim.
    Text(&'a str),
    /// Raw bytes; the field's string is their lowercase hex form (twice as long).
    Hex(&'a [u8]),
}

impl<'a> TagField<'a> {
    /// True if the field stands for exactly `s` (no allocation; Hex compares against lowercase
    /// hex, so an uppercase `s` never matches it).
    pub fn eq_str(&self, s: &str) -> bool {
        match *self {
            TagField::Text(text) => text == s,
            TagField::Hex(bytes) => {
                s.len() == bytes.len() * 2
                    && s.as_bytes()
                        .chunks_exact(2)
                        .zip(bytes)
                        .all(|(pair, &b)| pair == hex_pair(b))
            }
        }
    }

    /// The byte length of the string the field stands for.
    pub fn len_str(&self) -> usize {
        match *self {
            TagField::Text(text) => text.len(),
            TagField::Hex(bytes) => bytes.len() * 2,
        }
    }

    /// The text, if the field is stored as text.
    pub fn as_text(&self) -> Option<&'a str> {
        match *self {
            TagField::Text(text) => Some(text),
            TagField::Hex(_) => None,
        }
    }

    /// Appends the string the field stands for to `out`.
    pub fn write_str_to(&self, out: &mut String) {
        match *self {
            TagField::Text(text) => out.push_str(text),
            TagField::Hex(bytes) => {
                out.reserve(bytes.len() * 2);
                for &b in bytes {
                    let [hi, lo] = hex_pair(b);
                    out.push(char::from(hi));
                    out.push(char::from(lo));
                }
            }
        }
    }

    /// The string the field stands for, owned.
    pub(crate) fn to_owned_string(self) -> String {
        let mut out = String::with_capacity(self.len_str());
        self.write_str_to(&mut out);
        out
    }

    /// `Some(letter)` if the field is a one-character string of an ASCII letter (a-z, A-Z),
    /// the names NIP-01 indexes as `#e`, `#p`, `#t`, ...
    pub fn is_single_letter(&self) -> Option<u8> {
        match *self {
            TagField::Text(text) => match text.as_bytes() {
                &[c] if c.is_ascii_alphabetic() => Some(c),
                _ => None,
            },
            // A hex field stands for an even number (>= 2) of characters.
            TagField::Hex(_) => None,
        }
    }

    /// The value if the field is a plain decimal u64 (digits only), as NIP-40 expirations are.
    pub(crate) fn decimal_u64(&self) -> Option<u64> {
        match *self {
            TagField::Text(text) => super::types::parse_decimal_u64(text.as_bytes()),
            TagField::Hex(bytes) => {
                if bytes.is_empty() {
                    return None;
                }
                // Each byte stands for two hex digits; both must be decimal digits.
                bytes.iter().try_fold(0u64, |acc, &b| {
                    let (hi, lo) = (b >> 4, b & 0x0f);
                    if hi > 9 || lo > 9 {
                        return None;
                    }
                    acc.checked_mul(100)?.checked_add(u64::from(hi * 10 + lo))
                })
            }
        }
    }
}

impl PartialEq for TagField<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (*self, *other) {
            (TagField::Hex(a), TagField::Hex(b)) => a == b,
            (TagField::Text(a), b) | (b, TagField::Text(a)) => b.eq_str(a),
        }
    }
}

impl Eq for TagField<'_> {}

impl fmt::Display for TagField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TagField::Text(text) => f.write_str(text),
            TagField::Hex(bytes) => bytes.iter().try_for_each(|&b| {
                let [hi, lo] = hex_pair(b);
                write!(f, "{}{}", char::from(hi), char::from(lo))
            }),
        }
    }
}

/// One tag of a stored event: a sequence of fields.
#[derive(Clone, Copy)]
pub struct TagRef<'a> {
    /// The encoded fields (headers and data), exactly `count` of them.
    fields: &'a [u8],
    count: usize,
}

impl<'a> TagRef<'a> {
    /// The fields in order.
    pub fn fields(&self) -> FieldIter<'a> {
        FieldIter {
            rest: self.fields,
            remaining: self.count,
        }
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for the empty tag `[]`.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Field 0, conventionally the tag's name.
    pub fn name(&self) -> Option<TagField<'a>> {
        self.fields().next()
    }

    /// Field 1, conventionally the tag's value.
    pub fn value(&self) -> Option<TagField<'a>> {
        self.fields().nth(1)
    }
}

impl fmt::Debug for TagRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.fields()).finish()
    }
}

/// Iterator over the tags of a stored event.
///
/// Only built over a tags section that `EventRef::parse` validated, so decoding never fails;
/// should it anyway, iteration ends instead of panicking.
#[derive(Debug, Clone)]
pub struct TagIter<'a> {
    rest: &'a [u8],
    remaining: usize,
}

impl<'a> TagIter<'a> {
    /// `rest` holds the tags after the tag count; `count` tags follow.
    pub(crate) fn new(rest: &'a [u8], count: usize) -> TagIter<'a> {
        TagIter {
            rest,
            remaining: count,
        }
    }

    fn next_tag(&mut self) -> Option<TagRef<'a>> {
        let (count, body) = read_varint(self.rest).ok()?;
        let count = count as usize;
        let mut after = body;
        for _ in 0..count {
            after = split_field(after).ok()?.1;
        }
        let (fields, _) = body.split_at_checked(body.len() - after.len())?;
        self.rest = after;
        Some(TagRef { fields, count })
    }
}

impl<'a> Iterator for TagIter<'a> {
    type Item = TagRef<'a>;

    fn next(&mut self) -> Option<TagRef<'a>> {
        if self.remaining == 0 {
            return None;
        }
        match self.next_tag() {
            Some(tag) => {
                self.remaining -= 1;
                Some(tag)
            }
            None => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for TagIter<'_> {}

/// Iterator over the fields of one stored tag.
#[derive(Debug, Clone)]
pub struct FieldIter<'a> {
    rest: &'a [u8],
    remaining: usize,
}

impl FieldIter<'_> {
    fn end(&mut self) {
        self.remaining = 0;
    }
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = TagField<'a>;

    fn next(&mut self) -> Option<TagField<'a>> {
        if self.remaining == 0 {
            return None;
        }
        // Validated by EventRef::parse; on an impossible failure, stop rather than panic.
        let Some((raw, rest)) = split_field(self.rest).ok() else {
            self.end();
            return None;
        };
        let Ok(field) = raw.to_field() else {
            self.end();
            return None;
        };
        self.rest = rest;
        self.remaining -= 1;
        Some(field)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for FieldIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::payload::put_varint;

    fn encode_tags(tags: &[&[(bool, &[u8])]]) -> Vec<u8> {
        let mut out = Vec::new();
        for tag in tags {
            put_varint(&mut out, tag.len() as u32);
            for &(hex, data) in *tag {
                put_varint(&mut out, ((data.len() as u32) << 1) | u32::from(hex));
                out.extend_from_slice(data);
            }
        }
        out
    }

    #[test]
    fn field_string_views() {
        let hex = TagField::Hex(&[0x0a, 0xff]);
        assert!(hex.eq_str("0aff"));
        assert!(!hex.eq_str("0AFF"));
        assert!(!hex.eq_str("0af"));
        assert!(!hex.eq_str("0aff00"));
        assert_eq!(hex.len_str(), 4);
        assert_eq!(hex.as_text(), None);
        assert_eq!(hex.to_string(), "0aff");
        assert_eq!(hex.to_owned_string(), "0aff");
        assert_eq!(hex, TagField::Text("0aff"));
        assert_eq!(TagField::Text("0aff"), hex);
        assert_ne!(hex, TagField::Text("0AFF"));
        assert_ne!(hex, TagField::Hex(&[0x0a]));

        let text = TagField::Text("héllo");
        assert!(text.eq_str("héllo"));
        assert_eq!(text.len_str(), 6);
        assert_eq!(text.as_text(), Some("héllo"));
        let mut s = String::from(">");
        text.write_str_to(&mut s);
        assert_eq!(s, ">héllo");
        assert_eq!(TagField::Hex(&[]), TagField::Text(""));
    }

    #[test]
    fn single_letters() {
        assert_eq!(TagField::Text("e").is_single_letter(), Some(b'e'));
        assert_eq!(TagField::Text("P").is_single_letter(), Some(b'P'));
        assert_eq!(TagField::Text("1").is_single_letter(), None);
        assert_eq!(TagField::Text("ee").is_single_letter(), None);
        assert_eq!(TagField::Text("").is_single_letter(), None);
        assert_eq!(TagField::Text("é").is_single_letter(), None);
        assert_eq!(TagField::Hex(&[0xee]).is_single_letter(), None);
    }

    #[test]
    fn decimal_values_in_either_form() {
        assert_eq!(
            TagField::Text("1700000000").decimal_u64(),
            Some(1_700_000_000)
        );
        assert_eq!(
            TagField::Hex(&[0x17, 0x00, 0x00, 0x00, 0x00]).decimal_u64(),
            Some(1_700_000_000)
        );
        assert_eq!(TagField::Hex(&[0x1a]).decimal_u64(), None);
        assert_eq!(TagField::Hex(&[]).decimal_u64(), None);
        assert_eq!(TagField::Text("").decimal_u64(), None);
        // 20 digits: u64::MAX fits, one more does not.
        let max = [0x18, 0x44, 0x67, 0x44, 0x07, 0x37, 0x09, 0x55, 0x16, 0x15];
        assert_eq!(TagField::Hex(&max).decimal_u64(), Some(u64::MAX));
        let over = [0x18, 0x44, 0x67, 0x44, 0x07, 0x37, 0x09, 0x55, 0x16, 0x16];
        assert_eq!(TagField::Hex(&over).decimal_u64(), None);
    }

    #[test]
    fn iterates_tags_and_fields() {
        let bytes = encode_tags(&[
            &[(false, b"e"), (true, &[0xab, 0xcd]), (false, b"relay")],
            &[],
            &[(false, b"d")],
        ]);
        let tags: Vec<TagRef<'_>> = TagIter::new(&bytes, 3).collect();
        assert_eq!(tags.len(), 3);
        assert_eq!(tags[0].len(), 3);
        assert_eq!(tags[0].name(), Some(TagField::Text("e")));
        assert_eq!(tags[0].value(), Some(TagField::Hex(&[0xab, 0xcd])));
        assert_eq!(tags[0].fields().nth(2), Some(TagField::Text("relay")));
        assert!(tags[1].is_empty());
        assert_eq!(tags[1].name(), None);
        assert_eq!(tags[2].value(), None);
        assert_eq!(format!("{:?}", tags[2]), "[Text(\"d\")]");
        assert_eq!(TagIter::new(&bytes, 3).len(), 3);
    }

    #[test]
    fn garbage_ends_iteration_without_panicking() {
        // Claims two fields but holds one; claims a tag that is not there.
        let bytes = [2u8, 1 << 1, b'x'];
        let tags: Vec<_> = TagIter::new(&bytes, 2).collect();
        assert!(tags.is_empty());
        let tag = TagRef {
            fields: &bytes[1..],
            count: 2,
        };
        assert_eq!(tag.fields().count(), 1);
        let bad_utf8 = [1 << 1, 0xff];
        let tag = TagRef {
            fields: &bad_utf8,
            count: 1,
        };
        assert_eq!(tag.fields().next(), None);
    }
}
