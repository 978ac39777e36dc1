//! What a shard's stored deletion requests (NIP-09, kind 5) and requests to
//! vanish (NIP-62, kind 62) could name: a set the write path asks before
//! it seeks the indexes for a deletion of a new event.
//!
//! Every new event is checked against the stored deletions: one seek of
//! `tag_time` for a kind 5 naming its id, one of `author_kind_time` for a
//! request to vanish by its author (once per group and author), and, for
//! replaceable and addressable events, one of `tag_time` for a kind 5
//! naming its address. Deletions are about 2% of events, so nearly every
//! seek finds nothing, and in a big store each goes through the tree, the
//! spilled runs and the memory runs: 12% of the samples of a 100k-event
//! import into a 10M-event store (docs/engine-at-scale.md, "Deletion
//! targets").
//!
//! The set holds a 64-bit key per `e` and `a` tag value of every stored
//! kind 5 (the value's index slot, so it matches exactly what the seek
//! looks for) and per author of a stored kind 62. It may hold more (events
//! removed since, or keys that collide): a key in the set means "seek";
//! only a key absent from a **complete** set means "no such deletion". It
//! is filled once per writer: at the shard's open from the file a clean
//! close saved (`index/deletions.keys`, used only when the log ends exactly
//! where it ended then, and removed once read), or else at the first write
//! from the `kind_time` index (the kind 5 and kind 62 entries, reading
//! their records; at 10M events 0.3-0.6 s of CPU per shard). Meanwhile the
//! writer adds the keys of every kind 5 and kind 62 it stores, so a
//! deletion is found by the scan or added by the writer, whichever comes
//! first. Until the set is complete, every check seeks.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, io_error};
use crate::event::{EventRef, Pubkey};
use crate::ids::{Location, Lsn, crc64, mix64};
use crate::index::{IndexKind, TagSlot, location_at_end, time_range};
use crate::storage::Storage;
use crate::wal::Log;

use super::SharedIndexes;
use super::lookup::{DELETION_KIND, VANISH_KIND};

/// `kind_time` entries a fill reads per hold of the read lock (their
/// records are read after it is let go).
const FILL_SLICE: usize = 4_096;

/// The file a clean close saves a complete set to, in the shard's index
/// directory.
const TARGETS_FILE: &str = "deletions.keys";
const FILE_MAGIC: [u8; 8] = *b"MGDELKY1";
/// magic, last LSN, log end (location), key count (u64 LE each); the keys
/// (u64 LE each); a CRC-64 of everything before it.
const FILE_HEADER: usize = 8 + 8 + 8 + 8;

#[derive(Debug, Default)]
pub(crate) struct DeletionTargets {
    keys: Mutex<HashSet<u64>>,
    complete: AtomicBool,
    /// A fill was started (at most one per writer).
    started: AtomicBool,
}

