//! Author-hash shards: every author's events live in exactly the shard
//! `shard_of` names, any shard count answers every filter like one shard
//! does, the shard count is fixed at creation, and the signature-check pool
//! reaches the same verdicts as checking on the caller's thread.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{Generator, Model};
use megalith::inspect::log::{SegmentWalk, WalkItem, parse_shard_dir_name};
use megalith::{Durability, Event, EventRef, EventStore, InsertOutcome, Keys, Pubkey, ShardId};

fn open(dir: &Path, shards: u32) -> EventStore {
    EventStore::builder(dir)
        .shards(shards)
        .durability(Durability::Never)
        .open()
        .unwrap()
}

/// Stores events from a seeded stream and returns what the model kept.
fn fill(store: &EventStore, seed: u64, count: usize) -> Model {
    let mut generator = Generator::new(seed, 60);
    let mut model = Model::default();
    let now = common::now();
    let events: Vec<Event> = (0..count).map(|_| generator.next_event()).collect();
    for chunk in events.chunks(97) {
        let outcomes = store.insert(chunk).unwrap();
        for (event, outcome) in chunk.iter().zip(&outcomes) {
            let expected = model.insert(event, now);
            assert_eq!(
                common::outcome_kind(outcome),
                expected,
                "{}",
                event.to_json()
            );
        }
    }
    model
}

/// The author of every event record in each shard's log, by shard.
fn authors_on_disk(dir: &Path) -> BTreeMap<ShardId, BTreeSet<Pubkey>> {
    let mut found: BTreeMap<ShardId, BTreeSet<Pubkey>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let Some(shard) = entry.file_name().to_str().and_then(parse_shard_dir_name) else {
            continue;
        };
        let authors = found.entry(shard).or_default();
        for segment in std::fs::read_dir(entry.path().join("log")).unwrap() {
            let path = segment.unwrap().path();
            if path.extension().is_none_or(|e| e != "seg") {
                continue;
            }
            let bytes = std::fs::read(path).unwrap();
            for item in SegmentWalk::new(&bytes, None) {
                match item {
                    WalkItem::Record { record, .. } => {
                        if let Ok(event) = EventRef::parse(record.payload) {
                            authors.insert(event.pubkey());
                        }
                    }
                    WalkItem::Damage { problem, .. } => panic!("damage: {problem:?}"),
                    WalkItem::End { .. } => {}
                }
            }
        }
    }
    found
}

#[test]
fn each_author_lives_in_the_shard_it_hashes_to() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 5);
    assert_eq!(store.shard_count(), 5);
    fill(&store, 11, 3_000);
    let expected: Vec<ShardId> = (0..200u64)
        .map(|i| store.shard_of(&Keys::from_seed(i).pubkey()))
        .collect();
    store.close().unwrap();

    let on_disk = authors_on_disk(dir.path());
    assert_eq!(on_disk.len(), 5, "one directory per shard");
    let reopened = EventStore::open(dir.path()).unwrap();
    let mut seen = BTreeSet::new();
    for (shard, authors) in &on_disk {
        assert!(!authors.is_empty(), "shard {shard} got no author");
        for author in authors {
            assert_eq!(reopened.shard_of(author), *shard);
            assert!(seen.insert(*author), "an author in two shards");
        }
    }
    // The mapping is a property of the store, not of one open.
    let again: Vec<ShardId> = (0..200u64)
        .map(|i| reopened.shard_of(&Keys::from_seed(i).pubkey()))
        .collect();
    assert_eq!(again, expected);
    // 200 random keys over 5 shards: each shard gets a fair part.
    for shard in 0..5 {
        let n = again.iter().filter(|s| s.0 == shard).count();
        assert!(
            (20..=70).contains(&n),
            "shard {shard} got {n} of 200 authors"
        );
    }
    reopened.close().unwrap();
}

