//! `EventRef`: a zero-copy view of a stored payload, validated once and then read without
//! failure.

use std::fmt;

use super::canonical::{self, IdForm, Parts};
use super::error::EventError;
use super::event::Event;
use super::payload::{
    CREATED_AT_OFFSET, FLAG_EXPIRATION, FLAG_JSON_ESCAPED_ID, FLAGS_OFFSET, FieldError, HEADER_LEN,
    ID_OFFSET, KIND_OFFSET, KNOWN_FLAGS, PUBKEY_OFFSET, SIG_OFFSET, TAGS_LEN_OFFSET, TAGS_OFFSET,
    header_field, read_varint, split_field,
};
use super::types::{EventId, KindClass, Pubkey, Signature};

pub use super::tag_ref::{FieldIter, TagField, TagIter, TagRef};

/// A read-only view of one binary payload (see the layout in `payload.rs`).
///
/// Invariant: built only by [`EventRef::parse`], which checked every length, varint, UTF-8
/// string and flag, so the accessors cannot fail.
#[derive(Clone, Copy)]
pub struct EventRef<'a> {
    bytes: &'a [u8],
    header: &'a [u8; HEADER_LEN],
    /// The tags section after its leading tag count.
    tags: &'a [u8],
    tag_count: usize,
    content: &'a str,
    /// Decoded during validation, so reading it costs nothing.
    expiration: Option<u64>,
}

/// Reads a validated tags section front to back, tracking absolute payload offsets for errors.
struct Cursor<'a> {
    rest: &'a [u8],
    /// Payload offset of `rest[0]`.
    offset: usize,
    /// Payload offset one past the section.
    end: usize,
}

impl<'a> Cursor<'a> {
    fn advance_to(&mut self, rest: &'a [u8]) {
        self.offset = self.end - rest.len();
        self.rest = rest;
    }

    fn varint(&mut self, what: &dyn Fn() -> String) -> Result<usize, EventError> {
        let at = self.offset;
        let (value, rest) = read_varint(self.rest).map_err(|e| {
            EventError::corrupt(format!("{} at offset {at}: {}", what(), e.describe()))
        })?;
        self.advance_to(rest);
        Ok(value as usize)
    }

    /// Reads a count that must not exceed the bytes left (each item takes at least one).
    fn count(&mut self, what: &dyn Fn() -> String) -> Result<usize, EventError> {
        let at = self.offset;
        let count = self.varint(what)?;
        if count > self.rest.len() {
            return Err(EventError::corrupt(format!(
                "{} at offset {at} is {count}, but only {} bytes of the tags section remain",
                what(),
                self.rest.len()
            )));
        }
        Ok(count)
    }

    fn field(&mut self, tag: usize, index: usize) -> Result<TagField<'a>, EventError> {
        let at = self.offset;
        let (raw, rest) = split_field(self.rest).map_err(|e| match e {
            FieldError::Header(v) => EventError::corrupt(format!(
                "tag {tag} field {index} header at offset {at}: {}",
                v.describe()
            )),
            FieldError::Length { stored, available } => EventError::corrupt(format!(
                "tag {tag} field {index} at offset {at} claims {stored} bytes, but only \
                 {available} remain in the tags section"
            )),
        })?;
        let data_at = self.end - rest.len() - raw.data.len();
        let field = raw.to_field().map_err(|bad| {
            EventError::corrupt(format!(
                "tag {tag} field {index} is not valid UTF-8 at offset {}",
                data_at + bad
            ))
        })?;
        self.advance_to(rest);
        Ok(field)
    }
}

impl<'a> EventRef<'a> {
    /// Validates the whole payload once. Errors are CorruptPayload, naming the problem and its
    /// byte offset.
    pub fn parse(payload: &'a [u8]) -> Result<EventRef<'a>, EventError> {
        let total = payload.len();
        let (header, after_header) =
            payload.split_first_chunk::<HEADER_LEN>().ok_or_else(|| {
                EventError::corrupt(format!(
                    "payload is {total} bytes, shorter than the {HEADER_LEN}-byte header"
                ))
            })?;

        let [flags] = header_field::<FLAGS_OFFSET, 1>(header);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EventError::corrupt(format!(
                "unknown flag bits {:#04x} at offset {FLAGS_OFFSET}",
                flags & !KNOWN_FLAGS
            )));
        }

