//! Load test of the relay, on loopback only: SUBSCRIBERS connections each
//! hold SUBS live subscriptions while PUBLISHERS connections send EVENTS
//! signed events. Checks that every subscription receives exactly the
//! events its filters match (worked out by `megalith::reference::matches`,
//! the brute-force matcher), none twice, and reports events/s in,
//! deliveries/s out, delivery latency and the process's peak memory.
//! Exits non-zero on any mismatch.
//!
//!   cargo bench --bench relay_load -- [--subscribers 200] [--subs 20]
//!       [--publishers 5] [--events 20000] [--durability always|batch|never]
//!       [--seed 1] [--timeout-secs 300] [--window 1]
//!
//! `--window N`: each publisher keeps up to N EVENTs in flight (1: it waits
//! for each OK, as clients do). A large window floods the relay faster than
//! 200 in-process subscribers can read on two cores; the relay then drops
//! the slowest as it should, and the run fails.
//!
//! `scripts/relay-load.sh` runs it with the defaults.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use megalith::{Durability, Event, EventId, EventStore, Filter, Keys};
use megalith_relay::{RelayConfig, RelayLimits};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    subscribers: usize,
    subs: usize,
    publishers: usize,
    events: usize,
    durability: Durability,
    seed: u64,
    timeout: Duration,
    /// EVENTs a publisher sends before waiting for an OK.
    window: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: relay_load [--subscribers N (200)] [--subs N (20)] [--publishers N (5)] \
         [--events N (20000)] [--durability always|batch|never (always)] [--seed S (1)] \
         [--timeout-secs S (300)] [--window N (1)]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        subscribers: 200,
        subs: 20,
        publishers: 5,
        events: 20_000,
        durability: Durability::Always,
        seed: 1,
        timeout: Duration::from_secs(300),
        window: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // passed by `cargo bench`
        }
        let Some(value) = it.next() else { usage() };
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--subscribers" => args.subscribers = number() as usize,
            "--subs" => args.subs = number() as usize,
            "--publishers" => args.publishers = number().max(1) as usize,
            "--events" => args.events = number() as usize,
            "--seed" => args.seed = number(),
            "--window" => args.window = number().max(1) as usize,
            "--timeout-secs" => args.timeout = Duration::from_secs(number()),
            "--durability" => {
                args.durability = match value.as_str() {
                    "always" => Durability::Always,
                    "batch" => Durability::Batch(Duration::from_millis(100)),
                    "never" => Durability::Never,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    args
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const AUTHORS: usize = 500;
const HASHTAGS: usize = 60;

/// Signed events with a mix of kinds and e/p/t/d tags, all in the past.
fn make_events(rng: &mut Rng, count: usize, keys: &[Keys]) -> Vec<Event> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut events: Vec<Event> = Vec::with_capacity(count);
    for i in 0..count {
        let author = &keys[rng.below(keys.len())];
        let created_at = now - (count - i) as u64;
        let roll = rng.below(100);
        let mut tags = Vec::new();
        let earlier = |rng: &mut Rng, events: &[Event]| -> Option<(String, String)> {
            (!events.is_empty()).then(|| {
                let target = &events[rng.below(events.len())];
                (target.id.to_hex(), target.pubkey.to_hex())
            })
        };
        let kind = match roll {
            0..55 => {
                if rng.below(3) == 0 {
                    tags.push(vec!["t".into(), format!("tag{}", rng.below(HASHTAGS))]);
                }
                1
            }
            55..80 => {
                if let Some((id, pubkey)) = earlier(rng, &events) {
                    tags.push(vec!["e".into(), id]);
                    tags.push(vec!["p".into(), pubkey]);
                }
                7
            }
            80..88 => {
                if let Some((id, pubkey)) = earlier(rng, &events) {
                    tags.push(vec!["e".into(), id]);
                    tags.push(vec!["p".into(), pubkey]);
                }
                6
            }
            88..94 => {
                if let Some((id, pubkey)) = earlier(rng, &events) {
                    tags.push(vec!["E".into(), id.clone()]);
                    tags.push(vec!["e".into(), id]);
                    tags.push(vec!["P".into(), pubkey]);
                }
                1111
            }
            _ => {
                // Addressable, each with its own `d`: nothing is replaced,
                // so every event is delivered.
                tags.push(vec!["d".into(), format!("article-{i}")]);
                tags.push(vec!["t".into(), format!("tag{}", rng.below(HASHTAGS))]);
                30023
            }
        };
        let content = format!("load test event {i} {}", "x".repeat(rng.below(400)));
        events.push(author.sign(created_at, kind, tags, content));
    }
    events
}

/// One subscription's filters (live only: limit 0).
fn make_filters(rng: &mut Rng, keys: &[Keys], events: &[Event]) -> Vec<Filter> {
    let count = 1 + rng.below(2);
    (0..count)
        .map(|_| {
            let filter = match rng.below(7) {
                0 => Filter::new()
                    .authors((0..1 + rng.below(20)).map(|_| keys[rng.below(keys.len())].pubkey())),
                1 => Filter::new()
                    .kinds([1])
                    .authors((0..1 + rng.below(50)).map(|_| keys[rng.below(keys.len())].pubkey())),
                2 => Filter::new()
                    .kinds([7])
                    .tag('p', [keys[rng.below(keys.len())].pubkey().to_hex()]),
                3 => Filter::new().tag('t', [format!("tag{}", rng.below(HASHTAGS))]),
                4 => Filter::new().tag(
                    'e',
                    (0..1 + rng.below(5)).map(|_| events[rng.below(events.len())].id.to_hex()),
                ),
                5 => Filter::new().kinds([30023, 6]),
                _ => Filter::new().ids((0..5).map(|_| events[rng.below(events.len())].id)),
            };
            filter.limit(0)
        })
        .collect()
}

/// A subscription: its id, its filters, and the ids it must receive (sorted).
type SubPlan = (String, Vec<Filter>, Vec<EventId>);

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

/// A live message: (verb, subscription, event id).
fn parse_event_message(text: &str) -> Option<(String, String)> {
    let (verb, sub, event): (String, String, IdOnly) = serde_json::from_str(text).ok()?;
    (verb == "EVENT").then_some((sub, event.id))
}

/// A memory figure of this process from /proc/self/status, in KiB
/// (`VmRSS` now, `VmHWM` the peak); 0 where there is no /proc.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Latencies in buckets 2% apart (from 10 µs), so memory does not grow
/// with the deliveries.
#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: Duration,
}

