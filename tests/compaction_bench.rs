//! Compaction of a store of the generator's events where about a third
//! were deleted or replaced: how much of the store it gives back, and the latency of reads
//! and writes while it runs against the same loads with nothing running
//! (figures printed, never asserted: the machines are noisy). Every answer
//! is checked against the brute-force reference after compaction.
//!
//! In CI it runs small. `scripts/compaction-bench.sh` runs it in release at
//! a larger size (`MEGALITH_COMPACT_BENCH_EVENTS`) and prints the figures
//! that `docs/performance.md` quotes.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Rng, env_usize, now, percentile};
use megalith::datagen::{GenConfig, Generator};
use megalith::reference::Reference;
use megalith::{CompactOptions, Event, EventId, EventStore, Filter, Keys, Pubkey};

/// The generator's stream (`megalith generate`: realistic kinds, sizes
/// and replacements), then kind 5 deletions by their authors of 28% of the
/// regular events (up to 50 per deletion): about a third of the events end
/// up replaced or deleted.
fn corpus(count: usize, seed: u64) -> Vec<Event> {
    let mut generator = Generator::new(GenConfig {
        seed,
        authors: (count / 20).clamp(50, 10_000),
        ..GenConfig::default()
    });
    let mut events = generator.batch(count, 2);
    let keys: std::collections::HashMap<Pubkey, Keys> = generator
        .keys()
        .iter()
        .map(|k| (k.pubkey(), k.clone()))
        .collect();
    let mut rng = Rng::new(seed);
    let mut doomed: std::collections::BTreeMap<[u8; 32], Vec<EventId>> = Default::default();
    for event in &events {
        let regular = matches!(event.kind, 1 | 6 | 7 | 16 | 1111 | 9735 | 21 | 22);
        if regular && rng.below(100) < 28 {
            doomed.entry(event.pubkey.0).or_default().push(event.id);
        }
    }
    let last = events.iter().map(|e| e.created_at).max().unwrap_or(0);
    for (n, (author, ids)) in doomed.into_iter().enumerate() {
        let keys = &keys[&Pubkey(author)];
        for (m, chunk) in ids.chunks(50).enumerate() {
            let tags = chunk
                .iter()
                .map(|id| vec!["e".to_string(), id.to_hex()])
                .collect();
            events.push(keys.sign(last + 1 + (n + m) as u64, 5, tags, String::new()));
        }
    }
    events
}

/// Bytes the files under `dir` take on disk (allocated blocks).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

/// Runs follow-feed reads and small write batches until `stop`; returns
/// their latencies.
fn load(
    store: &Arc<EventStore>,
    pubkeys: &[Pubkey],
    seed: u64,
    stop: &Arc<AtomicBool>,
    at_least: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let reader = {
        let (store, stop, pubkeys) = (Arc::clone(store), Arc::clone(stop), pubkeys.to_vec());
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) || latencies.len() < at_least {
                let follows: Vec<Pubkey> = (0..50).map(|_| *rng.pick(&pubkeys)).collect();
                let filter = Filter::new().authors(follows).kinds([1]).limit(100);
                let started = Instant::now();
                store.query(&[filter]).unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        })
    };
    let writer = {
        let (store, stop) = (Arc::clone(store), Arc::clone(stop));
        std::thread::spawn(move || {
            let keys = Keys::from_seed(seed ^ 0x5eed);
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || latencies.len() < at_least / 4 {
                let batch: Vec<Event> = (0..10)
                    .map(|i| {
                        n += 1;
                        keys.sign(
                            common::BASE_TIME + 50_000_000 + n,
                            1,
                            vec![],
                            format!("new note {seed} {n} {i}"),
                        )
                    })
                    .collect();
                let started = Instant::now();
                store.insert(&batch).unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        })
    };
    let mut reads = reader.join().unwrap();
    let mut writes = writer.join().unwrap();
    reads.sort();
    writes.sort();
    (reads, writes)
}

