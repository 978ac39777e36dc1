//! Strict NIP-01 parsing of one event object from JSON text.
//!
//! serde_json does the tokenizing (its recursion limit stays on, so hostile nesting is an error,
//! not a stack overflow); a hand-written visitor enforces the event's shape and records the
//! precise reason for a rejection so the caller gets a specific error kind and message.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::error::EventError;
use super::event::Event;
use super::types::{EventId, Pubkey, Signature, parse_decimal_u64, parse_hex_array};

/// Parses `json` as exactly one NIP-01 event object (surrounding whitespace allowed).
/// Checks shape and field values only: no limits, no id or signature verification.
pub(crate) fn parse_event(json: &str) -> Result<Event, EventError> {
    let mut state = State::default();
    let mut de = serde_json::Deserializer::from_str(json);
    let parsed = EventSeed { state: &mut state }
        .deserialize(&mut de)
        .and_then(|event| de.end().map(|()| event));
    parsed.map_err(|err| explain(state, &err))
}

/// What the visitor learned before serde_json gave up.
#[derive(Default)]
struct State {
    /// The precise reason, when the visitor itself rejected something.
    failure: Option<EventError>,
    /// The field whose value was being read when serde_json failed.
    field: Option<Field>,
}

/// Turns a serde_json error into an event error, using what the visitor recorded.
fn explain(state: State, err: &serde_json::Error) -> EventError {
    if let Some(failure) = state.failure {
        return failure;
    }
    match (err.classify(), state.field) {
        // A type mismatch inside a field's value.
        (Category::Data, Some(field)) => EventError::bad_field(format!(
            "{} must be {}: {err}",
            field.name(),
            field.expected()
        )),
        // A type mismatch outside any field can only be the top-level value's type.
        (Category::Data, None) => {
            EventError::malformed(format!("event must be a JSON object: {err}"))
        }
        (Category::Syntax | Category::Eof | Category::Io, _) => {
            EventError::malformed(format!("malformed JSON: {err}"))
        }
    }
}

/// At most this many characters of an offending value are quoted in a message.
const QUOTE_MAX_CHARS: usize = 40;

fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or_default()),
        None => text.to_owned(),
    }
}

/// Validates the raw JSON text of an integer field: plain digits only, value at most `max`.
fn parse_json_uint(field: &str, raw: &str, max: u64) -> Result<u64, EventError> {
    let text = raw.trim();
    let bytes = text.as_bytes();
    let all_digits = |b: &[u8]| !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    if let Some(value) = parse_decimal_u64(bytes).filter(|v| *v <= max) {
        return Ok(value);
    }
    let message = match bytes.split_first() {
        // Too big for `max` (possibly too big for u64), or negative.
        _ if all_digits(bytes) => format!("{field} {} is out of range 0..={max}", quote(text)),
        Some((b'-', rest)) if all_digits(rest) => {
            format!("{field} {} is out of range 0..={max}", quote(text))
        }
        Some((b'-' | b'0'..=b'9', _)) => format!(
            "{field} must be an integer without fraction or exponent, got {}",
            quote(text)
        ),
        Some((b'"', _)) => format!("{field} must be a JSON integer, not a string"),
        _ => format!("{field} must be a JSON integer, got {}", quote(text)),
    };
    Err(EventError::bad_field(message))
}

/// The keys of an event object; any other key is read and ignored.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Id,
    Pubkey,
    CreatedAt,
    Kind,
    Tags,
    Content,
    Sig,
    #[serde(other)]
    Other,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Pubkey => "pubkey",
            Field::CreatedAt => "created_at",
            Field::Kind => "kind",
            Field::Tags => "tags",
            Field::Content => "content",
            Field::Sig => "sig",
            Field::Other => "unknown field",
        }
    }

    /// What the value must be, for type-mismatch messages.
    fn expected(self) -> &'static str {
        match self {
            Field::Tags => "an array of arrays of strings",
            Field::Content | Field::Id | Field::Pubkey | Field::Sig => "a string",
            Field::CreatedAt | Field::Kind => "an integer",
            Field::Other => "any JSON value",
        }
    }
}

struct EventSeed<'s> {
    state: &'s mut State,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Event;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Event, D::Error> {
        deserializer.deserialize_map(EventVisitor { state: self.state })
    }
}

/// Decodes a JSON string of exactly `N` bytes of lowercase hex without copying it.
struct HexSeed<'f, const N: usize> {
    name: &'static str,
    failure: &'f mut Option<EventError>,
}