impl DeletionTargets {
    /// Whether a stored deletion may name `key`: false only when the set is
    /// complete and lacks it.
    pub fn may_name(&self, key: u64) -> bool {
        !self.complete.load(Ordering::Acquire) || self.keys.lock().contains(&key)
    }

    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Adds what `event` could name, if it is a kind 5 or a kind 62 (any
    /// other event names nothing).
    pub fn add_event(&self, event: &EventRef<'_>) {
        match event.kind() {
            DELETION_KIND => {
                let mut keys = self.keys.lock();
                for tag in event.tags() {
                    let Some(letter) = tag.name().and_then(|n| n.is_single_letter()) else {
                        continue;
                    };
                    if matches!(letter, b'e' | b'a')
                        && let Some(value) = tag.value()
                    {
                        keys.insert(tag_key(letter, &TagSlot::from_field(value)));
                    }
                }
            }
            VANISH_KIND => {
                self.keys.lock().insert(vanish_key(&event.pubkey()));
            }
            _ => {}
        }
    }

    /// Claims the one fill of this set; false if it was claimed before.
    pub fn claim_fill(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// The set as the file a clean close saves, for a log whose last
    /// record is `last` and which ends at `end`; `None` while incomplete.
    pub fn encode(&self, last: Lsn, end: Location) -> Option<Vec<u8>> {
        if !self.is_complete() {
            return None;
        }
        let keys = self.keys.lock();
        let mut out = Vec::with_capacity(FILE_HEADER + keys.len() * 8 + 8);
        out.extend_from_slice(&FILE_MAGIC);
        out.extend_from_slice(&last.0.to_le_bytes());
        out.extend_from_slice(&end.to_bytes());
        out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
        for key in keys.iter() {
            out.extend_from_slice(&key.to_le_bytes());
        }
        let crc = crc64(&[&out]);
        out.extend_from_slice(&crc.to_le_bytes());
        Some(out)
    }

    /// Takes the keys of a saved file and marks the set complete, when the
    /// file is whole and was saved for a log whose last record is `last`
    /// and which ends at `end` (nothing was written since); otherwise
    /// leaves the set as it is and returns false.
    pub fn load(&self, bytes: &[u8], last: Lsn, end: Location) -> bool {
        let Some(keys) = decode(bytes, last, end) else {
            return false;
        };
        self.keys.lock().extend(keys);
        self.complete.store(true, Ordering::Release);
        true
    }
}

/// Takes the set a clean close saved in `dir` (see [`DeletionTargets::load`])
/// into `targets` and removes the file, so it is never taken twice: the
/// writes after this open change the log, and the next clean close saves
/// the set again. An I/O error fails the open, as any other file of the
/// shard that cannot be read does. With no `targets` (the set is off), the
/// file is only removed.
pub(crate) fn load_saved(
    storage: &dyn Storage,
    dir: &Path,
    last: Lsn,
    end: Location,
    targets: Option<&DeletionTargets>,
) -> Result<(), Error> {
    let path = dir.join(TARGETS_FILE);
    if !storage.exists(&path).map_err(io_error(&path, "stat"))? {
        return Ok(());
    }
    if let Some(targets) = targets {
        let bytes = storage.read_file(&path).map_err(io_error(&path, "read"))?;
        // Damaged, or saved for another log: a fill scans the index instead.
        targets.load(&bytes, last, end);
    }
    storage
        .remove_file(&path)
        .map_err(io_error(&path, "remove"))?;
    Ok(())
}

/// Saves a complete `targets` in `dir` for a log whose last record is
/// `last` and which ends at `end` (written to a temporary name, synced and
/// renamed); an incomplete one saves nothing.
pub(crate) fn save(
    storage: &dyn Storage,
    dir: &Path,
    last: Lsn,
    end: Location,
    targets: &DeletionTargets,
) -> Result<(), Error> {
    let Some(bytes) = targets.encode(last, end) else {
        return Ok(());
    };
    let path = dir.join(TARGETS_FILE);
    let temporary = dir.join(format!("{TARGETS_FILE}.tmp"));
    crate::storage::replace_file(storage, &temporary, &path, &bytes)
        .map_err(|(file, what, e)| io_error(&file, what)(e))
}

fn decode(bytes: &[u8], last: Lsn, end: Location) -> Option<Vec<u64>> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let body = bytes.len().checked_sub(8)?;
    if bytes.get(..8)? != FILE_MAGIC || word(body)? != crc64(&[&bytes[..body]]) {
        return None;
    }
    if word(8)? != last.0 || word(16)? != u64::from_le_bytes(end.to_bytes()) {
        return None;
    }
    let count = usize::try_from(word(24)?).ok()?;
    if body != FILE_HEADER.checked_add(count.checked_mul(8)?)? {
        return None;
    }
    (0..count).map(|i| word(FILE_HEADER + i * 8)).collect()
}

/// The key of a kind 5's `letter` tag whose value has index slot `slot`.
pub(crate) fn tag_key(letter: u8, slot: &TagSlot) -> u64 {
    let mut hash = mix64(u64::from(letter));
    for chunk in slot.0.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = mix64(hash ^ u64::from_le_bytes(word));
    }
    hash
}

/// The key of a kind 62 by `author` (apart from every tag key: no tag
/// letter is 0).
pub(crate) fn vanish_key(author: &Pubkey) -> u64 {
    let mut slot = [0u8; crate::index::TAG_SLOT_LEN];
    slot[1..].copy_from_slice(&author.0);
    tag_key(0, &TagSlot(slot))
}

