//! `megalith mirror`: copy what other relays hold for a filter into the
//! store, in pages, then live (megalith_ingest::mirror).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use megalith::{EventStore, Filter};
use megalith_ingest::mirror::{self, MirrorOptions, Phase, Progress, RelayReport};
use megalith_ingest::pool::{self, PoolConfig};
use megalith_ingest::{RelayUrl, Sink};
use tokio::sync::watch;

use crate::output::{Output, errln};
use crate::{RecoveryArg, on_off};

#[derive(Args)]
pub(crate) struct MirrorArgs {
    /// The store's data directory (created if missing). Resume points are
    /// kept in DIR/mirror/, one file per (relay, filter).
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
    /// A relay to copy from (ws:// or wss://); repeat for several.
    #[arg(long = "relay", value_name = "URL", required = true)]
    relays: Vec<String>,
    /// The NIP-01 filter to copy; its "limit" is ignored (see --page-size).
    #[arg(long, value_name = "JSON", default_value = "{}")]
    filter: String,
    /// Copy nothing older than this Unix time (sets the filter's since).
    #[arg(long, value_name = "T")]
    since: Option<u64>,
    /// Start the backfill at this Unix time (sets the filter's until).
    #[arg(long, value_name = "T")]
    until: Option<u64>,
    /// End when every relay has finished its backfill, instead of staying
    /// live until Ctrl-C or SIGTERM.
    #[arg(long)]
    once: bool,
    /// Events asked for per page of the backfill.
    #[arg(long, value_name = "N", default_value_t = 500)]
    page_size: usize,
    /// Seconds of silence after which a page is taken as ended (for relays
    /// that never send EOSE).
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    page_timeout: u64,
    /// Shards of a new store [default: one per core].
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
    /// Keep (`on`) or drop (`off`) the NIP-50 search index [default: what
    /// the store has; off for a new store].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    search: Option<bool>,
    /// Keep (`on`) or drop (`off`) the video analytics, filled as events
    /// are copied [default: what the store has; off for a new store].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    analytics: Option<bool>,
    /// What opening does when the log does not end cleanly (as for import).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "tolerate-torn-tail"
    )]
    recovery: RecoveryArg,
    /// Print the summary as JSON on stdout (one object with a "relays" array).
    #[arg(long)]
    json: bool,
    /// No progress line on a terminal.
    #[arg(long)]
    quiet: bool,
}

pub(crate) fn run(args: &MirrorArgs) -> Result<ExitCode, String> {
    let relays = args
        .relays
        .iter()
        .map(|r| RelayUrl::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut filter = Filter::from_json(&args.filter).map_err(|e| format!("--filter: {e}"))?;
    if args.since.is_some() {
        filter.since = args.since;
    }
    if args.until.is_some() {
        filter.until = args.until;
    }
    if args.page_size == 0 {
        return Err("--page-size must be at least 1".to_string());
    }
    // A mirror writes; it reads little of the store (no resident pages
    // mapped at open, as for `import`).
    let mut builder = crate::with_replay_progress(EventStore::builder(&args.data))
        .map_resident(false)
        .recovery_mode(args.recovery.mode());
    if let Some(shards) = args.shards {
        builder = builder.shards(shards);
    }
    if let Some(search) = args.search {
        builder = builder.search(search);
    }
    if let Some(analytics) = args.analytics {
        builder = builder.analytics(analytics);
    }
    let store = builder
        .open()
        .map_err(|e| format!("cannot open {}: {e}", args.data.display()))?;
    crate::report_recovery(&store);
    let store = Arc::new(store);
    let mut options = MirrorOptions::new(relays, filter, args.data.join("mirror"));
    options.once = args.once;
    options.page_size = args.page_size;
    options.page_timeout = Duration::from_secs(args.page_timeout.max(1));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let started = Instant::now();
    let progress = Progress::default();
    let result = runtime.block_on(async {
        let (pool, pool_task) = pool::start(PoolConfig::default());
        let (sink, sink_task) = Sink::start(store.clone(), pool.stats().clone());
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            crate::serve::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let bar = (!args.quiet).then(|| progress_line(progress.clone()));
        let result = mirror::run(pool.clone(), sink, options, stop, progress.clone()).await;
        if let Some((bar, task)) = bar {
            task.abort();
            bar.finish_and_clear();
        }
        pool.shutdown().await;
        let _ = pool_task.await;
        let _ = sink_task.await;
        result
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let closed = crate::close_shared(store);
    let reports = result?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut out = Output::stdout();
        let summary = serde_json::json!({ "seconds": seconds, "relays": reports });
        writeln!(out, "{summary}")
            .and_then(|()| out.finish())
            .map_err(|e| format!("writing the summary: {e}"))?;
    } else {
        for line in summary(&reports, seconds).lines() {
            errln!("{line}");
        }
    }
    closed?;
    if reports.iter().any(|r| r.phase == Phase::Failed) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A spinner line on a terminal: relays by phase and the counts so far.
fn progress_line(progress: Progress) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} mirror {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            let reports = progress.snapshot();
            let live = reports.iter().filter(|r| r.phase == Phase::Live).count();
            let sum = |f: fn(&RelayReport) -> u64| reports.iter().map(f).sum::<u64>();
            shown.set_message(format!(
                "{} relays ({live} live): {} pages, {} received, {} stored, {} duplicate, {} invalid, {} errors",
                reports.len(),
                sum(|r| r.pages),
                sum(|r| r.received),
                sum(|r| r.stored),
                sum(|r| r.duplicate),
                sum(|r| r.invalid),
                sum(|r| r.errors),
            ));
            shown.tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, task)
}

/// The human summary: one line per relay, then the totals.
fn summary(reports: &[RelayReport], seconds: f64) -> String {
    let mut text = format!(
        "mirror: {} relays in {seconds:.1} s\n{:<40} {:>8} {:>6} {:>9} {:>9} {:>9} {:>7} {:>6}\n",
        reports.len(),
        "relay",
        "phase",
        "pages",
        "received",
        "stored",
        "duplicate",
        "invalid",
        "errors"
    );
    for r in reports {
        let phase = serde_json::to_value(r.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        text.push_str(&format!(
            "{:<40} {:>8} {:>6} {:>9} {:>9} {:>9} {:>7} {:>6}\n",
            r.relay, phase, r.pages, r.received, r.stored, r.duplicate, r.invalid, r.errors
        ));
        if let Some(error) = &r.last_error {
            text.push_str(&format!("  last error: {error}\n"));
        }
    }
    text
}
