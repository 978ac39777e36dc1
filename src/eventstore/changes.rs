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

use crate::error::Error;
use crate::event::Event;
use crate::ids::{Location, SegmentId, ShardId};
use crate::wal::LogSnapshot;

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

/// What to do with a position past the end a shard's view can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PastEnd {
    /// Refuse it: the store never gave it.
    Refuse,
    /// Read nothing of that shard yet (a reader beside a writer sees the
    /// log up to its synced mark; a position from the writer's own feed
    /// can be ahead of that for a moment).
    Wait,
}

/// Up to `limit` changes after `after` from each shard's log (`views`: per
/// shard, `None` when nothing can be read of it now, or a snapshot and the
/// whole-batch boundary where reading stops): within a shard in commit
/// order, the shards in turn, each given an equal share of `limit` first,
/// the rest to those with more. The engine's `EventStore::changes` and the
/// out-of-process `ChangeReader` both answer with it.
pub(crate) fn collect_changes(
    views: &[Option<(LogSnapshot, Location)>],
    after: &ChangePosition,
    limit: usize,
    past_end: PastEnd,
) -> Result<Vec<StoreChange>, Error> {
    if after.shards() != views.len() {
        return Err(Error::Options(format!(
            "the position names {} shards; this store has {}",
            after.shards(),
            views.len()
        )));
    }
    let mut position = after.clone();
    let mut out: Vec<StoreChange> = Vec::new();
    let share = limit.div_ceil(views.len()).max(1);
    for round in 0..2 {
        for (n, view) in views.iter().enumerate() {
            let Some((snapshot, end)) = view else {
                continue;
            };
            let left = limit.saturating_sub(out.len());
            let budget = if round == 0 { share.min(left) } else { left };
            if budget == 0 {
                continue;
            }
            if position.0[n] > *end {
                if past_end == PastEnd::Wait {
                    continue;
                }
                return Err(Error::Options(format!(
                    "the position is past the end of shard {n}'s log ({} > {end}): \
                     it was not given by this store",
                    position.0[n]
                )));
            }
            let mut taken = 0;
            let mut changes = Vec::new();
            crate::wal::scan_changes(snapshot, position.0[n], Some(*end), |change| {
                changes.push((
                    change.next,
                    if change.stored {
                        ChangeOp::Stored
                    } else {
                        ChangeOp::Removed
                    },
                    change.event.to_event(),
                ));
                taken += 1;
                taken < budget
            })?;
            for (next, op, event) in changes {
                position.0[n] = next;
                out.push(StoreChange {
                    op,
                    event,
                    shard: ShardId(n as u32),
                    position: position.clone(),
                });
            }
        }
    }
    Ok(out)
}