        let tags_len = u32::from_le_bytes(header_field::<TAGS_LEN_OFFSET, 4>(header)) as usize;
        let (section, content) = after_header.split_at_checked(tags_len).ok_or_else(|| {
            EventError::corrupt(format!(
                "tags section of {tags_len} bytes at offset {TAGS_OFFSET} runs past the end \
                 of the {total}-byte payload"
            ))
        })?;
        let content_at = TAGS_OFFSET + tags_len;
        let content = super::payload::utf8(content).map_err(|valid_up_to| {
            EventError::corrupt(format!(
                "content is not valid UTF-8 at offset {}",
                content_at + valid_up_to
            ))
        })?;

        let mut cursor = Cursor {
            rest: section,
            offset: TAGS_OFFSET,
            end: content_at,
        };
        let tag_count = cursor.count(&|| "tag count".to_owned())?;
        let tags = cursor.rest;
        let mut expiration = None;
        for tag in 0..tag_count {
            let field_count = cursor.count(&|| format!("field count of tag {tag}"))?;
            let mut is_expiration = false;
            for index in 0..field_count {
                let field = cursor.field(tag, index)?;
                match index {
                    0 => is_expiration = field.eq_str("expiration"),
                    1 if is_expiration && expiration.is_none() => {
                        expiration = field.decimal_u64();
                    }
                    _ => {}
                }
            }
        }
        if !cursor.rest.is_empty() {
            return Err(EventError::corrupt(format!(
                "tags section has {} trailing bytes at offset {}",
                cursor.rest.len(),
                cursor.offset
            )));
        }

        // The flag must agree with the tags, or `expiration()` would disagree with `to_event()`.
        let flagged = flags & FLAG_EXPIRATION != 0;
        if flagged != expiration.is_some() {
            return Err(EventError::corrupt(format!(
                "expiration flag at offset {FLAGS_OFFSET} is {}, but the tags {} a decimal \
                 expiration",
                if flagged { "set" } else { "clear" },
                if flagged { "hold no" } else { "hold" }
            )));
        }

