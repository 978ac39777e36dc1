//! The change feed read by another reader of the store's files
//! (`ChangeReader`): beside a writer that keeps inserting, with none, and
//! only as far as the writer has synced; a torn tail left by a crash is
//! not read, damage is refused.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Generator, stored_ids};
use megalith::{ChangeOp, ChangePosition, ChangeReader, Durability, EventId, EventStore};

fn builder(dir: &std::path::Path) -> megalith::EventStoreBuilder {
    EventStore::builder(dir).shards(3).segment_size(64 << 10)
}

/// (shard, op, id, the shard's part of the position after it) of every
/// change, for comparing two readings (pages interleave shards in other
/// ways, so whole positions differ between them).
type Line = (u32, ChangeOp, EventId, String);

fn lines(changes: Vec<megalith::StoreChange>) -> Vec<Line> {
    changes
        .into_iter()
        .map(|c| {
            let text = c.position.to_string();
            let part = text
                .trim_start_matches("c1:")
                .split(',')
                .nth(c.shard.0 as usize)
                .unwrap()
                .to_string();
            (c.shard.0, c.op, c.event.id, part)
        })
        .collect()
}

/// The changes of each shard, in order.
fn by_shard(lines: &[Line]) -> HashMap<u32, Vec<Line>> {
    let mut shards: HashMap<u32, Vec<Line>> = HashMap::new();
    for line in lines {
        shards.entry(line.0).or_default().push(line.clone());
    }
    shards
}

/// Everything `reader` has after `at`, in pages of `page`.
fn drain(reader: &mut ChangeReader, at: &mut ChangePosition, page: usize) -> Vec<Line> {
    let mut out = Vec::new();
    loop {
        let changes = reader.changes(at, page).unwrap();
        assert!(changes.len() <= page);
        let Some(last) = changes.last() else {
            return out;
        };
        *at = last.position.clone();
        out.extend(lines(changes));
    }
}

#[test]
fn a_reader_beside_a_writer_gets_the_stores_own_feed_while_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let store = builder(dir.path()).open().unwrap();
    let mut reader = ChangeReader::open(dir.path()).unwrap();
    assert_eq!(reader.shard_count(), 3);
    let mut at = ChangePosition::start(3);
    let mut seen = Vec::new();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut generator = Generator::new(31, 25);
            for _ in 0..60 {
                let size = 1 + generator.rng.below(120) as usize;
                let batch: Vec<_> = (0..size).map(|_| generator.next_event()).collect();
                store.insert(&batch).unwrap();
            }
            done.store(true, Ordering::Release);
        });
        // Reads while the writer writes (segments of 64 KiB rotate under it).
        let mut rounds = 0;
        while !done.load(Ordering::Acquire) {
            seen.extend(drain(&mut reader, &mut at, 1 + rounds % 40));
            rounds += 1;
        }
    });
    seen.extend(drain(&mut reader, &mut at, 500));
    assert!(reader.waiting().is_empty());
    // Exactly the writer's own feed: same changes, order and positions.
    let own = lines(
        store
            .changes(&ChangePosition::start(3), usize::MAX)
            .unwrap(),
    );
    assert!(own.iter().any(|l| l.1 == ChangeOp::Removed));
    assert_eq!(seen.len(), own.len());
    assert!(
        by_shard(&seen) == by_shard(&own),
        "not the store's own feed"
    );
    // A replica built from it holds what the store holds.
    let mut replica: HashMap<EventId, ()> = HashMap::new();
    for (_, op, id, _) in &seen {
        match op {
            ChangeOp::Stored => assert!(replica.insert(*id, ()).is_none(), "stored twice: {id}"),
            ChangeOp::Removed => assert!(replica.remove(id).is_some(), "removed unseen: {id}"),
        }
    }
    let mut ids: Vec<EventId> = replica.into_keys().collect();
    ids.sort();
    assert_eq!(ids, stored_ids(&store));
    store.close().unwrap();
    // With the store closed (nobody beside), the same from the start.
    let mut again = ChangePosition::start(3);
    assert_eq!(drain(&mut reader, &mut again, 97).len(), own.len());
    assert_eq!(again, at);
}

#[test]
fn beside_a_writer_the_reader_reads_only_what_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let store = builder(dir.path())
        .durability(Durability::Never)
        .open()
        .unwrap();
    let mut generator = Generator::new(5, 10);
    let batch: Vec<_> = (0..40).map(|_| generator.next_event()).collect();
    store.insert(&batch).unwrap();
    let mut reader = ChangeReader::open(dir.path()).unwrap();
    let mut at = ChangePosition::start(3);
    // Written, visible to the writer's own queries, but not synced: a
    // power loss could take it, so the reader beside does not have it.
    assert_eq!(store.changes(&at, 100).unwrap().len(), 40);
    assert_eq!(drain(&mut reader, &mut at, 100), Vec::new());
    store.checkpoint().unwrap();
    assert_eq!(drain(&mut reader, &mut at, 100).len(), 40);
    store.close().unwrap();
}

#[test]
fn with_no_writer_a_torn_tail_is_not_read_and_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = builder(dir.path()).shards(1).open().unwrap();
    let mut generator = Generator::new(9, 5);
    for _ in 0..4 {
        let batch: Vec<_> = (0..10).map(|_| generator.next_event()).collect();
        store.insert(&batch).unwrap();
    }
    let own = lines(
        store
            .changes(&ChangePosition::start(1), usize::MAX)
            .unwrap(),
    );
    assert!(own.len() > 20);
    store.close().unwrap();
    let mut reader = ChangeReader::open(dir.path()).unwrap();
    let mut at = ChangePosition::start(1);
    let all = drain(&mut reader, &mut at, 7);
    assert!(all == own, "not the store's own feed");

    // A crash's torn tail: the start of a batch that never finished (a
    // copy of the first frames of the log, without their batch end, is
    // not whole).
    let log = dir.path().join("shard-0000/log");
    let segment = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = bytes.len();
    bytes.extend_from_slice(&[0x5a; 300]);
    std::fs::write(&segment, &bytes).unwrap();
    let mut from_start = ChangePosition::start(1);
    assert!(
        drain(&mut reader, &mut from_start, 1000) == all,
        "a torn tail changed the feed"
    );

    // Damage: a byte flipped in a record that later whole batches prove
    // was synced is refused, never skipped.
    bytes.truncate(end);
    bytes[200] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let mut reader = ChangeReader::open(dir.path()).unwrap();
    let error = reader
        .changes(&ChangePosition::start(1), 1000)
        .unwrap_err()
        .to_string();
    assert!(error.contains("damaged"), "{error}");

    // Not a store.
    let error = ChangeReader::open(dir.path().join("shard-0000"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a Megalith store"), "{error}");
}
