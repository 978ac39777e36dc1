//! NIP-50 search: the `term_time` index and the leapfrog intersection must
//! answer exactly as the brute-force reference does (every searchable event
//! whose terms hold all of the search's), through replacements, deletions,
//! a reopen and an index rebuild, for generated and for real events; and a
//! store without the index (the default) must answer the same from its
//! other indexes, with the index turned off and on again in between.

mod common;

use common::{Rng, now, real_events};
use megalith::datagen::{GenConfig, Generator};
use megalith::reference::Reference;
use megalith::search::{SEARCHABLE_KINDS, owned_event_terms};
use megalith::{Durability, Event, EventStore, Filter};

/// Random search filters built from the terms of stored events (so most
/// find something), sometimes with a word no event has, an extension, odd
/// case and punctuation, kinds, authors, a time window and a limit.
fn search_filters(events: &[Event], rng: &mut Rng, count: usize) -> Vec<Filter> {
    let searchable: Vec<(&Event, Vec<String>)> = events
        .iter()
        .map(|e| (e, owned_event_terms(e)))
        .filter(|(_, terms)| !terms.is_empty())
        .collect();
    assert!(searchable.len() > 100, "too few searchable events");
    let mut filters = Vec::with_capacity(count);
    for round in 0..count {
        let (event, terms) = rng.pick(&searchable);
        let wanted = 1 + rng.below(3) as usize;
        let mut words: Vec<String> = (0..wanted)
            .map(|_| {
                let term = rng.pick(terms).clone();
                if rng.chance(30) {
                    term.to_uppercase()
                } else {
                    term
                }
            })
            .collect();
        if rng.chance(10) {
            words.push("zzqxnothere".into());
        }
        if rng.chance(10) {
            words.push("sort:hot".into());
        }
        let mut filter = Filter::new().search(words.join(if rng.chance(50) { " " } else { ", " }));
        if rng.chance(25) {
            filter = filter.kinds([*rng.pick(&SEARCHABLE_KINDS), event.kind]);
        }
        if rng.chance(15) {
            filter = filter.authors([event.pubkey]);
        }
        if rng.chance(20) {
            filter = filter.until(event.created_at + rng.below(600));
        }
        if rng.chance(15) {
            filter = filter.since(event.created_at.saturating_sub(rng.below(3_000)));
        }
        filter = match round % 4 {
            0 => filter,
            1 => filter.limit(1),
            2 => filter.limit(20),
            _ => filter.limit(1 + rng.below(300) as usize),
        };
        filters.push(filter);
    }
    filters
}

fn check(store: &EventStore, reference: &Reference, filters: &[Filter], now: u64) -> usize {
    let mut found = 0;
    for (i, filter) in filters.iter().enumerate() {
        let filters = std::slice::from_ref(filter);
        let got = store.query(filters).unwrap();
        let expected: Vec<Event> = reference.query(filters, now).into_iter().cloned().collect();
        assert_eq!(got, expected, "filter {i}: {}", filter.to_json());
        assert_eq!(
            store.count(filters).unwrap(),
            reference.count(filters, now),
            "count {i}: {}",
            filter.to_json()
        );
        found += usize::from(!got.is_empty());
    }
    found
}

#[test]
fn generated_searches_match_the_reference_through_reopen_and_rebuild() {
    let mut generator = Generator::new(GenConfig {
        seed: 33,
        authors: 300,
        ..GenConfig::default()
    });
    let events = generator.batch(6_000, 2);
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let mut reference = Reference::new();
    let store = EventStore::builder(dir.path())
        .shards(2)
        .search(true)
        .durability(Durability::Never)
        .open()
        .unwrap();
    assert!(store.search_index());
    assert_eq!(store.explain(&[Filter::new().search("x")]), ["term_time"]);
    for chunk in events.chunks(400) {
        store.insert(chunk).unwrap();
        for event in chunk {
            reference.insert(event, now);
        }
    }
    let mut rng = Rng::new(8);
    let filters = search_filters(&events, &mut rng, 500);
    let found = check(&store, &reference, &filters, now);
    assert!(found > 350, "only {found} of 500 searches found anything");
    store.close().unwrap();

    // The index is persistent...
    let store = EventStore::open(dir.path()).unwrap();
    check(&store, &reference, &filters[..100], now);
    store.close().unwrap();

    // ...and rebuilt from the log like the others when it is missing.
    let mut removed = 0;
    for shard in std::fs::read_dir(dir.path()).unwrap() {
        let index = shard.unwrap().path().join("index/term_time.idx");
        if index.exists() {
            std::fs::remove_file(index).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 2);
    let store = EventStore::open(dir.path()).unwrap();
    check(&store, &reference, &filters[100..200], now);
    store.close().unwrap();

    // Turned off: the files go, the manifest remembers, answers stay exact.
    let store = EventStore::builder(dir.path())
        .search(false)
        .open()
        .unwrap();
    assert!(!store.search_index());
    assert_eq!(store.explain(&[Filter::new().search("x")]), ["time"]);
    check(&store, &reference, &filters[200..300], now);
    store.close().unwrap();
    let index_files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|shard| {
                let index = shard.as_ref().unwrap().path().join("index");
                // A saved level of the index goes with it.
                index.join("term_time.idx").exists() || index.join("term_time.level").exists()
            })
            .count()
    };
    assert_eq!(index_files(), 0);
    let store = EventStore::open(dir.path()).unwrap();
    assert!(!store.search_index(), "the manifest keeps the choice");
    store.close().unwrap();

    // Turned on again: built from the log while opening.
    let store = EventStore::builder(dir.path()).search(true).open().unwrap();
    assert!(store.search_index());
    assert_eq!(index_files(), 2);
    check(&store, &reference, &filters[300..], now);
    store.close().unwrap();
}

#[test]
fn real_events_are_found_by_their_words() {
    let events: Vec<Event> = real_events().into_iter().map(|(_, e)| e).collect();
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let store = EventStore::builder(dir.path())
        .search(true)
        .durability(Durability::Never)
        .open()
        .unwrap();
    store.insert(&events).unwrap();
    let mut reference = Reference::new();
    for event in &events {
        reference.insert(event, now);
    }
    let mut rng = Rng::new(3);
    let filters = search_filters(&events, &mut rng, 300);
    let found = check(&store, &reference, &filters, now);
    assert!(found > 200, "only {found} of 300 searches found anything");
    store.close().unwrap();
}

#[test]
fn search_terms_are_case_insensitive_and_need_every_word() {
    let keys = megalith::Keys::from_seed(4);
    let a = keys.sign(1_700_000_000, 1, vec![], "Sunset over the Alps".into());
    let b = keys.sign(1_700_000_001, 1, vec![], "sunset at the beach".into());
    let c = keys.sign(
        1_700_000_002,
        34235,
        vec![
            vec!["d".into(), "v".into()],
            vec!["title".into(), "Alps timelapse".into()],
        ],
        String::new(),
    );
    let reaction = keys.sign(1_700_000_003, 7, vec![], "sunset".into());
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    store
        .insert(&[a.clone(), b.clone(), c.clone(), reaction])
        .unwrap();
    let ids = |search: &str| -> Vec<_> {
        store
            .query(&[Filter::new().search(search)])
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(ids("SUNSET"), [b.id, a.id], "kind 7 is not searchable");
    assert_eq!(ids("alps"), [c.id, a.id], "titles are searchable");
    assert_eq!(ids("sunset alps"), [a.id]);
    assert_eq!(ids("sunset moon"), []);
    assert_eq!(ids("sort:hot alps"), [c.id, a.id], "extensions are ignored");
    store.close().unwrap();
}