impl Histogram {
    const BASE_US: f64 = 10.0;
    const RATIO: f64 = 1.02;

    fn record(&mut self, latency: Duration) {
        let us = (latency.as_secs_f64() * 1e6).max(Self::BASE_US);
        let bucket = ((us / Self::BASE_US).ln() / Self::RATIO.ln()) as usize;
        if self.buckets.len() <= bucket {
            self.buckets.resize(bucket + 1, 0);
        }
        self.buckets[bucket] += 1;
        self.count += 1;
        self.max = self.max.max(latency);
    }

    fn merge(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// The upper edge of the bucket holding the `p` quantile.
    fn percentile(&self, p: f64) -> Duration {
        let rank = (self.count as f64 * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = Self::BASE_US * Self::RATIO.powi(bucket as i32 + 1);
                return Duration::from_secs_f64(us / 1e6).min(self.max);
            }
        }
        self.max
    }
}

fn main() -> ExitCode {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("relay_load: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut rng = Rng(args.seed);
    let keys: Vec<Keys> = (0..AUTHORS as u64)
        .map(|i| Keys::from_seed(args.seed * 1_000_003 + i))
        .collect();
    let signing = Instant::now();
    let events = make_events(&mut rng, args.events, &keys);
    eprintln!(
        "signed {} events in {:.1} s",
        events.len(),
        signing.elapsed().as_secs_f64()
    );
    // Every subscription's filters and, by brute force, what it must get.
    let mut plans: Vec<Vec<SubPlan>> = Vec::new();
    let mut expected_total = 0usize;
    for c in 0..args.subscribers {
        let mut subs = Vec::new();
        for s in 0..args.subs {
            let filters = make_filters(&mut rng, &keys, &events);
            let mut expected: Vec<EventId> = events
                .iter()
                .filter(|e| filters.iter().any(|f| megalith::reference::matches(f, e)))
                .map(|e| e.id)
                .collect();
            expected.sort_unstable();
            expected_total += expected.len();
            subs.push((format!("c{c}s{s}"), filters, expected));
        }
        plans.push(subs);
    }

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = EventStore::builder(dir.path())
        .durability(args.durability)
        .open()
        .map_err(|e| e.to_string())?;
    let store = Arc::new(store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let limits = RelayLimits {
        max_connections_per_ip: args.subscribers + args.publishers + 10,
        max_subscriptions: args.subs.max(1),
        events_per_second: 1e9,
        events_burst: 1e9,
        ..RelayLimits::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(megalith_relay::run(
        Arc::clone(&store),
        RelayConfig {
            listen: addr,
            limits,
            ..RelayConfig::default()
        },
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let url = format!("ws://{addr}/");
    let rss_before = status_kib("VmRSS:");

    // Subscribers: connect, open every subscription, wait for EOSE, then
    // record live events until each has what it expects (or time runs out).
    let ready = Arc::new(Barrier::new(args.subscribers + 1));
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Histogram>> = Arc::default();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut subscribers = Vec::new();
    for subs in plans {
        let url = url.clone();
        let ready = Arc::clone(&ready);
        let sent_at = Arc::clone(&sent_at);
        let latencies = Arc::clone(&latencies);
        subscribers.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .map_err(|e| format!("subscriber connect: {e}"))?;
            for (id, filters, _) in &subs {
                let mut message = vec![
                    serde_json::Value::from("REQ"),
                    serde_json::Value::from(id.as_str()),
                ];
                for filter in filters {
                    message.push(serde_json::from_str(&filter.to_json()).unwrap());
                }
                ws.send(Message::text(serde_json::Value::Array(message).to_string()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let mut eose = 0;
            while eose < subs.len() {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) if text.as_str().starts_with("[\"EOSE\"") => {
                        eose += 1
                    }
                    // The NIP-42 challenge every connection gets first.
                    Some(Ok(Message::Text(text))) if text.as_str().starts_with("[\"AUTH\"") => {}
                    Some(Ok(Message::Text(text))) => {
                        return Err(format!("before EOSE: {}", text.as_str()));
                    }
                    Some(Ok(_)) => {}
                    other => return Err(format!("subscriber lost before EOSE: {other:?}")),
                }
            }
            ready.wait().await;
            let want: usize = subs.iter().map(|(_, _, e)| e.len()).sum();
            // Checked as they come, in memory fixed before the run: one
            // flag per expected event, and a latency histogram.
            let index: HashMap<&str, usize> = subs
                .iter()
                .enumerate()
                .map(|(i, (id, _, _))| (id.as_str(), i))
                .collect();
            let mut seen: Vec<Vec<bool>> =
                subs.iter().map(|(_, _, e)| vec![false; e.len()]).collect();
            let mut mismatches = Vec::new();
            let mut received = 0usize;
            let mut histogram = Histogram::default();
            while received < want {
                let message = tokio::time::timeout_at(deadline, ws.next()).await;
                let text = match message {
                    Err(_) => break,
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(_))) => continue,
                    Ok(other) => return Err(format!("subscriber lost: {other:?}")),
                };
                let Some((sub, id)) = parse_event_message(text.as_str()) else {
                    return Err(format!("unexpected message: {}", text.as_str()));
                };
                if let Some(at) = sent_at.lock().get(&id) {
                    histogram.record(at.elapsed());
                }
                received += 1;
                let id = EventId::from_hex(&id).map_err(|e| e.to_string())?;
                let Some(&i) = index.get(sub.as_str()) else {
                    mismatches.push(format!("an event for unknown subscription {sub}"));
                    continue;
                };
                match subs[i].2.binary_search(&id) {
                    Err(_) => mismatches.push(format!("{sub}: got {id}, which it does not match")),
                    Ok(at) if seen[i][at] => mismatches.push(format!("{sub}: got {id} twice")),
                    Ok(at) => seen[i][at] = true,
                }
            }
            latencies.lock().merge(&histogram);
            let _ = ws.close(None).await;
            for ((sub, _, expected), seen) in subs.iter().zip(&seen) {
                let missing = seen.iter().filter(|s| !**s).count();
                if missing > 0 {
                    mismatches.push(format!(
                        "{sub}: {missing} of its {} events never came",
                        expected.len()
                    ));
                }
            }
            Ok::<(usize, Vec<String>), String>((received, mismatches))
        }));
    }
    ready.wait().await;
    eprintln!(
        "{} connections hold {} subscriptions; publishing",
        args.subscribers,
        args.subscribers * args.subs
    );

    // Publishers: each sends its share without waiting, then reads its OKs.
    let started = Instant::now();
    let shares: Vec<Vec<Event>> = (0..args.publishers)
        .map(|p| {
            events
                .iter()
                .skip(p)
                .step_by(args.publishers)
                .cloned()
                .collect()
        })
        .collect();
    let mut publishers = Vec::new();
    for share in shares {
        let url = url.clone();
        let sent_at = Arc::clone(&sent_at);
        let window = Arc::new(tokio::sync::Semaphore::new(args.window));
        publishers.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .map_err(|e| format!("publisher connect: {e}"))?;
            let (mut tx, mut rx) = ws.split();
            let n = share.len();
            let permits = Arc::clone(&window);
            let sender = tokio::spawn(async move {
                for event in share {
                    let Ok(permit) = permits.acquire().await else {
                        return tx;
                    };
                    permit.forget();
                    sent_at.lock().insert(event.id.to_hex(), Instant::now());
                    let message = format!("[\"EVENT\",{}]", event.to_json());
                    if tx.send(Message::text(message)).await.is_err() {
                        return tx;
                    }
                }
                tx
            });
            let mut refused = Vec::new();
            let mut oks = 0;
            while oks < n {
                match rx.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let reply: serde_json::Value =
                            serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
                        if reply[0] == "OK" {
                            oks += 1;
                            window.add_permits(1);
                            if reply[2] != true {
                                refused.push(reply.to_string());
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    other => return Err(format!("publisher lost: {other:?}")),
                }
            }
            let mut tx = sender.await.map_err(|e| e.to_string())?;
            let _ = tx.close().await;
            Ok::<Vec<String>, String>(refused)
        }));
    }
    for publisher in publishers {
        let refused = publisher.await.map_err(|e| e.to_string())??;
        if !refused.is_empty() {
            return Err(format!(
                "{} events refused, first: {}",
                refused.len(),
                refused[0]
            ));
        }
    }
    let published = started.elapsed();
    let mut delivered = 0usize;
    let mut mismatches: Vec<String> = Vec::new();
    for subscriber in subscribers {
        let (received, problems) = subscriber.await.map_err(|e| e.to_string())??;
        delivered += received;
        mismatches.extend(problems);
    }
    let all_delivered = started.elapsed();
    let peak_kib = status_kib("VmHWM:");
    let _ = stop.send(());
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;

    let latencies = std::mem::take(&mut *latencies.lock());
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| connections × subscriptions | {} × {} = {} |",
        args.subscribers,
        args.subs,
        args.subscribers * args.subs
    );
    println!(
        "| publishers (EVENTs in flight each) | {} ({}) |",
        args.publishers, args.window
    );
    println!("| events published (all OK true) | {} |", events.len());
    println!(
        "| events/s in (send to last OK) | {:.0} |",
        events.len() as f64 / published.as_secs_f64()
    );
    println!("| deliveries expected / received | {expected_total} / {delivered} |");
    println!(
        "| deliveries/s out (first send to last delivery) | {:.0} |",
        delivered as f64 / all_delivered.as_secs_f64()
    );
    println!(
        "| delivery latency p50 / p99 / max (EVENT sent to live EVENT received) | {:.1} / {:.1} / {:.1} ms |",
        latencies.percentile(0.5).as_secs_f64() * 1e3,
        latencies.percentile(0.99).as_secs_f64() * 1e3,
        latencies.max.as_secs_f64() * 1e3
    );
    println!(
        "| process RSS before / peak (relay and every client) | {} / {} MiB |",
        rss_before / 1024,
        peak_kib / 1024
    );
    if !mismatches.is_empty() {
        for problem in mismatches.iter().take(20) {
            eprintln!("mismatch: {problem}");
        }
        return Err(format!(
            "{} subscriptions got the wrong events",
            mismatches.len()
        ));
    }
    if delivered != expected_total {
        return Err(format!("delivered {delivered}, expected {expected_total}"));
    }
    eprintln!("every subscription got exactly its events, once each");
    Ok(())
}
