//! `batchtest`: the stress tester. Generates a realistic, signed event
//! stream, inserts it in batches from several threads, checks every
//! insert's outcome and a sample of random queries against the brute-force
//! reference (before and after reopening), and reports throughput, latency
//! per query shape, bytes on disk per event and peak memory. Exits 1 on any
//! mismatch, 2 when it cannot run. When nobody reads the report (`batchtest
//! | head -1`), the rest of it is dropped and the status is the same.
#![deny(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "println! and eprintln! panic on a closed pipe: write through output.rs"
)]

#[path = "../common/output.rs"]
mod output;
mod queries;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use megalith::datagen::{GenConfig, Generator};
use megalith::reference::{RefOutcome, Reference};
use megalith::{Durability, Event, EventId, EventStore, InsertOutcome};

use output::{Output, errln};
use queries::{Query, SEARCH_SHAPES, SHAPES, Sampler};

#[derive(Parser)]
#[command(
    name = "batchtest",
    version,
    about = "Stress-test a Megalith store: generate, insert in batches, verify against a brute-force reference, report"
)]
struct Cli {
    /// Events to generate and insert.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Events per insert call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Random queries checked against the reference after the inserts
    /// (and a tenth as many again after reopening the store).
    #[arg(long, default_value_t = 10_000)]
    verify: usize,
    /// Shards of the new store [default: one per core].
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
    /// When an insert is on disk: `always` fsyncs every batch before it is
    /// acknowledged, `batch` at least every 100 ms, `never` only at close.
    #[arg(long, value_enum, default_value = "always")]
    durability: DurabilityArg,
    /// Threads inserting at once; each takes the events of its share of the
    /// authors, in order [default: one per core].
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
    /// Keep the NIP-50 search index in the store, and also check and time
    /// search queries (one word, two or three words of a note, a video
    /// title word, a COUNT of a two-word search).
    #[arg(long)]
    search: bool,
    /// Insert with `insert_trusted` (no id or signature checks).
    #[arg(long)]
    trusted: bool,
    /// Seed of the generated events and of the queries.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct authors in the generated stream.
    #[arg(long, default_value_t = 10_000)]
    authors: usize,
    /// Store directory; must be missing or empty [default: a new temporary
    /// directory, removed at the end unless --keep].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Keep the temporary store directory.
    #[arg(long)]
    keep: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Always,
    Batch,
    Never,
}

impl DurabilityArg {
    fn durability(self) -> Durability {
        match self {
            DurabilityArg::Always => Durability::Always,
            DurabilityArg::Batch => Durability::Batch(Duration::from_millis(100)),
            DurabilityArg::Never => Durability::Never,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DurabilityArg::Always => "always",
            DurabilityArg::Batch => "batch",
            DurabilityArg::Never => "never",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            errln!("batchtest: {message}");
            ExitCode::from(2)
        }
    }
}

/// A store directory that is removed when dropped, unless kept.
struct DataDir {
    path: PathBuf,
    remove: bool,
}

