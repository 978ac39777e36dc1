//! Fixed-size event identifiers (id, pubkey, signature), strict lowercase hex, and NIP-01 kind classes.

use std::fmt;
use std::str::FromStr;

use super::error::EventError;

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The value of one lowercase hex digit, or `None` for anything else (uppercase included).
#[inline]
pub(crate) fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The two lowercase hex digits of `byte`.
#[inline]
pub(crate) fn hex_pair(byte: u8) -> [u8; 2] {
    let digit = |n: u8| {
        HEX_DIGITS
            .get(usize::from(n & 0x0f))
            .copied()
            .unwrap_or(b'0')
    };
    [digit(byte >> 4), digit(byte)]
}

/// The two hex digits of every byte value, looked up once per byte.
pub(crate) static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX_DIGITS[b >> 4], HEX_DIGITS[b & 0x0f]];
        b += 1;
    }
    pairs
};

/// Appends the lowercase hex form of `bytes` to `out`: the room is made
/// once and each byte's two digits copied from a table (every answer
/// writes an id, a pubkey and a signature per event, and contact lists
/// hundreds of keys).
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + bytes.len() * 2, 0);
    for (pair, &b) in out[start..].chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

/// True if `s` is non-empty, of even length and only `[0-9a-f]`: exactly the strings that
/// the payload codec stores as raw bytes.
#[inline]
pub(crate) fn is_lower_hex_even(s: &[u8]) -> bool {
    !s.is_empty() && s.len().is_multiple_of(2) && s.iter().all(|&c| hex_nibble(c).is_some())
}

