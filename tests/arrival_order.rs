//! What a store holds must not depend on the order events arrive in: a
//! mirror reads a relay newest first, an import reads a file oldest first,
//! and both must end with the same store. (Found by `megalith mirror`: a
//! deletion request naming another deletion request made the older one be
//! refused when it arrived second, though NIP-09 says such a request has
//! no effect, and it is kept when it arrives first.)

mod common;

use std::collections::BTreeSet;

use common::Generator;
use megalith::{Event, EventId, EventStore, Filter, Keys};

fn held(events: &[Event], batch: usize) -> BTreeSet<EventId> {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    for chunk in events.chunks(batch) {
        store.insert(chunk).unwrap();
    }
    store
        .query(&[Filter::new()])
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect()
}

#[test]
fn newest_first_and_oldest_first_end_the_same() {
    let mut generator = Generator::new(5, 200);
    let mut events: Vec<Event> = (0..3_000).map(|_| generator.next_event()).collect();
    events.sort_by_key(|e| e.created_at);
    let oldest_first = held(&events, 1);
    let mut reversed = events.clone();
    reversed.reverse();
    let same = |got: BTreeSet<EventId>, how: &str| {
        let (missing, extra) = (
            oldest_first.difference(&got).count(),
            got.difference(&oldest_first).count(),
        );
        assert!(
            missing == 0 && extra == 0,
            "{how}: {missing} missing, {extra} extra"
        );
    };
    same(held(&reversed, 1), "one by one, newest first");
    same(held(&reversed, 100), "in batches, newest first");
    same(held(&events, 3_000), "one batch");
}

#[test]
fn a_deletion_request_naming_a_deletion_request_has_no_effect() {
    let keys = Keys::from_seed(1);
    let note = keys.sign(100, 1, vec![], "note".into());
    let first = keys.sign(
        200,
        5,
        vec![vec!["e".into(), note.id.to_hex()]],
        String::new(),
    );
    let second = keys.sign(
        300,
        5,
        vec![vec!["e".into(), first.id.to_hex()]],
        String::new(),
    );
    for order in [[&note, &first, &second], [&second, &first, &note]] {
        let events: Vec<Event> = order.into_iter().cloned().collect();
        let got = held(&events, 1);
        let want: BTreeSet<EventId> = [first.id, second.id].into();
        assert_eq!(got, want, "the note is deleted, both requests kept");
    }
}
