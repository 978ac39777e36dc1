//! Writers never wait for readers (issue 13): a query holds a shard's index
//! lock only in slices that end whenever the writer waits, and holds no lock
//! while its caller looks at the answer. What a query answers while the
//! store changes under it is checked against the brute-force model.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::{Generator, Model};
use megalith::{Durability, Event, EventId, EventStore, Filter, InsertOutcome, Pubkey};

fn open(dir: &std::path::Path, shards: u32) -> EventStore {
    EventStore::builder(dir)
        .durability(Durability::Never)
        .shards(shards)
        .open()
        .unwrap()
}

/// A caller may write to the store while it looks at a query's answer:
/// the shard's lock is not held then. (Before: the visit ran under the
/// shard's read lock, so the write waited for it forever.)
#[test]
fn a_write_from_inside_a_query_visit_completes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), 1));
    let generator = Generator::new(11, 4);
    let first = generator.keys[0].sign(1_700_000_000, 1, vec![], "first".into());
    store.insert(&[first]).unwrap();
    let (done, finished) = mpsc::channel();
    let writer_store = Arc::clone(&store);
    std::thread::spawn(move || {
        let second = generator.keys[1].sign(1_700_000_001, 1, vec![], "second".into());
        let mut visited = 0;
        let result = writer_store.query_with(&[Filter::new().kinds([1])], |_| {
            visited += 1;
            writer_store.insert(std::slice::from_ref(&second))?;
            Ok(())
        });
        let _ = done.send(result.map(|n| (n, visited)));
    });
    let (n, visited) = finished
        .recv_timeout(Duration::from_secs(60))
        .expect("a write from inside a query's visit never completed: the visit held the lock")
        .unwrap();
    assert_eq!(
        (n, visited),
        (1, 1),
        "the query began before the second event"
    );
    assert_eq!(store.query(&[Filter::new().kinds([1])]).unwrap().len(), 2);
}

/// Random filters over a store of generated events (replaceable and
/// addressable versions, deletions, duplicates), each read as if a writer
/// waited at every step, with the next generated events written between
/// the steps. Each answer must be the state the query began with, less what
/// the writes removed before the query reached it: no event stored after
/// it began, every event it left out (before its last, or at all if the
/// limit was not reached) removed meanwhile, in NIP-01 order, each once.
#[test]
fn queries_let_writers_in_at_every_step_and_answer_the_state_they_began_with() {
    for shards in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), shards);
        let mut generator = Generator::new(2026 + shards as u64, 12);
        let mut model = Model::default();
        let now = common::now();
        let write = |generator: &mut Generator, model: &mut Model| {
            let event = generator.next_event();
            store.insert(std::slice::from_ref(&event)).unwrap();
            model.insert(&event, now);
        };
        for _ in 0..600 {
            write(&mut generator, &mut model);
        }
        let mut interleaved_writes = 0;
        let mut removed_meanwhile = 0;
        let mut non_empty = 0;
        for n in 0..300 {
            let filter = generator.filter();
            let everything = Filter {
                limit: None,
                ..filter.clone()
            };
            let before: Vec<Event> = model.query(std::slice::from_ref(&everything));
            let (mut steps, mut writes) = (0u64, 0);
            let got = store
                .query_interleaved(std::slice::from_ref(&filter), || {
                    // A write every third step early on, then ever more
                    // rarely: the store stays small enough to query often.
                    steps += 1;
                    if (steps <= 30 && steps % 3 == 0) || steps.is_power_of_two() {
                        write(&mut generator, &mut model);
                        writes += 1;
                    }
                })
                .unwrap();
            interleaved_writes += writes;
            let live: HashSet<EventId> = model
                .query(std::slice::from_ref(&everything))
                .iter()
                .map(|e| e.id)
                .collect();
            let position: std::collections::HashMap<EventId, usize> =
                before.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
            let what = || format!("{shards} shards, filter #{n} {}", filter.to_json());
            let mut last = None;
            for event in &got {
                let Some(&at) = position.get(&event.id) else {
                    panic!(
                        "{}: {} was not stored when the query began",
                        what(),
                        event.id
                    );
                };
                assert!(
                    last.is_none_or(|last| at > last),
                    "{}: out of order or twice",
                    what()
                );
                last = Some(at);
            }
            let answered: HashSet<EventId> = got.iter().map(|e| e.id).collect();
            let reached = match filter.limit {
                Some(limit) if got.len() >= limit => last.map_or(0, |l| l + 1),
                _ => before.len(),
            };
            for event in &before[..reached] {
                if !answered.contains(&event.id) {
                    assert!(
                        !live.contains(&event.id),
                        "{}: {} was left out but is still stored",
                        what(),
                        event.id
                    );
                    removed_meanwhile += 1;
                }
            }
            if let Some(limit) = filter.limit {
                assert!(got.len() <= limit, "{}: past the limit", what());
            }
            non_empty += usize::from(!got.is_empty());
        }
        // The run means something only if queries found events and writes
        // removed some while queries ran.
        assert!(non_empty > 100, "{shards} shards: only {non_empty} answers");
        assert!(interleaved_writes > 1_000, "{interleaved_writes} writes");
        assert!(removed_meanwhile > 0, "no event was removed during a query");
        // And without interleaving, the store still answers the model exactly.
        for _ in 0..300 {
            let filter = generator.filter();
            assert_eq!(
                store.query(std::slice::from_ref(&filter)).unwrap(),
                model.query(std::slice::from_ref(&filter)),
                "{}",
                filter.to_json()
            );
        }
    }
}