impl<'de, const N: usize> DeserializeSeed<'de> for HexSeed<'_, N> {
    type Value = [u8; N];

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<[u8; N], D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<const N: usize> Visitor<'_> for HexSeed<'_, N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string of {} lowercase hex characters", N * 2)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<[u8; N], E> {
        parse_hex_array::<N>(self.name, s).map_err(|err| {
            let converted = E::custom(err.message());
            *self.failure = Some(err);
            converted
        })
    }
}

struct EventVisitor<'s> {
    state: &'s mut State,
}

impl EventVisitor<'_> {
    /// Records `err` as the reason for the rejection and returns it in serde's error type.
    fn fail<E: de::Error>(&mut self, err: EventError) -> E {
        let converted = E::custom(err.message());
        self.state.failure = Some(err);
        converted
    }

    /// Reads the current value with `seed`, noting which field it belongs to so a type
    /// mismatch inside it is reported against that field.
    fn value<'de, A, S>(&mut self, map: &mut A, field: Field, seed: S) -> Result<S::Value, A::Error>
    where
        A: MapAccess<'de>,
        S: DeserializeSeed<'de>,
    {
        self.state.field = Some(field);
        let value = map.next_value_seed(seed)?;
        self.state.field = None;
        Ok(value)
    }

    fn hex<'de, A: MapAccess<'de>, const N: usize>(
        &mut self,
        map: &mut A,
        field: Field,
    ) -> Result<[u8; N], A::Error> {
        self.state.field = Some(field);
        let seed = HexSeed::<N> {
            name: field.name(),
            failure: &mut self.state.failure,
        };
        let value = map.next_value_seed(seed)?;
        self.state.field = None;
        Ok(value)
    }

    fn uint<'de, A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        field: Field,
        max: u64,
    ) -> Result<u64, A::Error> {
        let raw: &RawValue = self.value(map, field, PhantomData)?;
        parse_json_uint(field.name(), raw.get(), max).map_err(|err| self.fail(err))
    }
}

impl<'de> Visitor<'de> for EventVisitor<'_> {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Event, A::Error> {
        let mut id = None;
        let mut pubkey = None;
        let mut created_at = None;
        let mut kind = None;
        let mut tags = None;
        let mut content = None;
        let mut sig = None;

        while let Some(field) = map.next_key::<Field>()? {
            let seen = match field {
                Field::Id => id.is_some(),
                Field::Pubkey => pubkey.is_some(),
                Field::CreatedAt => created_at.is_some(),
                Field::Kind => kind.is_some(),
                Field::Tags => tags.is_some(),
                Field::Content => content.is_some(),
                Field::Sig => sig.is_some(),
                Field::Other => false,
            };
            if seen {
                let err = EventError::malformed(format!("duplicate field `{}`", field.name()));
                return Err(self.fail(err));
            }
            match field {
                Field::Id => id = Some(EventId(self.hex(&mut map, field)?)),
                Field::Pubkey => pubkey = Some(Pubkey(self.hex(&mut map, field)?)),
                Field::Sig => sig = Some(Signature(self.hex(&mut map, field)?)),
                Field::CreatedAt => created_at = Some(self.uint(&mut map, field, u64::MAX)?),
                Field::Kind => {
                    let value = self.uint(&mut map, field, u64::from(u16::MAX))?;
                    // `uint` bounded the value by u16::MAX, so this conversion cannot fail.
                    kind = Some(u16::try_from(value).unwrap_or(u16::MAX));
                }
                Field::Tags => tags = Some(self.value(&mut map, field, PhantomData)?),
                Field::Content => content = Some(self.value(&mut map, field, PhantomData)?),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }

        match (id, pubkey, created_at, kind, tags, content, sig) {
            (
                Some(id),
                Some(pubkey),
                Some(created_at),
                Some(kind),
                Some(tags),
                Some(content),
                Some(sig),
            ) => Ok(Event {
                id,
                pubkey,
                created_at,
                kind,
                tags,
                content,
                sig,
            }),
            (id, pubkey, created_at, kind, tags, content, sig) => {
                let missing = [
                    (id.is_none(), Field::Id),
                    (pubkey.is_none(), Field::Pubkey),
                    (created_at.is_none(), Field::CreatedAt),
                    (kind.is_none(), Field::Kind),
                    (tags.is_none(), Field::Tags),
                    (content.is_none(), Field::Content),
                    (sig.is_none(), Field::Sig),
                ]
                .into_iter()
                .find_map(|(absent, field)| absent.then_some(field.name()))
                .unwrap_or_default();
                Err(self.fail(EventError::malformed(format!("missing field `{missing}`"))))
            }
        }
    }
}
