//! The per-shard id filter (docs/engine-at-scale.md, "Id filter"): built in
//! the background after an open and again each time it fills, while writes
//! go on, it must never hide a stored event: every stored id is found by
//! `contains_ids`, `get` and a query by ids, and sent again it is a
//! duplicate, during the builds, once the filters are in use, and after a
//! reopen; ids never stored are not found.

mod common;

use std::time::{Duration, Instant};

use megalith::event::Keys;
use megalith::{Durability, Event, EventId, EventStore, Filter, InsertOutcome};

fn notes(seed: u64, count: usize) -> Vec<Event> {
    let keys: Vec<Keys> = (0..7).map(|i| Keys::from_seed(seed * 10 + i)).collect();
    (0..count)
        .map(|i| {
            keys[i % keys.len()].sign(
                1_700_000_000 + i as u64,
                1,
                Vec::new(),
                format!("note {seed}/{i}"),
            )
        })
        .collect()
}

fn open(dir: &std::path::Path) -> EventStore {
    EventStore::builder(dir)
        .shards(2)
        // A tiny first filter, so it fills and is built again many times.
        .id_filter_min(256)
        .durability(Durability::Never)
        .open()
        .unwrap()
}

/// Every one of `events` is held and a duplicate; none of `absent` is held.
fn check(store: &EventStore, events: &[Event], absent: &[EventId], what: &str) {
    let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
    let held = store.contains_ids(&ids).unwrap();
    let missing = held.iter().filter(|&&h| !h).count();
    assert_eq!(missing, 0, "{what}: {missing} stored ids not found");
    for outcome in store.insert(events).unwrap() {
        assert_eq!(outcome, InsertOutcome::Duplicate, "{what}");
    }
    for event in events.iter().step_by(97) {
        assert_eq!(
            store.get(&event.id).unwrap().as_ref(),
            Some(event),
            "{what}"
        );
    }
    let some: Vec<EventId> = ids.iter().step_by(53).copied().collect();
    let found = store.query(&[Filter::new().ids(some.clone())]).unwrap();
    assert_eq!(found.len(), some.len(), "{what}: a query by ids");
    assert!(
        store.contains_ids(absent).unwrap().iter().all(|&h| !h),
        "{what}: an id never stored is found"
    );
    assert!(store.get(&absent[0]).unwrap().is_none(), "{what}");
}

fn wait_for_filters(store: &EventStore, shards: usize) {
    let start = Instant::now();
    while store.stats().unwrap().id_filters < shards {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the id filters were never built"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_id_filter_never_hides_a_stored_event() {
    let dir = tempfile::tempdir().unwrap();
    let events = notes(1, 24_000);
    let absent: Vec<EventId> = notes(2, 300).iter().map(|e| e.id).collect();
    let store = open(dir.path());
    // Batches of all sizes while the filters fill and are built again.
    let mut sent = 0;
    let mut size = 1;
    while sent < events.len() {
        let batch = &events[sent..(sent + size).min(events.len())];
        for outcome in store.insert(batch).unwrap() {
            assert_eq!(outcome, InsertOutcome::Stored);
        }
        sent += batch.len();
        size = size * 3 % 1_001 + 1;
        check(
            &store,
            &events[sent.saturating_sub(400)..sent],
            &absent,
            &format!("after {sent}"),
        );
    }
    wait_for_filters(&store, 2);
    let stats = store.stats().unwrap();
    assert!(stats.id_filter_bytes > 0);
    check(&store, &events, &absent, "with the filters in use");
    store.close().unwrap();

    // Reopened: the filters are built again while events arrive.
    let store = open(dir.path());
    let more = notes(3, 6_000);
    for chunk in more.chunks(250) {
        store.insert(chunk).unwrap();
        check(
            &store,
            &events[..2_000],
            &absent,
            "reopened, while building",
        );
    }
    wait_for_filters(&store, 2);
    check(&store, &events, &absent, "reopened");
    check(&store, &more, &absent, "reopened, the new events");
    store.close().unwrap();
}

/// With the filter off (`id_filter_min(0)`) nothing changes but the speed.
#[test]
fn the_id_filter_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let events = notes(4, 2_000);
    let absent: Vec<EventId> = notes(5, 50).iter().map(|e| e.id).collect();
    let store = EventStore::builder(dir.path())
        .shards(2)
        .id_filter_min(0)
        .open()
        .unwrap();
    store.insert(&events).unwrap();
    check(&store, &events, &absent, "without a filter");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(store.stats().unwrap().id_filters, 0);
    store.close().unwrap();
}

/// A clean close saves each shard's filter; the next open uses it at once
/// (no scan of the primary index), and only when it was written for the
/// index as it is on disk: a damaged file, or one left from an earlier
/// state of the store, is not used, and a filter is built by a scan.
#[test]
fn a_clean_close_saves_the_filters_and_the_next_open_uses_them_only_if_they_fit() {
    let dir = tempfile::tempdir().unwrap();
    let events = notes(6, 5_000);
    let absent: Vec<EventId> = notes(7, 200).iter().map(|e| e.id).collect();
    let store = open(dir.path());
    store.insert(&events).unwrap();
    wait_for_filters(&store, 2);
    store.close().unwrap();
    let saved = dir.path().join("shard-0000/index/primary.ids");
    let first_file = std::fs::read(&saved).unwrap();

    let store = open(dir.path());
    assert_eq!(store.recovery_report().id_filters_loaded, 2);
    assert_eq!(store.stats().unwrap().id_filters, 2, "in use at once");
    check(&store, &events, &absent, "with the saved filters");
    let more = notes(8, 1_000);
    store.insert(&more).unwrap();
    check(&store, &more, &absent, "the saved filters take new ids");
    store.close().unwrap();

    // A file from an earlier state of the store: not used.
    std::fs::write(&saved, &first_file).unwrap();
    let store = open(dir.path());
    assert_eq!(store.recovery_report().id_filters_loaded, 1);
    wait_for_filters(&store, 2);
    check(&store, &events, &absent, "after a stale file");
    check(&store, &more, &absent, "after a stale file, the new events");
    store.close().unwrap();

    // A damaged file: not used.
    let mut bytes = std::fs::read(&saved).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&saved, &bytes).unwrap();
    let store = open(dir.path());
    assert_eq!(store.recovery_report().id_filters_loaded, 1);
    wait_for_filters(&store, 2);
    check(&store, &events, &absent, "after a damaged file");
    store.close().unwrap();
}

/// Voluntary context switches of this process's shard writer threads.
#[cfg(target_os = "linux")]
fn writer_wakeups() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !comm.starts_with("megalith-shard") {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// An idle store's writers sleep until the next checkpoint interval: once
/// an interval had passed with nothing to write, each woke every
/// millisecond (about 1,000 wake-ups a second per shard).
#[cfg(target_os = "linux")]
#[test]
fn an_idle_store_does_not_wake_its_writers_every_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path())
        .shards(2)
        .checkpoint_interval(Duration::from_millis(100))
        .durability(Durability::Never)
        .open()
        .unwrap();
    store.insert(&notes(9, 50)).unwrap();
    // The first interval writes what the insert changed.
    std::thread::sleep(Duration::from_millis(300));
    let before = writer_wakeups();
    std::thread::sleep(Duration::from_millis(1_000));
    let woken = writer_wakeups() - before;
    // 2 writers, one housekeeping per 100 ms: about 20 (a slow machine
    // only wakes them less often).
    assert!(woken < 200, "{woken} wake-ups in a second of idling");
    store.close().unwrap();
}
