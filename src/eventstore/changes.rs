//! The durable change feed (`EventStore::changes`): every event the store
//! stored and every event it removed (replaced, deleted, vanished), read
//! from the shards' logs, from a position the caller kept, so it resumes
//! exactly after a restart of either side. Unlike the commit stream
//! (`EventStore::commits`), it never drops an event and its positions
//! survive a reopen.
//!
//! Order: within a shard, commit order (so every author's changes, which
//! all live in the author's shard, come in the order they were made);
//! shards are read in turn. A position is one log position per shard; its
//! text form (`ChangePosition::to_string`) is `c1:` followed by
//! `segment.offset` per shard, joined by `,`.

use std::fmt;
use std::str::FromStr;

use crate::event::Event;
use crate::ids::{Location, SegmentId, ShardId};

/// Where a reader of the change feed is: per shard, the log position after
/// the last change it has read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChangePosition(pub(crate) Vec<Location>);

impl ChangePosition {
    /// Before the first change of a store of `shards` shards.
    pub fn start(shards: usize) -> ChangePosition {
        ChangePosition(vec![
            Location {
                segment: SegmentId(0),
                offset: 0,
            };
            shards
        ])
    }

    /// Shards it names a position for.
    pub fn shards(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for ChangePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("c1:")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}.{}", p.segment.0, p.offset)?;
        }
        Ok(())
    }
}

impl FromStr for ChangePosition {
    type Err = String;

    fn from_str(text: &str) -> Result<ChangePosition, String> {
        let bad = || {
            format!(
                "{text:?} is not a change feed position (c1: then segment.offset per shard, \
                 joined by commas, as `megalith changes` prints it)"
            )
        };
        let rest = text.trim().strip_prefix("c1:").ok_or_else(bad)?;
        let mut out = Vec::new();
        for part in rest.split(',') {
            let (segment, offset) = part.split_once('.').ok_or_else(bad)?;
            out.push(Location {
                segment: SegmentId(segment.parse().map_err(|_| bad())?),
                offset: offset.parse().map_err(|_| bad())?,
            });
        }
        Ok(ChangePosition(out))
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// The event was stored.
    Stored,
    /// The event left the store: replaced by a newer version, deleted
    /// (NIP-09), or its author vanished (NIP-62).
    Removed,
}

impl ChangeOp {
    pub fn name(self) -> &'static str {
        match self {
            ChangeOp::Stored => "stored",
            ChangeOp::Removed => "removed",
        }
    }
}

/// One change of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreChange {
    pub op: ChangeOp,
    pub event: Event,
    /// The shard whose log states it.
    pub shard: ShardId,
    /// The position after this change: pass it to
    /// [`EventStore::changes`](crate::EventStore::changes) to read on from
    /// here.
    pub position: ChangePosition,
}
