//! Readers run in parallel with writers and never see half of an insert
//! batch; concurrent writers' events are all acknowledged and all stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use megalith::{Durability, EventStore, Filter, InsertOutcome, Keys};

const WRITERS: u64 = 3;
const BATCHES: u64 = 40;
const BATCH: u64 = 50;

#[test]
fn the_store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<EventStore>();
}

#[test]
fn readers_see_whole_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EventStore::builder(dir.path())
            .durability(Durability::Batch(Duration::from_millis(5)))
            .checkpoint_dirty_nodes(64) // checkpoints run while readers read
            .open()
            .unwrap(),
    );
    let done = Arc::new(AtomicBool::new(false));
    // Every batch tags all its events with one batch label; a reader counting
    // a label must see 0 or all of the batch's events.
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while !done.load(Ordering::Acquire) || checks == 0 {
                    for writer in 0..WRITERS {
                        let label = format!("w{writer}-b{}", (checks + r) % BATCHES);
                        let n = store
                            .count(&[Filter::new().tag('t', [label.clone()])])
                            .unwrap();
                        assert!(
                            n == 0 || n == BATCH,
                            "reader saw {n} of {BATCH} events of batch {label}"
                        );
                        let events = store
                            .query(&[Filter::new().tag('t', [label.clone()]).limit(1000)])
                            .unwrap();
                        assert!(
                            events.len() as u64 == 0 || events.len() as u64 == BATCH,
                            "{label}: {}",
                            events.len()
                        );
                        checks += 1;
                    }
                }
                checks
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let keys = Keys::from_seed(500 + w);
                for b in 0..BATCHES {
                    let label = format!("w{w}-b{b}");
                    let batch: Vec<_> = (0..BATCH)
                        .map(|i| {
                            keys.sign(
                                1_700_000_000 + b * BATCH + i,
                                1,
                                vec![vec!["t".into(), label.clone()]],
                                format!("{i}"),
                            )
                        })
                        .collect();
                    let outcomes = store.insert(&batch).unwrap();
                    assert!(
                        outcomes.iter().all(|o| *o == InsertOutcome::Stored),
                        "{outcomes:?}"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(
        store.count(&[Filter::new()]).unwrap(),
        WRITERS * BATCHES * BATCH
    );
    Arc::try_unwrap(store).unwrap().close().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    assert_eq!(
        store.count(&[Filter::new().kinds([1])]).unwrap(),
        WRITERS * BATCHES * BATCH
    );
    store.close().unwrap();
}