        let view = EventRef {
            bytes: payload,
            header,
            tags,
            tag_count,
            content,
            expiration,
        };
        // One spelling per event: the JSON-escaped flag only where the forms differ (checked
        // only when set, so reading an ordinary payload scans nothing more).
        if flags & FLAG_JSON_ESCAPED_ID != 0 && !view.id_forms_differ() {
            return Err(EventError::corrupt(format!(
                "JSON-escaped id flag at offset {FLAGS_OFFSET} is set, but no string holds a \
                 control character the two id forms write differently"
            )));
        }
        Ok(view)
    }

    /// The event id as stored.
    pub fn id(&self) -> EventId {
        EventId(header_field::<ID_OFFSET, 32>(self.header))
    }

    /// The author's public key.
    pub fn pubkey(&self) -> Pubkey {
        Pubkey(header_field::<PUBKEY_OFFSET, 32>(self.header))
    }

    /// The signature as stored.
    pub fn sig(&self) -> Signature {
        Signature(header_field::<SIG_OFFSET, 64>(self.header))
    }

    /// The claimed creation time, Unix seconds.
    pub fn created_at(&self) -> u64 {
        u64::from_le_bytes(header_field::<CREATED_AT_OFFSET, 8>(self.header))
    }

    /// The event kind.
    pub fn kind(&self) -> u16 {
        u16::from_le_bytes(header_field::<KIND_OFFSET, 2>(self.header))
    }

    /// How relays treat this event's kind.
    pub fn kind_class(&self) -> KindClass {
        KindClass::of(self.kind())
    }

    /// The content, borrowed from the payload.
    pub fn content(&self) -> &'a str {
        self.content
    }

    /// The whole payload.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The NIP-40 expiration (same as [`Event::expiration`]); free when the flag is clear.
    pub fn expiration(&self) -> Option<u64> {
        self.expiration
    }

    /// The tags in order.
    pub fn tags(&self) -> TagIter<'a> {
        TagIter::new(self.tags, self.tag_count)
    }

    /// The number of tags.
    pub fn tag_count(&self) -> usize {
        self.tag_count
    }

    /// The value of the first `d` tag; `None` stands for "" (no `d` tag, or one without value).
    pub fn d_tag(&self) -> Option<TagField<'a>> {
        self.tags()
            .find(|tag| tag.name().is_some_and(|name| name.eq_str("d")))
            .and_then(|tag| tag.value())
    }

    /// Everything the serializers need, with tags read from the payload.
    fn parts(&self) -> Parts<'a, impl Iterator<Item = FieldIter<'a>> + Clone + use<'a>> {
        Parts {
            id: self.id(),
            pubkey: self.pubkey(),
            created_at: self.created_at(),
            kind: self.kind(),
            tags: self.tags().map(|tag| tag.fields()),
            content: self.content,
            sig: self.sig(),
        }
    }

    /// Appends the compact NIP-01 JSON object, byte-identical to [`Event::write_json`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        canonical::write_json(out, self.parts());
    }

    /// The compact NIP-01 JSON object.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.json_len());
        self.write_json(&mut out);
        // The writer copies valid UTF-8 strings and adds only ASCII, so this never fails.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The exact byte length of [`EventRef::to_json`].
    pub fn json_len(&self) -> usize {
        canonical::json_len(self.parts())
    }

    /// The owned event. [`Event`] does not carry the id form; [`Event::id_form`] finds it again.
    pub fn to_event(&self) -> Event {
        Event {
            id: self.id(),
            pubkey: self.pubkey(),
            created_at: self.created_at(),
            kind: self.kind(),
            tags: self
                .tags()
                .map(|tag| tag.fields().map(TagField::to_owned_string).collect())
                .collect(),
            content: self.content.to_owned(),
            sig: self.sig(),
        }
    }

    /// Which serialization the id was signed in, as recorded when the event was stored (see
    /// [`IdForm`]).
    pub fn id_form(&self) -> IdForm {
        if self.flags() & FLAG_JSON_ESCAPED_ID != 0 {
            IdForm::JsonEscaped
        } else {
            IdForm::Nip01
        }
    }

    /// sha256 of the id serialization in the stored form ([`EventRef::id_form`]), the same as
    /// [`Event::compute_id_as`] with that form; compare with [`EventRef::id`] to check stored
    /// bytes.
    pub fn compute_id(&self) -> EventId {
        canonical::compute_id(self.parts(), self.id_form())
    }

    fn flags(&self) -> u8 {
        let [flags] = header_field::<FLAGS_OFFSET, 1>(self.header);
        flags
    }

    /// Whether a string holds a character the two id forms write differently.
    fn id_forms_differ(&self) -> bool {
        canonical::forms_differ(self.content)
            || self.tags().any(|tag| {
                tag.fields().any(|field| match field {
                    TagField::Text(text) => canonical::forms_differ(text),
                    // Stands for hex digits only.
                    TagField::Hex(_) => false,
                })
            })
    }
}

