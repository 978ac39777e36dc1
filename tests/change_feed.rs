//! The durable change feed (`EventStore::changes`) against the store
//! itself: a replica built only from the feed, read in small pages from
//! positions kept as text, holds exactly what the store holds after every
//! round of random writes (replacements, deletions, duplicates), across a
//! close and reopen; positions that do not belong to the store are refused
//! with a message.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Generator, stored_ids};
use megalith::{ChangeOp, ChangePosition, EventId, EventStore};

fn open(dir: &std::path::Path) -> EventStore {
    EventStore::builder(dir)
        .shards(3)
        .segment_size(64 << 10)
        .open()
        .unwrap()
}

/// Reads the feed from `position` to its end, `page` changes at a time,
/// into `replica`; returns the new position and how many changes it read.
fn follow(
    store: &EventStore,
    position: &str,
    page: usize,
    replica: &mut HashMap<EventId, megalith::Event>,
    removed: &mut HashSet<EventId>,
) -> (String, usize) {
    let mut at: ChangePosition = position.parse().unwrap();
    let mut read = 0;
    loop {
        let changes = store.changes(&at, page).unwrap();
        assert!(changes.len() <= page);
        if changes.is_empty() {
            return (at.to_string(), read);
        }
        for change in changes {
            match change.op {
                ChangeOp::Stored => {
                    assert!(
                        replica
                            .insert(change.event.id, change.event.clone())
                            .is_none(),
                        "stored twice: {}",
                        change.event.id
                    );
                }
                ChangeOp::Removed => {
                    assert!(
                        replica.remove(&change.event.id).is_some(),
                        "removed before it was stored: {}",
                        change.event.id
                    );
                    removed.insert(change.event.id);
                }
            }
            at = change.position;
            read += 1;
        }
    }
}

#[test]
fn a_replica_from_the_feed_holds_what_the_store_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = Generator::new(17, 20);
    let store = open(dir.path());
    let mut replica = HashMap::new();
    let mut removed = HashSet::new();
    let mut position = ChangePosition::start(3).to_string();
    for round in 0..6 {
        for _ in 0..5 {
            let size = 1 + generator.rng.below(200) as usize;
            let batch: Vec<_> = (0..size).map(|_| generator.next_event()).collect();
            store.insert(&batch).unwrap();
        }
        let (next, read) = follow(
            &store,
            &position,
            1 + round * 17,
            &mut replica,
            &mut removed,
        );
        assert!(read > 0, "round {round}");
        position = next;
        let mut mine: Vec<EventId> = replica.keys().copied().collect();
        mine.sort();
        assert_eq!(mine, stored_ids(&store), "round {round}");
        // Up to date: nothing more.
        assert!(
            store
                .changes(&position.parse().unwrap(), 10)
                .unwrap()
                .is_empty()
        );
    }
    assert!(
        !removed.is_empty(),
        "the stream replaced and deleted events"
    );
    store.close().unwrap();

    // Resumed after a reopen from the kept text: nothing repeated, and
    // new writes follow.
    let store = open(dir.path());
    assert!(
        store
            .changes(&position.parse().unwrap(), 10)
            .unwrap()
            .is_empty()
    );
    for _ in 0..3 {
        let batch: Vec<_> = (0..150).map(|_| generator.next_event()).collect();
        store.insert(&batch).unwrap();
    }
    let (_, read) = follow(&store, &position, 50, &mut replica, &mut removed);
    assert!(read > 0);
    let mut mine: Vec<EventId> = replica.keys().copied().collect();
    mine.sort();
    assert_eq!(mine, stored_ids(&store), "after the reopen");

    // The whole feed from the start, in one page, says the same.
    let all = store
        .changes(&ChangePosition::start(3), usize::MAX)
        .unwrap();
    let mut again = HashMap::new();
    for change in &all {
        match change.op {
            ChangeOp::Stored => {
                again.insert(change.event.id, ());
            }
            ChangeOp::Removed => {
                again.remove(&change.event.id);
            }
        }
    }
    let mut ids: Vec<EventId> = again.keys().copied().collect();
    ids.sort();
    assert_eq!(ids, stored_ids(&store));

    // Positions that are not this store's.
    let error = store
        .changes(&ChangePosition::start(2), 10)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("names 2 shards; this store has 3"),
        "{error}"
    );
    let far: ChangePosition = "c1:999.32,1.32,1.32".parse().unwrap();
    let error = store.changes(&far, 10).unwrap_err().to_string();
    assert!(error.contains("past the end of shard 0"), "{error}");
    assert!(
        error.contains("): it was not given by this store"),
        "one sentence, no run of spaces: {error}"
    );
    for bad in ["", "c1:", "c2:1.32", "c1:1.x,1.2,1.3", "1.32,1.32,1.32"] {
        let error = bad.parse::<ChangePosition>().unwrap_err();
        assert!(
            error.contains("not a change feed position"),
            "{bad}: {error}"
        );
    }
}
