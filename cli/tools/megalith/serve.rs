//! `megalith serve`: the NIP-01 relay on a store.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use megalith::{EventStore, Filter};
use megalith_ingest::feed::DEFAULT_RELAYS;
use megalith_ingest::metrics as ingest_metrics;
use megalith_ingest::mirror::{self, MirrorOptions, Progress};
use megalith_ingest::pool::{self, PoolConfig};
use megalith_ingest::replica::{self, ReplicaOptions};
use megalith_ingest::{FeedConfig, FeedJobs, RelayUrl, Sink};
use megalith_relay::{DurabilityName, Extras, RecoveryName, ServeConfig};
use megalith_web::{ApiConfig, Web, WebConfig};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{DurabilityArg, RecoveryArg, on_off, report_recovery, with_replay_progress};

#[derive(Args, Clone)]
pub(crate) struct ServeArgs {
    /// A TOML file of settings (keys as in docs/server.md); flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The store's data directory, created if missing [default: ./megalith-data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7777].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// Shards of a new store (an existing store keeps its own) [default: one per core].
    #[arg(long)]
    shards: Option<u32>,
    /// When an acknowledged event is on disk [default: always].
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// Keep the NIP-50 search index: `on` builds it from the log if missing, `off`
    /// drops it [default: whatever the store has].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    search: Option<bool>,
    /// Keep the video analytics (docs/analytics.md) and serve the video API
    /// under /api/ (docs/api.md): `on` builds them from the log if missing,
    /// `off` drops them [default: whatever the store has; off for a new store].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    analytics: Option<bool>,
    /// What opening does when the log does not end cleanly [default:
    /// tolerate-torn-tail] (see `megalith import --help`).
    #[arg(long, value_enum, value_name = "MODE")]
    recovery: Option<RecoveryArg>,
    /// After a failed write (a full disk), a shard refuses writes and tries
    /// again in place after this many milliseconds, doubling each time
    /// [default: 1000].
    #[arg(long, value_name = "MS")]
    recover_after_ms: Option<u64>,
    /// A reverse proxy (address or CIDR range) whose X-Forwarded-For or
    /// Forwarded header names the client; repeat for several [default: none].
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// The relay's public URL, which a NIP-42 AUTH event's relay tag must name
    /// [default: none: the Host header the client connected with].
    #[arg(long, value_name = "URL")]
    relay_url: Option<String>,
    /// An access rules file (TOML: who may publish and read what; see
    /// docs/server.md), reloaded on SIGHUP and when it changes [default: none:
    /// anyone may publish and read anything within the limits].
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// The feed pages (`/start`, `/timeline`, ...; docs/web.md) and the feed
    /// jobs they start [default: on].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    feed: Option<bool>,
    /// A relay where feed jobs look for a person's contact list and relay
    /// list; repeat for several [default: wss://relay.damus.io, wss://nos.lol,
    /// wss://relay.primal.net, wss://purplepag.es, wss://relay.nostr.band].
    #[arg(long = "relay", value_name = "URL")]
    relays: Vec<String>,
    /// Let feed jobs dial relays that relay lists name on loopback or private
    /// networks [default: off].
    #[arg(long)]
    allow_private_relays: bool,
    /// Be a read replica of this relay (ws:// or wss://; it must speak
    /// NIP-77): its live stream, and a NIP-77 sync at start and every
    /// follow_resync_secs (600 in the config file); clients' EVENTs are
    /// refused with blocked: naming it [default: none].
    #[arg(long, value_name = "URL")]
    follow: Option<String>,
    /// Log level (error, warn, info, debug, trace, off), or comma-separated
    /// directives such as `info,megalith_relay=debug` (RUST_LOG wins if set);
    /// anything else is an error.
    #[arg(long, default_value = "info")]
    log: String,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Every limit of `[limits]`, as flags.
#[derive(Args, Clone)]
struct LimitArgs {
    /// Largest WebSocket message a client may send, in bytes [default: 131072].
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// Largest event, in bytes of its JSON [default: 65536].
    #[arg(long, value_name = "BYTES")]
    max_event_bytes: Option<usize>,
    /// Most tags an event may have [default: 2000].
    #[arg(long, value_name = "N")]
    max_event_tags: Option<usize>,
    /// Longest event content, in bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    max_content_bytes: Option<usize>,
    /// Most open subscriptions per connection [default: 200].
    #[arg(long, value_name = "N")]
    max_subscriptions: Option<usize>,
    /// Most filters in one REQ or COUNT [default: 200].
    #[arg(long, value_name = "N")]
    max_filters: Option<usize>,
    /// Bytes the open subscriptions of one connection may hold, as parsed [default: 2097152].
    #[arg(long, value_name = "BYTES")]
    max_subscription_bytes: Option<usize>,
    /// Longest subscription id, in characters [default: 64].
    #[arg(long, value_name = "N")]
    max_subid_length: Option<usize>,
    /// Largest `limit` a filter gets; larger ones are clamped [default: 500].
    #[arg(long, value_name = "N")]
    max_limit: Option<usize>,
    /// The `limit` of a filter without one [default: 500].
    #[arg(long, value_name = "N")]
    default_limit: Option<usize>,
    /// Time one REQ or COUNT may spend in the store before it is CLOSED [default: 2000].
    #[arg(long, value_name = "MS")]
    query_time_budget_ms: Option<u64>,
    /// Bytes queued for one client before it is disconnected as too slow [default: 8388608].
    #[arg(long, value_name = "BYTES")]
    max_outbound_bytes: Option<usize>,
    /// Open connections per client address (IPv6: per /64), counted from the TCP accept [default: 64].
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<usize>,
    /// Open connections in all, counted from the TCP accept [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds a connection has to become a WebSocket (or finish its HTTP request) [default: 10].
    #[arg(long, value_name = "SECS")]
    handshake_timeout_secs: Option<u64>,
    /// Bytes per second the connections of one address may send together; past the burst the relay stops reading from them for a while [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    ingress_bytes_per_second: Option<usize>,
    /// Bytes one address may send at once before that rate applies [default: 4194304].
    #[arg(long, value_name = "BYTES")]
    ingress_burst_bytes: Option<usize>,
    /// Queries (REQ, COUNT) the connections of one address may have running at once [default: 2].
    #[arg(long, value_name = "N")]
    max_queries_per_ip: Option<usize>,
    /// Events per second one connection may publish [default: 100].
    #[arg(long, value_name = "RATE")]
    events_per_second: Option<f64>,
    /// Events one connection may publish in a burst [default: 1000].
    #[arg(long, value_name = "N")]
    events_burst: Option<f64>,
    /// Seconds without any frame from a client before it is closed [default: 300].
    #[arg(long, value_name = "SECS")]
    idle_timeout_secs: Option<u64>,
    /// How far in the future created_at may be, in seconds [default: 900].
    #[arg(long, value_name = "SECS")]
    created_at_future_secs: Option<u64>,
    /// Most events a NIP-77 NEG-OPEN filter may match [default: 1000000].
    #[arg(long, value_name = "N")]
    max_sync_events: Option<usize>,
    /// Largest negentropy message sent, in bytes before hex (0: no limit, else at least 4096) [default: 60000].
    #[arg(long, value_name = "BYTES")]
    sync_frame_bytes: Option<usize>,
    /// Open NIP-77 sync sessions per connection [default: 8].
    #[arg(long, value_name = "N")]
    max_sync_sessions: Option<usize>,
    /// (time, id) items all sync sessions may hold together, 40 bytes each [default: 20000000].
    #[arg(long, value_name = "N")]
    max_sync_items_held: Option<usize>,
    /// Time a NEG-OPEN may spend reading its filter's events [default: 30000].
    #[arg(long, value_name = "MS")]
    sync_time_budget_ms: Option<u64>,
}

impl ServeArgs {
    /// Defaults, then the config file, then the flags.
    fn config(&self) -> Result<ServeConfig, String> {
        let mut config = match &self.config {
            Some(path) => ServeConfig::from_toml_file(path)?,
            None => ServeConfig::default(),
        };
        if let Some(data) = &self.data {
            config.data = data.clone();
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.shards.is_some() {
            config.shards = self.shards;
        }
        if let Some(durability) = self.durability {
            config.durability = match durability {
                DurabilityArg::Always => DurabilityName::Always,
                DurabilityArg::Batch => DurabilityName::Batch,
                DurabilityArg::Never => DurabilityName::Never,
            };
        }
        if self.search.is_some() {
            config.search = self.search;
        }
        if self.analytics.is_some() {
            config.analytics = self.analytics;
        }
        if let Some(recovery) = self.recovery {
            config.recovery = match recovery {
                RecoveryArg::Strict => RecoveryName::Strict,
                RecoveryArg::TolerateTornTail => RecoveryName::TolerateTornTail,
                RecoveryArg::Repair => RecoveryName::Repair,
            };
        }
        if let Some(ms) = self.recover_after_ms {
            config.recover_after_ms = ms;
        }
        if self.relay_url.is_some() {
            config.relay_url = self.relay_url.clone();
        }
        if self.rules.is_some() {
            config.rules = self.rules.clone();
        }
        if !self.trusted_proxies.is_empty() {
            config.trusted_proxies = self.trusted_proxies.clone();
        }
        if let Some(feed) = self.feed {
            config.feed.enabled = feed;
        }
        if !self.relays.is_empty() {
            config.feed.relays = self.relays.clone();
        }
        if self.allow_private_relays {
            config.feed.allow_private_relays = true;
        }
        if self.follow.is_some() {
            config.follow = self.follow.clone();
        }
        let l = &self.limits;
        let c = &mut config.limits;
        macro_rules! set {
            ($($field:ident),*) => {
                $(if let Some(value) = l.$field { c.$field = value; })*
            };
        }
        set!(
            max_message_bytes,
            max_event_bytes,
            max_event_tags,
            max_content_bytes,
            max_subscriptions,
            max_filters,
            max_subscription_bytes,
            max_subid_length,
            max_limit,
            default_limit,
            query_time_budget_ms,
            max_outbound_bytes,
            max_connections_per_ip,
            max_connections,
            handshake_timeout_secs,
            ingress_bytes_per_second,
            ingress_burst_bytes,
            max_queries_per_ip,
            events_per_second,
            events_burst,
            idle_timeout_secs,
            created_at_future_secs,
            max_sync_events,
            sync_frame_bytes,
            max_sync_sessions,
            max_sync_items_held,
            sync_time_budget_ms
        );
        config.check()?;
        Ok(config)
    }
}

pub(crate) fn run(args: &ServeArgs) -> Result<ExitCode, String> {
    let (source, text) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => ("RUST_LOG", text),
        _ => ("--log", args.log.clone()),
    };
    check_log_filter(&text).map_err(|e| format!("{source} {text:?}: {e}"))?;
    let filter = tracing_subscriber::EnvFilter::try_new(&text)
        .map_err(|e| format!("{source} {text:?}: {e}"))?;
    // Ignore a second initialisation (never happens in the binary).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    let config = args.config()?;
    tracing::info!(version = crate::VERSION, data = %config.data.display(), "megalith serve starting");
    let mirrors = mirror_options(&config)?;
    let replica = config
        .follow
        .as_deref()
        .map(|url| {
            let primary = RelayUrl::parse(url).map_err(|e| format!("follow: {e}"))?;
            let mut options = ReplicaOptions::new(primary);
            options.resync = Duration::from_secs(config.follow_resync_secs);
            Ok::<_, String>(options)
        })
        .transpose()?;
    let feed = feed_config(&config)?;
    let web_config = WebConfig {
        start_burst: config.feed.start_burst,
        start_every: Duration::from_secs_f64(config.feed.start_every_secs),
        ..WebConfig::default()
    };
    let relay = config.relay();
    let mut builder = with_replay_progress(EventStore::builder(&config.data))
        .durability(config.durability.durability())
        .limits(relay.limits.event_limits())
        .max_future(Duration::from_secs(relay.limits.created_at_future_secs))
        .recovery_mode(config.recovery.mode())
        .recover_after(Duration::from_millis(config.recover_after_ms))
        // Queries (the relay's, the pages') come before signature checks:
        // a page read beside a mirror storing 18,000 events/s took 5.0 ms
        // at p50 with the verifiers at the same priority (1.9 ms quiet).
        .verify_nice(10);
    if let Some(shards) = config.shards {
        builder = builder.shards(shards);
    }
    if let Some(search) = config.search {
        builder = builder.search(search);
    }
    if let Some(analytics) = config.analytics {
        builder = builder.analytics(analytics);
    }
    // NIP-62 requests naming this relay's URL are honored (besides
    // ALL_RELAYS).
    if let Some(url) = &config.relay_url {
        builder = builder.relay_urls([url.clone()]);
    }
    let api_token = config.api_token.clone();
    let started = Instant::now();
    let store = builder
        .open()
        .map_err(|e| format!("cannot open {}: {e}", config.data.display()))?;
    report_recovery(&store);
    info!(
        data = %config.data.display(),
        shards = store.shard_count(),
        search = store.search_index(),
        analytics = store.analytics().is_some(),
        opened_in_ms = started.elapsed().as_millis() as u64,
        "store open"
    );
    let store = Arc::new(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("megalith-relay")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(relay.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", relay.listen))?;
        // The mirrors of the config file and the feed jobs run beside the
        // relay, on one pool and store sink, until the relay stops.
        let (pool, pool_task) = pool::start(PoolConfig::default());
        let (sink, sink_task) = Sink::start(Arc::clone(&store), pool.stats().clone());
        let (stop, stopped) = watch::channel(false);
        let tasks: Vec<_> = mirrors
            .into_iter()
            .map(|options| {
                let (pool, sink, stopped) = (pool.clone(), sink.clone(), stopped.clone());
                tokio::spawn(async move {
                    let relays: Vec<String> =
                        options.relays.iter().map(|r| r.to_string()).collect();
                    match mirror::run(pool, sink, options, stopped, Progress::default()).await {
                        Ok(reports) => {
                            for r in reports {
                                info!(relay = %r.relay, stored = r.stored, pages = r.pages, errors = r.errors, "mirror stopped");
                            }
                        }
                        Err(e) => error!(relays = ?relays, error = %e, "mirror failed"),
                    }
                })
            })
            .collect();
        let tasks: Vec<_> = tasks
            .into_iter()
            .chain(replica.map(|options| {
                info!(primary = %options.primary, "read replica: following the primary");
                tokio::spawn(replica::run(
                    Arc::clone(&store),
                    pool.clone(),
                    sink.clone(),
                    options,
                    stopped.clone(),
                ))
            }))
            .collect();
        let tasks: Vec<_> = tasks
            .into_iter()
            .chain(std::iter::once(tokio::spawn(retention_loop(
                Arc::clone(&store),
                args.clone(),
                config.retention.clone(),
                stopped.clone(),
            ))))
            .chain(std::iter::once(tokio::spawn(compaction_loop(
                Arc::clone(&store),
                config.compaction.clone(),
                stopped.clone(),
            ))))
            // Bound before the relay says it listens, so a command run
            // right after that finds it.
            .chain(std::iter::once(tokio::spawn(admin_socket(
                start_admin(&store, &config.data),
                stopped.clone(),
            ))))
            .collect();
        let jobs = feed.map(|feed| {
            Arc::new(FeedJobs::new(
                feed,
                Arc::clone(&store),
                pool.clone(),
                sink.clone(),
            ))
        });
        let web = jobs
            .as_ref()
            .map(|jobs| Web::new(Arc::clone(&store), Arc::clone(jobs), web_config.clone()));
        if jobs.is_some() {
            info!("feed pages on http://{}/", relay.listen);
        }
        let web_handle = web.clone();
        // The video API (docs/api.md), on stores that keep analytics.
        let api = store.analytics().is_some().then(|| {
            info!("video API on http://{}/api/", relay.listen);
            megalith_web::api_router(
                Arc::clone(&store),
                ApiConfig {
                    token: api_token.clone(),
                },
            )
        });
        let routes = match (web.clone().map(megalith_web::router), api) {
            (Some(pages), Some(api)) => Some(pages.merge(api)),
            (pages, api) => pages.or(api),
        };
        let extras = Extras {
            metrics: Some({
                let stats = pool.stats().clone();
                let jobs = jobs.clone();
                Arc::new(move || ingest_metrics::render(&stats, jobs.as_deref()))
            }),
            home: web.is_some().then(|| {
                Arc::new(megalith_web::home_response)
                    as Arc<dyn Fn() -> megalith_web::Response + Send + Sync>
            }),
            routes,
            // SIGHUP: the config file read again, the flags over it.
            reload_limits: Some({
                let args = args.clone();
                Arc::new(move || args.config().map(|config| config.limits))
            }),
        };
        // The relay waits for open responses before it exits: the pages'
        // update streams end as soon as the shutdown starts.
        let shutdown = {
            let web = web_handle;
            async move {
                shutdown_signal().await;
                if let Some(web) = web {
                    web.shutdown();
                }
            }
        };
        let served = megalith_relay::run_with_extras(
            Arc::clone(&store),
            relay,
            listener,
            shutdown,
            extras,
        )
        .await
        .map_err(|e| format!("the relay failed: {e}"));
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
        if let Some(jobs) = &jobs {
            jobs.shutdown().await;
        }
        drop(jobs);
        pool.shutdown().await;
        let _ = pool_task.await;
        // Everything the mirrors and jobs sent is stored. The sink task ends
        // once the last handle is gone, and the web routes hold the jobs,
        // and so a handle, until the runtime shuts down: waiting for it
        // here only delayed every shutdown (by 2 s, found by the attack
        // suite's SIGTERM check).
        if let Err(e) = sink.flush().await {
            error!(error = %e, "storing the last fetched events failed");
        }
        drop(sink);
        drop(sink_task);
        served
    });
    info!("relay stopped; waiting for running tasks (5 s at most)");
    runtime.shutdown_timeout(Duration::from_secs(5));
    info!("tasks stopped; closing the store");
    // Every connection is gone; the blocking tasks that held the store end
    // with the runtime.
    let closed = match Arc::try_unwrap(store) {
        Ok(store) => store.close().map_err(|e| e.to_string()),
        Err(store) => {
            warn!("the store is still shared at shutdown; checkpointing instead of closing");
            store.checkpoint().map_err(|e| e.to_string())
        }
    };
    match (&served, &closed) {
        (Ok(()), Ok(())) => info!("store closed cleanly"),
        (_, Err(e)) => error!(error = %e, "closing the store failed"),
        _ => {}
    }
    served?;
    closed.map_err(|e| format!("closing the store: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Applies the `[retention]` rules at start, then every `interval_secs`,
/// and again at once after a SIGHUP has read them again from the config
/// file (a file that does not check leaves the rules in force). When the
/// relay stops, a run ends after the page it is on (what it removed stays
/// removed: each page is one group in the log per shard).
async fn retention_loop(
    store: Arc<EventStore>,
    args: ServeArgs,
    mut config: megalith_relay::RetentionEntry,
    mut stopped: watch::Receiver<bool>,
) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        if let Ok(Some(retention)) = config.retention() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let store = Arc::clone(&store);
            let started = Instant::now();
            let halt = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let halted = Arc::clone(&halt);
            let mut run = tokio::task::spawn_blocking(move || {
                store.apply_retention(&retention, now, false, &halted)
            });
            tokio::select! {
                outcome = &mut run => match outcome {
                    Ok(Ok(report)) => info!(
                        removed = report.removed,
                        ms = started.elapsed().as_millis() as u64,
                        "retention rules applied"
                    ),
                    Ok(Err(e)) => warn!(error = %e, "applying the retention rules failed; they run again at the next interval"),
                    Err(e) => error!(error = %e, "the retention run failed"),
                },
                _ = stopped.changed() => {
                    // Ends after the page it is on, so the store closes cleanly.
                    halt.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = run.await;
                    return;
                }
            }
        }
        let wait = tokio::time::sleep(Duration::from_secs(config.interval_secs));
        let hung_up = async {
            match &mut hangup {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = stopped.changed() => return,
            Some(()) = hung_up => {
                let args = args.clone();
                match tokio::task::spawn_blocking(move || args.config()).await {
                    Ok(Ok(read)) => {
                        config = read.retention;
                        info!(rules = config.rule.len(), "retention rules reloaded");
                    }
                    Ok(Err(e)) => warn!(error = %e, "the retention rules were not reloaded; the previous ones stay"),
                    Err(e) => error!(error = %e, "reloading the retention rules failed"),
                }
            }
        }
    }
}

/// The admin socket (`DATA/admin.sock`, see `admin.rs`) until the relay
/// stops: `megalith query`, `count`, `stats` and `delete` run beside the
/// server through it. A socket that cannot be made is logged, and the
/// relay runs without it.
async fn admin_socket(
    admin: Option<(
        crate::admin::AdminServer,
        Arc<std::sync::atomic::AtomicBool>,
    )>,
    mut stopped: watch::Receiver<bool>,
) {
    let Some((server, stop)) = admin else {
        return;
    };
    let _ = stopped.changed().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || server.join()).await;
}

/// Binds the admin socket (see [`admin_socket`]); `None`, logged, when it
/// cannot be made.
fn start_admin(
    store: &Arc<EventStore>,
    data: &std::path::Path,
) -> Option<(
    crate::admin::AdminServer,
    Arc<std::sync::atomic::AtomicBool>,
)> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    match crate::admin::AdminServer::start(Arc::clone(store), data, Arc::clone(&stop)) {
        Ok(server) => {
            info!(path = %crate::admin::socket_path(data).display(), "admin socket listening");
            Some((server, stop))
        }
        Err(e) => {
            warn!(error = %e, "no admin socket: commands beside the server cannot reach it");
            None
        }
    }
}

