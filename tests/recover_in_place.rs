//! A shard whose writes failed (a full disk, an I/O error) recovers without
//! a restart once the cause clears: it refuses writes meanwhile, reads go
//! on, and every acknowledged event survives.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::crash::{model_after, workload_events};
use megalith::storage::{Damage, SimStorage};
use megalith::{Durability, EventStore, Filter};

fn open(sim: &SimStorage, dir: &std::path::Path) -> EventStore {
    EventStore::builder(dir)
        .shards(1)
        .storage(Arc::new(sim.clone()))
        .durability(Durability::Always)
        .segment_size(64 << 10)
        .recover_after(Duration::from_millis(20))
        .open()
        .unwrap()
}

/// Tries `insert` until it is accepted or `limit` passes.
fn insert_when_writable(store: &EventStore, events: &[megalith::Event], limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if store.insert(events).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn failed_writes_recover_in_place_once_the_cause_clears() {
    let events = workload_events(9, 12);
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let store = open(&sim, dir.path());
    store.insert(&events[..4]).unwrap();
    let before = store.query(&[Filter::new()]).unwrap();

    // Every I/O operation fails from now on, as on a full disk.
    sim.fail_from(sim.ops());
    assert!(store.insert(&events[4..6]).is_err());
    // Still failing: refused, and reads go on.
    std::thread::sleep(Duration::from_millis(100));
    assert!(store.insert(&events[4..6]).is_err());
    assert_eq!(store.query(&[Filter::new()]).unwrap(), before);
    let health = store.health();
    assert!(!health[0].writable, "{health:?}");
    assert!(
        health[0]
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("injected"))
    );

    // The cause clears: writes resume, no reopen.
    sim.reset_faults();
    assert!(
        insert_when_writable(&store, &events[4..8], Duration::from_secs(20)),
        "writes did not resume after the fault cleared: {:?}",
        store.health()
    );
    let health = store.health();
    assert!(
        health[0].writable && health[0].recoveries >= 1,
        "{health:?}"
    );
    store.insert(&events[8..]).unwrap();
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        model_after(&events, events.len())
    );
    // A power loss now keeps every acknowledged event.
    sim.crash(Damage::DropUnsynced, 1).unwrap();
    drop(store);
    let store = open(&sim, dir.path());
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        model_after(&events, events.len())
    );
    store.close().unwrap();
}

#[test]
fn a_failed_sync_recovers_in_place_without_trusting_unsynced_bytes() {
    let events = workload_events(10, 10);
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let store = open(&sim, dir.path());
    store.insert(&events[..4]).unwrap();
    // The next group writes its records (operation 0), then syncs (1).
    sim.reset_faults();
    sim.fail_once_at(sim.ops() + 1);
    assert!(store.insert(&events[4..6]).is_err());
    assert!(
        insert_when_writable(&store, &events[6..], Duration::from_secs(20)),
        "writes did not resume: {:?}",
        store.health()
    );
    // The batch whose sync failed was never acknowledged and is cut: the
    // store holds the first four and the last four.
    let kept: Vec<_> = events[..4].iter().chain(&events[6..]).cloned().collect();
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        model_after(&kept, kept.len())
    );
    store.close().unwrap();
}
