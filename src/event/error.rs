//! The error type shared by every event operation: parsing, limits, verification and payload decoding.

use std::fmt;

/// What went wrong, coarsely, so callers can branch without matching on messages.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventErrorKind {
    /// The event (or one part of it, such as the content) exceeds a size limit.
    TooLarge,
    /// The input is not well-formed JSON or not shaped like an event object.
    Malformed,
    /// A field is present but its value is invalid (wrong type, length, range or characters).
    BadField,
    /// The event has more tags than allowed.
    TooManyTags,
    /// A tag field is longer than allowed.
    TagTooLong,
    /// The id is not the sha256 of the event's canonical serialization.
    BadId,
    /// The signature does not verify against the id and pubkey.
    BadSignature,
    /// A stored binary payload is structurally invalid.
    CorruptPayload,
}

/// An error from parsing, validating, verifying or decoding an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    kind: EventErrorKind,
    message: String,
}

impl EventError {
    /// Builds an error of `kind` with a human-readable `message` (no prefix; `Display` adds one).
    pub fn new(kind: EventErrorKind, message: impl Into<String>) -> EventError {
        EventError {
            kind,
            message: message.into(),
        }
    }

    /// The category of the error.
    pub fn kind(&self) -> EventErrorKind {
        self.kind
    }

    /// The message without the `invalid:` / `error:` prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn malformed(message: impl Into<String>) -> EventError {
        EventError::new(EventErrorKind::Malformed, message)
    }

    pub(crate) fn bad_field(message: impl Into<String>) -> EventError {
        EventError::new(EventErrorKind::BadField, message)
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> EventError {
        EventError::new(EventErrorKind::CorruptPayload, message)
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            // Corruption is the store's fault, not the client's: NIP-01 prefixes differ.
            EventErrorKind::CorruptPayload => {
                write!(f, "error: corrupt stored event: {}", self.message)
            }
            _ => write!(f, "invalid: {}", self.message),
        }
    }
}

impl std::error::Error for EventError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_prefixes_depend_on_kind() {
        let e = EventError::new(EventErrorKind::BadId, "id mismatch");
        assert_eq!(e.to_string(), "invalid: id mismatch");
        assert_eq!(e.kind(), EventErrorKind::BadId);
        assert_eq!(e.message(), "id mismatch");

        let c = EventError::corrupt("bad varint at offset 143");
        assert_eq!(
            c.to_string(),
            "error: corrupt stored event: bad varint at offset 143"
        );
        assert_eq!(c.kind(), EventErrorKind::CorruptPayload);
    }

    #[test]
    fn every_non_corrupt_kind_uses_invalid_prefix() {
        for kind in [
            EventErrorKind::TooLarge,
            EventErrorKind::Malformed,
            EventErrorKind::BadField,
            EventErrorKind::TooManyTags,
            EventErrorKind::TagTooLong,
            EventErrorKind::BadId,
            EventErrorKind::BadSignature,
        ] {
            let e = EventError::new(kind, "m");
            assert_eq!(e.to_string(), "invalid: m", "{kind:?}");
        }
    }
}