/// Background compaction (`[compaction]`): every `check_secs`, a pass
/// when removed events take `garbage_ratio` of the log or more and at
/// least that share came since the last pass (so what a pass must leave,
/// in the active segment or in segments under the ratio, does not start
/// one pass after another); the first look always runs one: it counts
/// what the log held at start. A pass checkpoints the indexes first (so
/// every removal until then may go) and leaves the active segment alone
/// (so it starts no small segments). When the relay stops, a pass ends at
/// its next write or segment.
async fn compaction_loop(
    store: Arc<EventStore>,
    config: megalith_relay::CompactionEntry,
    mut stopped: watch::Receiver<bool>,
) {
    if config.garbage_ratio <= 0.0 {
        return;
    }
    let options = megalith::CompactOptions {
        min_garbage: config.garbage_ratio,
        max_write_rate: (config.rate_mib > 0).then_some(config.rate_mib.saturating_mul(1 << 20)),
        checkpoint_first: true,
        seal_active: false,
    };
    // What the last pass left, and whether one ran (or failed) since start.
    let mut left = 0u64;
    let mut tried = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(config.check_secs)) => {}
            _ = stopped.changed() => return,
        }
        let garbage = store.garbage();
        if !compaction_due(&garbage, config.garbage_ratio, left, tried) {
            continue;
        }
        tried = true;
        let halt = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (running, options, halted) = (Arc::clone(&store), options.clone(), Arc::clone(&halt));
        let mut run = tokio::task::spawn_blocking(move || running.compact_until(&options, &halted));
        tokio::select! {
            outcome = &mut run => match outcome {
                Ok(Ok(report)) => {
                    left = store.garbage().removed_bytes;
                    info!(
                    garbage_bytes = garbage.removed_bytes,
                    log_bytes = garbage.log_bytes,
                    records = report.records_compacted,
                    bytes = report.bytes_compacted,
                    segments = report.segments_rewritten,
                    left = report.records_left,
                    ms = (report.seconds * 1000.0) as u64,
                    "background compaction pass"
                    );
                }
                Ok(Err(e)) => {
                    // Not again until another share is removed.
                    left = store.garbage().removed_bytes;
                    warn!(error = %e, "background compaction failed; it runs again once another share of the log is removed");
                }
                Err(e) => error!(error = %e, "the background compaction pass failed"),
            },
            _ = stopped.changed() => {
                halt.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = run.await;
                return;
            }
        }
    }
}

