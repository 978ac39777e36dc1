//! What a post's text becomes on the page: plain text cut into pieces,
//! where only `http(s)://` text and `nostr:` references become links (so no
//! other user text can ever become an `href`), and times in words.

use megalith::Pubkey;
use megalith::event::nip19;

/// One piece of a post's text.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    /// An `http://` or `https://` URL, as written.
    Url(&'a str),
    /// `nostr:npub1...` or `nostr:nprofile1...`: a person (the bech32 part).
    Person {
        bech32: &'a str,
        pubkey: Pubkey,
    },
    /// `nostr:note1...`, `nevent1...` or `naddr1...` (the bech32 part), or a
    /// person's reference that does not decode.
    Reference(&'a str),
}

const SCHEMES: [&str; 3] = ["https://", "http://", "nostr:"];
const REFERENCES: [&str; 5] = ["npub1", "nprofile1", "note1", "nevent1", "naddr1"];

/// Cuts `text` into pieces; joined again they give `text` back, apart from
/// the `nostr:` prefix of references (part of the piece's span, not its
/// text).
pub fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut plain_from = 0;
    let mut at = 0;
    let bytes = text.as_bytes();
    while at < text.len() {
        let starts_word = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let scheme = starts_word
            .then(|| {
                SCHEMES.iter().find(|s| {
                    text.get(at..at + s.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(s))
                })
            })
            .flatten();
        let Some(scheme) = scheme else {
            at += text[at..].chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let found = if *scheme == "nostr:" {
            reference(&text[at..])
        } else {
            url(&text[at..], scheme.len()).map(|len| (len, Piece::Url(&text[at..at + len])))
        };
        match found {
            Some((len, piece)) => {
                if plain_from < at {
                    out.push(Piece::Text(&text[plain_from..at]));
                }
                out.push(piece);
                at += len;
                plain_from = at;
            }
            None => at += scheme.len(),
        }
    }
    if plain_from < text.len() {
        out.push(Piece::Text(&text[plain_from..]));
    }
    out
}

/// The length of the URL at the start of `text` (its scheme `scheme_len`
/// bytes long), or none when no host follows the scheme.
fn url(text: &str, scheme_len: usize) -> Option<usize> {
    let end = text
        .char_indices()
        .find(|&(_, c)| c.is_whitespace() || c.is_control() || "<>\"'`".contains(c))
        .map_or(text.len(), |(i, _)| i);
    let mut url = &text[..end];
    // Punctuation after a URL belongs to the sentence, a closing bracket
    // only when the URL opened none.
    while let Some(last) = url.chars().last() {
        let unbalanced = |open: char| url.matches(open).count() < url.matches(last).count();
        let trim = match last {
            '.' | ',' | ';' | ':' | '!' | '?' | '*' => true,
            ')' => unbalanced('('),
            ']' => unbalanced('['),
            '}' => unbalanced('{'),
            _ => false,
        };
        if !trim {
            break;
        }
        url = &url[..url.len() - last.len_utf8()];
    }
    let host_starts = url
        .get(scheme_len..)
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_alphanumeric() || c == '[');
    host_starts.then_some(url.len())
}

/// The `nostr:` reference at the start of `text`: its length and piece.
fn reference(text: &str) -> Option<(usize, Piece<'_>)> {
    let body = &text["nostr:".len()..];
    let len = body
        .bytes()
        .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        .count();
    let bech32 = &body[..len];
    if !REFERENCES.iter().any(|p| bech32.starts_with(p)) || len < 10 {
        return None;
    }
    let piece = match nip19::parse_profile(bech32) {
        Ok((pubkey, _)) if bech32.starts_with("npub1") || bech32.starts_with("nprofile1") => {
            Piece::Person { bech32, pubkey }
        }
        _ => Piece::Reference(bech32),
    };
    Some(("nostr:".len() + len, piece))
}

/// `text` cut after about `max` characters, at a space when one is near:
/// the start, and the rest (empty when nothing was cut).
pub fn cut(text: &str, max: usize) -> (&str, &str) {
    let Some((at, _)) = text.char_indices().nth(max) else {
        return (text, "");
    };
    let window = text[..at].char_indices().rev().take(200);
    let at = window
        .filter(|&(_, c)| c.is_whitespace())
        .map(|(i, _)| i)
        .next()
        .unwrap_or(at);
    text.split_at(at)
}

/// A key shown short: `npub1abcd…wxyz`.
pub fn short_npub(pubkey: &Pubkey) -> String {
    let full = nip19::encode_npub(pubkey);
    format!("{}…{}", &full[..10], &full[full.len() - 4..])
}

/// A bech32 reference shown short.
pub fn short_reference(bech32: &str) -> String {
    if bech32.len() <= 20 {
        return bech32.to_string();
    }
    format!("{}…{}", &bech32[..12], &bech32[bech32.len() - 4..])
}

/// How long ago `then` was, seen at `now` (Unix seconds): "now", "5 min",
/// "3 h", "2 d", or the date beyond four weeks or more than 15 minutes in
/// the future (less is clock skew, which relays accept: "now").
pub fn ago(now: u64, then: u64) -> String {
    if then > now + 900 {
        return date(then);
    }
    let secs = now.saturating_sub(then);
    match secs {
        0..60 => "now".to_string(),
        60..3_600 => format!("{} min", secs / 60),
        3_600..86_400 => format!("{} h", secs / 3_600),
        86_400..2_419_200 => format!("{} d", secs / 86_400),
        _ => date(then),
    }
}

