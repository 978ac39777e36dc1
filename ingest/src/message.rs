//! What a relay sends a client (NIP-01, NIP-42, NIP-45), parsed with an
//! error that names what is wrong: a relay that sends garbage is counted
//! and logged, never trusted, and never stops the pool.

use megalith::EventId;
use megalith::event::{Event, Limits};
use serde_json::Value;
use serde_json::value::RawValue;

/// One message from a relay. Events are parsed (fields, limits) and their
/// ids checked, but their signatures are not checked here: the store's verify pool does
/// that, after the ids it already holds are dropped.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayMessage {
    /// `["EVENT", <subscription id>, <event>]`
    Event { sub: String, event: Box<Event> },
    /// `["EOSE", <subscription id>]`
    Eose { sub: String },
    /// `["CLOSED", <subscription id>, <reason>]`
    Closed { sub: String, reason: String },
    /// `["NOTICE", <message>]`
    Notice { message: String },
    /// `["OK", <event id>, <accepted>, <message>]`
    Ok {
        id: EventId,
        accepted: bool,
        message: String,
    },
    /// `["AUTH", <challenge>]` (NIP-42)
    Auth { challenge: String },
    /// `["COUNT", <subscription id>, {"count": n}]` (NIP-45)
    Count { sub: String, count: u64 },
}

