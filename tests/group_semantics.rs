//! Edge cases of NIP-01/NIP-09 write semantics, each checked both as one
//! group commit and as one-by-one inserts, which must agree.

use megalith::{Event, EventStore, Filter, InsertOutcome, Keys};

const T: u64 = 1_700_000_000;

/// Outcomes of `events` inserted in one call, and one call each, in fresh stores.
fn both_ways(setup: &[Event], events: &[Event]) -> (Vec<InsertOutcome>, Vec<InsertOutcome>) {
    let run = |together: bool| {
        let dir = tempfile::tempdir().unwrap();
        let store = EventStore::open(dir.path()).unwrap();
        for event in setup {
            assert!(store.insert(std::slice::from_ref(event)).unwrap()[0].accepted());
        }
        let outcomes = if together {
            store.insert(events).unwrap()
        } else {
            events
                .iter()
                .map(|e| store.insert(std::slice::from_ref(e)).unwrap().remove(0))
                .collect()
        };
        store.close().unwrap();
        outcomes
    };
    (run(true), run(false))
}

#[test]
fn an_event_deleted_earlier_in_the_group_is_refused_as_deleted() {
    let keys = Keys::from_seed(8);
    let note = keys.sign(T, 1, vec![], "n".into());
    let deletion = keys.sign(
        T + 1,
        5,
        vec![vec!["e".into(), note.id.to_hex()]],
        String::new(),
    );
    let (together, one_by_one) = both_ways(std::slice::from_ref(&note), &[deletion, note.clone()]);
    assert_eq!(together, one_by_one);
    assert_eq!(together[1], InsertOutcome::Deleted);
}

#[test]
fn a_version_replaced_earlier_in_the_group_is_refused_as_superseded() {
    let keys = Keys::from_seed(9);
    let old = keys.sign(T, 0, vec![], "{\"name\":\"old\"}".into());
    let new = keys.sign(T + 1, 0, vec![], "{\"name\":\"new\"}".into());
    let (together, one_by_one) = both_ways(std::slice::from_ref(&old), &[new.clone(), old.clone()]);
    assert_eq!(together, one_by_one);
    assert_eq!(
        together,
        vec![
            InsertOutcome::Replaced { previous: old.id },
            InsertOutcome::Superseded
        ]
    );
}

#[test]
fn an_a_tag_names_an_address_only_in_canonical_form() {
    let keys = Keys::from_seed(7);
    let pubkey = keys.pubkey().to_hex();
    let article = keys.sign(T, 30023, vec![vec!["d".into(), "x".into()]], "hi".into());
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    store.insert(std::slice::from_ref(&article)).unwrap();
    // `030023` is not how the address is written: it deletes nothing...
    let odd = keys.sign(
        T + 10,
        5,
        vec![vec!["a".into(), format!("030023:{pubkey}:x")]],
        String::new(),
    );
    store.insert(&[odd]).unwrap();
    assert!(store.get(&article.id).unwrap().is_some());
    // ...the canonical form deletes, and a re-sent copy is refused.
    let deletion = keys.sign(
        T + 11,
        5,
        vec![vec!["a".into(), format!("30023:{pubkey}:x")]],
        String::new(),
    );
    store.insert(&[deletion]).unwrap();
    assert!(store.get(&article.id).unwrap().is_none());
    assert_eq!(store.insert(&[article]).unwrap()[0], InsertOutcome::Deleted);
    assert_eq!(store.count(&[Filter::new().kinds([30023])]).unwrap(), 0);
    store.close().unwrap();
}
