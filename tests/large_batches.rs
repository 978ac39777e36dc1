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

/// A replacement whose event record leaves its batch less room than a
/// remove record needs: the remove must not spill into the next batch, or a
/// crash between the two batches would leave both versions live.
#[test]
fn a_replacement_and_its_remove_record_share_a_batch() {
    use megalith::inspect::log::{
        FRAME_OVERHEAD, RecordType, RemovePayload, SegmentWalk, WalkItem,
    };
    const BATCH: usize = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let open = |dir: &std::path::Path| {
        EventStore::builder(dir)
            .shards(1)
            .durability(Durability::Always)
            .segment_size(64 << 20)
            .open()
            .unwrap()
    };
    let store = open(dir.path());
    let keys = Keys::from_seed(11);
    let v1 = keys.sign(1_700_000_000, 0, vec![], r#"{"name":"one"}"#.into());
    let v2 = keys.sign(1_700_000_001, 0, vec![], r#"{"name":"two"}"#.into());
    assert_eq!(
        store.insert(std::slice::from_ref(&v1)).unwrap()[0],
        InsertOutcome::Stored
    );
    let frame = |e: &megalith::Event| FRAME_OVERHEAD + e.payload_len();
    let note = |i: u64, len: usize| keys.sign(1_600_000_000 + i, 1, vec![], "n".repeat(len));
    // Fill the group's first batch so that after v2's record there is one
    // byte less room than its remove record takes.
    let target = BATCH - frame(&v2) - (FRAME_OVERHEAD + RemovePayload::LEN - 1);
    let base = frame(&note(0, 0));
    let mut group = Vec::new();
    let mut used = 0;
    let mut i = 0;
    while target - used > 2 * (60_000 + base) {
        let n = note(i, 60_000);
        used += frame(&n);
        group.push(n);
        i += 1;
    }
    let rest = target - used;
    for len in [rest / 2 - base, rest - rest / 2 - base] {
        let n = note(i, len);
        used += frame(&n);
        group.push(n);
        i += 1;
    }
    assert_eq!(used, target);
    group.push(v2.clone());
    let outcomes = store.insert(&group).unwrap();
    assert!(matches!(
        outcomes.last(),
        Some(InsertOutcome::Replaced { previous }) if *previous == v1.id
    ));
    let live = dir.path().join("shard-0000/log/00000000000000000001.seg");
    let bytes = std::fs::read(&live).unwrap();
    store.close().unwrap();

    // No batch may begin with a remove record: its event is in the batch.
    let mut batch_ends = Vec::new();
    let mut at_batch_start = true;
    for item in SegmentWalk::new(&bytes, None) {
        if let WalkItem::Record { offset, record } = item {
            assert!(
                !(at_batch_start && record.record_type == RecordType::Remove),
                "the batch at offset {offset} begins with a remove record"
            );
            at_batch_start = record.batch_end;
            if record.batch_end {
                batch_ends.push(offset + record.frame_len());
            }
        }
    }
    // A crash after any batch: never two versions of the profile.
    for &end in &batch_ends {
        let copy = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(copy.path().join("shard-0000/log")).unwrap();
        std::fs::copy(dir.path().join("MANIFEST"), copy.path().join("MANIFEST")).unwrap();
        std::fs::write(
            copy.path().join("shard-0000/log/00000000000000000001.seg"),
            &bytes[..end],
        )
        .unwrap();
        let store = open(copy.path());
        let profiles = store
            .query(&[Filter::new().kinds([0]).authors([keys.pubkey()])])
            .unwrap();
        assert_eq!(
            profiles.len(),
            1,
            "after a crash at offset {end}: {profiles:?}"
        );
        store.close().unwrap();
    }
}
