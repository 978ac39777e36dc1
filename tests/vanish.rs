//! NIP-62 requests to vanish against the brute-force reference: random
//! streams (replaceable, addressable, deletions, duplicates) with requests
//! to vanish mixed in (`ALL_RELAYS`, this store's URL, another relay's),
//! inserted in batches into a store with three shards; every author's
//! events and every random filter agree with the reference after each
//! batch and after a reopen (the removals are in the log and replay
//! repeats them); events re-sent after a request are refused.

mod common;

use common::{Generator, now};
use megalith::event::Keys;
use megalith::reference::{RefOutcome, Reference};
use megalith::{Event, EventStore, Filter, InsertOutcome};

const URL: &str = "wss://relay.example.com";

fn open(dir: &std::path::Path) -> EventStore {
    EventStore::builder(dir)
        .shards(3)
        .relay_urls([format!("{URL}/")])
        .open()
        .unwrap()
}

fn vanish(keys: &Keys, created_at: u64, relay: &str) -> Event {
    keys.sign(
        created_at,
        62,
        vec![vec!["relay".into(), relay.into()]],
        "gone".into(),
    )
}

fn sorted_ids(events: impl IntoIterator<Item = Event>) -> Vec<String> {
    let mut ids: Vec<String> = events.into_iter().map(|e| e.id.to_hex()).collect();
    ids.sort();
    ids
}

fn check(store: &EventStore, reference: &Reference, generator: &mut Generator, what: &str) {
    let now = now();
    for pubkey in generator.pubkeys() {
        let filter = Filter::new().authors([pubkey]);
        let got = sorted_ids(store.query(std::slice::from_ref(&filter)).unwrap());
        let want = sorted_ids(
            reference
                .query(std::slice::from_ref(&filter), now)
                .into_iter()
                .cloned(),
        );
        assert_eq!(got, want, "{what}: the events of {pubkey}");
    }
    for _ in 0..60 {
        let filter = generator.filter();
        let got: Vec<String> = store
            .query(std::slice::from_ref(&filter))
            .unwrap()
            .iter()
            .map(|e| e.id.to_hex())
            .collect();
        let want: Vec<String> = reference
            .query(std::slice::from_ref(&filter), now)
            .iter()
            .map(|e| e.id.to_hex())
            .collect();
        assert_eq!(got, want, "{what}: {filter:?}");
    }
}

#[test]
fn requests_to_vanish_agree_with_the_reference_before_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = Generator::new(62, 12);
    let mut reference = Reference::with_relay_urls(vec![URL.to_string()]);
    let store = open(dir.path());
    let relays = [
        "ALL_RELAYS",
        URL,
        "WSS://RELAY.EXAMPLE.COM/",
        "wss://other.example",
    ];
    let mut honored = 0;
    let mut refused_after = 0;
    for round in 0..8 {
        let mut batch: Vec<Event> = (0..150).map(|_| generator.next_event()).collect();
        // A request to vanish in the middle of the batch, by an author
        // whose events are in it before and after.
        let at = generator.rng.below(batch.len() as u64) as usize;
        let keys = generator.rng.pick(&generator.keys).clone();
        let relay = relays[round % relays.len()];
        let created_at = batch[at].created_at;
        batch.insert(at, vanish(&keys, created_at, relay));
        let mut outcomes = Vec::new();
        for event in &batch {
            outcomes.push(reference.insert(event, now()));
        }
        let got = store.insert(&batch).unwrap();
        for ((event, want), got) in batch.iter().zip(&outcomes).zip(&got) {
            assert_eq!(
                RefOutcome::of(got),
                *want,
                "round {round}: kind {} by {}",
                event.kind,
                event.pubkey
            );
            if event.kind != 62
                && event.pubkey == keys.pubkey()
                && matches!(got, InsertOutcome::Deleted)
            {
                refused_after += 1;
            }
        }
        if relay != "wss://other.example" {
            honored += 1;
        }
        check(
            &store,
            &reference,
            &mut generator,
            &format!("round {round}"),
        );
        // Everything the author made up to the request is gone, in the
        // reference too, except their requests.
        if relay != "wss://other.example" {
            assert!(
                reference.events().all(|e| e.pubkey != keys.pubkey()
                    || e.kind == 62
                    || e.created_at > created_at),
                "round {round}"
            );
        }
    }
    assert!(honored >= 6);
    assert!(
        refused_after > 0,
        "some events came after a request and were refused"
    );
    store.close().unwrap();

    let store = open(dir.path());
    check(&store, &reference, &mut generator, "reopened");
    // Re-sending what vanished is refused; newer events are taken.
    let keys = generator.keys[0].clone();
    let late = vanish(&keys, now(), "ALL_RELAYS");
    assert_eq!(reference.insert(&late, now()), RefOutcome::Stored);
    assert_eq!(
        store.insert(std::slice::from_ref(&late)).unwrap()[0],
        InsertOutcome::Stored
    );
    let old = keys.sign(1_000, 1, vec![], "again".into());
    assert_eq!(
        store.insert(std::slice::from_ref(&old)).unwrap()[0],
        InsertOutcome::Deleted
    );
    // A deletion naming the request has no effect (NIP-62): it stays, and
    // what it removed stays refused.
    let undo = keys.sign(
        now() + 5,
        5,
        vec![vec!["e".into(), late.id.to_hex()]],
        String::new(),
    );
    assert_eq!(store.insert(&[undo]).unwrap()[0], InsertOutcome::Stored);
    assert_eq!(store.insert(&[old]).unwrap()[0], InsertOutcome::Deleted);
    assert_eq!(
        store.query(&[Filter::new().ids([late.id])]).unwrap().len(),
        1,
        "the request to vanish is still stored"
    );
    assert_eq!(
        store
            .query(&[Filter::new().authors([keys.pubkey()])])
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect::<std::collections::BTreeSet<_>>(),
        [5, 62].into_iter().collect(),
        "only the requests (and the deletion naming one) are left"
    );
}
