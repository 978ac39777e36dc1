//! Feed jobs under load (issue 14's benchmark): N feed jobs at once
//! against 3 `megalith serve` processes on loopback holding generated data
//! whose relay lists name them (each author's events on their own write
//! relays; lists on the first relay, where jobs start).
//!
//!   cargo bench -p megalith-ingest --bench feed_jobs -- prepare
//!   cargo bench -p megalith-ingest --bench feed_jobs -- run
//!
//! (scripts/feed-bench.sh does both.) Settings from the environment:
//! FEED_BENCH_EVENTS (1,000,000), FEED_BENCH_AUTHORS (10,000),
//! FEED_BENCH_JOBS (20), FEED_BENCH_DIR (target/feed-bench), MEGALITH_BIN
//! (target/release/megalith).
//!
//! `prepare` generates and places the data once (kept in FEED_BENCH_DIR,
//! with the ports its relay lists name). `run` starts the relays, runs the
//! jobs from a fresh store in this process, and reports per job the time
//! to the first post and to a first screen (50 posts), p50 and p99, the
//! posts stored per second, this process's peak RSS, the connections
//! dialed; then stores the same posts again through `EventStore::insert`
//! (verified, batches of 1,000) into a fresh store: the import rate the
//! ingest rate is compared with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../tests/service/bench.rs"]
mod bench;
#[path = "../../tests/service/placement.rs"]
mod placement;
#[path = "../../tests/service/process.rs"]
mod process;

use bench::{dir, env, peak_rss_mib, percentile, root};
use megalith::datagen::{GenConfig, Generator};
use megalith::{Durability, Event, EventStore, Filter, Pubkey};
use megalith_ingest::mirror::{self, MirrorOptions, Progress};
use megalith_ingest::pool::{self, PoolConfig};
use megalith_ingest::{FeedConfig, FeedJobs, JobPhase, RelayUrl, Sink};
use serde::{Deserialize, Serialize};

const RELAYS: usize = 3;
const SCREEN: u64 = 50;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Prepared {
    events: usize,
    authors: usize,
    ports: Vec<u16>,
    /// The people whose feeds are fetched (hex), and their follow counts.
    people: Vec<(String, usize)>,
}

fn main() {
    let mode = std::env::args()
        .skip(1)
        .find(|a| a == "prepare" || a == "run")
        .unwrap_or_else(|| "run".to_string());
    if mode == "prepare" {
        prepare();
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run());
    }
}

fn prepare() {
    let events_wanted = env("FEED_BENCH_EVENTS", 1_000_000);
    let authors = env("FEED_BENCH_AUTHORS", 10_000);
    let jobs = env("FEED_BENCH_JOBS", 20);
    let dir = dir();
    let stamp = dir.join("prepared.json");
    if let Ok(text) = std::fs::read_to_string(&stamp)
        && let Ok(p) = serde_json::from_str::<Prepared>(&text)
        && p.events == events_wanted
        && p.authors == authors
        && p.people.len() >= jobs
    {
        eprintln!("feed-bench: data ready in {}", dir.display());
        return;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ports: Vec<u16> = (0..RELAYS).map(|_| process::free_port()).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}"))
        .collect();
    let started = Instant::now();
    let mut generator = Generator::new(GenConfig {
        seed: 14,
        authors,
        relays: Some(urls.clone()),
        ..GenConfig::default()
    });
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let mut events: Vec<Event> = Vec::with_capacity(events_wanted);
    while events.len() < events_wanted {
        let n = (events_wanted - events.len()).min(100_000);
        events.extend(generator.batch(n, threads));
    }
    eprintln!(
        "feed-bench: generated {} events in {:.1} s",
        events.len(),
        started.elapsed().as_secs_f64()
    );
    let homes = placement::homes(&events, &urls);
    let stores: Vec<EventStore> = (0..RELAYS)
        .map(|i| {
            EventStore::builder(dir.join(format!("relay{i}")))
                .durability(Durability::Never)
                .open()
                .unwrap()
        })
        .collect();
    let mut placed: Vec<Vec<Event>> = vec![Vec::new(); RELAYS];
    for e in events.drain(..) {
        for r in placement::relays_of(&homes, &e) {
            placed[r].push(e.clone());
            if placed[r].len() >= 10_000 {
                stores[r].insert_trusted(&placed[r]).unwrap();
                placed[r].clear();
            }
        }
    }
    for (r, rest) in placed.iter().enumerate() {
        stores[r].insert_trusted(rest).unwrap();
    }
    for store in stores {
        store.close().unwrap();
    }
    // The people: contact lists from the largest (the generator caps them
    // at 850) down, a quarter each of 600+, 400+, 200+ and 100+ follows.
    let mut sampler = generator.sampler(7);
    let mut people: Vec<(String, usize)> = Vec::new();
    for (i, min) in [600, 400, 200, 100].into_iter().enumerate() {
        let quota = (jobs * (i + 1)).div_ceil(4);
        for _ in 0..jobs * 50 {
            if people.len() >= quota {
                break;
            }
            if let Some((p, follows)) = sampler.follow_list(min)
                && !people.iter().any(|(q, _)| *q == p.to_hex())
            {
                people.push((p.to_hex(), follows.len()));
            }
        }
    }
    let prepared = Prepared {
        events: events_wanted,
        authors,
        ports,
        people,
    };
    std::fs::write(&stamp, serde_json::to_string_pretty(&prepared).unwrap()).unwrap();
    eprintln!(
        "feed-bench: prepared in {:.1} s: {} people, follows {:?}",
        started.elapsed().as_secs_f64(),
        prepared.people.len(),
        prepared.people.iter().map(|(_, n)| n).collect::<Vec<_>>()
    );
}

