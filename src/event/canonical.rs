//! NIP-01 serialization: the canonical array hashed into the event id, and the compact JSON object.
//!
//! Both writers are generic over where tags come from (owned strings or a stored payload), so
//! `Event` and `EventRef` produce byte-identical output by construction.
//!
//! The id array exists in two forms in the wild (see [`IdForm`]); they differ only in how a
//! control character other than `\n \r \t \b \f` is written, so an event without one has a
//! single id serialization.

use std::cell::RefCell;

use sha2::{Digest, Sha256};

use super::event_ref::TagField;
use super::types::{EventId, Pubkey, Signature, hex_pair, push_hex};

/// Which characters a string writer escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escaping {
    /// NIP-01 id serialization: only `\n \" \\ \r \t \b \f`; every other byte verbatim.
    Canonical,
    /// Valid JSON output: the canonical seven plus every other byte below 0x20 as `\u00xx`.
    Json,
}

/// Which serialization of `[0,pubkey,created_at,kind,tags,content]` an event id hashes.
///
/// NIP-01's text escapes only `\n \" \\ \r \t \b \f` and writes every other character
/// verbatim; `JSON.stringify` (nostr-tools) and serde_json (rust-nostr) also write the other
/// control characters U+0000..U+001F as `\u00xx` with lowercase hex. Neither escapes U+007F or
/// anything above it. Both forms are accepted (see [`Event::id_form`](super::Event::id_form));
/// the stored payload remembers which one an event was signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdForm {
    /// NIP-01's text: control characters other than the seven escapes are hashed raw.
    Nip01,
    /// The `JSON.stringify` / serde_json form: every control character below U+0020 escaped,
    /// the five with a short escape as `\n \r \t \b \f`, the others as `\u00xx`.
    JsonEscaped,
}

impl IdForm {
    fn escaping(self) -> Escaping {
        match self {
            IdForm::Nip01 => Escaping::Canonical,
            IdForm::JsonEscaped => Escaping::Json,
        }
    }
}

/// Marks a byte that needs a `\u00xx` escape in the JSON table.
const UNICODE_ESCAPE: u8 = b'u';

/// Per input byte: 0 to copy it verbatim, else the byte written after the backslash
/// (`UNICODE_ESCAPE` meaning `\u00xx`). Non-ASCII bytes are always 0, so multi-byte UTF-8
/// sequences are copied whole.
///
/// Evaluated at compile time, so the constant indexes below are checked by the compiler.
const fn escape_table(json: bool) -> [u8; 256] {
    let mut table = [0u8; 256];
    if json {
        let mut c = 0;
        while c < 0x20 {
            table[c] = UNICODE_ESCAPE;
            c += 1;
        }
    }
    table[b'\n' as usize] = b'n';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table
}

static CANONICAL_TABLE: [u8; 256] = escape_table(false);
static JSON_TABLE: [u8; 256] = escape_table(true);

impl Escaping {
    #[inline]
    fn table(self) -> &'static [u8; 256] {
        match self {
            Escaping::Canonical => &CANONICAL_TABLE,
            Escaping::Json => &JSON_TABLE,
        }
    }
}

/// The escape code for byte `b`. A `u8` always indexes a 256-entry table in bounds, so the
/// fallback is never taken (and the bounds check compiles away).
#[inline]
fn escape_code(table: &[u8; 256], b: u8) -> u8 {
    table.get(usize::from(b)).copied().unwrap_or(0)
}

/// Appends `s` escaped per `esc`, without quotes. Runs of bytes that need no escaping are
/// copied in one go.
pub(crate) fn write_escaped(out: &mut Vec<u8>, s: &str, esc: Escaping) {
    let table = esc.table();
    let mut rest = s.as_bytes();
    while let Some(pos) = first_escaped(table, rest) {
        let (run, tail) = rest.split_at(pos);
        out.extend_from_slice(run);
        let Some((&b, after)) = tail.split_first() else {
            break;
        };
        match escape_code(table, b) {
            UNICODE_ESCAPE => {
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&hex_pair(b));
            }
            code => out.extend_from_slice(&[b'\\', code]),
        }
        rest = after;
    }
    out.extend_from_slice(rest);
}