impl fmt::Debug for EventRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRef")
            .field("id", &self.id())
            .field("pubkey", &self.pubkey())
            .field("created_at", &self.created_at())
            .field("kind", &self.kind())
            .field("tags", &self.tag_count)
            .field("content_len", &self.content.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::payload::put_varint;
    use crate::event::{EventErrorKind, Keys};

    fn strings(fields: &[&str]) -> Vec<String> {
        fields.iter().map(|s| (*s).to_owned()).collect()
    }

    fn sample() -> Event {
        Keys::from_seed(5).sign(
            1_700_000_000,
            30_023,
            vec![
                strings(&["d", "my-article"]),
                strings(&["e", &"0f".repeat(32), "wss://relay"]),
                vec![],
                strings(&["expiration", "1800000000"]),
            ],
            "content ✓".to_owned(),
        )
    }

    fn encode(event: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        event.encode_payload(&mut out).unwrap();
        out
    }

    /// A payload with the given flags, raw tags section and content.
    fn raw_payload(flags: u8, section: &[u8], content: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; FLAGS_OFFSET];
        out.push(flags);
        out.extend_from_slice(&(section.len() as u32).to_le_bytes());
        out.extend_from_slice(section);
        out.extend_from_slice(content);
        out
    }

    fn corrupt(payload: &[u8]) -> String {
        let e = EventRef::parse(payload).unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::CorruptPayload, "{e}");
        assert!(
            e.to_string().starts_with("error: corrupt stored event: "),
            "{e}"
        );
        e.message().to_owned()
    }

    #[test]
    fn accessors_match_the_event() {
        let event = sample();
        let payload = encode(&event);
        let view = EventRef::parse(&payload).unwrap();
        assert_eq!(view.to_event(), event);
        assert_eq!(view.kind_class(), KindClass::Addressable);
        assert_eq!(view.d_tag(), Some(TagField::Text("my-article")));
        assert_eq!(view.expiration(), Some(1_800_000_000));
        assert_eq!(view.tag_count(), 4);
        let tags: Vec<TagRef<'_>> = view.tags().collect();
        assert_eq!(tags[1].value(), Some(TagField::Hex(&[0x0f; 32])));
        assert!(tags[1].value().unwrap().eq_str(&"0f".repeat(32)));
        assert!(tags[2].is_empty());
        assert_eq!(view.content(), "content ✓");
        assert_eq!(view.compute_id(), event.id);
        assert_eq!(view.to_json(), event.to_json());
        let shown = format!("{view:?}");
        assert!(shown.contains(&event.id.to_hex()), "{shown}");
    }

    #[test]
    fn hex_compacted_expiration_and_d_tag() {
        // "1700000000" and "00" are even-length lowercase hex, so they are stored as bytes.
        let event = Keys::from_seed(6).sign(
            1,
            30_000,
            vec![
                strings(&["d", "00"]),
                strings(&["expiration", "1700000000"]),
            ],
            String::new(),
        );
        let payload = encode(&event);
        let view = EventRef::parse(&payload).unwrap();
        assert_eq!(view.d_tag(), Some(TagField::Hex(&[0])));
        assert_eq!(view.expiration(), Some(1_700_000_000));
        assert_eq!(view.to_event(), event);

        let none = Keys::from_seed(6).sign(1, 1, vec![strings(&["d"])], String::new());
        let payload = encode(&none);
        let view = EventRef::parse(&payload).unwrap();
        assert_eq!(view.d_tag(), None);
        assert_eq!(view.expiration(), None);
    }

    #[test]
    fn short_payloads() {
        assert_eq!(
            corrupt(&[]),
            "payload is 0 bytes, shorter than the 143-byte header"
        );
        let payload = encode(&sample());
        assert!(corrupt(&payload[..HEADER_LEN - 1]).contains("shorter than the 143-byte header"));
        for cut in HEADER_LEN..payload.len() {
            // Cutting into the content may still leave valid UTF-8; cutting the tags never does.
            let _ = EventRef::parse(&payload[..cut]);
        }
        let tags_end = payload.len() - "content ✓".len();
        assert!(corrupt(&payload[..tags_end - 1]).contains("runs past the end"));
    }

    #[test]
    fn unknown_flags() {
        let msg = corrupt(&raw_payload(0b100, &[0], b""));
        assert_eq!(msg, "unknown flag bits 0x04 at offset 138");
        let msg = corrupt(&raw_payload(0x80 | FLAG_JSON_ESCAPED_ID, &[0], b"\x07"));
        assert_eq!(msg, "unknown flag bits 0x80 at offset 138");
    }

    /// `sample()`'s shape, signed over the JSON-escaped serialization, with `text` in the
    /// content and in a tag value.
    fn json_escaped(text: &str) -> Event {
        let keys = Keys::from_seed(7);
        let mut event = Event {
            tags: vec![
                strings(&["t", text]),
                strings(&["e", &"0f".repeat(32)]),
                strings(&["expiration", "1800000000"]),
            ],
            content: format!("bell {text}"),
            ..sample()
        };
        event.pubkey = keys.pubkey();
        event.id = event.compute_id_as(IdForm::JsonEscaped);
        event.sig = keys.sign_id(&event.id);
        event
    }

    #[test]
    fn the_json_escaped_form_is_stored_and_used() {
        let event = json_escaped("\u{7}");
        assert_eq!(event.id_form(), Some(IdForm::JsonEscaped));
        let payload = encode(&event);
        assert_eq!(
            payload[FLAGS_OFFSET],
            FLAG_EXPIRATION | FLAG_JSON_ESCAPED_ID
        );
        let view = EventRef::parse(&payload).unwrap();
        assert_eq!(view.id_form(), IdForm::JsonEscaped);
        assert_eq!(view.compute_id(), event.id);
        assert_ne!(
            event.compute_id(),
            event.id,
            "NIP-01's form hashes otherwise"
        );
        assert_eq!(view.to_event(), event);
        view.to_event().verify().unwrap();
        assert_eq!(view.to_json(), event.to_json());
        assert!(view.to_json().contains(r#""content":"bell \u0007","#));

        // The same strings signed in NIP-01's form: flag clear.
        let keys = Keys::from_seed(7);
        let nip01 = keys.sign(event.created_at, event.kind, event.tags, event.content);
        let payload = encode(&nip01);
        assert_eq!(payload[FLAGS_OFFSET], FLAG_EXPIRATION);
        let view = EventRef::parse(&payload).unwrap();
        assert_eq!(view.id_form(), IdForm::Nip01);
        assert_eq!(view.compute_id(), nip01.id);
    }

    #[test]
    fn the_json_escaped_flag_is_set_only_where_the_forms_differ() {
        // U+007F and the short escapes are written alike by both forms: one id, flag clear.
        for text in ["\u{7f}", "\n\t\r\u{8}\u{c}", "plain"] {
            let event = json_escaped(text);
            assert_eq!(event.id, event.compute_id(), "{text:?}");
            assert_eq!(event.id_form(), Some(IdForm::Nip01));
            assert_eq!(encode(&event)[FLAGS_OFFSET] & FLAG_JSON_ESCAPED_ID, 0);
        }
        // An id matching neither form (only a trusted insert stores one): flag clear.
        let mut forged = json_escaped("\u{1}");
        forged.content.push('!');
        assert_eq!(forged.id_form(), None);
        assert_eq!(encode(&forged)[FLAGS_OFFSET] & FLAG_JSON_ESCAPED_ID, 0);

        // Set by hand where no string needs it: refused, so each event has one payload.
        let mut payload = encode(&json_escaped("\u{7f}"));
        payload[FLAGS_OFFSET] |= FLAG_JSON_ESCAPED_ID;
        assert_eq!(
            corrupt(&payload),
            "JSON-escaped id flag at offset 138 is set, but no string holds a control character \
             the two id forms write differently"
        );
        // A character only in a tag value, or only in the content, is enough.
        assert!(EventRef::parse(&raw_payload(FLAG_JSON_ESCAPED_ID, &[0], b"\x1f")).is_ok());
        let section = [1, 1, 1 << 1, 0x00];
        let view_bytes = raw_payload(FLAG_JSON_ESCAPED_ID, &section, b"");
        assert_eq!(
            EventRef::parse(&view_bytes).unwrap().id_form(),
            IdForm::JsonEscaped
        );
        // Hex-compacted fields stand for hex digits, never control characters.
        let section = [1, 1, (1 << 1) | 1, 0x01];
        assert!(
            corrupt(&raw_payload(FLAG_JSON_ESCAPED_ID, &section, b"")).contains("JSON-escaped")
        );
    }

    #[test]
    fn bad_varints_name_their_offset() {
        assert_eq!(
            corrupt(&raw_payload(0, &[0x80], b"")),
            "tag count at offset 143: truncated varint"
        );
        assert_eq!(
            corrupt(&raw_payload(0, &[0x80, 0x00], b"")),
            "tag count at offset 143: overlong varint"
        );
        assert_eq!(
            corrupt(&raw_payload(0, &[1, 0xff, 0xff, 0xff, 0xff, 0x7f], b"")),
            "field count of tag 0 at offset 144: varint overflows 32 bits"
        );
        assert_eq!(
            corrupt(&raw_payload(0, &[1, 1, 0x80], b"")),
            "tag 0 field 0 header at offset 145: truncated varint"
        );
    }

    #[test]
    fn counts_and_lengths_must_fit() {
        assert_eq!(
            corrupt(&raw_payload(0, &[5, 0], b"")),
            "tag count at offset 143 is 5, but only 1 bytes of the tags section remain"
        );
        assert_eq!(
            corrupt(&raw_payload(0, &[1, 9, 0], b"")),
            "field count of tag 0 at offset 144 is 9, but only 1 bytes of the tags section remain"
        );
        // The field claims 3 bytes; only 1 is in the section (content bytes don't count).
        assert_eq!(
            corrupt(&raw_payload(0, &[1, 1, 3 << 1, b'a'], b"bc")),
            "tag 0 field 0 at offset 145 claims 3 bytes, but only 1 remain in the tags section"
        );
        assert_eq!(
            corrupt(&raw_payload(0, &[0, 7, 7], b"")),
            "tags section has 2 trailing bytes at offset 144"
        );
        // Fewer tags than claimed runs out of bytes.
        assert!(corrupt(&raw_payload(0, &[2, 0], b"")).contains("tag count"));
    }

    #[test]
    fn utf8_is_checked_with_offsets() {
        assert_eq!(
            corrupt(&raw_payload(
                0,
                &[1, 2, 1 << 1, b'e', 2 << 1, b'a', 0xff],
                b""
            )),
            "tag 0 field 1 is not valid UTF-8 at offset 149"
        );
        assert_eq!(
            corrupt(&raw_payload(0, &[0], b"ok\xe2\x82")),
            "content is not valid UTF-8 at offset 146"
        );
        // Hex fields hold raw bytes, so any byte is fine there.
        let view_bytes = raw_payload(0, &[1, 1, (1 << 1) | 1, 0xff], b"");
        let view = EventRef::parse(&view_bytes).unwrap();
        assert_eq!(
            view.tags().next().unwrap().name(),
            Some(TagField::Text("ff"))
        );
    }

    #[test]
    fn expiration_flag_must_match_tags() {
        let mut section = Vec::new();
        put_varint(&mut section, 1);
        put_varint(&mut section, 2);
        put_varint(&mut section, 10 << 1);
        section.extend_from_slice(b"expiration");
        put_varint(&mut section, 1 << 1);
        section.extend_from_slice(b"7");
        assert_eq!(
            EventRef::parse(&raw_payload(FLAG_EXPIRATION, &section, b""))
                .unwrap()
                .expiration(),
            Some(7)
        );
        assert!(corrupt(&raw_payload(0, &section, b"")).contains("flag at offset 138 is clear"));
        assert!(
            corrupt(&raw_payload(FLAG_EXPIRATION, &[0], b"")).contains("flag at offset 138 is set")
        );
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        let event = sample();
        let payload = encode(&event);
        let mut copy = payload.clone();
        for i in 0..payload.len() {
            for delta in [0x01u8, 0x80, 0xff] {
                copy[i] ^= delta;
                if let Ok(view) = EventRef::parse(&copy) {
                    // Whatever parsed must be fully readable and self-consistent.
                    let owned = view.to_event();
                    assert_eq!(view.to_json(), owned.to_json());
                    assert_eq!(view.expiration(), owned.expiration());
                    assert_eq!(view.compute_id(), owned.compute_id_as(view.id_form()));
                }
                copy[i] ^= delta;
            }
        }
    }
}