/// Fills `targets` from the shard's `kind_time` index (every kind 5 and
/// kind 62) and marks it complete. Gives up, leaving it incomplete (every
/// check then seeks, as without the set), when the shard closes or is
/// opened again in place, when the index is not kept, or when an entry or
/// a record cannot be read: the write path reports those itself.
pub(crate) fn fill(indexes: &SharedIndexes, log: &Log, targets: &DeletionTargets) {
    let epoch = indexes.read().epoch;
    for kind in [DELETION_KIND, VANISH_KIND] {
        let (lower, upper) = time_range(IndexKind::KindTime, &kind.to_be_bytes(), 0, u64::MAX);
        let mut from = lower;
        let mut first = true;
        loop {
            let mut locations = Vec::with_capacity(FILL_SLICE);
            {
                let indexed = indexes.read();
                if indexed.epoch != epoch
                    || indexes.is_closed()
                    || !indexed.has(IndexKind::KindTime)
                {
                    return;
                }
                let Ok(mut cursor) = indexed.tree(IndexKind::KindTime).seek(&from) else {
                    return;
                };
                while locations.len() < FILL_SLICE {
                    match cursor.next() {
                        Ok(Some(entry)) if entry <= upper.as_slice() => {
                            // `from` itself was read by the slice before.
                            if first || entry != from.as_slice() {
                                locations.push(location_at_end(entry));
                            }
                            first = false;
                            from.clear();
                            from.extend_from_slice(entry);
                        }
                        Ok(_) => break,
                        Err(_) => return,
                    }
                }
            }
            // Records are read outside the lock: what the index held is in
            // the log, which only grows while the epoch stands.
            let snapshot = log.snapshot();
            for &location in &locations {
                let Ok(event) = snapshot.read_event(location) else {
                    return;
                };
                targets.add_event(&event);
            }
            if locations.len() < FILL_SLICE {
                break;
            }
        }
    }
    targets.complete.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TagField;
    use crate::ids::SegmentId;

    fn end() -> Location {
        Location {
            segment: SegmentId(3),
            offset: 4_096,
        }
    }

    #[test]
    fn a_key_is_the_same_for_a_value_stored_as_text_or_as_hex() {
        let raw = [0xab_u8; 32];
        let text = "ab".repeat(32);
        let as_hex = tag_key(b'e', &TagSlot::from_field(TagField::Hex(&raw)));
        assert_eq!(as_hex, tag_key(b'e', &TagSlot::from_str(&text)));
        assert_ne!(as_hex, tag_key(b'a', &TagSlot::from_str(&text)));
        assert_ne!(
            vanish_key(&Pubkey(raw)),
            tag_key(b'e', &TagSlot::from_field(TagField::Hex(&raw))),
            "a vanish key is apart from tag keys"
        );
    }

    #[test]
    fn a_saved_set_is_taken_only_whole_and_for_the_same_log() {
        let saved = DeletionTargets::default();
        assert!(saved.encode(Lsn(9), end()).is_none(), "incomplete: nothing");
        saved.keys.lock().extend([1, 2, 3]);
        saved.complete.store(true, Ordering::Release);
        let bytes = saved.encode(Lsn(9), end()).unwrap();

        let taken = DeletionTargets::default();
        assert!(taken.load(&bytes, Lsn(9), end()));
        assert!(taken.is_complete());
        assert!(taken.may_name(2) && !taken.may_name(4));

        for (last, at) in [(Lsn(8), end()), (Lsn(10), end())] {
            assert!(!DeletionTargets::default().load(&bytes, last, at));
        }
        let elsewhere = Location {
            offset: 4_097,
            ..end()
        };
        assert!(!DeletionTargets::default().load(&bytes, Lsn(9), elsewhere));
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= bit;
                let set = DeletionTargets::default();
                assert!(!set.load(&damaged, Lsn(9), end()), "byte {at} flipped");
                assert!(!set.is_complete() && set.may_name(4));
            }
        }
        for len in 0..bytes.len() {
            assert!(!DeletionTargets::default().load(&bytes[..len], Lsn(9), end()));
        }
    }
}
