//! Two multi-filter queries that name two shards in opposite orders, with
//! writers busy on both shards, must never deadlock: shard read locks are
//! fair (a queued writer holds back new readers), so locks taken in the
//! order the filters name the shards could leave each query holding one
//! shard and waiting forever for the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use megalith::{Durability, EventStore, Filter, Keys, ShardId};

/// Keys whose events live in shard `shard` of a two-shard store.
fn key_in(store: &EventStore, shard: u32, from_seed: u64) -> Keys {
    (from_seed..)
        .map(Keys::from_seed)
        .find(|k| store.shard_of(&k.pubkey()) == ShardId(shard))
        .unwrap()
}

#[test]
fn queries_naming_shards_in_opposite_orders_never_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EventStore::builder(dir.path())
            .shards(2)
            .durability(Durability::Never)
            .open()
            .unwrap(),
    );
    let keys = [key_in(&store, 0, 1), key_in(&store, 1, 1000)];
    let filters = |k: &Keys| Filter::new().authors([k.pubkey()]).limit(5);
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for order in [[0usize, 1], [1, 0]] {
        let (store, stop, queries) = (store.clone(), stop.clone(), queries.clone());
        let f = [filters(&keys[order[0]]), filters(&keys[order[1]])];
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let found = store.query(&f).unwrap();
                assert!(found.len() <= 10);
                queries.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for (shard, k) in keys.iter().enumerate() {
        let (store, stop, k) = (store.clone(), stop.clone(), k.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let note = k.sign(
                    1_700_000_000 + i,
                    1,
                    vec![],
                    format!("shard {shard} note {i}"),
                );
                store.insert(&[note]).unwrap();
                i += 1;
            }
        }));
    }
    // Run for a while; a deadlock leaves threads that never finish.
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for thread in threads {
            thread.join().unwrap();
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("readers and writers did not finish within 60 s of being told to: a deadlock");
    assert!(queries.load(Ordering::Relaxed) > 0);
}