/// The position of the first byte of `bytes` that `table` escapes. Only
/// bytes below 0x20, `"` and `\\` are ever escaped, so it looks at 8 bytes
/// at a time and checks bytes one by one only in a word holding one of
/// those (an answer of 100 notes is mostly text that needs no escape).
fn first_escaped(table: &[u8; 256], bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Nonzero iff some byte of `x` is zero (Bit Twiddling Hacks' `haszero`;
    // it may flag bytes above a zero byte too, which the exact check below
    // sorts out).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS;
    let escaped = |b: &u8| escape_code(table, *b) != 0;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let x = <[u8; 8]>::try_from(word).map_or(0, u64::from_ne_bytes);
        let candidates = (x.wrapping_sub(ONES * 0x20) & !x & HIGH_BITS)
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')));
        if candidates != 0
            && let Some(pos) = word.iter().position(escaped)
        {
            return Some(at + pos);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(escaped)
        .map(|pos| at + pos)
}

/// Whether `s` holds a character the two [`IdForm`]s write differently: a control character
/// below U+0020 that NIP-01 leaves raw and JSON writes as `\u00xx`. Such characters are single
/// bytes in UTF-8 and never occur inside a multi-byte sequence.
///
/// Runs on every stored event, so it looks at 8 bytes at a time and checks bytes one by one only
/// in a word holding some byte below 0x20 (a newline, say).
pub(crate) fn forms_differ(s: &str) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    let differs = |b: &u8| escape_code(&JSON_TABLE, *b) == UNICODE_ESCAPE;
    let mut words = s.as_bytes().chunks_exact(8);
    for word in &mut words {
        let x = <[u8; 8]>::try_from(word).map_or(0, u64::from_ne_bytes);
        // Nonzero iff some byte is below 0x20: the lowest such byte borrows into its own high
        // bit, which `!x` keeps as it is below 0x80 (Bit Twiddling Hacks' `hasless`). Borrows
        // may flag other bytes too; the exact check below sorts them out.
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH_BITS;
        if below_space != 0 && word.iter().any(differs) {
            return true;
        }
    }
    words.remainder().iter().any(differs)
}

/// The exact number of bytes `write_escaped(_, s, esc)` appends.
pub(crate) fn escaped_len(s: &str, esc: Escaping) -> usize {
    let table = esc.table();
    s.bytes()
        .fold(s.len(), |len, b| match escape_code(table, b) {
            0 => len,
            UNICODE_ESCAPE => len + 5,
            _ => len + 1,
        })
}

/// Appends the decimal form of `v`.
pub(crate) fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut n = v;
    let mut used = 0;
    for slot in buf.iter_mut().rev() {
        // n % 10 < 10, so the narrowing is lossless.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        used += 1;
        if n == 0 {
            break;
        }
    }
    let start = buf.len() - used;
    out.extend_from_slice(buf.get(start..).unwrap_or_default());
}

/// The number of decimal digits of `v`.
pub(crate) fn u64_len(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn write_field(out: &mut Vec<u8>, field: TagField<'_>, esc: Escaping) {
    out.push(b'"');
    match field {
        TagField::Text(s) => write_escaped(out, s, esc),
        // Hex digits never need escaping.
        TagField::Hex(bytes) => push_hex(out, bytes),
    }
    out.push(b'"');
}

fn field_len(field: TagField<'_>, esc: Escaping) -> usize {
    2 + match field {
        TagField::Text(s) => escaped_len(s, esc),
        TagField::Hex(bytes) => bytes.len() * 2,
    }
}

/// Appends the tags as a JSON array of arrays of strings.
pub(crate) fn write_tags<'t, T, F>(out: &mut Vec<u8>, tags: T, esc: Escaping)
where
    T: IntoIterator<Item = F>,
    F: IntoIterator<Item = TagField<'t>>,
{
    out.push(b'[');
    for (i, tag) in tags.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for (j, field) in tag.into_iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_field(out, field, esc);
        }
        out.push(b']');
    }
    out.push(b']');
}

