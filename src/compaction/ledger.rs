//! How many bytes of a shard's log belong to removed events, per segment:
//! the background compaction's trigger (`EventStore::garbage`).
//!
//! Two sources keep it: the shard's writer adds the frame of each event a
//! remove record takes out as it applies the record, and every compaction
//! pass, which reads each sealed segment whole, sets that segment's figure
//! to the removed bytes it left there. Removals replayed at an open are not
//! counted (the writer was not running), so the figure is only an estimate
//! until the first pass since the open (`known`); after it, it is exact up
//! to removals that raced the pass (counted by the next one).

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::ids::SegmentId;

/// One shard's removed bytes, per segment.
#[derive(Debug, Default)]
pub(crate) struct GarbageLedger {
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    removed: HashMap<SegmentId, u64>,
    /// A compaction pass has read every sealed segment since the open.
    known: bool,
}

impl GarbageLedger {
    /// The writer took out the event whose frame of `bytes` lies in `segment`.
    pub fn add(&self, segment: SegmentId, bytes: u64) {
        *self.state.lock().removed.entry(segment).or_default() += bytes;
    }

    /// A compaction pass read `segment` whole and left `bytes` of removed
    /// events in it.
    pub fn set(&self, segment: SegmentId, bytes: u64) {
        let mut state = self.state.lock();
        if bytes == 0 {
            state.removed.remove(&segment);
        } else {
            state.removed.insert(segment, bytes);
        }
    }

    /// A compaction pass read every sealed segment.
    pub fn mark_known(&self) {
        self.state.lock().known = true;
    }

    /// The removed bytes in all segments, and whether a pass since the
    /// open made the figure exact.
    pub fn total(&self) -> (u64, bool) {
        let state = self.state.lock();
        (state.removed.values().sum(), state.known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_sets_and_totals() {
        let ledger = GarbageLedger::default();
        assert_eq!(ledger.total(), (0, false));
        ledger.add(SegmentId(1), 100);
        ledger.add(SegmentId(1), 50);
        ledger.add(SegmentId(2), 7);
        assert_eq!(ledger.total(), (157, false));
        ledger.set(SegmentId(1), 20);
        ledger.mark_known();
        assert_eq!(ledger.total(), (27, true));
        ledger.set(SegmentId(2), 0);
        assert_eq!(ledger.total(), (20, true));
    }
}
