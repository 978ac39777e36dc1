//! NIP-19 bech32 encodings of public keys (`npub`) and event ids (`note`), and parsers that
//! accept either hex or bech32.

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};

use super::error::EventError;
use super::types::{EventId, Pubkey};

const NPUB: Hrp = Hrp::parse_unchecked("npub");
const NOTE: Hrp = Hrp::parse_unchecked("note");
const NPROFILE: Hrp = Hrp::parse_unchecked("nprofile");

fn encode(hrp: Hrp, data: &[u8; 32]) -> String {
    // Only fails past bech32's 90-character limit; 32 bytes with a 4-letter prefix make 63.
    bech32::encode::<Bech32>(hrp, data).unwrap_or_default()
}

/// `err` and its chain of sources, joined with ": " (bech32's top-level messages are vague).
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Decodes a bech32 (not bech32m) string with the given prefix holding exactly 32 bytes.
fn decode(hrp: Hrp, s: &str) -> Result<[u8; 32], EventError> {
    let what = hrp.as_str();
    let checked = CheckedHrpstring::new::<Bech32>(s)
        .map_err(|e| EventError::bad_field(format!("invalid {what}: {}", describe(&e))))?;
    if checked.hrp() != hrp {
        return Err(EventError::bad_field(format!(
            "invalid {what}: prefix is \"{}\", expected \"{what}\"",
            checked.hrp()
        )));
    }
    checked
        .validate_segwit_padding()
        .map_err(|e| EventError::bad_field(format!("invalid {what}: {}", describe(&e))))?;
    let bytes: Vec<u8> = checked.byte_iter().collect();
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        EventError::bad_field(format!(
            "invalid {what}: holds {} bytes, expected 32",
            bytes.len()
        ))
    })
}

/// The `npub1...` form of a public key.
pub fn encode_npub(pubkey: &Pubkey) -> String {
    encode(NPUB, pubkey.as_bytes())
}

/// Decodes an `npub1...` string.
pub fn decode_npub(s: &str) -> Result<Pubkey, EventError> {
    decode(NPUB, s).map(Pubkey)
}

/// The `note1...` form of an event id.
pub fn encode_note(id: &EventId) -> String {
    encode(NOTE, id.as_bytes())
}

/// Decodes a `note1...` string.
pub fn decode_note(s: &str) -> Result<EventId, EventError> {
    decode(NOTE, s).map(EventId)
}

/// Parses a public key given as 64 lowercase hex characters or as `npub1...`.
pub fn parse_pubkey(s: &str) -> Result<Pubkey, EventError> {
    if s.starts_with("npub1") {
        decode_npub(s)
    } else {
        Pubkey::from_hex(s)
    }
}

/// The `nprofile1...` form of a public key with relay hints (NIP-19 TLV:
/// type 0 the key, type 1 each relay).
pub fn encode_nprofile(pubkey: &Pubkey, relays: &[&str]) -> String {
    let mut data = vec![0u8, 32];
    data.extend_from_slice(pubkey.as_bytes());
    for relay in relays {
        let bytes = relay.as_bytes();
        if bytes.len() > 255 {
            continue;
        }
        data.push(1);
        data.push(bytes.len() as u8);
        data.extend_from_slice(bytes);
    }
    bech32::encode::<Bech32>(NPROFILE, &data).unwrap_or_default()
}

/// Decodes an `nprofile1...` string: the key and the relay hints (hints
/// that are not UTF-8 are skipped; unknown TLV types are ignored, as NIP-19
/// asks).
pub fn decode_nprofile(s: &str) -> Result<(Pubkey, Vec<String>), EventError> {
    let bad = |why: String| EventError::bad_field(format!("invalid nprofile: {why}"));
    let checked = CheckedHrpstring::new::<Bech32>(s).map_err(|e| bad(describe(&e)))?;
    if checked.hrp() != NPROFILE {
        return Err(bad(format!(
            "prefix is \"{}\", expected \"nprofile\"",
            checked.hrp()
        )));
    }
    let data: Vec<u8> = checked.byte_iter().collect();
    let mut pubkey = None;
    let mut relays = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (Some(&kind), Some(&len)) = (data.get(at), data.get(at + 1)) else {
            return Err(bad("a TLV record is cut short".to_string()));
        };
        let value = data
            .get(at + 2..at + 2 + usize::from(len))
            .ok_or_else(|| bad("a TLV value runs past the end".to_string()))?;
        match kind {
            0 => {
                let key = <[u8; 32]>::try_from(value)
                    .map_err(|_| bad(format!("the key holds {len} bytes, expected 32")))?;
                pubkey.get_or_insert(Pubkey(key));
            }
            1 => {
                if let Ok(relay) = std::str::from_utf8(value) {
                    relays.push(relay.to_string());
                }
            }
            _ => {}
        }
        at += 2 + usize::from(len);
    }
    let pubkey = pubkey.ok_or_else(|| bad("no key (TLV type 0)".to_string()))?;
    Ok((pubkey, relays))
}

