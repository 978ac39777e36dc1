//! `backup_store` beside a writer that keeps inserting and checkpointing:
//! every copy opens without rebuilding an index or the analytics, passes
//! the index checker,
//! and holds exactly what the store's change feed says the store held at
//! the position the copy names.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use common::Generator;
use megalith::{ChangeOp, ChangePosition, ChangeReader, EventId, EventStore, Filter, backup_store};

/// What the feed of the store in `dir` says it held at `position`.
fn held_at(dir: &std::path::Path, position: &ChangePosition) -> HashSet<EventId> {
    let mut reader = ChangeReader::open(dir).unwrap();
    let mut held = HashSet::new();
    let mut at = ChangePosition::start(reader.shard_count());
    loop {
        let page = reader.changes_until(&at, position, 500).unwrap();
        let Some(last) = page.last() else {
            return held;
        };
        at = last.position.clone();
        for change in page {
            match change.op {
                ChangeOp::Stored => held.insert(change.event.id),
                ChangeOp::Removed => held.remove(&change.event.id),
            };
        }
    }
}

#[test]
fn copies_taken_while_a_writer_checkpoints_are_each_the_store_at_one_point() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let store = EventStore::builder(&data)
        .shards(2)
        .segment_size(256 << 10)
        .analytics(true)
        .open()
        .unwrap();
    let mut generator = Generator::new(44, 30);
    let batch: Vec<_> = (0..300).map(|_| generator.next_event()).collect();
    store.insert(&batch).unwrap();
    store.checkpoint().unwrap();

    let done = AtomicBool::new(false);
    let mut copies = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..150 {
                let batch: Vec<_> = (0..40).map(|_| generator.next_event()).collect();
                store.insert(&batch).unwrap();
                // Checkpoints as often as possible: each moves the
                // durable metas the copies must not tear.
                if round % 2 == 0 {
                    store.checkpoint().unwrap();
                }
            }
            done.store(true, Ordering::Release);
        });
        let mut n = 0;
        while !done.load(Ordering::Acquire) || n < 3 {
            let copy = dir.path().join(format!("copy-{n}"));
            let report = backup_store(&data, &copy, n % 2 == 1).unwrap();
            assert!(report.live);
            copies.push((copy, report));
            n += 1;
        }
    });
    store.close().unwrap();
    assert!(
        copies.iter().any(|(_, r)| r.segments_linked > 0),
        "sealed segments were hard-linked"
    );
    for (copy, report) in &copies {
        let what = format!("{} (as of {})", copy.display(), report.position);
        // Checked as copied, before any open (no LOCK file yet)...
        let check = megalith::inspect::index::check_store(copy).unwrap();
        assert!(check.is_clean(), "{what}: {check:?}");
        let opened = EventStore::open(copy).unwrap();
        let recovery = opened.recovery_report().clone();
        assert!(recovery.rebuilt_indexes.is_empty(), "{what}: {recovery:?}");
        let ids: HashSet<EventId> = opened
            .query(&[Filter::new()])
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        opened.close().unwrap();
        assert!(
            ids == held_at(&data, &report.position),
            "{what}: not the store at its position"
        );
        // ...and after.
        let check = megalith::inspect::index::check_store(copy).unwrap();
        assert!(check.is_clean(), "{what}: {check:?}");
    }
    let retries: u32 = copies.iter().map(|(_, r)| r.index_retries).sum();
    eprintln!(
        "{} copies, {retries} index copies started again",
        copies.len()
    );
}

#[test]
fn a_backup_refuses_a_directory_in_use_and_a_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let store = EventStore::open(&data).unwrap();
    store.close().unwrap();
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("x"), b"x").unwrap();
    let error = backup_store(&data, &busy, false).unwrap_err().to_string();
    assert!(error.contains("is not empty"), "{error}");
    let error = backup_store(&dir.path().join("none"), &dir.path().join("c"), false)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a Megalith store"), "{error}");
    // With nobody beside: a copy of the closed store.
    let copy = dir.path().join("copy");
    let report = backup_store(&data, &copy, false).unwrap();
    assert!(!report.live);
    EventStore::open(&copy).unwrap().close().unwrap();
}
