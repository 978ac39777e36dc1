//! The in-memory levels of the random-order indexes, spilled to run files
//! at a clean close instead of merged into the trees (docs/recovery.md,
//! "Spilled runs"): the next open takes them back and replays nothing; one
//! that no longer fits its tree (damaged, from before a merge, or chained
//! after one that does not) is removed and its records are replayed from
//! the log. Every answer agrees with the tests'
//! model throughout: across reopens, after a crash on top of a taken-back
//! level, and with a damaged or stale file.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Generator, Model, now};
use megalith::storage::{Damage, SimStorage};
use megalith::{Durability, EventStore, InsertOutcome};

const SHARDS: u32 = 2;

/// On simulated storage (for a crash), or with `None` on the real file
/// system (for files put back by hand, which the simulator would not see).
fn open(sim: Option<&SimStorage>, dir: &Path) -> EventStore {
    let mut builder = EventStore::builder(dir);
    if let Some(sim) = sim {
        builder = builder.storage(Arc::new(sim.clone()));
    }
    builder
        .shards(SHARDS)
        .durability(Durability::Always)
        // No background checkpoint merges anything meanwhile.
        .checkpoint_interval(Duration::from_secs(24 * 3600))
        .open()
        .unwrap()
}

fn send(store: &EventStore, model: &mut Model, generator: &mut Generator, count: usize) {
    let now = now();
    let events: Vec<_> = (0..count).map(|_| generator.next_event()).collect();
    for chunk in events.chunks(50) {
        store.insert(chunk).unwrap();
        for event in chunk {
            model.insert(event, now);
        }
    }
}

/// Every answer (events and counts) as the model gives it, and every held
/// event, sent again, a duplicate.
fn agree(store: &EventStore, model: &Model, generator: &mut Generator, what: &str) {
    let held: Vec<_> = model.live.values().cloned().collect();
    for (event, outcome) in held.iter().zip(store.insert(&held).unwrap()) {
        assert_eq!(
            outcome,
            InsertOutcome::Duplicate,
            "{what}: {} sent again",
            event.id
        );
    }
    assert_eq!(
        store.stats().unwrap().events,
        model.live.len() as u64,
        "{what}: events held"
    );
    for i in 0..300 {
        let filters: Vec<_> = (0..2).map(|_| generator.filter()).collect();
        let got = store.query(&filters).unwrap();
        let want = model.query(&filters);
        assert!(
            got == want,
            "{what}: query {i} {filters:?}: {} events, the model {}",
            got.len(),
            want.len()
        );
        assert_eq!(
            store.count(&filters).unwrap(),
            model.count(&filters),
            "{what}"
        );
    }
}

fn level_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for shard in 0..SHARDS {
        let index = dir.join(format!("shard-{shard:04}/index"));
        for entry in std::fs::read_dir(&index).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "run") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn saved_levels_answer_as_a_replay_would() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let mut generator = Generator::new(21, 40);
    let mut model = Model::default();

    // A clean close saves the levels; the next open takes them all back
    // and replays nothing.
    let store = open(Some(&sim), dir.path());
    send(&store, &mut model, &mut generator, 3_000);
    agree(&store, &model, &mut generator, "before the first close");
    store.close().unwrap();
    let saved = level_files(dir.path());
    // primary, author_time, author_kind_time, tag_time, address per shard.
    assert_eq!(saved.len(), 5 * SHARDS as usize, "{saved:?}");
    let store = open(Some(&sim), dir.path());
    let report = store.recovery_report();
    assert_eq!(report.levels_loaded, saved.len() as u32, "{report:?}");
    assert_eq!(report.replayed_records, 0, "{report:?}");
    agree(&store, &model, &mut generator, "levels taken back");

    // Writes on top of a taken-back level, then a crash: the files still
    // fit their trees, and replay goes on from what they cover.
    send(&store, &mut model, &mut generator, 2_000);
    sim.power_off_at(sim.ops());
    drop(store);
    sim.crash(Damage::DropUnsynced, 1).unwrap();
    let store = open(Some(&sim), dir.path());
    let report = store.recovery_report();
    assert!(report.unclean_shutdown);
    assert_eq!(report.levels_loaded, saved.len() as u32, "{report:?}");
    assert!(report.replayed_records > 0, "{report:?}");
    agree(
        &store,
        &model,
        &mut generator,
        "after a crash over taken-back levels",
    );
    store.close().unwrap();

    // A small batch after that spills one more, much smaller run per
    // index at close, chained after the others (too small to be merged
    // with them).
    let before = level_files(dir.path()).len();
    let store = open(Some(&sim), dir.path());
    send(&store, &mut model, &mut generator, 100);
    store.close().unwrap();
    let runs = level_files(dir.path());
    assert_eq!(runs.len(), before + saved.len(), "{runs:?}");

    // A damaged file is not taken: it is removed, and so are the runs
    // chained after it (the chain is broken there); their records come
    // from the log. The first file is the oldest run of its index.
    let damaged = &runs[0];
    let index_of = |p: &std::path::PathBuf| {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let kind = name.split('.').next().unwrap().to_string();
        (p.parent().unwrap().to_path_buf(), kind)
    };
    let chain = runs
        .iter()
        .filter(|p| index_of(p) == index_of(damaged))
        .count();
    assert!(chain >= 2, "{runs:?}");
    let mut bytes = std::fs::read(damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(damaged, &bytes).unwrap();
    let store = open(Some(&sim), dir.path());
    let report = store.recovery_report();
    assert_eq!(
        report.levels_loaded,
        (runs.len() - chain) as u32,
        "{report:?}"
    );
    assert!(report.replayed_records > 0, "{report:?}");
    agree(&store, &model, &mut generator, "one damaged run file");
    let stale: Vec<(std::path::PathBuf, Vec<u8>)> = level_files(dir.path())
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();

    // An explicit checkpoint merges the levels; deletions and
    // replacements after it are in the trees' next checkpoint. Levels
    // saved before it, put back, would bring back what those removed:
    // they no longer fit the trees and are removed unread.
    store.checkpoint().unwrap();
    send(&store, &mut model, &mut generator, 2_000);
    store.checkpoint().unwrap();
    store.close().unwrap();
    assert!(
        level_files(dir.path()).is_empty(),
        "nothing was staged at close"
    );
    for (path, bytes) in &stale {
        std::fs::write(path, bytes).unwrap();
    }
    // And a run file a crash left half-written: removed too.
    let half = dir
        .path()
        .join("shard-0000/index/tag_time.00000000000000000007.run.tmp");
    std::fs::write(&half, b"MGLEVEL2 cut short").unwrap();
    let store = open(None, dir.path());
    let report = store.recovery_report();
    assert_eq!(report.levels_loaded, 0, "{report:?}");
    assert!(level_files(dir.path()).is_empty());
    assert!(!half.exists(), "a half-written run file is removed");
    agree(&store, &model, &mut generator, "stale level files");
    store.close().unwrap();
}
