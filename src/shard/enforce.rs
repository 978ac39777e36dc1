//! After a repair: the removals that records lost to damage had made.
//!
//! A batch holds each stored event together with the remove records it
//! causes: the version it replaced, what a deletion names (see `writer.rs`).
//! When a repair moves a damaged range aside, a surviving event of that
//! batch may have lost its remove records, leaving a replaced version or a
//! deleted event live. Those removals are derived again from the surviving
//! events and the store's state, and written as new remove records, so the
//! store holds what it held before the damage, less the records lost.
//! Removals that survived are kept even when the event that caused them was
//! lost: a remove record is a fact the log still states.

use std::collections::HashSet;

use crate::error::Error;
use crate::event::EventRef;
use crate::ids::{Location, Lsn};
use crate::index::{Apply, IndexSet};
use crate::wal::{BatchFull, LogWriter, RecordType, RemoveReason, WalError};

use super::batch::{Removal, event_id};
use super::lookup::{Address, Committed, DELETION_KIND};

/// Writes and applies the removals the events at `events` (records that
/// shared a batch with a damaged range) owe; returns how many.
pub(crate) fn reapply_removals(
    log: &mut LogWriter,
    indexes: &mut IndexSet,
    events: &[Location],
) -> Result<u64, Error> {
    let snapshot = log.log().snapshot();
    let mut removals: Vec<Removal> = Vec::new();
    {
        let committed = Committed {
            indexes,
            log: &snapshot,
        };
        let mut seen = HashSet::new();
        for &location in events {
            let event = snapshot.read_event(location)?;
            owed(&committed, &event, location, &mut |removal| {
                if seen.insert(removal.target) {
                    removals.push(removal);
                }
            })?;
        }
    }
    let mut placed: Vec<(Lsn, Location)> = Vec::with_capacity(removals.len());
    let mut batch = log.batch()?;
    for removal in &removals {
        let payload = removal.payload();
        // Each removal stands alone: a full batch is committed and the
        // next one started.
        let (lsn, _) = match batch.push(RecordType::Remove, &payload) {
            Ok(placed) => placed,
            Err(BatchFull) => {
                log.commit(batch, false)?;
                batch = log.batch()?;
                batch
                    .push(RecordType::Remove, &payload)
                    .map_err(|BatchFull| WalError::RecordTooLarge { len: payload.len() })?
            }
        };
        placed.push((lsn, removal.target));
    }
    log.commit(batch, true)?;
    log.sync()?;
    let snapshot = log.log().snapshot();
    for (lsn, target) in placed {
        let event = snapshot.read_event(target)?;
        indexes.apply(Apply::Remove, &event, target, lsn)?;
    }
    Ok(removals.len() as u64)
}

/// The removals a stored `event` at `location` makes that the store does
/// not show: versions of its address other than the newest (and any it
/// beats), and, for a NIP-09 deletion, what it names that is still stored.
fn owed(
    committed: &Committed<'_>,
    event: &EventRef<'_>,
    location: Location,
    remove: &mut dyn FnMut(Removal),
) -> Result<(), Error> {
    if let Some(address) = Address::of_event_ref(event) {
        let versions = committed.versions(&address, |_| false)?;
        let best = versions
            .iter()
            .copied()
            .reduce(|a, b| if a.beats(b.created_at, &b.id) { a } else { b });
        for version in &versions {
            let beaten_by_best = best.is_some_and(|b| b.location != version.location);
            let beaten_by_event = version.location != location
                && (event.created_at() > version.created_at
                    || (event.created_at() == version.created_at && event.id() < version.id));
            if beaten_by_best || beaten_by_event {
                remove(Removal {
                    target: version.location,
                    target_id: version.id,
                    reason: RemoveReason::Replaced,
                });
            }
        }
    }
    if event.kind() != DELETION_KIND {
        return Ok(());
    }
    let (author, created_at) = (event.pubkey(), event.created_at());
    for tag in event.tags() {
        let (Some(name), Some(value)) = (tag.name(), tag.value()) else {
            continue;
        };
        match name.is_single_letter() {
            Some(b'e') => {
                let Some(id) = event_id(value) else { continue };
                let Some(target) = committed.find(&id)? else {
                    continue;
                };
                let named = committed.log.read_event(target)?;
                if named.pubkey() == author && named.kind() != DELETION_KIND {
                    remove(Removal {
                        target,
                        target_id: id,
                        reason: RemoveReason::Deleted,
                    });
                }
            }
            Some(b'a') => {
                let Some(address) = Address::parse(&value.to_string()) else {
                    continue;
                };
                if address.pubkey != author {
                    continue;
                }
                for version in committed.versions(&address, |_| false)? {
                    if version.created_at <= created_at {
                        remove(Removal {
                            target: version.location,
                            target_id: version.id,
                            reason: RemoveReason::Deleted,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}