impl DataDir {
    fn new(cli: &Cli) -> Result<DataDir, String> {
        match &cli.data {
            Some(path) => {
                let used = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some());
                if used {
                    return Err(format!(
                        "{} is not empty: batchtest needs a new store to compare with its reference",
                        path.display()
                    ));
                }
                Ok(DataDir {
                    path: path.clone(),
                    remove: false,
                })
            }
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let path = std::env::temp_dir()
                    .join(format!("batchtest-{}-{nanos:09}", std::process::id()));
                Ok(DataDir {
                    path,
                    remove: !cli.keep,
                })
            }
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            errln!("batchtest: the store is in {}", self.path.display());
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{msg:>10} {wide_bar} {human_pos}/{human_len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything measured, for the report.
#[derive(Default)]
struct Report {
    generated: usize,
    json_bytes: u64,
    generate_seconds: f64,
    insert_seconds: f64,
    batch_latency: Vec<Duration>,
    stored: usize,
    /// The first 20 of `outcome_mismatch_count`.
    outcome_mismatches: Vec<String>,
    outcome_mismatch_count: usize,
    shapes: Vec<(&'static str, Vec<Duration>)>,
    /// The first 20 of `query_mismatch_count`.
    query_mismatches: Vec<String>,
    query_mismatch_count: usize,
    queries_checked: usize,
    reopen_seconds: f64,
    disk_bytes: u64,
    apparent_bytes: u64,
    peak_rss_bytes: Option<u64>,
}

fn run(cli: &Cli) -> Result<bool, String> {
    if cli.batch == 0 || cli.count == 0 || cli.authors == 0 {
        return Err("--count, --batch and --authors must be at least 1".to_string());
    }
    let threads = cli.threads.unwrap_or_else(cores).max(1);
    let data = DataDir::new(cli)?;
    let mut report = Report::default();

    // 1. Generate.
    let started = Instant::now();
    let mut generator = Generator::new(GenConfig {
        seed: cli.seed,
        authors: cli.authors,
        ..GenConfig::default()
    });
    let progress = bar(cli.count as u64, "generate");
    let mut events: Vec<Event> = Vec::with_capacity(cli.count);
    while events.len() < cli.count {
        let n = (cli.count - events.len()).min(10_000);
        events.extend(generator.batch(n, cores()));
        progress.set_position(events.len() as u64);
    }
    progress.finish_and_clear();
    report.generated = events.len();
    report.json_bytes = events.iter().map(|e| e.to_json().len() as u64 + 1).sum();
    report.generate_seconds = started.elapsed().as_secs_f64();

    // 2. Insert, each thread in the order of its authors' events.
    let mut builder = EventStore::builder(&data.path).durability(cli.durability.durability());
    if let Some(shards) = cli.shards {
        builder = builder.shards(shards);
    }
    if cli.search {
        builder = builder.search(true);
    }
    let store = builder
        .open()
        .map_err(|e| format!("cannot open {}: {e}", data.path.display()))?;
    let outcomes = insert(&store, &events, cli, threads, &mut report)?;

    // 3. Every outcome against the reference, fed the whole stream in order.
    let now = now();
    let mut reference = Reference::new();
    for (event, outcome) in events.iter().zip(&outcomes) {
        let expected = reference.insert(event, now);
        if RefOutcome::of(outcome) != expected {
            report.outcome_mismatch_count += 1;
            if report.outcome_mismatches.len() < 20 {
                report.outcome_mismatches.push(format!(
                    "event {}: the store said {outcome:?}, the reference {expected:?}",
                    event.id
                ));
            }
        }
    }
    report.stored = reference.len();
    drop(events);

    // 4. Random queries, timed on this thread, then checked in parallel.
    let mut sampler = Sampler::new(&reference, cli.seed ^ 0x5eed);
    let shapes: Vec<&'static str> = if cli.search {
        SHAPES.iter().chain(&SEARCH_SHAPES).copied().collect()
    } else {
        SHAPES.to_vec()
    };
    let queries: Vec<Query> = (0..cli.verify)
        .map(|i| sampler.query(shapes[i % shapes.len()]))
        .collect();
    let answers = run_queries(&store, &queries, &shapes, "query", Some(&mut report))?;
    check(&reference, &queries, &answers, threads, &mut report);

    // 5. Close, reopen, check again: what was acknowledged is still there.
    store
        .close()
        .map_err(|e| format!("closing the store: {e}"))?;
    let started = Instant::now();
    let store = EventStore::open(&data.path).map_err(|e| format!("reopening the store: {e}"))?;
    report.reopen_seconds = started.elapsed().as_secs_f64();
    let again: Vec<Query> = (0..cli.verify.div_ceil(10))
        .map(|i| sampler.query(shapes[i % shapes.len()]))
        .collect();
    let answers = run_queries(&store, &again, &shapes, "reopened", None)?;
    check(&reference, &again, &answers, threads, &mut report);
    let total = store
        .count(&[megalith::Filter::new()])
        .map_err(|e| e.to_string())?;
    if total != reference.len() as u64 {
        report.query_mismatch_count += 1;
        report.query_mismatches.push(format!(
            "after reopening the store holds {total} events, the reference {}",
            reference.len()
        ));
    }
    store
        .close()
        .map_err(|e| format!("closing the store: {e}"))?;

    (report.disk_bytes, report.apparent_bytes) = disk_usage(&data.path);
    report.peak_rss_bytes = peak_rss();
    let mut out = Output::stdout();
    print_report(&mut out, cli, threads, &report)
        .and_then(|()| out.finish())
        .map_err(|e| format!("writing the report: {e}"))?;
    Ok(report.outcome_mismatch_count == 0 && report.query_mismatch_count == 0)
}

/// One insert thread's outcomes (with each event's position in the stream)
/// and batch latencies.
type ThreadResult = (Vec<(usize, InsertOutcome)>, Vec<Duration>);

/// Inserts the events from `threads` threads, each owning the authors whose
/// pubkey falls in its share, so every author's events arrive in order and
/// the final state does not depend on how the threads interleave.
fn insert(
    store: &EventStore,
    events: &[Event],
    cli: &Cli,
    threads: usize,
    report: &mut Report,
) -> Result<Vec<InsertOutcome>, String> {
    let mut streams: Vec<Vec<usize>> = vec![Vec::new(); threads];
    for (i, event) in events.iter().enumerate() {
        let mut head = [0u8; 8];
        head.copy_from_slice(&event.pubkey.0[..8]);
        streams[(u64::from_le_bytes(head) % threads as u64) as usize].push(i);
    }
    let progress = bar(events.len() as u64, "insert");
    let inserted = AtomicU64::new(0);
    let started = Instant::now();
    let results: Vec<Result<ThreadResult, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = streams
            .iter()
            .map(|stream| {
                let (progress, inserted) = (&progress, &inserted);
                scope.spawn(move || {
                    let mut outcomes = Vec::with_capacity(stream.len());
                    let mut latency = Vec::new();
                    for chunk in stream.chunks(cli.batch) {
                        let batch: Vec<Event> = chunk.iter().map(|&i| events[i].clone()).collect();
                        let started = Instant::now();
                        let result = if cli.trusted {
                            store.insert_trusted(&batch)
                        } else {
                            store.insert(&batch)
                        };
                        latency.push(started.elapsed());
                        let result = result.map_err(|e| format!("insert failed: {e}"))?;
                        outcomes.extend(chunk.iter().copied().zip(result));
                        let done = inserted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        progress.set_position(done + chunk.len() as u64);
                    }
                    Ok((outcomes, latency))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("an insert thread panicked".to_string()))
            })
            .collect()
    });
    report.insert_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let mut outcomes: Vec<Option<InsertOutcome>> = vec![None; events.len()];
    for result in results {
        let (done, latency) = result?;
        report.batch_latency.extend(latency);
        for (i, outcome) in done {
            outcomes[i] = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| "an event got no outcome".to_string()))
        .collect()
}

/// What a query returned: event ids in order, or a count.
enum Answer {
    Events(Vec<EventId>),
    Count(u64),
}

fn run_queries(
    store: &EventStore,
    queries: &[Query],
    shapes: &[&'static str],
    what: &str,
    report: Option<&mut Report>,
) -> Result<Vec<Answer>, String> {
    let progress = bar(queries.len() as u64, what);
    let mut answers = Vec::with_capacity(queries.len());
    let mut timings: Vec<(&'static str, Vec<Duration>)> =
        shapes.iter().map(|s| (*s, Vec::new())).collect();
    for query in queries {
        let started = Instant::now();
        let answer = if query.count {
            Answer::Count(store.count(&query.filters).map_err(|e| e.to_string())?)
        } else {
            let mut ids = Vec::new();
            store
                .query_with(&query.filters, |event| {
                    ids.push(event.id());
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            Answer::Events(ids)
        };
        let elapsed = started.elapsed();
        if let Some((_, times)) = timings.iter_mut().find(|(s, _)| *s == query.shape) {
            times.push(elapsed);
        }
        answers.push(answer);
        progress.inc(1);
    }
    progress.finish_and_clear();
    if let Some(report) = report {
        report.shapes = timings;
    }
    Ok(answers)
}

/// Compares every answer with the reference's, on `threads` threads.
fn check(
    reference: &Reference,
    queries: &[Query],
    answers: &[Answer],
    threads: usize,
    report: &mut Report,
) {
    let now = now();
    let progress = bar(queries.len() as u64, "check");
    let per_thread = queries.len().div_ceil(threads).max(1);
    let found: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = queries
            .chunks(per_thread)
            .zip(answers.chunks(per_thread))
            .map(|(queries, answers)| {
                let progress = &progress;
                scope.spawn(move || {
                    let mut wrong = Vec::new();
                    for (query, answer) in queries.iter().zip(answers) {
                        if let Some(problem) = compare(reference, query, answer, now) {
                            wrong.push(problem);
                        }
                        progress.inc(1);
                    }
                    wrong
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec!["a check thread panicked".into()])
            })
            .collect()
    });
    progress.finish_and_clear();
    report.queries_checked += queries.len();
    report.query_mismatch_count += found.len();
    for problem in found {
        if report.query_mismatches.len() < 20 {
            report.query_mismatches.push(problem);
        }
    }
}

fn compare(reference: &Reference, query: &Query, answer: &Answer, now: u64) -> Option<String> {
    let filters: String = query
        .filters
        .iter()
        .map(|f| f.to_json())
        .collect::<Vec<_>>()
        .join(",");
    match answer {
        Answer::Count(got) => {
            let expected = reference.count(&query.filters, now);
            (*got != expected).then(|| {
                format!(
                    "{} [{filters}]: COUNT {got}, reference {expected}",
                    query.shape
                )
            })
        }
        Answer::Events(got) => {
            let expected: Vec<EventId> = reference
                .query(&query.filters, now)
                .iter()
                .map(|e| e.id)
                .collect();
            (*got != expected).then(|| {
                let first = got.iter().zip(&expected).position(|(a, b)| a != b);
                format!(
                    "{} [{filters}]: {} events, reference {}; first difference at {}",
                    query.shape,
                    got.len(),
                    expected.len(),
                    first.map_or("the end".to_string(), |i| format!("position {i}"))
                )
            })
        }
    }
}

/// Allocated and apparent bytes of every file under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return total;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (allocated, apparent) = disk_usage(&entry.path());
            total.0 += allocated;
            total.1 += apparent;
        } else {
            total.0 += meta.blocks() * 512;
            total.1 += meta.len();
        }
    }
    total
}

/// The process's peak resident set (VmHWM), where the system reports it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// p50, p99 and max of some durations, in microseconds.
fn percentiles(times: &[Duration]) -> Option<(f64, f64, f64)> {
    if times.is_empty() {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i].as_secs_f64() * 1e6
    };
    Some((at(0.50), at(0.99), at(1.0)))
}