impl RelayMessage {
    /// Parses one text frame; events are held to `limits`. The frame is
    /// split into raw elements first, so an event is parsed once, straight
    /// from its own bytes.
    pub fn parse(text: &str, limits: &Limits) -> Result<RelayMessage, String> {
        let items: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(items) => items,
            Err(e) => {
                return Err(match serde_json::from_str::<Value>(text) {
                    Ok(_) => "not a JSON array".to_string(),
                    Err(_) => format!("not JSON: {e}"),
                });
            }
        };
        let Some(verb) = items
            .first()
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        else {
            return Err("the first element is not a string (the verb)".to_string());
        };
        let string = |at: usize, what: &str| -> Result<String, String> {
            items
                .get(at)
                .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
                .ok_or_else(|| format!("{verb}: element {at} ({what}) is missing or not a string"))
        };
        let arity = |n: usize| -> Result<(), String> {
            if items.len() == n {
                Ok(())
            } else {
                Err(format!("{verb}: {} elements, expected {n}", items.len()))
            }
        };
        match verb.as_str() {
            "EVENT" => {
                arity(3)?;
                let sub = string(1, "subscription id")?;
                let event = Event::from_json_with(items[2].get(), limits)
                    .map_err(|e| format!("EVENT: {e}"))?;
                // Id and signature are checked by the store's verifiers,
                // in parallel, once the ids it already holds are dropped
                // (hashing here, on the connection's one task, was done
                // twice and held up every event behind it).
                Ok(RelayMessage::Event {
                    sub,
                    event: Box::new(event),
                })
            }
            "EOSE" => {
                arity(2)?;
                Ok(RelayMessage::Eose {
                    sub: string(1, "subscription id")?,
                })
            }
            "CLOSED" => {
                // The reason is optional in practice.
                if !(2..=3).contains(&items.len()) {
                    return Err(format!("CLOSED: {} elements, expected 3", items.len()));
                }
                Ok(RelayMessage::Closed {
                    sub: string(1, "subscription id")?,
                    reason: if items.len() == 3 {
                        string(2, "reason")?
                    } else {
                        String::new()
                    },
                })
            }
            "NOTICE" => {
                arity(2)?;
                Ok(RelayMessage::Notice {
                    message: string(1, "message")?,
                })
            }
            "OK" => {
                arity(4)?;
                let id = string(1, "event id")?;
                let id = EventId::from_hex(&id).map_err(|e| format!("OK: event id: {e}"))?;
                let accepted = serde_json::from_str::<bool>(items[2].get())
                    .map_err(|_| "OK: element 2 (accepted) is not true or false".to_string())?;
                Ok(RelayMessage::Ok {
                    id,
                    accepted,
                    message: string(3, "message")?,
                })
            }
            "AUTH" => {
                arity(2)?;
                Ok(RelayMessage::Auth {
                    challenge: string(1, "challenge")?,
                })
            }
            "COUNT" => {
                arity(3)?;
                let count = serde_json::from_str::<Value>(items[2].get())
                    .ok()
                    .and_then(|v| v.get("count").and_then(Value::as_u64))
                    .ok_or_else(|| "COUNT: element 2 has no whole-number count".to_string())?;
                Ok(RelayMessage::Count {
                    sub: string(1, "subscription id")?,
                    count,
                })
            }
            other => Err(format!("unknown verb \"{other}\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use megalith::Keys;

    fn parse(text: &str) -> Result<RelayMessage, String> {
        RelayMessage::parse(text, &Limits::default())
    }

    #[test]
    fn every_verb_parses() {
        let event = Keys::from_seed(1).sign(1_700_000_000, 1, vec![], "hi".into());
        let id = event.id.to_hex();
        let text = format!(r#"["EVENT","s1",{}]"#, event.to_json());
        assert_eq!(
            parse(&text).unwrap(),
            RelayMessage::Event {
                sub: "s1".into(),
                event: Box::new(event.clone())
            }
        );
        assert_eq!(
            parse(r#"["EOSE","s1"]"#).unwrap(),
            RelayMessage::Eose { sub: "s1".into() }
        );
        assert_eq!(
            parse(r#"["CLOSED","s1","auth-required: send AUTH"]"#).unwrap(),
            RelayMessage::Closed {
                sub: "s1".into(),
                reason: "auth-required: send AUTH".into()
            }
        );
        assert_eq!(
            parse(r#"["CLOSED","s1"]"#).unwrap(),
            RelayMessage::Closed {
                sub: "s1".into(),
                reason: String::new()
            }
        );
        assert_eq!(
            parse(r#"["NOTICE","slow down"]"#).unwrap(),
            RelayMessage::Notice {
                message: "slow down".into()
            }
        );
        assert_eq!(
            parse(&format!(r#"["OK","{id}",false,"blocked: no"]"#)).unwrap(),
            RelayMessage::Ok {
                id: event.id,
                accepted: false,
                message: "blocked: no".into()
            }
        );
        assert_eq!(
            parse(r#"["AUTH","abc"]"#).unwrap(),
            RelayMessage::Auth {
                challenge: "abc".into()
            }
        );
        assert_eq!(
            parse(r#"["COUNT","c",{"count":42}]"#).unwrap(),
            RelayMessage::Count {
                sub: "c".into(),
                count: 42
            }
        );
    }

    #[test]
    fn garbage_is_named_not_trusted() {
        let event = Keys::from_seed(2).sign(1_700_000_000, 1, vec![], "x".into());
        let mut forged: Value = serde_json::from_str(&event.to_json()).unwrap();
        forged["content"] = "changed".into();
        for (text, why) in [
            ("", "not JSON"),
            ("{}", "not a JSON array"),
            ("[]", "verb"),
            ("[1]", "verb"),
            (r#"["HELLO"]"#, "unknown verb"),
            (r#"["EOSE"]"#, "expected 2"),
            (r#"["EOSE",7]"#, "subscription id"),
            (r#"["EVENT","s"]"#, "expected 3"),
            (r#"["EVENT","s",{"id":"zz"}]"#, "EVENT"),
            (r#"["OK","abc",true,""]"#, "event id"),
            (r#"["COUNT","c",{"count":-1}]"#, "count"),
            (r#"["NOTICE"]"#, "expected 2"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
        }
        // An event whose content was changed after signing parses: its id
        // is checked with its signature by the store's verifiers
        // (ingest/tests/pool.rs counts it invalid and never stores it).
        let text = format!(r#"["EVENT","s",{forged}]"#);
        assert!(matches!(parse(&text), Ok(RelayMessage::Event { .. })));
    }
}
