//! `megalith-peers`: loads one JSONL dataset into Megalith, nostr-lmdb,
//! nostrdb and SQLite with nostr-rs-relay's schema, times ingest and the
//! query workloads of issue 4 on each, and prints a markdown table of
//! medians, p99 and the ratio to Megalith.

mod dataset;
mod disk;
mod peers;
mod report;
mod run;
mod verify_rate;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

use crate::dataset::Dataset;
use crate::peers::{Config, DurabilityClass, PeerKind};
use crate::run::{Plan, progress};
use crate::workload::Samples;

/// Benchmarks Megalith against nostr-lmdb, nostrdb and SQLite (nostr-rs-relay's
/// schema) on one dataset: W1 verified ingest, W1b trusted ingest, W2 id
/// look-up, W3 author feed, W4 follow feed (and 20 pages deep), W5 tag query,
/// W6 count, W8 bytes on disk. Prints a markdown table to stdout.
#[derive(Debug, Parser)]
#[command(name = "megalith-peers", version)]
struct Args {
    /// The dataset: JSON Lines of events (an event object, ["EVENT", e] or
    /// ["EVENT", sub, e] per line). Every peer loads this same file.
    #[arg(long, value_name = "FILE.jsonl")]
    events: PathBuf,

    /// The stores to run, comma-separated, from megalith, nostr-lmdb, nostrdb, sqlite.
    #[arg(long, default_value = "megalith,nostr-lmdb,nostrdb,sqlite")]
    peers: String,

    /// Where the stores go (each peer gets its own subdirectory, removed
    /// afterwards unless --keep). Default: a new temporary directory.
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,

    /// Timed samples per query workload.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    queries: usize,

    /// Untimed warm-up queries before each workload.
    #[arg(long, default_value_t = 100, value_name = "N")]
    warmup: usize,

    /// Follow sets paged 20 pages deep for W4 paginated.
    #[arg(long, default_value_t = 100, value_name = "N")]
    page_samples: usize,

    /// Events per ingest batch.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    batch: usize,

    /// Threads feeding ingest batches at once to Megalith, nostr-lmdb and
    /// SQLite (nostrdb parses and verifies on its own ingester threads, one
    /// per core). Default: the number of cores.
    #[arg(long, value_name = "N")]
    writers: Option<usize>,

    /// always: every acknowledged batch is fsynced (Megalith Durability::Always,
    /// SQLite synchronous=FULL, LMDB's default). relaxed: Megalith
    /// Durability::Batch(1 s), SQLite synchronous=NORMAL (nostr-rs-relay's
    /// setting); the LMDB peers have no such setting and stay synced.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Always)]
    durability: DurabilityArg,

    /// Seconds one workload may run on one peer before its remaining samples are left out.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    budget: u64,

    /// Seed of the query sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Keep nostrdb's full-text index, note blocks and reaction stats (its
    /// defaults); by default they are off, as no other peer builds them.
    #[arg(long)]
    nostrdb_full: bool,

    /// Give Megalith its NIP-50 search index (off by default, as for
    /// nostrdb; pair it with --nostrdb-full for a like-for-like run).
    #[arg(long)]
    megalith_search: bool,

    /// Skip W1 (the verified ingest).
    #[arg(long)]
    skip_w1: bool,

    /// Keep the stores in the work directory.
    #[arg(long)]
    keep: bool,

    /// Print the results as JSON instead of markdown.
    #[arg(long)]
    json: bool,

    /// Also write the markdown report to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Always,
    Relaxed,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("megalith-peers: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn parse_peers(list: &str) -> anyhow::Result<Vec<PeerKind>> {
    let mut peers = Vec::new();
    for name in list.split(',').filter(|n| !n.trim().is_empty()) {
        let Some(kind) = PeerKind::parse(name) else {
            bail!("unknown peer {name:?} (choose from megalith, nostr-lmdb, nostrdb, sqlite)");
        };
        if !peers.contains(&kind) {
            peers.push(kind);
        }
    }
    if peers.is_empty() {
        bail!("--peers names no peer");
    }
    // Megalith first: the ratios are to the first peer.
    peers.sort_by_key(|p| PeerKind::ALL.iter().position(|k| k == p));
    Ok(peers)
}

fn run(args: Args) -> anyhow::Result<()> {
    let peers = parse_peers(&args.peers)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let writers = args.writers.unwrap_or(cores);
    if args.queries == 0 || args.batch == 0 || writers == 0 {
        bail!("--queries, --batch and --writers must be at least 1");
    }
    let command = report::command_line();

    progress(&format!("loading {}", args.events.display()));
    let data = Dataset::load(&args.events)?;
    progress(&format!(
        "{} events ({} malformed lines, {} duplicates skipped)",
        data.len(),
        data.malformed,
        data.duplicates
    ));
    for problem in &data.problems {
        progress(&format!("skipped {problem}"));
    }

    let samples = Samples::draw(
        &data,
        args.queries.max(args.page_samples),
        args.warmup,
        args.seed,
    );
    let durability = match args.durability {
        DurabilityArg::Always => DurabilityClass::Always,
        DurabilityArg::Relaxed => DurabilityClass::Relaxed,
    };
    let config = Config {
        durability,
        batch: args.batch,
        writers,
        nostrdb_full: args.nostrdb_full,
        megalith_search: args.megalith_search,
        kinds: data.kinds(),
        // Room for every reaction of the most reacted-to sampled note.
        unlimited_capacity: (samples.max_reactions + 1).max(64),
    };

    progress("measuring the single-core signature-check rate");
    let verify = verify_rate::measure(&data, 10_000, Duration::from_secs(2));

    let temp;
    let work = match &args.work {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the work directory {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("megalith-peers-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let machine = report::Machine::probe(&work);
    let plan = Plan {
        data: &data,
        samples: &samples,
        config: &config,
        queries: args.queries,
        page_samples: args.page_samples,
        budget: Duration::from_secs(args.budget),
        skip_w1: args.skip_w1,
        crosscheck: 50,
    };
    let mut runs = Vec::new();
    for kind in &peers {
        let dir = work.join(kind.name());
        let result = run::run_peer(*kind, &plan, &dir);
        if !args.keep {
            std::fs::remove_dir_all(&dir).ok();
        }
        runs.push(result?);
    }

    let warnings = report::crosscheck(&runs, &data, &config);
    let ctx = report::Context {
        date: report::today(),
        command,
        machine,
        data: &data,
        samples: &samples,
        config: &config,
        queries: args.queries,
        page_samples: args.page_samples,
        budget_seconds: args.budget,
        durability: match durability {
            DurabilityClass::Always => {
                "always: every acknowledged batch fsynced (Megalith Durability::Always, LMDB sync commits, SQLite WAL with synchronous=FULL)"
            }
            DurabilityClass::Relaxed => {
                "relaxed: Megalith Durability::Batch(1 s), SQLite synchronous=NORMAL; nostr-lmdb and nostrdb still fsync every commit"
            }
        },
        verify,
    };
    let markdown = report::markdown(&ctx, &runs, &warnings);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&ctx, &runs, &warnings))?
        );
    } else {
        print!("{markdown}");
    }
    if let Some(path) = &args.report {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    Ok(())
}
