//! Filters naming many authors (follow feeds) first try a newest-first scan
//! of their kinds with a budget per author, and fall back to one cursor per
//! author when it runs out. Both ways must answer exactly as the
//! brute-force reference does, over every mix of author count, kinds,
//! limits and time bounds, on several shards.

mod common;

use common::{Generator, Rng, now};
use megalith::reference::Reference;
use megalith::{Durability, EventStore, Filter};

#[test]
fn follow_feeds_match_the_reference_whichever_way_they_run() {
    follow_feeds_match_the_reference(200, 32, 170);
}

/// Followed authors who wrote few of the events: the scan skips most
/// entries by their author hash and often runs out of skips, and the
/// per-author cursors answer.
#[test]
fn follow_feeds_of_rare_authors_match_the_reference() {
    follow_feeds_match_the_reference(1_500, 32, 40);
}

/// 400 follow feeds of `fewest..fewest + spread` of the `authors` who
/// wrote 8,000 events.
fn follow_feeds_match_the_reference(authors: usize, fewest: usize, spread: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path())
        .shards(2)
        .durability(Durability::Never)
        .open()
        .unwrap();
    let mut generator = Generator::new(17, authors);
    let mut reference = Reference::new();
    let now = now();
    for _ in 0..8 {
        let batch: Vec<_> = (0..1_000).map(|_| generator.next_event()).collect();
        store.insert(&batch).unwrap();
        for event in &batch {
            reference.insert(event, now);
        }
    }
    let pubkeys = generator.pubkeys();
    let mut rng = Rng::new(5);
    let mut non_empty = 0;
    for round in 0..400 {
        let wanted = fewest + rng.below(spread) as usize;
        let mut authors = pubkeys.clone();
        for i in 0..authors.len() {
            let j = i + rng.below((authors.len() - i) as u64) as usize;
            authors.swap(i, j);
        }
        authors.truncate(wanted);
        let mut filter = Filter::new().authors(authors).limit(match round % 4 {
            0 => 1,
            1 => 10,
            2 => 100,
            _ => 1 + rng.below(400) as usize,
        });
        filter = match round % 3 {
            0 => filter.kinds([1]),
            1 => filter.kinds([1, 7, 30023]),
            _ => filter,
        };
        if rng.chance(30) {
            filter = filter.until(common::BASE_TIME + rng.below(3000));
        }
        if rng.chance(20) {
            filter = filter.since(common::BASE_TIME + rng.below(3000));
        }
        let got = store.query(std::slice::from_ref(&filter)).unwrap();
        let expected: Vec<_> = reference
            .query(std::slice::from_ref(&filter), now)
            .into_iter()
            .cloned()
            .collect();
        assert_eq!(got, expected, "round {round}: {}", filter.to_json());
        // Again with the lock let go after every step (as if a writer
        // always waited): every cursor is sought again from its head,
        // including heads that only mark where a run of skipped entries
        // ended.
        if round % 2 == 0 {
            let interleaved = store
                .query_interleaved(std::slice::from_ref(&filter), || {})
                .unwrap();
            assert_eq!(
                interleaved,
                expected,
                "round {round}, interleaved: {}",
                filter.to_json()
            );
        }
        if !got.is_empty() {
            non_empty += 1;
        }
    }
    assert!(
        non_empty > 250,
        "only {non_empty} of 400 feeds found anything"
    );
    store.close().unwrap();
}