/// Decodes an even-length lowercase hex string into `out`, which must be exactly half as long.
/// Returns false (with `out` partly written) on any non-hex character or length mismatch.
pub(crate) fn decode_hex_into(s: &[u8], out: &mut [u8]) -> bool {
    if s.len() != out.len().saturating_mul(2) {
        return false;
    }
    for (pair, dst) in s.chunks_exact(2).zip(out.iter_mut()) {
        let (Some(&hi), Some(&lo)) = (pair.first(), pair.get(1)) else {
            return false;
        };
        match (hex_nibble(hi), hex_nibble(lo)) {
            (Some(h), Some(l)) => *dst = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

/// Parses `s` as exactly `N` bytes of lowercase hex, naming `what` in the error.
pub(crate) fn parse_hex_array<const N: usize>(what: &str, s: &str) -> Result<[u8; N], EventError> {
    let want = N * 2;
    if s.len() != want {
        return Err(EventError::bad_field(format!(
            "{what} must be {want} lowercase hex characters, got {}",
            s.chars().count()
        )));
    }
    let mut out = [0u8; N];
    if decode_hex_into(s.as_bytes(), &mut out) {
        return Ok(out);
    }
    if s.bytes()
        .any(|c| c.is_ascii_uppercase() && c.is_ascii_hexdigit())
    {
        return Err(EventError::bad_field(format!(
            "{what} contains uppercase hex (only lowercase is accepted)"
        )));
    }
    let (pos, bad) = s
        .char_indices()
        .find(|&(_, c)| !c.is_ascii_hexdigit())
        .unwrap_or((0, '?'));
    Err(EventError::bad_field(format!(
        "{what} contains the non-hex character {bad:?} at byte {pos}"
    )))
}

/// Parses a plain decimal `u64`: one or more ASCII digits and nothing else (no sign, no spaces).
pub(crate) fn parse_decimal_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        let digit = c.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

macro_rules! hex_newtype {
    ($(#[$meta:meta])* $name:ident, $len:literal, $what:literal) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub [u8; $len]);

        /// Byte order (lexicographic), compared 8 bytes at a time as
        /// big-endian words: sorting and searching lists of ids or keys
        /// (a 500-author filter) then costs no `memcmp` call per comparison.
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
                    let a = u64::from_be_bytes(a.try_into().unwrap_or([0; 8]));
                    let b = u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
                    if a != b {
                        return a.cmp(&b);
                    }
                }
                std::cmp::Ordering::Equal
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// Parses exactly the lowercase hex form (uppercase and any other character rejected).
            pub fn from_hex(s: &str) -> Result<Self, EventError> {
                parse_hex_array::<$len>($what, s).map($name)
            }

            /// The lowercase hex form.
            pub fn to_hex(&self) -> String {
                let mut out = Vec::with_capacity($len * 2);
                push_hex(&mut out, &self.0);
                // Hex digits are ASCII, so this never takes the lossy path.
                String::from_utf8(out).unwrap_or_default()
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for &b in &self.0 {
                    let [hi, lo] = hex_pair(b);
                    write!(f, "{}{}", char::from(hi), char::from(lo))?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = EventError;

            fn from_str(s: &str) -> Result<Self, EventError> {
                Self::from_hex(s)
            }
        }
    };
}

hex_newtype!(
    /// A 32-byte event id: the sha256 of the event's NIP-01 canonical serialization.
    EventId,
    32,
    "event id"
);
hex_newtype!(
    /// A 32-byte x-only secp256k1 public key (BIP-340).
    Pubkey,
    32,
    "pubkey"
);
hex_newtype!(
    /// A 64-byte BIP-340 Schnorr signature.
    Signature,
    64,
    "signature"
);

/// How a relay treats an event of a given kind (NIP-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KindClass {
    /// Stored as is; every event is kept.
    Regular,
    /// Only the newest event per (pubkey, kind) is kept: kinds 0, 3 and 10000..=19999.
    Replaceable,
    /// Not stored: kinds 20000..=29999.
    Ephemeral,
    /// Only the newest event per (pubkey, kind, `d` tag) is kept: kinds 30000..=39999.
    Addressable,
}

impl KindClass {
    /// The class of `kind` per NIP-01.
    pub fn of(kind: u16) -> KindClass {
        match kind {
            0 | 3 | 10_000..=19_999 => KindClass::Replaceable,
            20_000..=29_999 => KindClass::Ephemeral,
            30_000..=39_999 => KindClass::Addressable,
            _ => KindClass::Regular,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventErrorKind;

    const HEX64: &str = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";

    #[test]
    fn ids_and_keys_order_as_their_bytes() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        };
        let mut keys: Vec<Pubkey> = (0..400)
            .map(|i| {
                let mut bytes = [0u8; 32];
                // Shared prefixes of every length, so each word decides somewhere.
                for b in bytes.iter_mut().skip(i % 33) {
                    *b = next();
                }
                Pubkey(bytes)
            })
            .collect();
        let mut by_bytes = keys.clone();
        by_bytes.sort_by_key(|k| k.0);
        keys.sort();
        assert_eq!(keys, by_bytes);
        for pair in keys.windows(2) {
            assert_eq!(pair[0].cmp(&pair[1]), pair[0].0.cmp(&pair[1].0));
            assert_eq!(pair[1].cmp(&pair[0]), pair[1].0.cmp(&pair[0].0));
        }
    }

    #[test]
    fn push_hex_writes_every_byte_value_after_what_is_there() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let mut out = b"x".to_vec();
        push_hex(&mut out, &bytes);
        let mut expected = b"x".to_vec();
        for b in &bytes {
            expected.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        assert_eq!(out, expected);
        push_hex(&mut out, &[]);
        assert_eq!(out, expected);
    }

    #[test]
    fn hex_round_trip_and_formatting() {
        let pk = Pubkey::from_hex(HEX64).unwrap();
        assert_eq!(pk.to_hex(), HEX64);
        assert_eq!(pk.to_string(), HEX64);
        assert_eq!(format!("{pk:?}"), HEX64);
        assert_eq!(pk.as_bytes().first(), Some(&0x7e));
        assert_eq!(HEX64.parse::<Pubkey>().unwrap(), pk);
        let id = EventId::from_hex(HEX64).unwrap();
        assert_eq!(id.0, pk.0);
        let sig_hex = HEX64.repeat(2);
        let sig = Signature::from_hex(&sig_hex).unwrap();
        assert_eq!(sig.to_hex(), sig_hex);
    }

    #[test]
    fn hex_rejections_are_specific() {
        let short = &HEX64[..63];
        let e = Pubkey::from_hex(short).unwrap_err();
        assert_eq!(e.kind(), EventErrorKind::BadField);
        assert_eq!(
            e.message(),
            "pubkey must be 64 lowercase hex characters, got 63"
        );

        let upper = HEX64.to_uppercase();
        let e = EventId::from_hex(&upper).unwrap_err();
        assert!(e.message().contains("uppercase"), "{e}");

        let bad = format!("{}g", &HEX64[..63]);
        let e = EventId::from_hex(&bad).unwrap_err();
        assert!(e.message().contains("'g'"), "{e}");
        assert!(e.message().contains("63"), "{e}");

        // A multi-byte char of the right byte length must not panic or pass.
        let uni = format!("{}é", &HEX64[..62]);
        assert_eq!(uni.len(), 64);
        assert!(EventId::from_hex(&uni).is_err());
        assert!(Signature::from_hex(HEX64).is_err());
        assert!(EventId::from_hex("").is_err());
    }

    #[test]
    fn ordering_follows_bytes() {
        let a = EventId([0; 32]);
        let mut b = [0; 32];
        b[31] = 1;
        assert!(a < EventId(b));
    }

    #[test]
    fn kind_classes() {
        assert_eq!(KindClass::of(0), KindClass::Replaceable);
        assert_eq!(KindClass::of(1), KindClass::Regular);
        assert_eq!(KindClass::of(2), KindClass::Regular);
        assert_eq!(KindClass::of(3), KindClass::Replaceable);
        assert_eq!(KindClass::of(9_999), KindClass::Regular);
        assert_eq!(KindClass::of(10_000), KindClass::Replaceable);
        assert_eq!(KindClass::of(19_999), KindClass::Replaceable);
        assert_eq!(KindClass::of(20_000), KindClass::Ephemeral);
        assert_eq!(KindClass::of(29_999), KindClass::Ephemeral);
        assert_eq!(KindClass::of(30_000), KindClass::Addressable);
        assert_eq!(KindClass::of(39_999), KindClass::Addressable);
        assert_eq!(KindClass::of(40_000), KindClass::Regular);
        assert_eq!(KindClass::of(u16::MAX), KindClass::Regular);
    }

    #[test]
    fn decimal_parsing_is_plain() {
        assert_eq!(parse_decimal_u64(b"0"), Some(0));
        assert_eq!(parse_decimal_u64(b"1700000000"), Some(1_700_000_000));
        assert_eq!(parse_decimal_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal_u64(b"18446744073709551616"), None);
        assert_eq!(parse_decimal_u64(b""), None);
        assert_eq!(parse_decimal_u64(b"+1"), None);
        assert_eq!(parse_decimal_u64(b"-1"), None);
        assert_eq!(parse_decimal_u64(b" 1"), None);
        assert_eq!(parse_decimal_u64(b"1.0"), None);
    }

    #[test]
    fn hex_helpers() {
        assert!(is_lower_hex_even(b"00ff"));
        assert!(!is_lower_hex_even(b""));
        assert!(!is_lower_hex_even(b"abc"));
        assert!(!is_lower_hex_even(b"AB"));
        let mut out = Vec::new();
        push_hex(&mut out, &[0x00, 0xab, 0xff]);
        assert_eq!(out, b"00abff");
        let mut buf = [0u8; 2];
        assert!(decode_hex_into(b"abff", &mut buf));
        assert_eq!(buf, [0xab, 0xff]);
        assert!(!decode_hex_into(b"abf", &mut buf));
        assert!(!decode_hex_into(b"abfg", &mut buf));
    }
}