/// `2026-12-04`.
pub fn date(t: u64) -> String {
    let (y, m, d) = civil(t / 86_400);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-12-04 21:10:05 UTC`, for a title.
pub fn exact(t: u64) -> String {
    let s = t % 86_400;
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        date(t),
        s / 3_600,
        s / 60 % 60,
        s % 60
    )
}

/// `2026-12-04T21:10:05Z`, for `<time datetime>`.
pub fn iso(t: u64) -> String {
    let s = t % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date(t),
        s / 3_600,
        s / 60 % 60,
        s % 60
    )
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm, proleptic Gregorian).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A number with thousands separators: `1,284`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<String> {
        pieces(text)
            .iter()
            .map(|p| match p {
                Piece::Text(t) => format!("T:{t}"),
                Piece::Url(u) => format!("U:{u}"),
                Piece::Person { bech32, .. } => format!("P:{bech32}"),
                Piece::Reference(r) => format!("R:{r}"),
            })
            .collect()
    }

    #[test]
    fn urls_are_cut_from_the_sentence_around_them() {
        assert_eq!(
            kinds("see https://example.com/a_(b). then http://x.org, ok"),
            [
                "T:see ",
                "U:https://example.com/a_(b)",
                "T:. then ",
                "U:http://x.org",
                "T:, ok"
            ]
        );
        assert_eq!(
            kinds("(https://example.com/x)"),
            ["T:(", "U:https://example.com/x", "T:)"]
        );
        assert_eq!(
            kinds("<https://a.b/\"onmouseover=x>"),
            ["T:<", "U:https://a.b/", "T:\"onmouseover=x>"]
        );
        // A scheme with no host, inside a word, or not http(s) stays text.
        assert_eq!(kinds("https:// nothing"), ["T:https:// nothing"]);
        assert_eq!(kinds("xhttps://a.b"), ["T:xhttps://a.b"]);
        assert_eq!(
            kinds("javascript:alert(1) data:text/html,<b>"),
            ["T:javascript:alert(1) data:text/html,<b>"]
        );
        assert_eq!(kinds("HTTPS://A.B"), ["U:HTTPS://A.B"]);
    }

    #[test]
    fn nostr_references_become_people_or_references() {
        let npub = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
        let text = format!("hi nostr:{npub}! and nostr:note1abcdefghij and nostr:npub1bad");
        let got = pieces(&text);
        assert!(matches!(got[1], Piece::Person { bech32, .. } if bech32 == npub));
        assert_eq!(got[2], Piece::Text("! and "));
        assert_eq!(got[3], Piece::Reference("note1abcdefghij"));
        // Too short to be anything: left as text.
        assert_eq!(got[4], Piece::Text(" and nostr:npub1bad"));
        assert_eq!(got.len(), 5);
        // A bad checksum is a reference shown as such, never a person.
        let broken = format!("nostr:{}x", &npub[..npub.len() - 1]);
        assert!(matches!(pieces(&broken)[0], Piece::Reference(_)));
    }

    #[test]
    fn pieces_give_the_text_back() {
        for text in [
            "",
            "plain",
            "é https://ü.example/ü?q=1#x 🙂 nostr:nevent1qqqqqqqqqqqq",
            "\u{202e}https://a.b\u{202c}",
            "http://http://https://",
        ] {
            let joined: String = pieces(text)
                .iter()
                .map(|p| match p {
                    Piece::Text(t) | Piece::Url(t) => t.to_string(),
                    Piece::Person { bech32, .. } | Piece::Reference(bech32) => {
                        format!("nostr:{bech32}")
                    }
                })
                .collect();
            assert_eq!(joined, text);
        }
    }

    #[test]
    fn long_text_is_cut_at_a_space() {
        let text = format!("{} tail", "word ".repeat(500));
        let (head, rest) = cut(&text, 1_000);
        assert!(head.chars().count() <= 1_000 && head.chars().count() > 800);
        assert_eq!(format!("{head}{rest}"), text);
        assert!(rest.starts_with(' '));
        assert_eq!(cut("short", 1_000), ("short", ""));
        let one_word = "é".repeat(3_000);
        let (head, rest) = cut(&one_word, 1_000);
        assert_eq!((head.chars().count(), rest.chars().count()), (1_000, 2_000));
    }

    #[test]
    fn times_in_words_and_exact() {
        let now = 1_764_882_605; // 2025-12-04 21:10:05 UTC
        assert_eq!(exact(now), "2025-12-04 21:10:05 UTC");
        assert_eq!(iso(now), "2025-12-04T21:10:05Z");
        assert_eq!(exact(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(ago(now, now), "now");
        assert_eq!(ago(now, now - 59), "now");
        assert_eq!(ago(now, now - 300), "5 min");
        assert_eq!(ago(now, now - 3 * 3_600 - 5), "3 h");
        assert_eq!(ago(now, now - 2 * 86_400), "2 d");
        assert_eq!(ago(now, now - 40 * 86_400), "2025-10-25");
        assert_eq!(ago(now, now + 3_600), "2025-12-04");
        assert_eq!(ago(now, now + 100), "now", "a clock a little ahead");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_284), "1,284");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(100), "100");
    }
}