fn print_report(out: &mut Output, cli: &Cli, threads: usize, r: &Report) -> io::Result<()> {
    let rate = r.generated as f64 / r.insert_seconds.max(1e-9);
    let per_event = r.disk_bytes as f64 / r.stored.max(1) as f64;
    let ratio = r.disk_bytes as f64 / r.json_bytes.max(1) as f64;
    let batches = percentiles(&r.batch_latency);
    if cli.json {
        let shapes: serde_json::Map<String, serde_json::Value> = r
            .shapes
            .iter()
            .filter_map(|(shape, times)| {
                let (p50, p99, max) = percentiles(times)?;
                Some((
                    shape.to_string(),
                    serde_json::json!({"queries": times.len(), "p50_us": p50, "p99_us": p99, "max_us": max}),
                ))
            })
            .collect();
        let doc = serde_json::json!({
            "events": r.generated, "stored": r.stored, "json_bytes": r.json_bytes,
            "shards": cli.shards, "threads": threads, "batch": cli.batch,
            "durability": cli.durability.name(), "verified": !cli.trusted, "seed": cli.seed,
            "generate_seconds": r.generate_seconds,
            "insert_seconds": r.insert_seconds, "insert_events_per_second": rate,
            "batch_latency_us": batches.map(|(p50, p99, max)| serde_json::json!({"p50": p50, "p99": p99, "max": max})),
            "queries": shapes,
            "queries_checked": r.queries_checked,
            "reopen_seconds": r.reopen_seconds,
            "disk_bytes": r.disk_bytes, "apparent_bytes": r.apparent_bytes,
            "disk_bytes_per_stored_event": per_event, "disk_to_json_ratio": ratio,
            "peak_rss_bytes": r.peak_rss_bytes,
            "outcome_mismatches": r.outcome_mismatch_count,
            "query_mismatches": r.query_mismatch_count,
            "first_mismatches": r.outcome_mismatches.iter().chain(&r.query_mismatches).collect::<Vec<_>>(),
        });
        return writeln!(out, "{doc}");
    }
    writeln!(
        out,
        "batchtest: {} events (seed {}, {} authors), batches of {}, {} insert threads, durability {}, {}",
        r.generated,
        cli.seed,
        cli.authors,
        cli.batch,
        threads,
        cli.durability.name(),
        if cli.trusted { "trusted" } else { "verified" }
    )?;
    writeln!(
        out,
        "generate   {:.1} s ({:.0} events/s)",
        r.generate_seconds,
        r.generated as f64 / r.generate_seconds.max(1e-9)
    )?;
    writeln!(
        out,
        "insert     {:.2} s, {rate:.0} events/s; {} stored after replacements and deletions",
        r.insert_seconds, r.stored
    )?;
    if let Some((p50, p99, max)) = batches {
        writeln!(
            out,
            "  per batch  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            p50 / 1e3,
            p99 / 1e3,
            max / 1e3
        )?;
    }
    writeln!(out, "queries    latency per shape (µs)")?;
    writeln!(
        out,
        "  {:<18} {:>7} {:>10} {:>10} {:>10}",
        "shape", "count", "p50", "p99", "max"
    )?;
    for (shape, times) in &r.shapes {
        if let Some((p50, p99, max)) = percentiles(times) {
            writeln!(
                out,
                "  {shape:<18} {:>7} {p50:>10.1} {p99:>10.1} {max:>10.1}",
                times.len()
            )?;
        }
    }
    writeln!(out, "reopen     {:.3} s", r.reopen_seconds)?;
    writeln!(
        out,
        "disk       {} bytes ({:.0} per stored event; {ratio:.2}x the {} bytes of JSONL inserted)",
        r.disk_bytes, per_event, r.json_bytes
    )?;
    if let Some(peak) = r.peak_rss_bytes {
        writeln!(
            out,
            "memory     peak RSS {:.0} MiB (events, reference and store together)",
            peak as f64 / (1 << 20) as f64
        )?;
    }
    writeln!(
        out,
        "checked    {} outcomes, {} queries: {} outcome and {} query mismatches",
        r.generated, r.queries_checked, r.outcome_mismatch_count, r.query_mismatch_count
    )?;
    for problem in r.outcome_mismatches.iter().chain(&r.query_mismatches) {
        writeln!(out, "  MISMATCH {problem}")?;
    }
    Ok(())
}
