//! 20,000+ generated events through the store and through a brute-force
//! NIP-01 model; 10,000 random filters must give the same events in the same
//! order, before and after a close and reopen.

mod common;

use std::time::Duration;

use common::{Generator, Model, outcome_kind};
use megalith::{Durability, EventStore, Filter};

const EVENTS: usize = 22_000;
const FILTERS: usize = 10_000;

fn check_filters(store: &EventStore, model: &Model, generator: &mut Generator, round: &str) {
    let mut non_empty = 0;
    for n in 0..FILTERS {
        // Mostly one filter, sometimes a union of several.
        let filters: Vec<Filter> = (0..if n % 7 == 0 { 3 } else { 1 })
            .map(|_| generator.filter())
            .collect();
        let expected = model.query(&filters);
        let got = store.query(&filters).unwrap();
        if got != expected {
            let ids = |events: &[megalith::Event]| {
                events
                    .iter()
                    .map(|e| (e.created_at, e.id.to_hex()[..8].to_string()))
                    .collect::<Vec<_>>()
            };
            panic!(
                "{round}: filter #{n} {} gave {} events, the model {}:\n got {:?}\nwant {:?}",
                filters
                    .iter()
                    .map(Filter::to_json)
                    .collect::<Vec<_>>()
                    .join(" | "),
                got.len(),
                expected.len(),
                ids(&got),
                ids(&expected)
            );
        }
        if !expected.is_empty() {
            non_empty += 1;
        }
        if n % 10 == 0 {
            assert_eq!(
                store.count(&filters).unwrap(),
                model.count(&filters),
                "{round}: count of filter #{n}"
            );
        }
    }
    // The comparison means little if almost every answer is empty.
    assert!(
        non_empty > FILTERS / 3,
        "{round}: only {non_empty} of {FILTERS} filters matched anything"
    );
}

#[test]
fn random_filters_match_a_brute_force_model_before_and_after_reopen() {
    // A level merged into the trees a few times per shard when full:
    // answers come from staged entries and trees at once (the 200 ms
    // checkpoints write the time-ordered trees and leave the level).
    random_filters_match(16_384);
}

#[test]
fn random_filters_match_with_the_in_memory_level_off() {
    random_filters_match(0);
}

fn random_filters_match(level_entries: usize) {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        EventStore::builder(dir.path())
            .shards(3) // authors spread over shards; scattered queries merge
            .durability(Durability::Never)
            .segment_size(1 << 20) // many segments: rotation is exercised
            .checkpoint_dirty_nodes(512) // and background checkpoints
            .checkpoint_interval(Duration::from_millis(200))
            .level_entries(level_entries)
            .open()
            .unwrap()
    };
    let store = open();
    let mut generator = Generator::new(42, 150);
    let mut model = Model::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut produced = 0;
    let mut tally = std::collections::BTreeMap::new();
    while produced < EVENTS {
        let size = 1 + generator.rng.below(300) as usize;
        let batch: Vec<_> = (0..size).map(|_| generator.next_event()).collect();
        produced += batch.len();
        let outcomes = store.insert(&batch).unwrap();
        for (event, outcome) in batch.iter().zip(&outcomes) {
            let expected = model.insert(event, now);
            assert_eq!(
                outcome_kind(outcome),
                expected,
                "event {} kind {}",
                event.id,
                event.kind
            );
            *tally.entry(format!("{expected:?}")).or_insert(0) += 1;
        }
    }
    // Every interesting path was taken, many times.
    for outcome in [
        "Stored",
        "Replaced",
        "Duplicate",
        "Superseded",
        "Deleted",
        "Ephemeral",
        "Invalid",
    ] {
        assert!(
            tally.get(outcome).copied().unwrap_or(0) >= 20,
            "too few {outcome}: {tally:?}"
        );
    }
    check_filters(&store, &model, &mut generator, "before reopen");
    store.close().unwrap();

    let store = open();
    let report = store.recovery_report().clone();
    assert!(!report.unclean_shutdown);
    assert_eq!(
        report.replayed_records, 0,
        "a clean close leaves nothing to replay"
    );
    assert!(report.rebuilt_indexes.is_empty());
    check_filters(&store, &model, &mut generator, "after reopen");
    // Stored events come back byte-for-byte as JSON.
    for event in model.live.values().take(500) {
        assert_eq!(store.get(&event.id).unwrap().as_ref(), Some(event));
    }
    store.close().unwrap();
}
