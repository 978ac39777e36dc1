//! What one input line holds: an event (bare, `["EVENT", event]` or
//! `["EVENT", subscription, event]`), nothing (a blank line), or a refusal
//! that says why, with a short code for the summary.

use megalith::event::EventErrorKind;
use megalith::{Event, EventError, Limits, Rejection};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

pub(crate) enum Parsed {
    Blank,
    Event(Event),
    Refused(Refusal),
}

/// Why a line was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// A short stable name for the summary: `not-utf8`, `binary`,
    /// `line-too-long`, `truncated`, `not-an-event`, or the store's own
    /// rejection codes (`malformed`, `bad-field`, `too-large`, `bad-id`,
    /// `bad-signature`, ...).
    pub(crate) code: &'static str,
    /// Starts with `invalid:`, like a relay's `OK` message.
    pub(crate) message: String,
}

impl Refusal {
    fn new(code: &'static str, detail: impl std::fmt::Display) -> Refusal {
        Refusal {
            code,
            message: format!("invalid: {detail}"),
        }
    }

    pub(crate) fn too_long(bytes: u64, max_line_bytes: usize) -> Refusal {
        Refusal::new(
            "line-too-long",
            format!(
                "the line is {bytes} bytes, longer than the limit of {max_line_bytes} bytes \
                 per line; skipped unread"
            ),
        )
    }
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Refusal {
        Refusal {
            code: rejection.code,
            message: rejection.message,
        }
    }
}

impl From<&EventError> for Refusal {
    fn from(error: &EventError) -> Refusal {
        Rejection::from(error).into()
    }
}

const SHAPES: &str =
    "expected an event object, [\"EVENT\", event] or [\"EVENT\", subscription, event]";

/// Classifies one line (without its line ending). Size limits apply to the
/// event's compact JSON, not to the whitespace around it.
pub(crate) fn parse_line(line: &[u8], limits: &Limits) -> Parsed {
    if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
        return Parsed::Blank;
    }
    // JSON never holds a raw control byte (strings escape them), so one is
    // the sign of binary data, even when the bytes happen to be UTF-8.
    if let Some(at) = line
        .iter()
        .position(|&b| b < 0x20 && !matches!(b, b'\t' | b'\r'))
    {
        return Parsed::Refused(Refusal::new(
            "binary",
            format!(
                "binary data, not a line of JSON (byte 0x{:02x} at column {})",
                line[at],
                at + 1
            ),
        ));
    }
    let text = match std::str::from_utf8(line) {
        Ok(text) => text.trim(),
        Err(e) => {
            let at = e.valid_up_to();
            return Parsed::Refused(Refusal::new(
                "not-utf8",
                format!("not UTF-8 (byte 0x{:02x} at column {})", line[at], at + 1),
            ));
        }
    };
    match text.as_bytes()[0] {
        b'{' => parse_event(text, limits),
        b'[' => parse_message(text, limits),
        _ => match serde_json::from_str::<IgnoredAny>(text) {
            Err(e) => Parsed::Refused(syntax_error(&e)),
            Ok(_) => Parsed::Refused(Refusal::new(
                "not-an-event",
                format!("not an event: {} ({SHAPES})", describe(text)),
            )),
        },
    }
}

/// A bare event object.
fn parse_event(text: &str, limits: &Limits) -> Parsed {
    match Event::from_json(text) {
        Ok(event) => match event.check_limits(limits) {
            Ok(()) => Parsed::Event(event),
            Err(e) => Parsed::Refused((&e).into()),
        },
        // Say "truncated" or "malformed JSON" when the line is not JSON at
        // all; the event parser's own words when it is JSON but no event.
        Err(e) => match serde_json::from_str::<IgnoredAny>(text) {
            Err(syntax) => Parsed::Refused(syntax_error(&syntax)),
            Ok(_) => Parsed::Refused((&e).into()),
        },
    }
}

/// `["EVENT", event]` or `["EVENT", subscription, event]`.
fn parse_message(text: &str, limits: &Limits) -> Parsed {
    let items: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(e) => return Parsed::Refused(syntax_error(&e)),
    };
    let subscription_ok = items.len() != 3 || items[1].get().starts_with('"');
    match (items.first().map(|v| v.get()), items.len()) {
        (Some("\"EVENT\""), 2 | 3) if subscription_ok => {
            parse_event(items[items.len() - 1].get(), limits)
        }
        _ => Parsed::Refused(Refusal::new(
            "not-an-event",
            format!("not an event: an array that is not an EVENT message ({SHAPES})"),
        )),
    }
}

fn syntax_error(error: &serde_json::Error) -> Refusal {
    if error.is_eof() {
        Refusal::new(
            "truncated",
            format!("truncated JSON: the line ends inside a value ({error})"),
        )
    } else {
        Refusal::from(&EventError::new(
            EventErrorKind::Malformed,
            format!("malformed JSON: {error}"),
        ))
    }
}

/// What a JSON value other than an object or array is.
fn describe(text: &str) -> &'static str {
    match text.as_bytes()[0] {
        b'n' => "null",
        b't' | b'f' => "a boolean",
        b'"' => "a string",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(line: &[u8]) -> Refusal {
        match parse_line(line, &Limits::default()) {
            Parsed::Refused(refusal) => refusal,
            Parsed::Blank => panic!("blank: {line:?}"),
            Parsed::Event(event) => panic!("an event: {}", event.id),
        }
    }

    #[test]
    fn every_kind_of_bad_line_gets_its_reason() {
        for (line, code, words) in [
            (
                &b"{\"id\":\"\xff\"}"[..],
                "not-utf8",
                "byte 0xff at column 8",
            ),
            (b"\x00\x01PNG", "binary", "byte 0x00 at column 1"),
            (b"{\"a\":\"b\x1b\"}", "binary", "column 8"),
            (b"{\"id\":\"abc", "truncated", "truncated JSON"),
            (b"[\"EVENT\",{\"id\":", "truncated", "truncated JSON"),
            (b"{\"id\" 1}", "malformed", "malformed JSON"),
            (b"null", "not-an-event", "not an event: null"),
            (b" true ", "not-an-event", "a boolean"),
            (b"\"text\"", "not-an-event", "a string"),
            (b"-1.5e3", "not-an-event", "a number"),
            (b"[1,2]", "not-an-event", "not an EVENT message"),
            (b"[\"EVENT\",1,{}]", "not-an-event", "not an EVENT message"),
            (
                b"[\"NOTICE\",\"x\"]",
                "not-an-event",
                "not an EVENT message",
            ),
            (b"nulx", "malformed", "malformed JSON"),
            (b"[]", "not-an-event", "not an EVENT message"),
        ] {
            let refusal = refusal(line);
            assert_eq!(refusal.code, code, "{line:?}: {refusal:?}");
            assert!(refusal.message.starts_with("invalid: "), "{refusal:?}");
            assert!(refusal.message.contains(words), "{line:?}: {refusal:?}");
        }
        // JSON objects that are no event keep the event parser's reason.
        assert_eq!(refusal(b"{}").code, "malformed");
    }

    #[test]
    fn blank_lines_are_nothing() {
        for line in [&b""[..], b"  ", b"\t\r"] {
            assert!(matches!(
                parse_line(line, &Limits::default()),
                Parsed::Blank
            ));
        }
    }
}