/// Whether a background compaction pass is due: at the first look when no
/// pass has counted the log yet (`tried`: one ran or failed since start),
/// else when removed events take `ratio` of the log and at least that
/// share is new since the last pass, which left `left` bytes of them.
fn compaction_due(garbage: &megalith::Garbage, ratio: f64, left: u64, tried: bool) -> bool {
    let share = |bytes: u64| bytes as f64 >= ratio * garbage.log_bytes as f64;
    (!garbage.counted && !tried)
        || (share(garbage.removed_bytes) && share(garbage.removed_bytes.saturating_sub(left)))
}

/// The feed jobs' settings from `[feed]` (none when the feed is off),
/// checked: each relay URL parses.
fn feed_config(config: &ServeConfig) -> Result<Option<FeedConfig>, String> {
    if !config.feed.enabled {
        return Ok(None);
    }
    let named: Vec<String> = if config.feed.relays.is_empty() {
        DEFAULT_RELAYS.iter().map(|r| r.to_string()).collect()
    } else {
        config.feed.relays.clone()
    };
    let relays = named
        .iter()
        .map(|r| RelayUrl::parse(r).map_err(|e| format!("[feed] relay {r:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut feed = FeedConfig::new(relays, config.data.join("jobs"));
    feed.max_running = config.feed.max_running;
    feed.allow_private_relays = config.feed.allow_private_relays;
    Ok(Some(feed))
}

/// The `[[mirror]]` tables, checked: each relay URL and filter parses.
fn mirror_options(config: &ServeConfig) -> Result<Vec<MirrorOptions>, String> {
    config
        .mirror
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let what = format!("[[mirror]] number {}", i + 1);
            if entry.relays.is_empty() {
                return Err(format!("{what}: no relays"));
            }
            let relays = entry
                .relays
                .iter()
                .map(|r| RelayUrl::parse(r).map_err(|e| format!("{what}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let filter =
                Filter::from_json(&entry.filter).map_err(|e| format!("{what}: filter: {e}"))?;
            if entry.page_size == 0 {
                return Err(format!("{what}: page_size must be at least 1"));
            }
            let mut options = MirrorOptions::new(relays, filter, config.data.join("mirror"));
            options.page_size = entry.page_size;
            Ok(options)
        })
        .collect()
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => info!("SIGINT received"),
        _ = terminate => info!("SIGTERM received"),
    }
}

/// The levels a log filter may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a log filter before tracing reads it: every comma-separated
/// directive is a level or `target=level` (tracing would take a bare word
/// that is not a level as a target to log everything of, so a misspelt
/// level would silently log nothing).
pub(crate) fn check_log_filter(text: &str) -> Result<(), String> {
    for directive in text.split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        // Span and field filters (`target[span{field=value}]=level`): left
        // to tracing's own parser.
        if directive.contains('[') {
            continue;
        }
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("{directive:?} names no target before `=`")),
            None => directive,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{level:?} is not a log level (one of {}, or `target=level`)",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::compaction_due;

    #[test]
    fn a_compaction_pass_is_due_at_the_ratio_of_new_garbage() {
        let garbage = |removed_bytes, counted| megalith::Garbage {
            removed_bytes,
            log_bytes: 1000,
            counted,
        };
        // Not counted yet: a pass counts it, once (a failed one too).
        assert!(compaction_due(&garbage(0, false), 0.25, 0, false));
        assert!(!compaction_due(&garbage(0, false), 0.25, 0, true));
        assert!(!compaction_due(&garbage(249, true), 0.25, 0, true));
        assert!(compaction_due(&garbage(250, true), 0.25, 0, true));
        // 400 left by the last pass (in the active segment, say): not
        // again until another 250 came.
        assert!(!compaction_due(&garbage(400, true), 0.25, 400, true));
        assert!(!compaction_due(&garbage(649, true), 0.25, 400, true));
        assert!(compaction_due(&garbage(650, true), 0.25, 400, true));
        // The last pass took some out of what was left before.
        assert!(compaction_due(&garbage(300, true), 0.25, 0, true));
    }
}
