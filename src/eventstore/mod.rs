//! The store: options, the manifest, insert outcomes and `EventStore` itself.

mod backup;
mod change_reader;
mod changes;
mod commits;
mod lock;
mod manifest;
#[cfg(test)]
mod migration_tests;
mod options;
mod outcome;
mod purge;
mod store;
mod verify;

pub use backup::{BackupReport, backup_store};
pub use change_reader::ChangeReader;
pub use changes::{ChangeOp, ChangePosition, StoreChange};
pub use commits::{Commits, Committed};
pub(crate) use lock::{hold_segments, lock_store_dir_shared};
pub(crate) use manifest::{MANIFEST_FILE, load as load_manifest};
pub use options::{EventStoreBuilder, MAX_SHARDS, Options};
pub use outcome::{InsertOutcome, Rejection};
pub use purge::{KindRange, PurgeReport, Retention, RetentionRule};
pub use store::{Answer, EventStore, StoreGauges, StoreStats};
