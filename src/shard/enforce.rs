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
use crate::index::{Apply, IndexKind, IndexSet, location_at_end, time_range};
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
            targets: None,
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
    write_removals(log, indexes, &removals)
}

/// After a repair: the store-wide rules the write path keeps, restored.
///
/// A damaged range can take an event together with the remove records it
/// caused (a sector lost over both), and those records cannot be read to
/// say what they removed. What they removed is then live again, which is
/// what the surviving log states; but it may break a rule a later event
/// relied on: a newer version of the same address stored after it, or a
/// surviving deletion that names it. So, over the whole shard: every
/// address keeps only its newest version, and every stored deletion
/// removes what it names. Returns how many removals that wrote.
pub(crate) fn restore_invariants(
    log: &mut LogWriter,
    indexes: &mut IndexSet,
) -> Result<u64, Error> {
    let snapshot = log.log().snapshot();
    let mut removals: Vec<Removal> = Vec::new();
    {
        let committed = Committed {
            indexes,
            log: &snapshot,
            targets: None,
        };
        let mut seen = HashSet::new();
        let mut owe = |location: Location| -> Result<(), Error> {
            let event = snapshot.read_event(location)?;
            owed(&committed, &event, location, &mut |removal| {
                if seen.insert(removal.target) {
                    removals.push(removal);
                }
            })
        };
        // Addresses with more than one entry (entries of one address are
        // adjacent; a hashed d slot may hold several addresses, which
        // `owed` tells apart on the records).
        let prefix_len = IndexKind::Address.width() - Location::ENCODED_LEN;
        let mut group: Vec<(Vec<u8>, Location)> = Vec::new();
        let mut cursor = indexes.tree(IndexKind::Address).seek(&[])?;
        loop {
            let next = cursor.next()?;
            let same = matches!((next, group.first()), (Some(entry), Some((first, _))) if entry[..prefix_len] == first[..]);
            if !same {
                if group.len() > 1 {
                    for &(_, location) in &group {
                        owe(location)?;
                    }
                }
                group.clear();
            }
            let Some(entry) = next else { break };
            group.push((entry[..prefix_len].to_vec(), location_at_end(entry)));
        }
        // Every stored deletion.
        let deletions = DELETION_KIND.to_be_bytes();
        let (lower, upper) = time_range(IndexKind::KindTime, &deletions, 0, u64::MAX);
        let mut cursor = indexes.tree(IndexKind::KindTime).seek(&lower)?;
        while let Some(entry) = cursor.next()? {
            if entry > upper.as_slice() {
                break;
            }
            owe(location_at_end(entry))?;
        }
    }
    write_removals(log, indexes, &removals)
}

/// Writes `removals` as remove records (as many batches as they need),
/// syncs, and applies them to the indexes.
fn write_removals(
    log: &mut LogWriter,
    indexes: &mut IndexSet,
    removals: &[Removal],
) -> Result<u64, Error> {
    if removals.is_empty() {
        return Ok(0);
    }
    let mut placed: Vec<(Lsn, Location)> = Vec::with_capacity(removals.len());
    let mut batch = log.batch()?;
    for removal in removals {
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
