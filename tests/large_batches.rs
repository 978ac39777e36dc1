//! One insert larger than a log batch can hold (16 MiB) is split over several
//! batches and segments, and every event is stored and readable.

use megalith::{Durability, EventStore, Filter, InsertOutcome, Keys};

#[test]
fn an_insert_larger_than_a_log_batch_is_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path())
        .durability(Durability::Never)
        .segment_size(4 << 20)
        .open()
        .unwrap();
    let keys = Keys::from_seed(3);
    // 400 events of ~60 KB: about 24 MB in one call.
    let events: Vec<_> = (0..400u64)
        .map(|i| {
            keys.sign(
                1_700_000_000 + i,
                1,
                vec![],
                format!("{i:05}{}", "z".repeat(60_000)),
            )
        })
        .collect();
    let outcomes = store.insert_trusted(&events).unwrap();
    assert!(outcomes.iter().all(|o| *o == InsertOutcome::Stored));
    assert!(store.stats().unwrap().log_segments >= 2, "the log rotated");
    store.close().unwrap();

    let store = EventStore::open(dir.path()).unwrap();
    let back = store.query(&[Filter::new().kinds([1])]).unwrap();
    assert_eq!(back.len(), 400);
    for event in &events {
        assert_eq!(store.get(&event.id).unwrap().as_ref(), Some(event));
    }
    store.close().unwrap();
}