/// `contains_ids` answers, for a batch of ids, exactly which the store
/// holds (the model's live events), across shards, without reading records.
#[test]
fn contains_ids_says_which_events_are_held() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3);
    let mut generator = Generator::new(77, 10);
    let mut model = Model::default();
    let now = common::now();
    let mut sent = Vec::new();
    let mut sent_events = Vec::new();
    for _ in 0..800 {
        let event = generator.next_event();
        store.insert(std::slice::from_ref(&event)).unwrap();
        model.insert(&event, now);
        sent.push(event.id);
        sent_events.push(event);
    }
    // Ids sent (some replaced, deleted or refused since) and ids never seen.
    let mut ids = sent.clone();
    ids.extend((0..50u8).map(|i| EventId([i; 32])));
    let live: HashSet<EventId> = model.query(&[Filter::new()]).iter().map(|e| e.id).collect();
    let held = store.contains_ids(&ids).unwrap();
    assert_eq!(held.len(), ids.len());
    // The author-routed form answers the same for the events sent, and
    // never for an id claimed under an author that did not sign it.
    let authored: Vec<(EventId, Pubkey)> = sent_events.iter().map(|e| (e.id, e.pubkey)).collect();
    let by_author = store.contains_events(&authored).unwrap();
    assert_eq!(&by_author[..], &held[..sent.len()]);
    let forged: Vec<(EventId, Pubkey)> = sent_events
        .iter()
        .zip(sent_events.iter().rev())
        .filter(|(a, b)| {
            a.pubkey != b.pubkey && store.shard_of(&a.pubkey) != store.shard_of(&b.pubkey)
        })
        .map(|(a, b)| (a.id, b.pubkey))
        .collect();
    assert!(forged.len() > 100, "{} forged", forged.len());
    assert!(
        store
            .contains_events(&forged)
            .unwrap()
            .iter()
            .all(|held| !held)
    );
    let mut yes = 0;
    for (id, held) in ids.iter().zip(held) {
        assert_eq!(held, live.contains(id), "{id}");
        yes += usize::from(held);
    }
    assert!(
        yes > 300 && yes < sent.len(),
        "{yes} held of {}",
        sent.len()
    );
}

/// `write_mark` moves with every stored batch, whether or not anyone
/// subscribes to the commit stream (the commit sequence only moves for
/// subscribers), and stays put while nothing is written.
#[test]
fn the_write_mark_moves_with_every_stored_write_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3);
    let mut generator = Generator::new(5, 20);
    let mut mark = store.write_mark();
    for _ in 0..50 {
        let event = generator.next_event();
        let stored = store
            .insert(std::slice::from_ref(&event))
            .unwrap()
            .iter()
            .any(|o| matches!(o, InsertOutcome::Stored | InsertOutcome::Replaced { .. }));
        store.query(&[Filter::new().limit(5)]).unwrap();
        let now = store.write_mark();
        assert_eq!(now != mark, stored, "{:?}", event.kind);
        mark = now;
        // The same event again is a duplicate: nothing is written.
        store.insert(std::slice::from_ref(&event)).unwrap();
        assert_eq!(store.write_mark(), mark);
    }
    assert_eq!(store.commit_sequence(), 0, "nobody subscribed");
}
