//! The crate's brute-force reference (`megalith::reference`, which
//! `batchtest` trusts) against the tests' own model, written separately:
//! the two must reach the same verdict for every event and the same answer
//! for every filter.

mod common;

use common::{Generator, Model, ModelOutcome, now};
use megalith::reference::{RefOutcome, Reference};

fn same(a: RefOutcome, b: ModelOutcome) -> bool {
    matches!(
        (a, b),
        (RefOutcome::Stored, ModelOutcome::Stored)
            | (RefOutcome::Replaced, ModelOutcome::Replaced)
            | (RefOutcome::Duplicate, ModelOutcome::Duplicate)
            | (RefOutcome::Superseded, ModelOutcome::Superseded)
            | (RefOutcome::Deleted, ModelOutcome::Deleted)
            | (RefOutcome::Ephemeral, ModelOutcome::Ephemeral)
            | (RefOutcome::Invalid, ModelOutcome::Invalid)
    )
}

#[test]
fn the_reference_agrees_with_the_test_model() {
    let now = now();
    for seed in [1, 2, 3] {
        let mut generator = Generator::new(seed, 40);
        let mut model = Model::default();
        let mut reference = Reference::new();
        let mut verdicts = std::collections::BTreeMap::new();
        for _ in 0..6_000 {
            let event = generator.next_event();
            let a = reference.insert(&event, now);
            let b = model.insert(&event, now);
            assert!(
                same(a, b),
                "seed {seed}: {a:?} vs {b:?} for {}",
                event.to_json()
            );
            *verdicts.entry(format!("{a:?}")).or_insert(0) += 1;
        }
        // Every kind of verdict happened, so each rule was compared.
        assert_eq!(verdicts.len(), 7, "seed {seed}: {verdicts:?}");
        assert_eq!(reference.len(), model.live.len());
        for _ in 0..1_000 {
            let filters: Vec<_> = (0..2).map(|_| generator.filter()).collect();
            let got: Vec<_> = reference
                .query(&filters, now)
                .into_iter()
                .cloned()
                .collect();
            assert_eq!(got, model.query(&filters));
            assert_eq!(reference.count(&filters, now), model.count(&filters));
        }
    }
}
