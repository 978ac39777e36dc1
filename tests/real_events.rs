//! The 720 real, signed events in ../shared/data/nostrdb-testdata: they
//! verify, store, and come back as the same JSON values; any flipped byte of
//! an id or signature is refused with `invalid:`.

mod common;

use megalith::{EventStore, Filter, InsertOutcome};

#[test]
fn real_events_store_and_come_back_identical() {
    let events = common::real_events();
    assert_eq!(events.len(), 720);
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let batch: Vec<_> = events.iter().map(|(_, e)| e.clone()).collect();
    let outcomes = store.insert(&batch).unwrap();
    for ((json, _), outcome) in events.iter().zip(&outcomes) {
        assert!(
            outcome.accepted() || *outcome == InsertOutcome::Superseded,
            "{outcome:?} for {json}"
        );
    }
    let stats = store.stats().unwrap();
    let by_kind: Vec<(u16, u64)> = stats.events_by_kind.into_iter().collect();
    assert_eq!(by_kind, vec![(0, 504), (1, 114), (3, 1), (6, 2), (7, 96)]);
    store.close().unwrap();

    let store = EventStore::open(dir.path()).unwrap();
    let mut served = 0;
    for (json, event) in &events {
        let Some(stored) = store.get(&event.id).unwrap() else {
            continue;
        };
        served += 1;
        let original: serde_json::Value = serde_json::from_str(json).unwrap();
        let back: serde_json::Value = serde_json::from_str(&stored.to_json()).unwrap();
        assert_eq!(back, original);
    }
    assert_eq!(served, 717);
    let all = store.query(&[Filter::new()]).unwrap();
    assert_eq!(all.len(), 717);
    assert!(
        all.windows(2)
            .all(|w| (w[0].created_at, std::cmp::Reverse(w[0].id))
                > (w[1].created_at, std::cmp::Reverse(w[1].id)))
    );
    store.close().unwrap();
}

#[test]
fn a_flipped_id_or_signature_byte_is_refused() {
    let events = common::real_events();
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    for (_, event) in events.iter().step_by(90) {
        for position in 0..32 {
            let mut bad = event.clone();
            bad.id.0[position] ^= 0x01;
            let outcome = &store.insert(&[bad]).unwrap()[0];
            assert!(outcome.message().starts_with("invalid:"), "{outcome:?}");
        }
        for position in 0..64 {
            let mut bad = event.clone();
            bad.sig.0[position] ^= 0x80;
            let outcome = &store.insert(&[bad]).unwrap()[0];
            assert!(outcome.message().starts_with("invalid:"), "{outcome:?}");
        }
    }
    assert_eq!(
        store.count(&[Filter::new()]).unwrap(),
        0,
        "nothing invalid was stored"
    );
    store.close().unwrap();
}
