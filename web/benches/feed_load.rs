//! The feed pages under load (issue 15's load test), over HTTP against
//! `megalith serve` processes on loopback, on the data of the feed-jobs
//! benchmark (ingest/benches/feed_jobs.rs: 1M generated events on three
//! relays whose relay lists name them).
//!
//!   scripts/feed-load.sh      (prepares the data, then runs this)
//!
//! Part 1, people: a fresh `megalith serve` whose feed jobs start from the
//! first relay; N simulated people (20) with distinct npubs and addresses
//! (X-Forwarded-For through a trusted proxy) GET /start at once, then poll
//! /timeline every 250 ms as a browser without script would, until their
//! first screen (50 posts) is full and their job is done. Reported: time to
//! the first post and to a full first screen per person (p50, p99),
//! /timeline latency while the jobs ingest (p50, p99), the server's peak RSS.
//!
//! Part 2, the read: the server's store holds all 1M events (a copy of a
//! store made once), and a `[[mirror]]` copies 300,000 new events into it
//! from a fourth relay while /timeline is read for the person whose
//! follows are nearest 500 (and for the largest list): latency p50, p99.
//!
//! Settings from the environment: FEED_BENCH_DIR (target/feed-bench),
//! FEED_LOAD_PEOPLE (20), MEGALITH_BIN (target/release/megalith).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../tests/service/bench.rs"]
mod bench;
#[path = "../../tests/service/process.rs"]
mod process;

use bench::{dir, env, peak_rss_mib, percentile, root};
use megalith::Pubkey;
use megalith::event::nip19;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Deserialize)]
struct Prepared {
    ports: Vec<u16>,
    people: Vec<(String, usize)>,
}

const SCREEN: usize = 50;

/// A GET over HTTP/1.0: (status, body, milliseconds).
async fn get(addr: SocketAddr, path: &str, from: &str) -> (u16, String, f64) {
    let t = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: bench\r\nX-Forwarded-For: {from}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut bytes = Vec::new();
    tcp.read_to_end(&mut bytes).await.unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let text = String::from_utf8_lossy(&bytes).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body, ms)
}

fn posts_on(body: &str) -> usize {
    body.matches("<li class=\"post\"").count()
}

struct Person {
    first_post_ms: Option<f64>,
    screen_ms: Option<f64>,
    latencies: Vec<f64>,
}

