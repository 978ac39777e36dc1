//! `megalith follow`: one feed job in the foreground (megalith_ingest::feed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use megalith::EventStore;
use megalith::event::nip19;
use megalith_ingest::feed::DEFAULT_RELAYS;
use megalith_ingest::pool::{self, PoolConfig};
use megalith_ingest::{FeedConfig, FeedJobs, JobPhase, JobStatus, RelayUrl, Sink};
use tokio::sync::watch;

use crate::RecoveryArg;
use crate::output::{Output, errln};

#[derive(Args)]
pub(crate) struct FollowArgs {
    /// The person: npub1..., nprofile1... (its relay hints are asked too) or hex.
    #[arg(value_name = "NPUB")]
    person: String,
    /// The store's data directory (created if missing). Job statuses are
    /// kept in DIR/jobs/.
    #[arg(long, value_name = "DIR", default_value = "./megalith-data")]
    data: PathBuf,
    /// A relay to look for the person's contact list and the follows'
    /// relay lists on (and to read follows without a relay list from);
    /// repeat for several [default: relay.damus.io, nos.lol,
    /// relay.primal.net, purplepag.es, relay.nostr.band].
    #[arg(long = "relay", value_name = "URL")]
    relays: Vec<String>,
    /// Stay live after the backfill, storing new posts, until Ctrl-C or
    /// SIGTERM (or --wall-time).
    #[arg(long)]
    live: bool,
    /// With --live, stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    wall_time: Option<u64>,
    /// Print the status as one JSON object a line, each time it changes.
    #[arg(long)]
    json: bool,
    /// Pages read per (relay, 256 authors): the first holds 100 posts,
    /// each further one 500.
    #[arg(long, value_name = "N", default_value_t = 4)]
    max_pages: u64,
    /// Write relays read per follow (the outbox model).
    #[arg(long, value_name = "N", default_value_t = 2)]
    relays_per_author: usize,
    /// Dial relays on loopback or private networks that relay lists name
    /// (off: a stranger's relay list cannot aim this at your network).
    #[arg(long)]
    allow_private_relays: bool,
    /// What opening does when the log does not end cleanly (as for import).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "tolerate-torn-tail"
    )]
    recovery: RecoveryArg,
}

pub(crate) fn run(args: &FollowArgs) -> Result<ExitCode, String> {
    let (pubkey, hints) = nip19::parse_profile(&args.person).map_err(|e| e.to_string())?;
    let mut relays = args
        .relays
        .iter()
        .map(|r| RelayUrl::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    if relays.is_empty() {
        relays = DEFAULT_RELAYS
            .iter()
            .filter_map(|r| RelayUrl::parse(r).ok())
            .collect();
    }
    for hint in hints {
        if let Ok(url) = RelayUrl::parse(&hint)
            && (args.allow_private_relays || !url.is_private())
            && !relays.contains(&url)
        {
            relays.push(url);
        }
    }
    if args.relays_per_author == 0 || args.max_pages == 0 {
        return Err("--relays-per-author and --max-pages must be at least 1".to_string());
    }
    // A feed job writes; it reads little of the store (no resident pages
    // mapped at open, as for `import`).
    let store = crate::with_replay_progress(EventStore::builder(&args.data))
        .map_resident(false)
        .recovery_mode(args.recovery.mode())
        .open()
        .map_err(|e| format!("cannot open {}: {e}", args.data.display()))?;
    crate::report_recovery(&store);
    let store = Arc::new(store);
    let mut config = FeedConfig::new(relays, args.data.join("jobs"));
    config.wall_time = args
        .wall_time
        .filter(|_| args.live)
        .map(Duration::from_secs);
    config.live_forever = args.live && args.wall_time.is_none();
    config.max_pages = args.max_pages;
    config.relays_per_author = args.relays_per_author;
    config.allow_private_relays = args.allow_private_relays;
    // A job asked for by hand runs again even if one finished recently.
    config.fresh_for = Duration::ZERO;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let json = args.json;
    let result = runtime.block_on(async {
        let (pool, pool_task) = pool::start(PoolConfig::default());
        let (sink, sink_task) = Sink::start(store.clone(), pool.stats().clone());
        let jobs = FeedJobs::new(config, store.clone(), pool.clone(), sink);
        let mut status = jobs.ensure_job(pubkey);
        let stopper = jobs.clone();
        let signals = tokio::spawn(async move {
            crate::serve::shutdown_signal().await;
            stopper.shutdown().await;
        });
        let last = follow(&mut status, json).await;
        // The handler holds a handle on the jobs (and so the sink): let go.
        signals.abort();
        let _ = signals.await;
        jobs.shutdown().await;
        drop(jobs);
        pool.shutdown().await;
        let _ = pool_task.await;
        let _ = sink_task.await;
        last
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let closed = crate::close_shared(store);
    let last = result?;
    if !json {
        for line in summary(&last).lines() {
            errln!("{line}");
        }
    }
    closed?;
    Ok(if last.phase == Some(JobPhase::Failed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints the status as it changes until the job ends; returns the last.
async fn follow(status: &mut watch::Receiver<JobStatus>, json: bool) -> Result<JobStatus, String> {
    let mut out = Output::stdout();
    let mut printed = String::new();
    let mut phase = None;
    loop {
        let now = status.borrow_and_update().clone();
        if json {
            let line = serde_json::to_string(&now).map_err(|e| e.to_string())?;
            if line != printed && out.is_open() {
                writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("writing the status: {e}"))?;
                printed = line;
            }
        } else if now.phase != phase {
            errln!("{}", describe(&now));
            phase = now.phase;
        }
        if now.phase.is_some_and(|p| !p.active()) {
            return Ok(now);
        }
        if status.changed().await.is_err() {
            return Ok(status.borrow().clone());
        }
    }
}

/// The phase in words.
fn describe(s: &JobStatus) -> String {
    match s.phase.unwrap_or(JobPhase::Queued) {
        JobPhase::Queued => format!("queued (place {})", s.queue_position.unwrap_or(0)),
        JobPhase::Contacts => "fetching the contact list...".to_string(),
        JobPhase::Relays => format!("fetching the relay lists of {} follows...", s.follows),
        JobPhase::PostsBackfill => format!(
            "fetching posts from {} people on {} relays...",
            s.follows,
            s.relays.len()
        ),
        JobPhase::Live => format!("live: {} posts so far", s.events_ingested),
        JobPhase::Finished => "finished".to_string(),
        JobPhase::Failed => format!(
            "failed: {}",
            s.last_error.as_deref().unwrap_or("unknown reason")
        ),
    }
}

fn summary(s: &JobStatus) -> String {
    let mut text = format!(
        "follow: {} follows ({} with a relay list), {} posts stored, first after {}\n",
        s.follows,
        s.follows_with_relays,
        s.events_ingested,
        s.first_post_ms
            .map_or("-".to_string(), |ms| format!("{ms} ms")),
    );
    text.push_str(&format!(
        "{:<44} {:>7} {:>5} {:>7} {:>8}\n",
        "relay", "authors", "eose", "errors", "attempts"
    ));
    for r in &s.relays {
        text.push_str(&format!(
            "{:<44} {:>7} {:>5} {:>7} {:>8}\n",
            r.url, r.authors, r.eose, r.errors, r.attempts
        ));
    }
    if let Some(error) = &s.last_error {
        text.push_str(&format!("last error: {error}\n"));
    }
    text
}
