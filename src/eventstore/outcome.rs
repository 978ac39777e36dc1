//! What `insert` says about each event, in NIP-01 terms.

use crate::event::{EventError, EventErrorKind, EventId};

/// The fate of one inserted event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertOutcome {
    /// Stored.
    Stored,
    /// Stored, and it replaced an older version of the same replaceable or
    /// addressable event.
    Replaced { previous: EventId },
    /// Already stored; nothing changed.
    Duplicate,
    /// Refused: a newer version of this replaceable or addressable event is stored.
    Superseded,
    /// Refused: its author deleted it (NIP-09).
    Deleted,
    /// Accepted for live delivery; ephemeral events are never stored.
    Ephemeral,
    /// Refused as invalid.
    Invalid(Rejection),
}

/// Why an event was refused as invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A short stable name for the reason (for counting): `malformed`,
    /// `bad-field`, `too-large`, `too-many-tags`, `tag-too-long`, `bad-id`,
    /// `bad-signature`, `expired`, `future`.
    pub code: &'static str,
    /// The NIP-01 `OK` message, starting with `invalid:`.
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(code: &'static str, detail: impl std::fmt::Display) -> Rejection {
        Rejection {
            code,
            message: format!("invalid: {detail}"),
        }
    }
}

impl From<&EventError> for Rejection {
    fn from(error: &EventError) -> Rejection {
        let code = match error.kind() {
            EventErrorKind::TooLarge => "too-large",
            EventErrorKind::Malformed => "malformed",
            EventErrorKind::TooManyTags => "too-many-tags",
            EventErrorKind::TagTooLong => "tag-too-long",
            EventErrorKind::BadId => "bad-id",
            EventErrorKind::BadSignature => "bad-signature",
            _ => "bad-field",
        };
        Rejection {
            code,
            message: error.to_string(),
        }
    }
}

impl InsertOutcome {
    /// Whether a relay answers `OK true`.
    pub fn accepted(&self) -> bool {
        matches!(
            self,
            InsertOutcome::Stored
                | InsertOutcome::Replaced { .. }
                | InsertOutcome::Duplicate
                | InsertOutcome::Ephemeral
        )
    }

    /// The NIP-01 `OK` message (empty for a plain success).
    pub fn message(&self) -> String {
        match self {
            InsertOutcome::Stored | InsertOutcome::Replaced { .. } | InsertOutcome::Ephemeral => {
                String::new()
            }
            InsertOutcome::Duplicate => "duplicate: already have this event".to_string(),
            InsertOutcome::Superseded => {
                "duplicate: a newer version of this event is stored".to_string()
            }
            InsertOutcome::Deleted => "blocked: this event was deleted by its author".to_string(),
            InsertOutcome::Invalid(rejection) => rejection.message.clone(),
        }
    }

    /// A short name for summaries: `stored`, `replaced`, `duplicate`,
    /// `superseded`, `deleted`, `ephemeral`, or the rejection code.
    pub fn label(&self) -> &'static str {
        match self {
            InsertOutcome::Stored => "stored",
            InsertOutcome::Replaced { .. } => "replaced",
            InsertOutcome::Duplicate => "duplicate",
            InsertOutcome::Superseded => "superseded",
            InsertOutcome::Deleted => "deleted",
            InsertOutcome::Ephemeral => "ephemeral",
            InsertOutcome::Invalid(rejection) => rejection.code,
        }
    }
}
