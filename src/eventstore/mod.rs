//! The store: options, the manifest, insert outcomes and `EventStore` itself.

mod manifest;
mod options;
mod outcome;
mod store;

pub use options::{EventStoreBuilder, Options};
pub use outcome::{InsertOutcome, Rejection};
pub use store::{EventStore, StoreStats};
