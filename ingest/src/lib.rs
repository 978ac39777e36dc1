//! megalith-ingest: fetching Nostr events from other relays into a
//! Megalith store (issue 14; the design is docs/ingester.md). It uses only
//! the engine's public API.
//!
//! Built so far, the pieces the pool stands on: relay URLs in one
//! normalized form (one connection per relay however a URL is spelled),
//! the reconnect schedule (capped backoff with jitter, and a penalty box
//! for relays that keep failing), and the parser of what relays send.

pub mod backoff;
pub mod feed;
mod files;
pub mod message;
pub mod metrics;
pub mod mirror;
pub mod pool;
pub mod replica;
pub mod sink;
pub mod stats;
pub mod sync;
pub mod url;

pub use backoff::Backoff;
pub use feed::{FeedConfig, FeedJobs, JobPhase, JobStatus};
pub use message::RelayMessage;
pub use pool::{PoolConfig, PoolEvent, PoolHandle, SubId, Subscription};
pub use sink::{Sink, Tally};
pub use stats::{RelayStats, Stats};
pub use url::RelayUrl;
