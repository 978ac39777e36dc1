//! Nostr events: parsing, validation, canonical hashing, signatures, and the binary payload
//! the store keeps on disk.

mod canonical;
mod error;
#[expect(
    clippy::module_inception,
    reason = "the owned event type lives in event::event"
)]
mod event;
mod event_ref;
mod json;
mod keys;
mod limits;
pub mod nip19;
pub(crate) mod payload;
mod tag_ref;
pub(crate) mod types;

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod proptests;

pub use canonical::IdForm;
pub use error::{EventError, EventErrorKind};
pub use event::Event;
pub(crate) use event::verify_schnorr;
pub use event_ref::{EventRef, FieldIter, TagField, TagIter, TagRef};
pub use keys::Keys;
pub use limits::Limits;
pub(crate) use payload::{FLAG_EXPIRATION, FLAGS_OFFSET};
pub use types::{EventId, KindClass, Pubkey, Signature};