/// The exact number of bytes `write_tags(_, tags, esc)` appends.
pub(crate) fn tags_len<'t, T, F>(tags: T, esc: Escaping) -> usize
where
    T: IntoIterator<Item = F>,
    F: IntoIterator<Item = TagField<'t>>,
{
    let mut len = 2;
    for (i, tag) in tags.into_iter().enumerate() {
        len += usize::from(i > 0) + 2;
        for (j, field) in tag.into_iter().enumerate() {
            len += usize::from(j > 0) + field_len(field, esc);
        }
    }
    len
}

/// Everything an event serializes, with tags from any source.
#[derive(Debug, Clone)]
pub(crate) struct Parts<'p, T> {
    pub id: EventId,
    pub pubkey: Pubkey,
    pub created_at: u64,
    pub kind: u16,
    pub tags: T,
    pub content: &'p str,
    pub sig: Signature,
}

// The literal pieces of the JSON object, in field order.
const OPEN_ID: &[u8] = b"{\"id\":\"";
const PUBKEY_KEY: &[u8] = b"\",\"pubkey\":\"";
const CREATED_AT_KEY: &[u8] = b"\",\"created_at\":";
const KIND_KEY: &[u8] = b",\"kind\":";
const TAGS_KEY: &[u8] = b",\"tags\":";
const CONTENT_KEY: &[u8] = b",\"content\":\"";
const SIG_KEY: &[u8] = b"\",\"sig\":\"";
const CLOSE: &[u8] = b"\"}";

/// Appends the compact NIP-01 JSON object (field order id, pubkey, created_at, kind, tags,
/// content, sig).
pub(crate) fn write_json<'t, T, F>(out: &mut Vec<u8>, parts: Parts<'_, T>)
where
    T: IntoIterator<Item = F>,
    F: IntoIterator<Item = TagField<'t>>,
{
    out.extend_from_slice(OPEN_ID);
    push_hex(out, parts.id.as_bytes());
    out.extend_from_slice(PUBKEY_KEY);
    push_hex(out, parts.pubkey.as_bytes());
    out.extend_from_slice(CREATED_AT_KEY);
    write_u64(out, parts.created_at);
    out.extend_from_slice(KIND_KEY);
    write_u64(out, u64::from(parts.kind));
    out.extend_from_slice(TAGS_KEY);
    write_tags(out, parts.tags, Escaping::Json);
    out.extend_from_slice(CONTENT_KEY);
    write_escaped(out, parts.content, Escaping::Json);
    out.extend_from_slice(SIG_KEY);
    push_hex(out, parts.sig.as_bytes());
    out.extend_from_slice(CLOSE);
}

/// The exact number of bytes `write_json` appends.
pub(crate) fn json_len<'t, T, F>(parts: Parts<'_, T>) -> usize
where
    T: IntoIterator<Item = F>,
    F: IntoIterator<Item = TagField<'t>>,
{
    OPEN_ID.len()
        + 64
        + PUBKEY_KEY.len()
        + 64
        + CREATED_AT_KEY.len()
        + u64_len(parts.created_at)
        + KIND_KEY.len()
        + u64_len(u64::from(parts.kind))
        + TAGS_KEY.len()
        + tags_len(parts.tags, Escaping::Json)
        + CONTENT_KEY.len()
        + escaped_len(parts.content, Escaping::Json)
        + SIG_KEY.len()
        + 128
        + CLOSE.len()
}