/// Parses a person given as hex, `npub1...` or `nprofile1...`: the key and
/// the nprofile's relay hints (none for the other forms).
pub fn parse_profile(s: &str) -> Result<(Pubkey, Vec<String>), EventError> {
    let s = s.trim();
    let s = s.strip_prefix("nostr:").unwrap_or(s);
    if s.starts_with("nprofile1") {
        decode_nprofile(s)
    } else {
        parse_pubkey(s).map(|p| (p, Vec::new()))
    }
}

/// Parses an event id given as 64 lowercase hex characters or as `note1...`.
pub fn parse_event_id(s: &str) -> Result<EventId, EventError> {
    if s.starts_with("note1") {
        decode_note(s)
    } else {
        EventId::from_hex(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventErrorKind;

    const NPUB_VECTOR: &str = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
    const HEX_VECTOR: &str = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";

    #[test]
    fn known_nprofile_vector() {
        // NIP-19's example.
        let (pubkey, relays) = parse_profile(
            "nprofile1qqsrhuxx8l9ex335q7he0f09aej04zpazpl0ne2cgukyawd24mayt8gpp4mhxue69uhhytnc9e3k7mgpz4mhxue69uhkg6nzv9ejuumpv34kytnrdaksjlyr9p",
        )
        .unwrap();
        assert_eq!(
            pubkey.to_hex(),
            "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d"
        );
        assert_eq!(relays, ["wss://r.x.com", "wss://djbas.sadkb.com"]);
        let again = encode_nprofile(&pubkey, &["wss://r.x.com", "wss://djbas.sadkb.com"]);
        assert_eq!(decode_nprofile(&again).unwrap(), (pubkey, relays));
        assert_eq!(parse_profile(HEX_VECTOR).unwrap().0.to_hex(), HEX_VECTOR);
        assert_eq!(
            parse_profile(&format!("nostr:{NPUB_VECTOR}"))
                .unwrap()
                .0
                .to_hex(),
            HEX_VECTOR
        );
        for (bad, says) in [
            ("nprofile1qqqqqqqq", "nprofile"),
            (&encode_nprofile(&pubkey, &[])[..20], "nprofile"),
        ] {
            let error = parse_profile(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn known_npub_vector() {
        let pk = Pubkey::from_hex(HEX_VECTOR).unwrap();
        assert_eq!(encode_npub(&pk), NPUB_VECTOR);
        assert_eq!(decode_npub(NPUB_VECTOR).unwrap(), pk);
        assert_eq!(parse_pubkey(NPUB_VECTOR).unwrap(), pk);
        assert_eq!(parse_pubkey(HEX_VECTOR).unwrap(), pk);
        // bech32 is case-insensitive as a whole.
        assert_eq!(decode_npub(&NPUB_VECTOR.to_uppercase()).unwrap(), pk);
    }

    #[test]
    fn note_round_trip() {
        let id = EventId([0x5a; 32]);
        let note = encode_note(&id);
        assert!(note.starts_with("note1"), "{note}");
        assert_eq!(decode_note(&note).unwrap(), id);
        assert_eq!(parse_event_id(&note).unwrap(), id);
        assert_eq!(parse_event_id(&id.to_hex()).unwrap(), id);
    }

    #[test]
    fn wrong_prefix_is_rejected() {
        let note = encode_note(&EventId([1; 32]));
        let e = decode_npub(&note).unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::BadField);
        assert!(e.message().contains("expected \"npub\""), "{e}");
        assert!(decode_note(NPUB_VECTOR).is_err());
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let mut chars: Vec<char> = NPUB_VECTOR.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'q' { 'p' } else { 'q' };
        let corrupted: String = chars.into_iter().collect();
        let e = decode_npub(&corrupted).unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::BadField);
        assert!(e.message().starts_with("invalid npub"), "{e}");
        assert!(e.message().contains("checksum"), "{e}");
    }

    #[test]
    fn bech32m_checksum_is_rejected() {
        let data = [0x7eu8; 32];
        let m = bech32::encode::<bech32::Bech32m>(NPUB, &data).unwrap();
        assert!(decode_npub(&m).is_err());
    }

    #[test]
    fn wrong_length_is_rejected() {
        let short = bech32::encode::<Bech32>(NPUB, &[1u8; 31]).unwrap();
        let e = decode_npub(&short).unwrap_err();
        assert!(e.message().contains("31 bytes"), "{e}");
        let long = bech32::encode::<Bech32>(NOTE, &[1u8; 33]).unwrap();
        assert!(decode_note(&long).is_err());
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for s in [
            "",
            "npub1",
            "npub",
            "1",
            "npub1!!!",
            "note1qqqq",
            "NpUb1qqqq",
            "\u{0}",
        ] {
            assert!(parse_pubkey(s).is_err(), "{s:?}");
            assert!(parse_event_id(s).is_err(), "{s:?}");
        }
        let e = decode_npub("npub1!!!").unwrap_err();
        // The cause is spelled out, not just "parse failed".
        assert!(
            e.message().len() > "invalid npub: parse failed".len(),
            "{e}"
        );
    }
}

const NADDR: Hrp = Hrp::parse_unchecked("naddr");

/// The `naddr1...` form of an address (NIP-19 TLV: type 0 the `d` value,
/// type 2 the author, type 3 the kind as a 32-bit big-endian number, type 1
/// each relay hint). A `d` longer than 255 bytes does not fit a TLV value:
/// it is cut there (callers check the length first).
pub fn encode_naddr(kind: u16, pubkey: &Pubkey, d: &str, relays: &[&str]) -> String {
    let mut data = Vec::new();
    let d = d.as_bytes();
    data.push(0);
    data.push(d.len().min(255) as u8);
    data.extend_from_slice(&d[..d.len().min(255)]);
    for relay in relays.iter().filter(|r| r.len() <= 255) {
        data.push(1);
        data.push(relay.len() as u8);
        data.extend_from_slice(relay.as_bytes());
    }
    data.extend_from_slice(&[2, 32]);
    data.extend_from_slice(pubkey.as_bytes());
    data.extend_from_slice(&[3, 4]);
    data.extend_from_slice(&u32::from(kind).to_be_bytes());
    bech32::encode::<Bech32>(NADDR, &data).unwrap_or_default()
}

/// Decodes an `naddr1...` string: (kind, author, `d` value). Unknown TLV
/// types and relay hints are skipped; the kind must fit 16 bits.
pub fn decode_naddr(s: &str) -> Result<(u16, Pubkey, String), EventError> {
    let bad = |why: String| EventError::bad_field(format!("invalid naddr: {why}"));
    let checked = CheckedHrpstring::new::<Bech32>(s).map_err(|e| bad(describe(&e)))?;
    if checked.hrp() != NADDR {
        return Err(bad(format!(
            "prefix is \"{}\", expected \"naddr\"",
            checked.hrp()
        )));
    }
    let data: Vec<u8> = checked.byte_iter().collect();
    let (mut d, mut pubkey, mut kind) = (None, None, None);
    let mut at = 0;
    while at < data.len() {
        let (Some(&tlv), Some(&len)) = (data.get(at), data.get(at + 1)) else {
            return Err(bad("a TLV record is cut short".to_string()));
        };
        let value = data
            .get(at + 2..at + 2 + usize::from(len))
            .ok_or_else(|| bad("a TLV value runs past the end".to_string()))?;
        match tlv {
            0 if d.is_none() => {
                let text = std::str::from_utf8(value)
                    .map_err(|_| bad("the d value is not UTF-8".to_string()))?;
                d = Some(text.to_string());
            }
            2 if pubkey.is_none() => {
                let key = <[u8; 32]>::try_from(value)
                    .map_err(|_| bad(format!("the author holds {len} bytes, expected 32")))?;
                pubkey = Some(Pubkey(key));
            }
            3 if kind.is_none() => {
                let number = <[u8; 4]>::try_from(value)
                    .map(u32::from_be_bytes)
                    .map_err(|_| bad(format!("the kind holds {len} bytes, expected 4")))?;
                kind = Some(
                    u16::try_from(number)
                        .map_err(|_| bad(format!("kind {number} is too large")))?,
                );
            }
            _ => {}
        }
        at += 2 + usize::from(len);
    }
    Ok((
        kind.ok_or_else(|| bad("no kind (TLV type 3)".to_string()))?,
        pubkey.ok_or_else(|| bad("no author (TLV type 2)".to_string()))?,
        d.ok_or_else(|| bad("no d value (TLV type 0)".to_string()))?,
    ))
}

#[cfg(test)]
mod naddr_tests {
    use super::*;

    #[test]
    fn naddr_round_trips_and_refuses_what_is_not_one() {
        let pubkey = Pubkey([7; 32]);
        let text = encode_naddr(34_235, &pubkey, "my-video", &["wss://relay.example"]);
        assert!(text.starts_with("naddr1"));
        assert_eq!(
            decode_naddr(&text).unwrap(),
            (34_235, pubkey, "my-video".to_string())
        );
        let empty_d = encode_naddr(34_236, &pubkey, "", &[]);
        assert_eq!(decode_naddr(&empty_d).unwrap().2, "");
        assert!(decode_naddr(&encode_npub(&pubkey)).is_err());
        let mut broken = text.clone();
        broken.pop();
        broken.push(if text.ends_with('q') { 'p' } else { 'q' });
        assert!(decode_naddr(&broken).is_err());
    }
}
