//! Runs a plan on one shard: a k-way merge of newest-first index cursors that
//! checks each candidate on its record and stops at the limit.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::event::{EventId, EventRef};
use crate::ids::Location;
use crate::index::{
    Cursor, ID_PREFIX_LEN, IndexKind, IndexSet, location_at_end, primary_lower, time_range,
};
use crate::wal::LogSnapshot;

use super::error::QueryError;
use super::filter::Filter;
use super::plan::{Plan, plan};

/// A matching event: enough to order, deduplicate and fetch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Hit {
    pub created_at: u64,
    pub id: EventId,
    pub location: Location,
}

impl Ord for Hit {
    /// NIP-01 order: newest first, ties by lowest id.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .created_at
            .cmp(&self.created_at)
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Calls `visit` with each event matching `filter` in NIP-01 order (exact up
/// to events sharing created_at and the first 8 id bytes, which the caller's
/// final sort settles), at most `limit` times (`None`: no limit). Events
/// expired at `now` (NIP-40) are skipped. Returns how many were visited.
pub(crate) fn execute<'l>(
    indexes: &IndexSet,
    log: &'l LogSnapshot,
    filter: &Filter,
    now: u64,
    limit: Option<usize>,
    mut visit: impl FnMut(Hit, EventRef<'l>),
) -> Result<usize, QueryError> {
    let limit = limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(0);
    }
    let accept =
        |event: &EventRef<'_>| filter.matches(event) && event.expiration().is_none_or(|e| e > now);
    match &plan(filter) {
        Plan::Nothing => Ok(0),
        Plan::Ids(ids) => {
            let mut hits = Vec::new();
            let primary = indexes.tree(IndexKind::Primary);
            for id in ids {
                let mut cursor = primary.seek(&primary_lower(id))?;
                let Some(entry) = cursor.next()? else {
                    continue;
                };
                if entry[..32] != id.0 {
                    continue;
                }
                let location = location_at_end(entry);
                let event = log.read_event(location)?;
                if accept(&event) {
                    hits.push((
                        Hit {
                            created_at: event.created_at(),
                            id: *id,
                            location,
                        },
                        event,
                    ));
                }
            }
            hits.sort_unstable_by_key(|(hit, _)| *hit);
            hits.truncate(limit);
            let visited = hits.len();
            for (hit, event) in hits {
                visit(hit, event);
            }
            Ok(visited)
        }
        Plan::Scan {
            index,
            prefixes,
            since,
            until,
        } => {
            let tree = indexes.tree(*index);
            let prefix_len = index.time_prefix_len().unwrap_or(0);
            let mut sources = Vec::with_capacity(prefixes.len());
            let mut heap = BinaryHeap::with_capacity(prefixes.len());
            for prefix in prefixes {
                let (lower, upper) = time_range(prefix, *since, *until);
                let mut source = Source {
                    cursor: tree.seek(&lower)?,
                    upper,
                    prefix_len,
                };
                if let Some(head) = source.head()? {
                    heap.push(Reverse((head, sources.len())));
                }
                sources.push(source);
            }
            let mut visited = 0;
            let mut last: Option<[u8; SUFFIX_LEN]> = None;
            while let Some(Reverse((head, source))) = heap.pop() {
                if let Some(next) = sources[source].head()? {
                    heap.push(Reverse((next, source)));
                }
                // One event reached through two cursors (two matching tag
                // values) has the same suffix twice in a row.
                if last == Some(head) {
                    continue;
                }
                last = Some(head);
                let location = location_at_end(&head);
                let event = log.read_event(location)?;
                if !accept(&event) {
                    continue;
                }
                visit(
                    Hit {
                        created_at: event.created_at(),
                        id: event.id(),
                        location,
                    },
                    event,
                );
                visited += 1;
                if visited == limit {
                    break;
                }
            }
            Ok(visited)
        }
    }
}

/// Reversed time, id prefix and location: the part of a time-ordered entry
/// after its prefix, which sorts in NIP-01 order.
const SUFFIX_LEN: usize = 8 + ID_PREFIX_LEN + Location::ENCODED_LEN;

struct Source<'t> {
    cursor: Cursor<'t>,
    upper: Vec<u8>,
    prefix_len: usize,
}

impl Source<'_> {
    fn head(&mut self) -> Result<Option<[u8; SUFFIX_LEN]>, QueryError> {
        let Some(entry) = self.cursor.next()? else {
            return Ok(None);
        };
        if entry > self.upper.as_slice() {
            return Ok(None);
        }
        let mut suffix = [0u8; SUFFIX_LEN];
        suffix.copy_from_slice(&entry[self.prefix_len..]);
        Ok(Some(suffix))
    }
}
