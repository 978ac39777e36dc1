//! NIP-01 messages: what clients send (parsed with a clear error for
//! anything malformed) and what the relay sends back (written as text
//! frames).

use serde::Deserialize;
use serde_json::value::RawValue;

use megalith::Filter;
use megalith::event::{Event, Limits};

/// A message from a client, parsed as far as its verb and subscription id;
/// events and filters are parsed by the handler (so a bad one gets an `OK`
/// or `CLOSED` naming it rather than a `NOTICE`).
#[derive(Debug)]
pub enum ClientMessage<'a> {
    /// `["EVENT", <event>]`
    Event(&'a RawValue),
    /// `["REQ", <subscription id>, <filter>...]`
    Req {
        sub_id: String,
        filters: Vec<&'a RawValue>,
    },
    /// `["COUNT", <subscription id>, <filter>...]` (NIP-45)
    Count {
        sub_id: String,
        filters: Vec<&'a RawValue>,
    },
    /// `["CLOSE", <subscription id>]`
    Close(String),
    /// `["AUTH", <event>]` (NIP-42)
    Auth(&'a RawValue),
    /// `["NEG-OPEN", <subscription id>, <filter>, <initial message, hex>]`
    /// (NIP-77); the filter and the message are checked by the handler,
    /// so a bad one gets a `NEG-ERR` naming it.
    NegOpen {
        sub_id: String,
        filter: &'a RawValue,
        message: &'a RawValue,
    },
    /// `["NEG-MSG", <subscription id>, <message, hex>]` (NIP-77)
    NegMsg {
        sub_id: String,
        message: &'a RawValue,
    },
    /// `["NEG-CLOSE", <subscription id>]` (NIP-77)
    NegClose(String),
}

impl<'a> ClientMessage<'a> {
    /// Parses one text frame. The error is the `NOTICE` text.
    pub fn parse(text: &'a str) -> Result<ClientMessage<'a>, String> {
        let items: Vec<&'a RawValue> = serde_json::from_str(text)
            .map_err(|e| format!("invalid: message is not a JSON array: {e}"))?;
        let Some((verb, rest)) = items.split_first() else {
            return Err("invalid: empty message".to_string());
        };
        let verb: &str = serde_json::from_str(verb.get())
            .map_err(|_| "invalid: the first element must be a string (the verb)".to_string())?;
        match verb {
            "EVENT" => match rest {
                [event] => Ok(ClientMessage::Event(event)),
                _ => Err(format!(
                    "invalid: EVENT takes exactly one event, got {} elements",
                    rest.len()
                )),
            },
            "REQ" | "COUNT" => {
                let Some((sub_id, filters)) = rest.split_first() else {
                    return Err(format!("invalid: {verb} needs a subscription id"));
                };
                let sub_id = string(sub_id)
                    .ok_or_else(|| format!("invalid: {verb}'s subscription id must be a string"))?;
                let filters = filters.to_vec();
                Ok(if verb == "REQ" {
                    ClientMessage::Req { sub_id, filters }
                } else {
                    ClientMessage::Count { sub_id, filters }
                })
            }
            "CLOSE" => match rest {
                [sub_id] => string(sub_id)
                    .map(ClientMessage::Close)
                    .ok_or_else(|| "invalid: CLOSE's subscription id must be a string".to_string()),
                _ => Err("invalid: CLOSE takes exactly one subscription id".to_string()),
            },
            "AUTH" => match rest {
                [event] => Ok(ClientMessage::Auth(event)),
                _ => Err(format!(
                    "invalid: AUTH takes exactly one event, got {} elements",
                    rest.len()
                )),
            },
            "NEG-OPEN" => match rest {
                [sub_id, filter, message] => Ok(ClientMessage::NegOpen {
                    sub_id: string(sub_id).ok_or_else(|| {
                        "invalid: NEG-OPEN's subscription id must be a string".to_string()
                    })?,
                    filter,
                    message,
                }),
                _ => Err(format!(
                    "invalid: NEG-OPEN takes a subscription id, one filter and a hex message \
                     (NIP-77), got {} elements",
                    rest.len()
                )),
            },
            "NEG-MSG" => match rest {
                [sub_id, message] => Ok(ClientMessage::NegMsg {
                    sub_id: string(sub_id).ok_or_else(|| {
                        "invalid: NEG-MSG's subscription id must be a string".to_string()
                    })?,
                    message,
                }),
                _ => Err(format!(
                    "invalid: NEG-MSG takes a subscription id and a hex message, got {} elements",
                    rest.len()
                )),
            },
            "NEG-CLOSE" => match rest {
                [sub_id] => string(sub_id).map(ClientMessage::NegClose).ok_or_else(|| {
                    "invalid: NEG-CLOSE's subscription id must be a string".to_string()
                }),
                _ => Err("invalid: NEG-CLOSE takes exactly one subscription id".to_string()),
            },
            other => Err(format!(
                "invalid: unknown message type {}",
                json_string(&truncate(other, 32))
            )),
        }
    }
}

fn string(value: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(value.get()).ok()
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// Parses an `EVENT`'s event. On failure, the event id if one could be
/// read (for an `OK false`) and the `invalid:` reason.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a str>,
}

fn hex_id(id: Option<&str>) -> Option<String> {
    id.filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

/// The id of the event in an `["EVENT", {...}]` message refused before
/// parsing (too large), so its `OK false` can name it; `None` for any
/// other message.
pub fn event_message_id(text: &str) -> Option<String> {
    let (verb, event): (&str, IdOnly<'_>) = serde_json::from_str(text).ok()?;
    if verb != "EVENT" {
        return None;
    }
    hex_id(event.id)
}

pub fn parse_event(raw: &RawValue, limits: &Limits) -> Result<Event, (Option<String>, String)> {
    Event::from_json_with(raw.get(), limits).map_err(|e| {
        let id = hex_id(
            serde_json::from_str::<IdOnly<'_>>(raw.get())
                .ok()
                .and_then(|v| v.id),
        );
        let message = e.to_string();
        let message = if message.starts_with("invalid:") {
            message
        } else {
            format!("invalid: {message}")
        };
        (id, message)
    })
}

/// Parses a REQ's or COUNT's filters. The error is the `CLOSED` reason.
pub fn parse_filters(raw: &[&RawValue]) -> Result<Vec<Filter>, String> {
    raw.iter()
        .enumerate()
        .map(|(i, raw)| {
            let value: serde_json::Value =
                serde_json::from_str(raw.get()).map_err(|e| format!("invalid: filter {i}: {e}"))?;
            Filter::from_value(&value).map_err(|e| format!("invalid: filter {i}: {e}"))
        })
        .collect()
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// `["EVENT", <sub>, <event>]`, with the subscription id already a JSON
/// string and the event's JSON as written by the store.
pub fn event_frame(sub_json: &str, event_json: &str) -> String {
    let mut frame = String::with_capacity(12 + sub_json.len() + event_json.len());
    frame.push_str("[\"EVENT\",");
    frame.push_str(sub_json);
    frame.push(',');
    frame.push_str(event_json);
    frame.push(']');
    frame
}

/// `["OK", <id>, <accepted>, <message>]`
pub fn ok_frame(id_hex: &str, accepted: bool, message: &str) -> String {
    format!(
        "[\"OK\",{},{accepted},{}]",
        json_string(id_hex),
        json_string(message)
    )
}

/// `["EOSE", <sub>]`
pub fn eose_frame(sub_json: &str) -> String {
    format!("[\"EOSE\",{sub_json}]")
}

/// `["CLOSED", <sub>, <reason>]`
pub fn closed_frame(sub_json: &str, reason: &str) -> String {
    format!("[\"CLOSED\",{sub_json},{}]", json_string(reason))
}

/// `["NOTICE", <message>]`
pub fn notice_frame(message: &str) -> String {
    format!("[\"NOTICE\",{}]", json_string(message))
}

/// `["COUNT", <sub>, {"count": n}]`
pub fn auth_frame(challenge: &str) -> String {
    format!("[\"AUTH\",{}]", json_string(challenge))
}

pub fn count_frame(sub_json: &str, count: u64) -> String {
    format!("[\"COUNT\",{sub_json},{{\"count\":{count}}}]")
}

/// `["NEG-MSG", <sub>, <message, lowercase hex>]` (NIP-77)
pub fn neg_msg_frame(sub_json: &str, message: &[u8]) -> String {
    let mut frame = String::with_capacity(16 + sub_json.len() + 2 * message.len());
    frame.push_str("[\"NEG-MSG\",");
    frame.push_str(sub_json);
    frame.push_str(",\"");
    megalith::hex::push_str(&mut frame, message);
    frame.push_str("\"]");
    frame
}

/// `["NEG-ERR", <sub>, <reason>]` (NIP-77)
pub fn neg_err_frame(sub_json: &str, reason: &str) -> String {
    format!("[\"NEG-ERR\",{sub_json},{}]", json_string(reason))
}

/// A NIP-77 message: a JSON string of hex digits (either case), decoded,
/// that starts with a negentropy protocol version byte (0x60 to 0x6f; the
/// session answers a version it does not speak with its own). The error
/// says what is wrong.
pub fn neg_message(raw: &RawValue) -> Result<Vec<u8>, String> {
    let bytes = neg_hex(raw)?;
    match bytes.first() {
        None => Err("the negentropy message is empty".to_string()),
        Some(&version) if !(0x60..=0x6f).contains(&version) => Err(format!(
            "not a negentropy message: its first byte, 0x{version:02x}, is no protocol version \
             (0x60 to 0x6f)"
        )),
        Some(_) => Ok(bytes),
    }
}

fn neg_hex(raw: &RawValue) -> Result<Vec<u8>, String> {
    let text = string(raw).ok_or("the negentropy message must be a string of hex digits")?;
    megalith::hex::decode(&text).map_err(|e| match e {
        megalith::hex::DecodeError::OddLength(_) => format!("the negentropy message has {e}"),
        megalith::hex::DecodeError::NotHex { .. } => format!("the negentropy message is {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_verb() {
        assert!(matches!(
            ClientMessage::parse(r#"["EVENT",{"id":"x"}]"#),
            Ok(ClientMessage::Event(_))
        ));
        match ClientMessage::parse(r#"["REQ","s1",{"kinds":[1]},{"limit":2}]"#) {
            Ok(ClientMessage::Req { sub_id, filters }) => {
                assert_eq!(sub_id, "s1");
                assert_eq!(filters.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientMessage::parse(r#"["COUNT","c",{}]"#),
            Ok(ClientMessage::Count { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"["CLOSE","s1"]"#),
            Ok(ClientMessage::Close(id)) if id == "s1"
        ));
        match ClientMessage::parse(r#"["NEG-OPEN","n",{"kinds":[1]},"6100"]"#) {
            Ok(ClientMessage::NegOpen {
                sub_id,
                filter,
                message,
            }) => {
                assert_eq!(sub_id, "n");
                assert_eq!(filter.get(), r#"{"kinds":[1]}"#);
                assert_eq!(neg_message(message), Ok(vec![0x61, 0]));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientMessage::parse(r#"["NEG-MSG","n","61"]"#),
            Ok(ClientMessage::NegMsg { sub_id, .. }) if sub_id == "n"
        ));
        assert!(matches!(
            ClientMessage::parse(r#"["NEG-CLOSE","n"]"#),
            Ok(ClientMessage::NegClose(id)) if id == "n"
        ));
    }

    #[test]
    fn negentropy_frames_are_hex_both_ways() {
        assert_eq!(
            neg_msg_frame("\"n\"", &[0x61, 0xab, 0x0f]),
            r#"["NEG-MSG","n","61ab0f"]"#
        );
        assert_eq!(
            neg_err_frame("\"n\"", "blocked: x"),
            r#"["NEG-ERR","n","blocked: x"]"#
        );
        let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
        assert_eq!(neg_message(&raw(r#""61AB0f""#)), Ok(vec![0x61, 0xab, 0x0f]));
        for (text, needle) in [
            (r#""""#, "empty"),
            (r#""6""#, "odd number"),
            (r#""61zz""#, "not hex"),
            (r#""ff""#, "0xff"),
            ("97", "string of hex"),
        ] {
            let error = neg_message(&raw(text)).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        for (text, expect) in [
            ("nope", "not a JSON array"),
            ("{}", "not a JSON array"),
            ("[]", "empty message"),
            ("[1]", "first element must be a string"),
            (r#"["EVENT"]"#, "exactly one event"),
            (r#"["EVENT",{},{}]"#, "exactly one event"),
            (r#"["REQ"]"#, "needs a subscription id"),
            (r#"["REQ",5,{}]"#, "must be a string"),
            (r#"["CLOSE"]"#, "exactly one subscription id"),
            (r#"["NEG-OPEN","n",{}]"#, "NEG-OPEN takes"),
            (r#"["NEG-OPEN",1,{},"61"]"#, "NEG-OPEN's subscription id"),
            (r#"["NEG-MSG","n"]"#, "NEG-MSG takes"),
            (r#"["NEG-CLOSE"]"#, "NEG-CLOSE takes"),
            (r#"["HELLO"]"#, "unknown message type \"HELLO\""),
        ] {
            let error = ClientMessage::parse(text).unwrap_err();
            assert!(error.starts_with("invalid: "), "{text}: {error}");
            assert!(error.contains(expect), "{text}: {error}");
        }
    }

    #[test]
    fn a_bad_event_keeps_its_id_for_the_ok() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"id":"AB00000000000000000000000000000000000000000000000000000000000000","kind":"x"}"#,
        )
        .unwrap();
        let (id, message) = parse_event(&raw, &Limits::default()).unwrap_err();
        assert_eq!(
            id.as_deref(),
            Some("ab00000000000000000000000000000000000000000000000000000000000000")
        );
        assert!(message.starts_with("invalid: "), "{message}");
        let raw: Box<RawValue> = serde_json::from_str(r#"{"kind":1}"#).unwrap();
        assert_eq!(parse_event(&raw, &Limits::default()).unwrap_err().0, None);
    }

    #[test]
    fn an_oversized_event_message_still_names_its_id() {
        let id = "ab".repeat(32);
        let text = format!(
            r#"["EVENT",{{"content":"{}","id":"{}","tags":[["t","x"]]}}]"#,
            "x".repeat(1000),
            id.to_uppercase()
        );
        assert_eq!(event_message_id(&text), Some(id));
        assert_eq!(event_message_id(r#"["REQ","s",{}]"#), None);
        assert_eq!(event_message_id(r#"["EVENT",{"id":"short"}]"#), None);
        assert_eq!(event_message_id("not json"), None);
    }

    #[test]
    fn frames_escape_what_they_carry() {
        assert_eq!(
            closed_frame(&json_string("a\"b"), "invalid: x"),
            r#"["CLOSED","a\"b","invalid: x"]"#
        );
        assert_eq!(count_frame("\"c\"", 7), r#"["COUNT","c",{"count":7}]"#);
        assert_eq!(ok_frame("ab", true, ""), r#"["OK","ab",true,""]"#);
        assert_eq!(notice_frame("x\ny"), r#"["NOTICE","x\ny"]"#);
    }
}
