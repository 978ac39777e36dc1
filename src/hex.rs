//! Hex text for bytes: one encoder and one decoder for the engine and the
//! services (ids in messages, negentropy frames, dumps). Event fields have
//! their own strict parser (`EventId::from_hex`: lowercase only, exact
//! length); this module is for everything else.

use crate::event::types::{HEX_PAIRS, hex_nibble};

/// The lowercase hex form of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_str(&mut out, bytes);
    out
}

/// Appends the lowercase hex form of `bytes` to `out`.
pub fn push_str(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        let [hi, lo] = HEX_PAIRS[usize::from(b)];
        out.push(char::from(hi));
        out.push(char::from(lo));
    }
}

/// Why a text is not hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The text has an odd number of characters.
    OddLength(usize),
    /// The pair at this byte offset of the text holds a character that is
    /// not a hex digit.
    NotHex { offset: usize, pair: String },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::OddLength(n) => write!(f, "an odd number of hex digits ({n})"),
            DecodeError::NotHex { offset, pair } => {
                write!(f, "not hex: {pair:?} at byte {offset}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// The bytes of a hex text, digits in either case.
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    if !text.len().is_multiple_of(2) {
        return Err(DecodeError::OddLength(text.len()));
    }
    let digit = |c: u8| hex_nibble(c.to_ascii_lowercase());
    text.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(DecodeError::NotHex {
                offset: 2 * i,
                pair: String::from_utf8_lossy(pair).into_owned(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_value_goes_there_and_back() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = encode(&bytes);
        assert_eq!(text.len(), 512);
        assert!(text.starts_with("000102") && text.ends_with("fdfeff"));
        assert_eq!(decode(&text).unwrap(), bytes);
        assert_eq!(decode(&text.to_uppercase()).unwrap(), bytes);
        let mut out = "x".to_string();
        push_str(&mut out, &[0xab, 0x01]);
        assert_eq!(out, "xab01");
    }

    #[test]
    fn bad_text_says_what_is_wrong() {
        assert_eq!(decode("abc"), Err(DecodeError::OddLength(3)));
        let err = decode("00zz").unwrap_err();
        assert_eq!(
            err,
            DecodeError::NotHex {
                offset: 2,
                pair: "zz".into()
            }
        );
        assert_eq!(err.to_string(), "not hex: \"zz\" at byte 2");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }
}