async fn person(addr: SocketAddr, npub: String, from: String) -> Person {
    let t = Instant::now();
    let (status, _, _) = get(addr, &format!("/start?npub={npub}"), &from).await;
    assert_eq!(status, 302, "/start for {npub}");
    let mut out = Person {
        first_post_ms: None,
        screen_ms: None,
        latencies: Vec::new(),
    };
    while t.elapsed() < Duration::from_secs(90) {
        let (status, body, ms) = get(addr, &format!("/timeline?npub={npub}"), &from).await;
        assert_eq!(status, 200);
        out.latencies.push(ms);
        let shown = posts_on(&body);
        let at = t.elapsed().as_secs_f64() * 1e3;
        if shown > 0 && out.first_post_ms.is_none() {
            out.first_post_ms = Some(at);
        }
        if shown >= SCREEN && out.screen_ms.is_none() {
            out.screen_ms = Some(at);
        }
        let running = body.contains("data-live=\"1\"");
        if out.screen_ms.is_some() && !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

/// `megalith import --trusted` of JSONL bytes into `data`.
fn import_trusted(bin: &Path, data: &Path, jsonl: &[u8]) {
    use std::io::Write;
    let mut import = Command::new(bin)
        .args(["import", "--trusted", "--quiet", "--data"])
        .arg(data)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(jsonl).unwrap();
    assert!(import.wait().unwrap().success());
}

/// `rounds` reads of /timeline, alternating between two people: the
/// latencies of each and the posts each page showed.
async fn read_timelines(
    addr: SocketAddr,
    people: [&str; 2],
    rounds: usize,
) -> ([Vec<f64>; 2], [usize; 2]) {
    let mut ms = [Vec::new(), Vec::new()];
    let mut shown = [0, 0];
    for i in 0..rounds {
        let who = i % 2;
        let (status, body, took) = get(
            addr,
            &format!("/timeline?npub={}", people[who]),
            "127.0.0.1",
        )
        .await;
        assert_eq!(status, 200);
        ms[who].push(took);
        shown[who] = posts_on(&body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ms, shown)
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let dir = dir();
    let prepared: Prepared = serde_json::from_str(
        &std::fs::read_to_string(dir.join("prepared.json"))
            .expect("no prepared data: scripts/feed-load.sh prepares it"),
    )
    .unwrap();
    let bin = std::env::var("MEGALITH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/release/megalith"));
    let wanted = env("FEED_LOAD_PEOPLE", 20).min(prepared.people.len());
    // The stores of part 2, made once (before the relays hold theirs open).
    let full = dir.join("web-1m");
    if !full.join("MANIFEST").exists() {
        let _ = std::fs::remove_dir_all(&full);
        eprintln!(
            "feed-load: building a store of every event once ({})",
            full.display()
        );
        for i in 0..prepared.ports.len() {
            let dump = Command::new(&bin)
                .args(["query", "--data"])
                .arg(dir.join(format!("relay{i}")))
                .arg("{}")
                .output()
                .unwrap();
            assert!(
                dump.status.success(),
                "{}",
                String::from_utf8_lossy(&dump.stderr)
            );
            import_trusted(&bin, &full, &dump.stdout);
        }
    }
    let fresh = dir.join("fresh-300k");
    if !fresh.join("MANIFEST").exists() {
        let _ = std::fs::remove_dir_all(&fresh);
        let generate = Command::new(&bin)
            .args(["generate", "--count", "300000", "--seed", "99", "--quiet"])
            .output()
            .unwrap();
        assert!(generate.status.success());
        import_trusted(&bin, &fresh, &generate.stdout);
    }
    let relays: Vec<process::KillOnDrop> = prepared
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            process::serve_with(
                &bin,
                &dir.join(format!("relay{i}")),
                &format!("127.0.0.1:{port}"),
                &["--feed", "off"],
            )
        })
        .collect();
    let first_relay = format!("ws://127.0.0.1:{}", prepared.ports[0]);
    let npub = |hex: &str| nip19::encode_npub(&Pubkey::from_hex(hex).unwrap());

    // Part 1: N people at once on a fresh server.
    let data = dir.join("load-web");
    let _ = std::fs::remove_dir_all(&data);
    let port = process::free_port();
    let web = process::serve_with(
        &bin,
        &data,
        &format!("127.0.0.1:{port}"),
        &[
            "--relay",
            &first_relay,
            "--allow-private-relays",
            "--trusted-proxy",
            "127.0.0.1/32",
        ],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = Instant::now();
    let tasks: Vec<_> = prepared.people[..wanted]
        .iter()
        .enumerate()
        .map(|(i, (hex, _))| {
            tokio::spawn(person(
                addr,
                npub(hex),
                format!("10.0.{}.{}", i / 250, i % 250 + 1),
            ))
        })
        .collect();
    let mut people = Vec::new();
    for task in tasks {
        people.push(task.await.unwrap());
    }
    let wall = t.elapsed().as_secs_f64();
    let rss = peak_rss_mib(&web.id().to_string());
    process::stop(web);
    let mut first: Vec<f64> = people.iter().filter_map(|p| p.first_post_ms).collect();
    let mut screen: Vec<f64> = people.iter().filter_map(|p| p.screen_ms).collect();
    let mut pages: Vec<f64> = people.iter().flat_map(|p| p.latencies.clone()).collect();
    let no_post = people.iter().filter(|p| p.first_post_ms.is_none()).count();
    let part1 = serde_json::json!({
        "people": wanted,
        "follows": prepared.people[..wanted].iter().map(|(_, n)| n).collect::<Vec<_>>(),
        "without_posts": no_post,
        "first_post_ms": {"p50": percentile(&mut first, 0.5), "p99": percentile(&mut first, 0.99), "max": percentile(&mut first, 1.0)},
        "first_screen_ms": {"p50": percentile(&mut screen, 0.5), "p99": percentile(&mut screen, 0.99)},
        "timeline_ms": {"requests": pages.len(), "p50": percentile(&mut pages, 0.5), "p99": percentile(&mut pages, 0.99)},
        "peak_rss_mib": rss,
        "wall_s": wall,
    });
    eprintln!(
        "feed-load: {wanted} people at once: first post p50 {:.0} ms p99 {:.0} ms (max {:.0}); first screen p50 {:.0} ms p99 {:.0} ms; /timeline ({} requests while ingesting) p50 {:.2} ms p99 {:.2} ms; peak RSS {rss:.0} MiB; {no_post} without posts",
        part1["first_post_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        part1["first_post_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        part1["first_post_ms"]["max"].as_f64().unwrap_or(f64::NAN),
        part1["first_screen_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        part1["first_screen_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
        pages.len(),
        part1["timeline_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
        part1["timeline_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
    );

    // Part 2: the read on a 1M-event store while a mirror writes into it.
    let run_dir = dir.join("web-1m-run");
    let _ = std::fs::remove_dir_all(&run_dir);
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&full)
            .arg(&run_dir)
            .status()
            .unwrap()
            .success()
    );
    let fresh_port = process::free_port();
    let fresh_relay = process::serve_with(
        &bin,
        &fresh,
        &format!("127.0.0.1:{fresh_port}"),
        &["--feed", "off"],
    );
    let config = dir.join("web-1m-run.toml");
    std::fs::write(
        &config,
        format!("[[mirror]]\nrelays = [\"ws://127.0.0.1:{fresh_port}\"]\n"),
    )
    .unwrap();
    let (near_500, _) = prepared
        .people
        .iter()
        .min_by_key(|(_, n)| n.abs_diff(500))
        .unwrap();
    let (largest, largest_n) = prepared.people.iter().max_by_key(|(_, n)| *n).unwrap();
    let near_n = prepared
        .people
        .iter()
        .find(|(h, _)| h == near_500)
        .unwrap()
        .1;
    let who = [npub(near_500), npub(largest)];
    let who = [who[0].as_str(), who[1].as_str()];
    // Quiet first: the same store, nothing writing.
    let port = process::free_port();
    let web = process::serve_with(&bin, &run_dir, &format!("127.0.0.1:{port}"), &[]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ([mut quiet_near, mut quiet_big], _) = read_timelines(addr, who, 300).await;
    process::stop(web);
    let port = process::free_port();
    let web = process::serve_with(
        &bin,
        &run_dir,
        &format!("127.0.0.1:{port}"),
        &["--config", config.to_str().unwrap()],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stored = |metrics: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("megalith_ingest_relay_stored_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    // Reads start once the mirror is storing.
    let t = Instant::now();
    loop {
        let (_, metrics, _) = get(addr, "/metrics", "127.0.0.1").await;
        if stored(&metrics) > 0 || t.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, before, _) = get(addr, "/metrics", "127.0.0.1").await;
    let t = Instant::now();
    let ([mut near, mut big], shown) = read_timelines(addr, who, 300).await;
    let secs = t.elapsed().as_secs_f64();
    let (_, after, _) = get(addr, "/metrics", "127.0.0.1").await;
    let ingested = stored(&after).saturating_sub(stored(&before));
    process::stop(web);
    process::stop(fresh_relay);
    for relay in relays {
        process::stop(relay);
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    let part2 = serde_json::json!({
        "near_500": {"follows": near_n, "posts_shown": shown[0], "p50_ms": percentile(&mut near, 0.5), "p99_ms": percentile(&mut near, 0.99),
            "quiet_p50_ms": percentile(&mut quiet_near, 0.5), "quiet_p99_ms": percentile(&mut quiet_near, 0.99)},
        "largest": {"follows": largest_n, "posts_shown": shown[1], "p50_ms": percentile(&mut big, 0.5), "p99_ms": percentile(&mut big, 0.99),
            "quiet_p50_ms": percentile(&mut quiet_big, 0.5), "quiet_p99_ms": percentile(&mut quiet_big, 0.99)},
        "ingested_while_reading": ingested,
        "ingest_per_s": ingested as f64 / secs,
    });
    eprintln!(
        "feed-load: /timeline on the 1M-event store, nothing writing: {near_n} follows p50 {:.2} ms p99 {:.2} ms; {largest_n} follows p50 {:.2} ms p99 {:.2} ms",
        part2["near_500"]["quiet_p50_ms"]
            .as_f64()
            .unwrap_or(f64::NAN),
        part2["near_500"]["quiet_p99_ms"]
            .as_f64()
            .unwrap_or(f64::NAN),
        part2["largest"]["quiet_p50_ms"]
            .as_f64()
            .unwrap_or(f64::NAN),
        part2["largest"]["quiet_p99_ms"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    eprintln!(
        "feed-load: /timeline on the 1M-event store while a mirror stored {ingested} events ({:.0}/s): {near_n} follows p50 {:.2} ms p99 {:.2} ms; {largest_n} follows p50 {:.2} ms p99 {:.2} ms",
        ingested as f64 / secs,
        part2["near_500"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        part2["near_500"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
        part2["largest"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        part2["largest"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "{}",
        serde_json::json!({"people": part1, "read_on_1m": part2})
    );
}