#[test]
fn every_shard_count_answers_like_one_shard() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: Vec<EventStore> = [1, 2, 3, 7]
        .iter()
        .zip(&dirs)
        .map(|(&n, dir)| open(dir.path(), n))
        .collect();
    let mut models = stores.iter().map(|s| fill(s, 5, 4_000));
    let model = models.next().unwrap();
    models.for_each(drop);
    let mut generator = Generator::new(5, 60);
    for _ in 0..4_000 {
        generator.next_event();
    }
    let mut non_empty = 0;
    for round in 0..1_500 {
        let filters: Vec<_> = (0..1 + round % 3).map(|_| generator.filter()).collect();
        let expected = stores[0].query(&filters).unwrap();
        let count = stores[0].count(&filters).unwrap();
        if !expected.is_empty() {
            non_empty += 1;
        }
        for store in &stores[1..] {
            assert_eq!(
                store.query(&filters).unwrap(),
                expected,
                "{} shards, filters {}",
                store.shard_count(),
                filters.iter().map(|f| f.to_json()).collect::<String>()
            );
            assert_eq!(store.count(&filters).unwrap(), count);
        }
    }
    assert!(non_empty > 500, "only {non_empty} of 1,500 queries matched");
    assert_eq!(
        stores[3].count(&[megalith::Filter::new()]).unwrap(),
        model.live.len() as u64
    );
}

#[test]
fn the_shard_count_is_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), 3).close().unwrap();
    let refused = EventStore::builder(dir.path())
        .shards(4)
        .open()
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("created with 3 shards, not 4"),
        "{refused}"
    );
    // Without a count, the store opens with the one it has.
    let store = EventStore::open(dir.path()).unwrap();
    assert_eq!(store.shard_count(), 3);
    store.close().unwrap();
    for bad in [0, megalith::MAX_SHARDS + 1] {
        let other = tempfile::tempdir().unwrap();
        let error = EventStore::builder(other.path())
            .shards(bad)
            .open()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("shards {bad} is outside")),
            "{error}"
        );
        assert!(
            std::fs::read_dir(other.path()).unwrap().next().is_none(),
            "a refused open creates nothing"
        );
    }
}

#[test]
fn the_signature_pool_agrees_with_the_calling_thread() {
    let keys: Vec<Keys> = (0..40).map(|i| Keys::from_seed(900 + i)).collect();
    let mut events: Vec<Event> = (0..1_000u64)
        .map(|i| keys[(i % 40) as usize].sign(1_700_000_000 + i, 1, vec![], format!("note {i}")))
        .collect();
    // Damage some signatures, some ids, and both in one event.
    for i in (3..1_000).step_by(37) {
        events[i].sig.0[i % 64] ^= 0x40;
    }
    for i in (5..1_000).step_by(91) {
        events[i].content.push('!');
    }
    let mut verdicts = Vec::new();
    for threads in [0, 1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::builder(dir.path())
            .shards(2)
            .verify_threads(threads)
            .durability(Durability::Never)
            .open()
            .unwrap();
        let outcomes = store.insert(&events).unwrap();
        let reasons: Vec<Option<&'static str>> = outcomes
            .iter()
            .map(|o| match o {
                InsertOutcome::Invalid(r) => Some(r.code),
                InsertOutcome::Stored => None,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        for (event, reason) in events.iter().zip(&reasons) {
            let expected = match event.verify() {
                Ok(()) => None,
                Err(_) if event.verify_id().is_err() => Some("bad-id"),
                Err(_) => Some("bad-signature"),
            };
            assert_eq!(*reason, expected, "{threads} threads");
        }
        let stored = reasons.iter().filter(|r| r.is_none()).count() as u64;
        assert_eq!(store.count(&[megalith::Filter::new()]).unwrap(), stored);
        verdicts.push(reasons);
        store.close().unwrap();
    }
    assert!(verdicts.windows(2).all(|w| w[0] == w[1]));
}
