//! A writer inserting while heavy queries run on every core: the readers'
//! answers must stay exact, the writer's events must all be stored as the
//! reference says, and the writer's batch latency is reported with and
//! without the readers (a benchmark figure, printed, never asserted: the
//! machines are noisy).
//!
//! In CI it runs small. `scripts/writer-readers-bench.sh` runs it in release
//! at a larger size (`MEGALITH_READERS_BENCH_EVENTS`, `..._BATCHES`), also
//! with the readers at a lower CPU priority (`..._NICE`), and prints the
//! figures that `docs/performance.md` quotes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Generator, env_usize, now, percentile};
use megalith::reference::Reference;
use megalith::{Durability, Event, EventStore, Filter};

/// Inserts `batches` batches of `size` events from `generator`, feeding the
/// reference too; returns each batch's latency.
fn write_batches(
    store: &EventStore,
    generator: &mut Generator,
    reference: &mut Reference,
    batches: usize,
    size: usize,
) -> Vec<Duration> {
    let now = now();
    let mut latencies = Vec::with_capacity(batches);
    for _ in 0..batches {
        let batch: Vec<Event> = (0..size).map(|_| generator.next_event()).collect();
        let started = Instant::now();
        store.insert(&batch).unwrap();
        latencies.push(started.elapsed());
        for event in &batch {
            reference.insert(event, now);
        }
    }
    latencies
}

#[test]
fn heavy_readers_on_every_core_keep_exact_answers_while_a_writer_inserts() {
    let preload = env_usize("MEGALITH_READERS_BENCH_EVENTS", 6_000);
    let batches = env_usize("MEGALITH_READERS_BENCH_BATCHES", 40);
    let batch_size = 100;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EventStore::builder(dir.path())
            .shards(2)
            .durability(Durability::Always)
            .open()
            .unwrap(),
    );
    let now = now();

    // What the readers ask about: the preloaded authors' events only. The
    // writer's authors are other keys, so every answer is fixed once the
    // preload is in, and is checked exactly on every run of every query.
    let mut preload_gen = Generator::new(41, 150);
    let mut preload_ref = Reference::new();
    let events: Vec<Event> = (0..preload).map(|_| preload_gen.next_event()).collect();
    for chunk in events.chunks(1_000) {
        store.insert(chunk).unwrap();
        for event in chunk {
            preload_ref.insert(event, now);
        }
    }
    let authors = preload_gen.pubkeys();
    let heavy: Vec<Filter> = vec![
        // A follow feed over every preloaded author, deep.
        Filter::new().authors(authors.clone()).kinds([1]).limit(500),
        // A wide scan of the same authors, every kind.
        Filter::new().authors(authors.clone()).limit(2_000),
        // A tag query and a reaction scan.
        Filter::new()
            .authors(authors.clone())
            .tag('t', ["nostr", "rust"])
            .limit(1_000),
        Filter::new()
            .authors(authors.clone())
            .kinds([7])
            .limit(1_000),
    ];
    let expected: Vec<Vec<Event>> = heavy
        .iter()
        .map(|f| {
            preload_ref
                .query(std::slice::from_ref(f), now)
                .into_iter()
                .cloned()
                .collect()
        })
        .collect();
    assert!(
        expected.iter().all(|answer| !answer.is_empty()),
        "every heavy query has something to read"
    );

    let mut writer_gen = Generator::new(977, 150);
    let mut writer_ref = Reference::new();
    // Warm up, then the writer alone.
    write_batches(&store, &mut writer_gen, &mut writer_ref, 5, batch_size);
    let mut alone = write_batches(
        &store,
        &mut writer_gen,
        &mut writer_ref,
        batches,
        batch_size,
    );

    // The writer again, with one reader per core running the heavy queries.
    let readers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..readers)
        .map(|r| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            let answered = Arc::clone(&answered);
            let heavy = heavy.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                if let Ok(nice) = std::env::var("MEGALITH_READERS_BENCH_NICE") {
                    // SAFETY: plain integers in and out.
                    unsafe {
                        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                        libc::setpriority(libc::PRIO_PROCESS, tid, nice.parse().unwrap());
                    }
                }
                let mut i = r;
                while !done.load(Ordering::Acquire) {
                    let q = i % heavy.len();
                    let got = store.query(std::slice::from_ref(&heavy[q])).unwrap();
                    assert!(
                        got == expected[q],
                        "reader {r}: heavy query {q} answered {} events, expected {}",
                        got.len(),
                        expected[q].len()
                    );
                    answered.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    // Let every reader get going before the timed batches.
    while answered.load(Ordering::Relaxed) < readers as u64 {
        std::thread::yield_now();
    }
    let queries_before = answered.load(Ordering::Relaxed);
    let mut beside = write_batches(
        &store,
        &mut writer_gen,
        &mut writer_ref,
        batches,
        batch_size,
    );
    let queries_during = answered.load(Ordering::Relaxed) - queries_before;
    done.store(true, Ordering::Release);
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(queries_during > 0, "the readers ran while the writer wrote");

    // Everything the writer sent is stored as the reference says.
    let writer_authors = writer_gen.pubkeys();
    let all = Filter::new().authors(writer_authors);
    let got = store.query(std::slice::from_ref(&all)).unwrap();
    let want: Vec<Event> = writer_ref
        .query(std::slice::from_ref(&all), now)
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(got.len(), want.len(), "the writer's events, by count");
    assert!(got == want, "the writer's events, exactly");
    // And the readers' ground did not move.
    for (filter, expected) in heavy.iter().zip(&expected) {
        assert!(&store.query(std::slice::from_ref(filter)).unwrap() == expected);
    }

    alone.sort();
    beside.sort();
    let (a50, a99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
    let (b50, b99) = (percentile(&beside, 0.5), percentile(&beside, 0.99));
    eprintln!(
        "writer beside readers: {preload} events preloaded, {batches} batches of {batch_size}, \
         {readers} reader threads ({queries_during} heavy queries during the timed batches); \
         batch latency alone p50 {a50:.2?} p99 {a99:.2?}; beside the readers p50 {b50:.2?} \
         p99 {b99:.2?}; p99 ratio {:.2}",
        b99.as_secs_f64() / a99.as_secs_f64()
    );
}