#[test]
fn compaction_gives_back_the_removed_share_and_answers_stay_exact() {
    let count = env_usize("MEGALITH_COMPACT_BENCH_EVENTS", 4_000);
    let dir = tempfile::tempdir().unwrap();
    let events = corpus(count, 7);
    let mut reference = Reference::new();
    let now = now();
    for event in &events {
        reference.insert(event, now);
    }
    let store = Arc::new(
        EventStore::builder(dir.path())
            .segment_size(if count > 100_000 { 64 << 20 } else { 256 << 10 })
            .open()
            .unwrap(),
    );
    for chunk in events.chunks(500) {
        store.insert_trusted(chunk).unwrap();
    }
    store.checkpoint().unwrap();
    let removed = events.len() - reference.len();
    let before = disk_bytes(dir.path());
    // The same store at rest (closed: the pages a checkpoint freed are
    // given back), the baseline of the figures after the close below.
    let store = Arc::try_unwrap(store).ok().unwrap();
    store.close().unwrap();
    let before_at_rest = disk_bytes(dir.path());
    let store = Arc::new(EventStore::builder(dir.path()).open().unwrap());
    let pubkeys: Vec<Pubkey> = {
        let mut keys: Vec<Pubkey> = events.iter().map(|e| e.pubkey).collect();
        keys.sort_by_key(|k| k.0);
        keys.dedup();
        keys
    };

    // The loads alone, then beside a compaction.
    let at_least = env_usize("MEGALITH_COMPACT_BENCH_SAMPLES", 200);
    let stop = Arc::new(AtomicBool::new(true));
    let (idle_reads, idle_writes) = load(&store, &pubkeys, 1, &stop, at_least);
    let stop = Arc::new(AtomicBool::new(false));
    let loads = {
        let (store, stop, pubkeys) = (Arc::clone(&store), Arc::clone(&stop), pubkeys.clone());
        std::thread::spawn(move || load(&store, &pubkeys, 2, &stop, 0))
    };
    // With MEGALITH_COMPACT_BENCH_BACKGROUND=1, a pass as `megalith serve`
    // runs one in the background ([compaction] defaults: segments with a
    // quarter removed, 32 MiB/s, the active segments left alone).
    let options = if std::env::var("MEGALITH_COMPACT_BENCH_BACKGROUND").is_ok_and(|v| v == "1") {
        CompactOptions {
            min_garbage: 0.25,
            max_write_rate: Some(32 << 20),
            checkpoint_first: true,
            seal_active: false,
        }
    } else {
        CompactOptions::default()
    };
    let report = store.compact(&options).unwrap();
    stop.store(true, Ordering::Relaxed);
    let (busy_reads, busy_writes) = loads.join().unwrap();
    let after = disk_bytes(dir.path());

    // Every answer is the reference's (with the events the loads added).
    let store = Arc::try_unwrap(store).ok().unwrap();
    let mut added = store
        .query(&[Filter::new()
            .kinds([1])
            .since(common::BASE_TIME + 50_000_000)])
        .unwrap();
    for event in &added {
        reference.insert(event, now);
    }
    added.clear();
    let mut rng = Rng::new(3);
    for _ in 0..40 {
        let follows: Vec<Pubkey> = (0..20).map(|_| *rng.pick(&pubkeys)).collect();
        let filter = vec![Filter::new().authors(follows).limit(500)];
        let expected: Vec<Event> = reference.query(&filter, now).into_iter().cloned().collect();
        assert_eq!(store.query(&filter).unwrap(), expected);
    }
    for kinds in [[0u16], [3], [5], [7]] {
        let filter = vec![Filter::new().kinds(kinds)];
        assert_eq!(store.count(&filter).unwrap(), reference.count(&filter, now));
    }
    assert_eq!(store.stats().unwrap().events, reference.len() as u64);
    assert!(report.records_compacted > 0, "{report:?}");
    assert!(report.records_compacted <= removed as u64, "{report:?}");
    let removed_bytes: u64 = events
        .iter()
        .filter(|e| reference.get(&e.id).is_none())
        .map(|e| e.to_json().len() as u64)
        .sum();
    let all_bytes: u64 = events.iter().map(|e| e.to_json().len() as u64).sum();
    store.close().unwrap();
    // At rest: a close gives back the index pages freed since the last
    // checkpoint (the open store keeps them for its next checkpoint).
    let at_rest = disk_bytes(dir.path());
    println!(
        "compaction bench: at rest (closed) {:.1} MiB -> {:.1} MiB ({:+.1}%)",
        before_at_rest as f64 / 1048576.0,
        at_rest as f64 / 1048576.0,
        100.0 * (at_rest as f64 - before_at_rest as f64) / before_at_rest as f64,
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "compaction bench: {count} events, {removed} removed ({:.1}% of events, {:.1}% of JSON \
         bytes); store {:.1} MiB -> {:.1} MiB on disk ({:+.1}%); {} records, {:.1} MiB taken \
         from {} of {} segments in {:.2} s; log {:.1} MiB -> {:.1} MiB on disk\n\
         compaction bench: follow-feed read p50/p99 idle {:.2}/{:.2} ms, during {:.2}/{:.2} ms \
         ({} reads); 10-event write batch p50/p99 idle {:.2}/{:.2} ms, during {:.2}/{:.2} ms \
         ({} batches)",
        100.0 * removed as f64 / count as f64,
        100.0 * removed_bytes as f64 / all_bytes as f64,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        100.0 * (after as f64 - before as f64) / before as f64,
        report.records_compacted,
        report.bytes_compacted as f64 / 1048576.0,
        report.segments_rewritten,
        report.segments_examined,
        report.seconds,
        report.disk_bytes_before as f64 / 1048576.0,
        report.disk_bytes_after as f64 / 1048576.0,
        ms(percentile(&idle_reads, 0.5)),
        ms(percentile(&idle_reads, 0.99)),
        ms(percentile(&busy_reads, 0.5)),
        ms(percentile(&busy_reads, 0.99)),
        busy_reads.len(),
        ms(percentile(&idle_writes, 0.5)),
        ms(percentile(&idle_writes, 0.99)),
        ms(percentile(&busy_writes, 0.5)),
        ms(percentile(&busy_writes, 0.99)),
        busy_writes.len(),
    );
}
