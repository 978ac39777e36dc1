//! A small write workload for crash and fault-injection tests, and the check
//! that a reopened store holds exactly a prefix of it that includes every
//! acknowledged insert.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use megalith::storage::SimStorage;
use megalith::{Durability, Event, EventStore, Filter};

use super::{Generator, Model};

/// Events the workload inserts, one `insert` call each.
/// Every third one is a 10 KiB note, so a few dozen fill a 64 KiB segment.
pub fn workload_events(seed: u64, count: usize) -> Vec<Event> {
    let mut generator = Generator::new(seed, 4);
    let big = megalith::Keys::from_seed(seed ^ 0xb16);
    (0..count)
        .map(|i| {
            if i % 3 == 2 {
                let content = format!("{i} {}", "long note ".repeat(1024));
                big.sign(1_700_000_000 + i as u64, 1, vec![], content)
            } else {
                generator.next_event()
            }
        })
        .collect()
}

thread_local! {
    /// The in-memory level's budget [`open`] gives stores (see
    /// [`set_level_entries`]).
    static LEVEL_ENTRIES: std::cell::Cell<usize> = const { std::cell::Cell::new(64) };
}

/// Makes [`open`] (and so [`run`] and [`recover_and_finish`]) give stores
/// an in-memory level of `entries` on this thread.
#[allow(dead_code)]
pub fn set_level_entries(entries: usize) {
    LEVEL_ENTRIES.with(|cell| cell.set(entries));
}

/// Opens a store on `sim` the way the crash tests do: every acknowledgement
/// fsynced, small segments so the log rotates, checkpoints every few
/// inserts (by changed nodes, not by time, so the run is deterministic).
pub fn open(sim: &SimStorage, dir: &Path) -> Result<EventStore, megalith::Error> {
    let level_entries = LEVEL_ENTRIES.with(std::cell::Cell::get);
    EventStore::builder(dir)
        .shards(1) // one shard: I/O operations come in a fixed order
        .storage(Arc::new(sim.clone()))
        .durability(Durability::Always)
        .segment_size(64 << 10)
        .checkpoint_dirty_nodes(6)
        // A small in-memory level: merges run in several slices, and some
        // are written part-way (their crash points are swept too).
        .level_entries(level_entries)
        .checkpoint_interval(Duration::from_secs(24 * 3600))
        .open()
}

/// What a workload run got done before it failed.
#[derive(Debug, Default)]
pub struct Run {
    /// Inserts that returned `Ok` (their outcome is durable).
    pub acknowledged: usize,
    /// The first error, if any, and at which step.
    pub error: Option<String>,
}

/// Opens the store and inserts `events` one at a time, stopping at the first
/// error; then drops the store (a close that may fail).
pub fn run(sim: &SimStorage, dir: &Path, events: &[Event]) -> Run {
    let mut run = Run::default();
    let store = match open(sim, dir) {
        Ok(store) => store,
        Err(e) => {
            run.error = Some(format!("open: {e}"));
            return run;
        }
    };
    for event in events {
        match store.insert(std::slice::from_ref(event)) {
            Ok(_) => run.acknowledged += 1,
            Err(e) => {
                run.error = Some(format!("insert {}: {e}", run.acknowledged));
                // The store is poisoned now: writes are refused, reads go on.
                let again = store.insert(std::slice::from_ref(event));
                assert!(again.is_err(), "a write after a failed one was accepted");
                store
                    .query(&[Filter::new().limit(5)])
                    .expect("reads go on after a failed write");
                break;
            }
        }
    }
    if let Err(e) = store.close()
        && run.error.is_none()
    {
        run.error = Some(format!("close: {e}"));
    }
    run
}

/// The events a store holds, newest first (NIP-01 order).
pub fn contents(store: &EventStore) -> Vec<Event> {
    store.query(&[Filter::new()]).expect("query everything")
}

/// What a model holds after the first `n` inserts.
pub fn model_after(events: &[Event], n: usize) -> Vec<Event> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut model = Model::default();
    for event in &events[..n] {
        model.insert(event, now);
    }
    model.query(&[Filter::new()])
}

/// Checks that `store` holds exactly the state after some prefix of `events`
/// that is at least `acknowledged` long: nothing acknowledged is lost and
/// nothing appears out of order. Returns the prefix length found.
pub fn assert_prefix(
    store: &EventStore,
    events: &[Event],
    acknowledged: usize,
    what: &str,
) -> usize {
    let held = contents(store);
    // Entry counts are exact after any crash, a merge of the in-memory
    // level written part-way included: the primary index counts the
    // events held.
    assert_eq!(
        store.stats().expect("stats").events,
        held.len() as u64,
        "{what}: the primary index's entry count"
    );
    for n in acknowledged..=events.len() {
        if model_after(events, n) == held {
            return n;
        }
    }
    let ids = |list: &[Event]| {
        list.iter()
            .map(|e| e.id.to_hex()[..8].to_string())
            .collect::<Vec<_>>()
    };
    panic!(
        "{what}: the store holds {} events, which is no prefix of at least {acknowledged} inserts \
         (expected {:?}, got {:?})",
        held.len(),
        ids(&model_after(events, acknowledged)),
        ids(&held),
    );
}

/// After a crash or fault: reopens the store, checks it holds a prefix of
/// `events` that includes the `acknowledged` ones, has it take the rest of
/// the workload and closes it cleanly.
pub fn recover_and_finish(
    sim: &SimStorage,
    dir: &Path,
    events: &[Event],
    acknowledged: usize,
    what: &str,
) {
    let store = open(sim, dir).unwrap_or_else(|e| panic!("{what}: reopening failed: {e}"));
    let kept = assert_prefix(&store, events, acknowledged, what);
    for event in &events[kept..] {
        store
            .insert(std::slice::from_ref(event))
            .unwrap_or_else(|e| panic!("{what}: insert after recovery: {e}"));
    }
    store
        .close()
        .unwrap_or_else(|e| panic!("{what}: close after recovery: {e}"));
}

/// `index-doctor check` finds nothing wrong with the store in `dir`.
pub fn assert_doctor_clean(dir: &Path, what: &str) {
    let report = megalith::inspect::index::check_store(dir)
        .unwrap_or_else(|e| panic!("{what}: index-doctor could not run: {e}"));
    assert!(
        report.is_clean(),
        "{what}: index-doctor: {:#?}",
        report.problems
    );
}
