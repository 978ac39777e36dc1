//! A generated stream inserted into a store: every event is accepted (stored, or replacing
//! an earlier version), the store ends with the count the generator predicts, and the
//! query samplers' parameters and expected answers match what the store returns.

use megalith::datagen::{GenConfig, Generator};
use megalith::{Durability, EventStore, Filter, InsertOutcome};

#[test]
fn a_generated_stream_is_accepted_and_queries_match_the_samplers() {
    let mut generator = Generator::new(GenConfig {
        seed: 21,
        authors: 400,
        ..GenConfig::default()
    });
    let events = generator.batch(8_000, 2);
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path())
        .durability(Durability::Never)
        .open()
        .unwrap();
    let (mut stored, mut replaced) = (0u64, 0u64);
    for chunk in events.chunks(500) {
        for (event, outcome) in chunk.iter().zip(store.insert(chunk).unwrap()) {
            match outcome {
                InsertOutcome::Stored => stored += 1,
                InsertOutcome::Replaced { .. } => replaced += 1,
                other => panic!("kind {} {}: {other:?}", event.kind, event.id),
            }
        }
    }
    let stats = generator.stats();
    assert_eq!(stored + replaced, events.len() as u64);
    assert_eq!(replaced, stats.replacements);
    assert_eq!(store.stats().unwrap().events, stats.expected_stored());

    let mut sampler = generator.sampler(5);
    for _ in 0..100 {
        let id = sampler.existing_id().unwrap();
        assert_eq!(store.get(&id).unwrap().map(|e| e.id), Some(id));
    }
    for _ in 0..5 {
        let (author, notes) = sampler.active_author().unwrap();
        let filter = Filter::new().authors([author]).kinds([1]);
        assert_eq!(
            store.count(std::slice::from_ref(&filter)).unwrap(),
            notes as u64
        );
        let feed = store.query(&[filter.limit(20)]).unwrap();
        assert_eq!(feed.len(), notes.min(20));
    }
    let (follower, follows) = sampler.follow_list(100).unwrap();
    let lists = store
        .query(&[Filter::new().authors([follower]).kinds([3])])
        .unwrap();
    assert_eq!(lists.len(), 1);
    let listed: Vec<String> = lists[0].tags.iter().map(|t| t[1].clone()).collect();
    let expected: Vec<String> = follows.iter().map(|p| p.to_hex()).collect();
    assert_eq!(listed, expected);
    let feed = store
        .query(&[Filter::new().authors(follows).kinds([1]).limit(50)])
        .unwrap();
    assert_eq!(feed.len(), 50);
    for min in [1, 4] {
        let note = sampler.reacted_note(min).unwrap();
        let reactions = Filter::new().kinds([7]).tag('e', [note.id.to_hex()]);
        assert_eq!(
            store.count(std::slice::from_ref(&reactions)).unwrap(),
            u64::from(note.reactions)
        );
        assert_eq!(store.get(&note.id).unwrap().is_none(), note.deleted);
    }
    store.close().unwrap();
}