async fn run() {
    let dir = dir();
    let prepared: Prepared = serde_json::from_str(
        &std::fs::read_to_string(dir.join("prepared.json"))
            .expect("no prepared data: run with `prepare` first (scripts/feed-bench.sh does)"),
    )
    .unwrap();
    let jobs_wanted = env("FEED_BENCH_JOBS", 20).min(prepared.people.len());
    let bin = std::env::var("MEGALITH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/release/megalith"));
    let relays: Vec<process::KillOnDrop> = (0..RELAYS)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", prepared.ports[i]);
            process::serve_at(&bin, &dir.join(format!("relay{i}")), &listen)
        })
        .collect();
    let ingest_dir = dir.join("ingest");
    let _ = std::fs::remove_dir_all(&ingest_dir);
    let store = Arc::new(EventStore::open(&ingest_dir).unwrap());
    let (pool, pool_task) = pool::start(PoolConfig::default());
    let (sink, sink_task) = Sink::start(store.clone(), pool.stats().clone());
    let first = RelayUrl::parse(&format!("ws://127.0.0.1:{}", prepared.ports[0])).unwrap();
    let mut config = FeedConfig::new(vec![first], ingest_dir.join("jobs"));
    config.wall_time = None;
    config.allow_private_relays = true;
    let jobs = FeedJobs::new(config, store.clone(), pool.clone(), sink);

    let people: Vec<Pubkey> = prepared.people[..jobs_wanted]
        .iter()
        .map(|(hex, _)| Pubkey::from_hex(hex).unwrap())
        .collect();
    let started = Instant::now();
    let mut statuses: Vec<_> = people.iter().map(|p| jobs.ensure_job(*p)).collect();
    let mut screen_ms: Vec<Option<f64>> = vec![None; people.len()];
    let mut done_ms: Vec<Option<f64>> = vec![None; people.len()];
    while done_ms.iter().any(Option::is_none) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = started.elapsed().as_secs_f64() * 1000.0;
        for (i, status) in statuses.iter_mut().enumerate() {
            let s = status.borrow();
            if screen_ms[i].is_none() && s.events_ingested >= SCREEN {
                screen_ms[i] = Some(now);
            }
            if done_ms[i].is_none() && s.phase.is_some_and(|p| !p.active()) {
                done_ms[i] = Some(now);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let finals: Vec<_> = statuses.iter().map(|s| s.borrow().clone()).collect();
    let rss = peak_rss_mib("self");
    let failed = finals
        .iter()
        .filter(|s| s.phase == Some(JobPhase::Failed))
        .count();
    let mut first_post: Vec<f64> = finals
        .iter()
        .filter_map(|s| s.first_post_ms.map(|ms| ms as f64))
        .collect();
    let mut screens: Vec<f64> = screen_ms.iter().flatten().copied().collect();
    let mut dones: Vec<f64> = done_ms.iter().flatten().copied().collect();
    let stats = pool.stats().snapshot();
    let stored: u64 = stats.iter().map(|r| r.stored).sum();
    let received: u64 = stats.iter().map(|r| r.events).sum();
    let dials: u64 = stats.iter().map(|r| r.attempts).sum();
    jobs.shutdown().await;
    drop(jobs);
    pool.shutdown().await;
    let _ = pool_task.await;
    let _ = sink_task.await;

    // Throughput: one relay copied whole by `megalith mirror`'s code into a
    // fresh store, against importing the same events (verified).
    let copy_dir = dir.join("mirror-copy");
    let _ = std::fs::remove_dir_all(&copy_dir);
    let copy = Arc::new(EventStore::open(&copy_dir).unwrap());
    let (pool, pool_task) = pool::start(PoolConfig::default());
    let (sink, sink_task) = Sink::start(copy.clone(), pool.stats().clone());
    let source = RelayUrl::parse(&format!("ws://127.0.0.1:{}", prepared.ports[2])).unwrap();
    let mut options = MirrorOptions::new(vec![source], Filter::new(), copy_dir.join("mirror"));
    options.once = true;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let copied = mirror::run(pool.clone(), sink, options, stop, Progress::default())
        .await
        .unwrap();
    let mirror_secs = t.elapsed().as_secs_f64();
    pool.shutdown().await;
    let _ = pool_task.await;
    let _ = sink_task.await;
    let copied_events = copy.query(&[Filter::new()]).unwrap();
    let mirror_rate = copied[0].stored as f64 / mirror_secs;
    drop(copy);
    for relay in relays {
        process::stop(relay);
    }
    let again_dir = dir.join("mirror-import");
    let _ = std::fs::remove_dir_all(&again_dir);
    let again = EventStore::open(&again_dir).unwrap();
    let mut ordered = copied_events;
    ordered.sort_by_key(|e| e.created_at);
    let t = Instant::now();
    for chunk in ordered.chunks(1_000) {
        again.insert(chunk).unwrap();
    }
    let mirror_import_rate = ordered.len() as f64 / t.elapsed().as_secs_f64();
    again.close().unwrap();
    // And what issue 14 names: the `megalith import` command, verified, on
    // a JSONL file of the same events (it reads and parses the JSON too,
    // as the mirror does).
    let jsonl = dir.join("mirror-copy.jsonl");
    let mut text = Vec::with_capacity(ordered.len() * 600);
    for event in &ordered {
        event.write_json(&mut text);
        text.push(b'\n');
    }
    std::fs::write(&jsonl, &text).unwrap();
    drop(text);
    let command_dir = dir.join("mirror-import-command");
    let _ = std::fs::remove_dir_all(&command_dir);
    let t = Instant::now();
    let status = std::process::Command::new(&bin)
        .args(["import", "--quiet", "--data"])
        .arg(&command_dir)
        .arg(&jsonl)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "megalith import failed: {status}");
    let command_import_rate = ordered.len() as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&jsonl);

    // The import baseline: the same posts, verified, into a fresh store.
    let posts = store.query(&[Filter::new().kinds([1, 6])]).unwrap();
    let baseline_dir = dir.join("import-baseline");
    let _ = std::fs::remove_dir_all(&baseline_dir);
    let baseline = EventStore::open(&baseline_dir).unwrap();
    let t = Instant::now();
    for chunk in posts.chunks(1_000) {
        baseline.insert(chunk).unwrap();
    }
    let import_rate = posts.len() as f64 / t.elapsed().as_secs_f64();
    baseline.close().unwrap();
    let ingest_rate = stored as f64 / wall;

    let report = serde_json::json!({
        "jobs": people.len(),
        "failed": failed,
        "follows": prepared.people[..jobs_wanted].iter().map(|(_, n)| n).collect::<Vec<_>>(),
        "first_post_ms": {"p50": percentile(&mut first_post, 0.5), "p99": percentile(&mut first_post, 0.99)},
        "first_screen_ms": {"p50": percentile(&mut screens, 0.5), "p99": percentile(&mut screens, 0.99)},
        "job_done_ms": {"p50": percentile(&mut dones, 0.5), "p99": percentile(&mut dones, 0.99)},
        "wall_s": wall,
        "received": received,
        "stored": stored,
        "ingest_per_s": ingest_rate,
        "import_verified_per_s": import_rate,
        "ingest_over_import": ingest_rate / import_rate,
        "peak_rss_mib": rss,
        "connections_dialed": dials,
        "mirror": {
            "events": copied[0].stored,
            "pages": copied[0].pages,
            "seconds": mirror_secs,
            "per_s": mirror_rate,
            "insert_verified_per_s": mirror_import_rate,
            "ratio_to_insert": mirror_rate / mirror_import_rate,
            "import_command_per_s": command_import_rate,
            "ratio": mirror_rate / command_import_rate,
        },
    });
    eprintln!(
        "feed-bench: {} jobs ({} failed) in {:.1} s: first post p50 {:.0} ms p99 {:.0} ms; first screen p50 {:.0} ms p99 {:.0} ms; job done p50 {:.0} ms p99 {:.0} ms",
        people.len(),
        failed,
        wall,
        report["first_post_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        report["first_post_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        report["first_screen_ms"]["p50"]
            .as_f64()
            .unwrap_or(f64::NAN),
        report["first_screen_ms"]["p99"]
            .as_f64()
            .unwrap_or(f64::NAN),
        report["job_done_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        report["job_done_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
    );
    eprintln!(
        "feed-bench: {received} events received, {stored} stored: {ingest_rate:.0}/s; import of the same {} posts (verified): {import_rate:.0}/s; ratio {:.2}; peak RSS {rss:.0} MiB; {dials} dials",
        posts.len(),
        ingest_rate / import_rate
    );
    eprintln!(
        "feed-bench: mirror of one relay: {} events in {mirror_secs:.1} s ({mirror_rate:.0}/s, {} pages); `megalith import` of the same events as JSONL (verified): {command_import_rate:.0}/s, ratio {:.2}; EventStore::insert of them parsed (verified): {mirror_import_rate:.0}/s, ratio {:.2}",
        copied[0].stored,
        copied[0].pages,
        mirror_rate / command_import_rate,
        mirror_rate / mirror_import_rate
    );
    println!("{report}");
}
