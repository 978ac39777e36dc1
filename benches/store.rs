//! Criterion benches of the engine core: insert, and the four query shapes
//! (id look-up, author feed, follow feed of 500 authors, tag query).
//!
//! Run: `cargo bench --bench store` (numbers go in docs/performance.md).

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use megalith::{Durability, Event, EventStore, Filter, Keys};

const AUTHORS: u64 = 2_000;
const EVENTS: usize = 100_000;

/// A feed-shaped dataset: notes from many authors, reactions pointing at notes.
fn dataset() -> (Vec<Keys>, Vec<Event>) {
    let keys: Vec<Keys> = (0..AUTHORS).map(|i| Keys::from_seed(10_000 + i)).collect();
    let mut rng = common::Rng::new(7);
    let mut events: Vec<Event> = Vec::with_capacity(EVENTS);
    for n in 0..EVENTS {
        let author = &keys[rng.below(AUTHORS) as usize];
        let created_at = common::BASE_TIME + n as u64;
        let event = if n > 100 && rng.chance(30) {
            let target = events[rng.below(events.len() as u64) as usize].clone();
            author.sign(
                created_at,
                7,
                vec![
                    vec!["e".into(), target.id.to_hex()],
                    vec!["p".into(), target.pubkey.to_hex()],
                ],
                "+".into(),
            )
        } else {
            let topic = common::TOPICS[rng.below(6) as usize];
            author.sign(
                created_at,
                1,
                vec![vec!["t".into(), topic.into()]],
                format!("note number {n} about {topic}"),
            )
        };
        events.push(event);
    }
    (keys, events)
}

fn benches(c: &mut Criterion) {
    let (keys, events) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path())
        .durability(Durability::Never)
        .open()
        .unwrap();
    for chunk in events.chunks(1000) {
        store.insert_trusted(chunk).unwrap();
    }
    store.checkpoint().unwrap();

    let mut group = c.benchmark_group("insert");
    group.throughput(criterion::Throughput::Elements(1000));
    let mut round = 0u64;
    // A fresh batch of 1,000 notes no store has seen.
    let mut fresh_batch = |base: u64| {
        round += 1;
        (0..1000u64)
            .map(|i| {
                let created_at = common::BASE_TIME + base + round * 1000 + i;
                keys[(i % AUTHORS) as usize].sign(
                    created_at,
                    1,
                    vec![],
                    format!("bench {round} {i}"),
                )
            })
            .collect::<Vec<_>>()
    };
    group.bench_function("trusted batch of 1000 (durability never)", |b| {
        b.iter_batched(
            || fresh_batch(10_000_000),
            |batch| black_box(store.insert_trusted(&batch).unwrap()),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("verified batch of 1000 (durability always)", |b| {
        b.iter_batched(
            || fresh_batch(20_000_000),
            |batch| black_box(store.insert(&batch).unwrap()),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut rng = common::Rng::new(99);
    let mut group = c.benchmark_group("query");
    group.bench_function("id look-up", |b| {
        b.iter(|| {
            let id = events[rng.below(EVENTS as u64) as usize].id;
            black_box(store.query(&[Filter::new().ids([id])]).unwrap())
        })
    });
    group.bench_function("author feed (kind 1, limit 50)", |b| {
        b.iter(|| {
            let author = keys[rng.below(AUTHORS) as usize].pubkey();
            black_box(
                store
                    .query(&[Filter::new().authors([author]).kinds([1]).limit(50)])
                    .unwrap(),
            )
        })
    });
    group.bench_function("follow feed (500 authors, kind 1, limit 100)", |b| {
        b.iter(|| {
            let start = rng.below(AUTHORS - 500) as usize;
            let follows = keys[start..start + 500].iter().map(Keys::pubkey);
            black_box(
                store
                    .query(&[Filter::new().authors(follows).kinds([1]).limit(100)])
                    .unwrap(),
            )
        })
    });
    group.bench_function("tag query (#e + kind 7)", |b| {
        b.iter(|| {
            let target = events[rng.below(EVENTS as u64) as usize].id.to_hex();
            black_box(
                store
                    .query(&[Filter::new().tag('e', [target]).kinds([7])])
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = store;
    config = Criterion::default().sample_size(30);
    targets = benches
}
criterion_main!(store);
