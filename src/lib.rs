//! Megalith: an embedded storage engine for Nostr events.
//!
//! Events are written once, to a per-shard write-ahead log that is also the
//! event store, and found through persistent B+Tree indexes that point
//! straight at them. See `docs/format.md` for the on-disk format and
//! `docs/recovery.md` for what happens after a crash.
//!
//! ```no_run
//! use megalith::{EventStore, Filter};
//! # fn main() -> Result<(), megalith::Error> {
//! let store = EventStore::open("./megalith-data")?;
//! let notes = store.query(&[Filter::new().kinds([1]).limit(20)])?;
//! println!("{} notes", notes.len());
//! store.close()?;
//! # Ok(())
//! # }
//! ```

pub mod analytics;
pub mod compaction;
pub mod datagen;
pub mod event;
pub mod hex;
pub mod inspect;
pub mod reference;
pub mod search;
pub mod storage;

mod error;
mod eventstore;
mod ids;
mod index;
mod query;
mod recovery;
mod shard;
mod wal;

pub use compaction::{CompactOptions, CompactReport, Garbage};
pub use error::Error;
pub use event::{Event, EventError, EventId, EventRef, IdForm, Keys, Limits, Pubkey, Signature};
pub use eventstore::{
    Answer, BackupReport, ChangeOp, ChangePosition, ChangeReader, Commits, Committed, EventStore,
    EventStoreBuilder, InsertOutcome, KindRange, MAX_SHARDS, Options, PurgeReport, Rejection,
    Retention, RetentionRule, StoreChange, StoreGauges, StoreStats, backup_store,
};
pub use ids::{Location, Lsn, SegmentId, ShardId};
pub use index::IndexKind;
pub use query::{Filter, FilterError};
pub use recovery::{LogRepair, ProgressFn, RecoveryMode, RecoveryReport, ReplayProgress};
pub use shard::{Durability, ShardHealth};