/// Appends the id serialization `[0,"<pubkey>",<created_at>,<kind>,<tags>,"<content>"]` in
/// `form`.
pub(crate) fn write_canonical<'t, T, F>(out: &mut Vec<u8>, parts: Parts<'_, T>, form: IdForm)
where
    T: IntoIterator<Item = F>,
    F: IntoIterator<Item = TagField<'t>>,
{
    let esc = form.escaping();
    out.extend_from_slice(b"[0,\"");
    push_hex(out, parts.pubkey.as_bytes());
    out.extend_from_slice(b"\",");
    write_u64(out, parts.created_at);
    out.push(b',');
    write_u64(out, u64::from(parts.kind));
    out.push(b',');
    write_tags(out, parts.tags, esc);
    out.extend_from_slice(b",\"");
    write_escaped(out, parts.content, esc);
    out.extend_from_slice(b"\"]");
}

/// A per-thread buffer kept between hashes; dropped instead when it grew past this size, so one
/// huge event does not pin its memory.
const MAX_RETAINED_SCRATCH: usize = 1 << 20;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on an empty reusable buffer (or a fresh one if the thread's buffer is unavailable).
fn with_scratch<R>(mut f: impl FnMut(&mut Vec<u8>) -> R) -> R {
    let pooled = SCRATCH.try_with(|cell| {
        let mut buf = cell.try_borrow_mut().ok()?;
        buf.clear();
        let result = f(&mut buf);
        if buf.capacity() > MAX_RETAINED_SCRATCH {
            *buf = Vec::new();
        }
        Some(result)
    });
    match pooled {
        Ok(Some(result)) => result,
        _ => f(&mut Vec::new()),
    }
}

/// The event id: sha256 of the id serialization in `form`.
pub(crate) fn compute_id<'t, T, F>(parts: Parts<'_, T>, form: IdForm) -> EventId
where
    T: IntoIterator<Item = F> + Clone,
    F: IntoIterator<Item = TagField<'t>>,
{
    with_scratch(|buf| {
        write_canonical(buf, parts.clone(), form);
        EventId(Sha256::digest(buf.as_slice()).into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time scan finds the same first escaped byte as a
    /// byte-by-byte one, for every byte value at every position of strings
    /// of every length up to 40, in both escapings.
    #[test]
    fn first_escaped_agrees_with_a_bytewise_scan() {
        for esc in [Escaping::Canonical, Escaping::Json] {
            let table = esc.table();
            let bytewise = |bytes: &[u8]| bytes.iter().position(|&b| escape_code(table, b) != 0);
            for len in 0..40usize {
                let base: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                assert_eq!(first_escaped(table, &base), None);
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut bytes = base.clone();
                        bytes[at] = b;
                        // A second escaped byte later must not be found first.
                        if at + 3 < len {
                            bytes[at + 3] = b'"';
                        }
                        assert_eq!(
                            first_escaped(table, &bytes),
                            bytewise(&bytes),
                            "{esc:?} byte {b:#04x} at {at} of {len}"
                        );
                    }
                }
            }
        }
    }

    fn escaped(s: &str, esc: Escaping) -> String {
        let mut out = Vec::new();
        write_escaped(&mut out, s, esc);
        assert_eq!(out.len(), escaped_len(s, esc), "length of {s:?}");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_escapes_only_the_seven() {
        assert_eq!(
            escaped("a\n\"\\\r\t\u{8}\u{c}b", Escaping::Canonical),
            "a\\n\\\"\\\\\\r\\t\\b\\fb"
        );
        // Other control characters and non-ASCII stay verbatim.
        assert_eq!(
            escaped("\u{1}\u{1f}\u{7f}\u{2028}é/", Escaping::Canonical),
            "\u{1}\u{1f}\u{7f}\u{2028}é/"
        );
    }

    #[test]
    fn json_escapes_every_control_character() {
        assert_eq!(escaped("\u{0}", Escaping::Json), "\\u0000");
        assert_eq!(escaped("x\u{1}y\u{1f}", Escaping::Json), "x\\u0001y\\u001f");
        assert_eq!(escaped("\n\u{8}", Escaping::Json), "\\n\\b");
        assert_eq!(escaped("\u{7f}\u{2028}", Escaping::Json), "\u{7f}\u{2028}");
        for c in 0u8..0x20 {
            let s = char::from(c).to_string();
            let out = escaped(&s, Escaping::Json);
            let back: String = serde_json::from_str(&format!("\"{out}\"")).unwrap();
            assert_eq!(back, s);
        }
    }

    /// The JSON writer and the id form it stands for spell every string the way serde_json
    /// (rust-nostr) does, and JSON.stringify too: the same rules, lowercase hex, U+007F raw.
    #[test]
    fn json_escaping_is_serde_json_escaping() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        samples.extend([
            "\u{2028}é✓\u{1f600}".to_owned(),
            "a\u{1}\u{1f}\u{7f}\"\\/".to_owned(),
        ]);
        for s in &samples {
            let quoted = serde_json::to_string(s).unwrap();
            assert_eq!(
                format!("\"{}\"", escaped(s, Escaping::Json)),
                quoted,
                "{s:?}"
            );
            // The forms differ exactly where the escapes differ.
            assert_eq!(
                forms_differ(s),
                escaped(s, Escaping::Json) != escaped(s, Escaping::Canonical),
                "{s:?}"
            );
        }
        let differing: Vec<u8> = (0u8..0x80)
            .filter(|&b| forms_differ(&char::from(b).to_string()))
            .collect();
        let expected: Vec<u8> = (0u8..0x20)
            .filter(|b| ![b'\n', b'\r', b'\t', 0x08, 0x0c].contains(b))
            .collect();
        assert_eq!(differing, expected);
        assert!(!forms_differ("\u{7f}\u{80}\u{9f}\u{2028}"));
    }

    #[test]
    fn forms_differ_finds_a_character_at_every_position() {
        for len in 0..40 {
            let base = "\n\u{1f600}".repeat(len);
            let chars: Vec<char> = base.chars().collect();
            assert!(!forms_differ(&base), "{len}");
            for at in 0..=chars.len() {
                for c in ['\u{0}', '\u{1}', '\u{7}', '\u{1f}'] {
                    let mut s = chars.clone();
                    s.insert(at, c);
                    let s: String = s.into_iter().collect();
                    assert!(forms_differ(&s), "{s:?}");
                }
                for c in ['\t', '\r', '\u{8}', '\u{c}', ' ', '\u{7f}', '\u{80}', 'é'] {
                    let mut s = chars.clone();
                    s.insert(at, c);
                    let s: String = s.into_iter().collect();
                    assert!(!forms_differ(&s), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn escaping_handles_edges() {
        assert_eq!(escaped("", Escaping::Json), "");
        assert_eq!(escaped("plain", Escaping::Json), "plain");
        assert_eq!(escaped("\"", Escaping::Json), "\\\"");
        assert_eq!(escaped("\"\"", Escaping::Canonical), "\\\"\\\"");
    }

    #[test]
    fn decimal_writing() {
        for v in [
            0,
            1,
            9,
            10,
            99,
            100,
            65_535,
            1_700_000_000,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_u64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
            assert_eq!(u64_len(v), out.len());
        }
    }

    #[test]
    fn tags_serialization_and_length() {
        let tags: Vec<Vec<TagField<'_>>> = vec![
            vec![TagField::Text("e"), TagField::Hex(&[0xab, 0x01])],
            vec![],
            vec![TagField::Text("a\"b")],
        ];
        let mut out = Vec::new();
        write_tags(
            &mut out,
            tags.iter().map(|t| t.iter().copied()),
            Escaping::Json,
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"[["e","ab01"],[],["a\"b"]]"#
        );
        assert_eq!(
            tags_len(tags.iter().map(|t| t.iter().copied()), Escaping::Json),
            out.len()
        );
        let empty: [[TagField<'_>; 0]; 0] = [];
        let mut out = Vec::new();
        write_tags(&mut out, empty, Escaping::Canonical);
        assert_eq!(out, b"[]");
    }
}
