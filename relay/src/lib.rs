//! megalith-relay, the NIP-01 relay (`megalith serve`) on the Megalith engine, using only its public API: WebSocket at `/` (EVENT, REQ,
//! CLOSE, COUNT), NIP-11 on `GET /` with `Accept: application/nostr+json`,
//! `GET /health` and `GET /metrics`. `docs/server.md` describes its
//! messages, limits and metrics.
//!
//! Layout: [`run`] serves one store until a shutdown signal; each
//! connection (`conn`) has a reader that handles messages in order and a
//! writer draining a byte-bounded outbox (`outbox`); one broadcaster thread
//! takes the store's commit stream and queues each event to the
//! subscriptions it matches, found through the subscription index
//! (`subs`).

mod auth;
mod bucket;
mod config;
mod conn;
mod gate;
mod metrics;
mod outbox;
mod protocol;
mod rules;
mod subs;
mod sync;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use megalith::{Commits, EventStore, Limits};

pub use config::{
    CompactionEntry, DurabilityName, FeedEntry, KindSpec, MirrorEntry, RecoveryName, RelayConfig,
    RelayInfo, RelayLimits, RetentionEntry, RetentionRuleEntry, ServeConfig,
};
pub use gate::Cidr;
pub use metrics::Metrics;

use bucket::TokenBucket;
use gate::{Gate, GateConfig, Peer};
pub use rules::Rules;
use rules::RulesHandle;

use outbox::Pushed;
use protocol::event_frame;
use subs::{LiveSub, MAX_PENDING, SubIndex, SubKey, SubState};

/// Live events the broadcaster may fall behind the writers before it
/// starts missing some (counted in `megalith_commit_stream_lagged_total`).
const COMMIT_STREAM_CAPACITY: usize = 65_536;

/// What a service beside the relay adds to it (`megalith serve` wires the
/// ingester in this way; the relay knows nothing of it).
#[derive(Clone, Default)]
pub struct Extras {
    /// More Prometheus text appended to `/metrics`.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// More routes, merged into the relay's (which keep `/`, `/health` and
    /// `/metrics`: a route of the same path here is a startup error). Their
    /// handlers find the client's address (the trusted proxy's
    /// `X-Forwarded-For` resolved, as for the relay's own limits) as
    /// `ConnectInfo<SocketAddr>`.
    pub routes: Option<Router>,
    /// What a browser gets on `GET /` (no WebSocket upgrade, no NIP-11
    /// `Accept`), instead of the relay's line of text.
    pub home: Option<Arc<dyn Fn() -> Response + Send + Sync>>,
    /// Reads the limits again (the config file, then the flags); called on
    /// SIGHUP. An error leaves the limits in force.
    pub reload_limits: Option<Arc<dyn Fn() -> Result<RelayLimits, String> + Send + Sync>>,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("metrics", &self.metrics.is_some())
            .field("routes", &self.routes.is_some())
            .field("home", &self.home.is_some())
            .field("reload_limits", &self.reload_limits.is_some())
            .finish()
    }
}

/// The shared state of a running relay.
#[derive(Debug)]
struct Relay {
    extras: Extras,
    store: Arc<EventStore>,
    config: RelayConfig,
    /// The store-side limits implied by `config.limits`.
    event_limits: Limits,
    metrics: Metrics,
    subs: RwLock<SubIndex>,
    next_key: AtomicU64,
    /// Open connections per client address.
    per_ip: Mutex<HashMap<IpAddr, (usize, Arc<AddressShare>)>>,
    /// Open connections, and a wake-up when the last one ends.
    open: AtomicUsize,
    all_closed: Notify,
    /// `config.trusted_proxies`, parsed.
    trusted_proxies: Vec<Cidr>,
    /// Set once to shut down: connections close their subscriptions and go.
    stop: watch::Sender<bool>,
    /// Tells the broadcaster thread to end.
    broadcaster_stop: AtomicBool,
    /// The access rules in force.
    rules: Arc<RulesHandle>,
    /// Bumped at each reload of the rules: connections check their
    /// subscriptions again.
    rules_version: watch::Sender<u64>,
    /// Items the open NIP-77 sync sessions hold (`max_sync_items_held`).
    sync_items_held: AtomicUsize,
    /// The limits in force: `config.limits` until a SIGHUP reloads them.
    limits: RwLock<Arc<RelayLimits>>,
}

/// A connection's claim on its address's quota; released on drop.
struct ConnectionSlot<'r> {
    relay: &'r Relay,
    ip: IpAddr,
    share: Arc<AddressShare>,
}

/// What the connections of one client address (IPv6: one /64) share, so
/// that many connections get no more than one would: a budget of bytes
/// read per second, and a number of queries running at once.
#[derive(Debug)]
pub(crate) struct AddressShare {
    ingress: Mutex<TokenBucket>,
    queries: tokio::sync::Semaphore,
}

impl AddressShare {
    fn new(limits: &RelayLimits) -> AddressShare {
        AddressShare {
            ingress: Mutex::new(TokenBucket::new(
                limits.ingress_bytes_per_second as f64,
                limits.ingress_burst_bytes as f64,
            )),
            queries: tokio::sync::Semaphore::new(limits.max_queries_per_ip),
        }
    }

    /// Counts `bytes` read; how long the reader should pause before reading
    /// more (zero within the budget).
    pub(crate) fn read(&self, bytes: usize) -> Duration {
        // Taken whole, even past the budget: the reader then pauses until
        // the debt is paid back.
        self.ingress.lock().take_on_credit(bytes as f64)
    }

    /// Waits for one of the address's query slots.
    pub(crate) async fn query_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.queries.acquire().await.ok()
    }
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        let mut per_ip = self.relay.per_ip.lock();
        if let Some((n, _)) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.relay.metrics.connections.dec();
        if self.relay.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.relay.all_closed.notify_waiters();
        }
    }
}

impl Relay {
    /// A WebSocket connection's slot under the per-address cap, by the
    /// client's address (`gate::address_key`).
    fn connection_slot(&self, ip: IpAddr) -> Option<ConnectionSlot<'_>> {
        let ip = gate::address_key(ip);
        let mut per_ip = self.per_ip.lock();
        let (n, share) = per_ip
            .entry(ip)
            .or_insert_with(|| (0, Arc::new(AddressShare::new(&self.limits()))));
        if *n >= self.limits().max_connections_per_ip {
            return None;
        }
        *n += 1;
        let share = Arc::clone(share);
        self.open.fetch_add(1, Ordering::AcqRel);
        self.metrics.connections.inc();
        Some(ConnectionSlot {
            relay: self,
            ip,
            share,
        })
    }

    /// The limits in force now.
    pub(crate) fn limits(&self) -> Arc<RelayLimits> {
        Arc::clone(&self.limits.read())
    }

    fn next_sub_key(&self) -> SubKey {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Files a subscription, setting its `after` to the store's commit
    /// sequence under the index's write lock: an event published later
    /// finds the subscription filed when the broadcaster gets to it.
    fn add_sub(&self, mut sub: LiveSub) -> Arc<LiveSub> {
        let mut index = self.subs.write();
        sub.after = self.store.commit_sequence();
        let sub = Arc::new(sub);
        index.insert(Arc::clone(&sub));
        drop(index);
        self.metrics.subscriptions.inc();
        sub
    }

    fn remove_sub(&self, key: SubKey) {
        if self.subs.write().remove(key).is_some() {
            self.metrics.subscriptions.dec();
        }
    }

    /// The NIP-11 document.
    fn info_document(&self) -> serde_json::Value {
        let limits = &self.limits();
        let info = &self.config.info;
        let rules = self.rules.current();
        let mut nips = vec![1, 9, 11, 40, 42, 45];
        if self.store.search_index() {
            nips.push(50);
        }
        nips.extend([62, 77]);
        let mut doc = serde_json::json!({
            "name": info.name,
            "description": info.description,
            "supported_nips": nips,
            "software": "megalith",
            "version": env!("CARGO_PKG_VERSION"),
            "limitation": {
                "max_message_length": limits.max_message_bytes,
                "max_subscriptions": limits.max_subscriptions,
                "max_filters": limits.max_filters,
                "max_limit": limits.max_limit,
                "default_limit": limits.default_limit,
                "max_subid_length": limits.max_subid_length,
                "max_event_tags": limits.max_event_tags,
                "max_content_length": limits.max_content_bytes,
                "min_pow_difficulty": 0,
                "auth_required": rules.auth_required_for_reads(),
                "payment_required": false,
                "restricted_writes": rules.restricts_writes() || self.config.replica_of.is_some(),
                "created_at_upper_limit": limits.created_at_future_secs,
            },
            "megalith_limitation": {
                "max_event_bytes": limits.max_event_bytes,
                "query_time_budget_ms": limits.query_time_budget_ms,
                "max_outbound_bytes": limits.max_outbound_bytes,
                "max_connections_per_ip": limits.max_connections_per_ip,
                "max_connections": limits.max_connections,
                "max_subscription_bytes": limits.max_subscription_bytes,
                "handshake_timeout_secs": limits.handshake_timeout_secs,
                "ingress_bytes_per_second": limits.ingress_bytes_per_second,
                "ingress_burst_bytes": limits.ingress_burst_bytes,
                "max_queries_per_ip": limits.max_queries_per_ip,
                "events_per_second": limits.events_per_second,
                "events_burst": limits.events_burst,
                "idle_timeout_secs": limits.idle_timeout_secs,
            },
        });
        if let Some(pubkey) = &info.pubkey {
            doc["pubkey"] = pubkey.clone().into();
        }
        if let Some(contact) = &info.contact {
            doc["contact"] = contact.clone().into();
        }
        doc
    }
}

/// How often the rules file's modification time is looked at.
const RULES_POLL: Duration = Duration::from_secs(2);

/// Reloads the access rules on SIGHUP and when the file changes, and the
/// limits on SIGHUP (when the caller can read them again); a file that
/// does not parse leaves the rules or limits in force (the error is logged
/// and counted). After a rules reload, connections CLOSE the subscriptions
/// that lost their right.
async fn watch_rules(relay: Arc<Relay>, mut hangup: Option<tokio::signal::unix::Signal>) {
    let path = relay.rules.path().map(std::path::Path::to_path_buf);
    if path.is_none() && hangup.is_none() {
        return;
    }
    loop {
        let signalled = async {
            match &mut hangup {
                Some(hangup) => {
                    hangup.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let forced = tokio::select! {
            () = signalled => true,
            () = tokio::time::sleep(RULES_POLL) => false,
        };
        if forced {
            reload_limits(&relay).await;
        }
        let Some(path) = &path else { continue };
        if !forced && !relay.rules.changed_on_disk() {
            continue;
        }
        let rules = Arc::clone(&relay.rules);
        match tokio::task::spawn_blocking(move || rules.reload()).await {
            Ok(Ok(())) => {
                relay.metrics.rules_reloads.with_label_values(&["ok"]).inc();
                info!(path = %path.display(), "access rules reloaded");
                relay.rules_version.send_modify(|v| *v += 1);
            }
            Ok(Err(e)) => {
                relay
                    .metrics
                    .rules_reloads
                    .with_label_values(&["error"])
                    .inc();
                warn!(error = %e, "the access rules were not reloaded; the previous ones stay");
            }
            Err(e) => warn!(error = %e, "reloading the access rules failed"),
        }
    }
}

/// The limits a running relay cannot change: the store was opened with the
/// event limits, and the gate in front of the listener was built with the
/// connection count and handshake timeout.
/// `max_connections_per_ip` is checked at the TCP accept (as started) and
/// again at the WebSocket upgrade (as reloaded): lowering it works at
/// once, raising it past the first needs a restart.
const RESTART_LIMITS: [&str; 6] = [
    "max_event_bytes",
    "max_event_tags",
    "max_content_bytes",
    "max_connections",
    "max_connections_per_ip",
    "handshake_timeout_secs",
];

/// SIGHUP: the limits read again and put in force for every check made
/// from now on (new connections, messages, queries, sync sessions); those
/// of [`RESTART_LIMITS`] are named in the log as waiting for a restart.
async fn reload_limits(relay: &Arc<Relay>) {
    let Some(reload) = relay.extras.reload_limits.clone() else {
        return;
    };
    let read = tokio::task::spawn_blocking(move || reload())
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let new = match read.and_then(|limits| limits.check().map(|()| limits)) {
        Ok(new) => new,
        Err(e) => {
            relay
                .metrics
                .limits_reloads
                .with_label_values(&["error"])
                .inc();
            warn!(error = %e, "the limits were not reloaded; the previous ones stay");
            return;
        }
    };
    let old = relay.limits();
    let (old_values, new_values) = (
        serde_json::to_value(&*old).unwrap_or_default(),
        serde_json::to_value(&new).unwrap_or_default(),
    );
    let changed: Vec<&str> = match (old_values.as_object(), new_values.as_object()) {
        (Some(a), Some(b)) => a
            .keys()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(String::as_str)
            .collect(),
        _ => Vec::new(),
    };
    let waiting: Vec<&str> = changed
        .iter()
        .copied()
        .filter(|k| RESTART_LIMITS.contains(k))
        .collect();
    *relay.limits.write() = Arc::new(new);
    relay
        .metrics
        .limits_reloads
        .with_label_values(&["ok"])
        .inc();
    info!(changed = ?changed, "limits reloaded");
    if !waiting.is_empty() {
        warn!(limits = ?waiting, "these limits take effect at the next restart");
    }
}

/// Serves `store` as a relay on `listener` until `shutdown` resolves, then
/// closes every subscription and connection (waiting up to 10 s for them)
/// and returns; the caller closes the store. `config.listen` is not used:
/// the caller bound `listener` (so tests can bind port 0).
pub async fn run(
    store: Arc<EventStore>,
    config: RelayConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_extras(store, config, listener, shutdown, Extras::default()).await
}

/// [`run`], with what a service beside the relay adds.
pub async fn run_with_extras(
    store: Arc<EventStore>,
    config: RelayConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    extras: Extras,
) -> std::io::Result<()> {
    let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    config.check().map_err(invalid)?;
    let trusted_proxies = config.trusted_proxy_ranges().map_err(invalid)?;
    let metrics = Metrics::new().map_err(std::io::Error::other)?;
    let rules = Arc::new(RulesHandle::load(config.rules.as_deref()).map_err(invalid)?);
    let listener = Gate::new(
        listener,
        GateConfig {
            max_connections: config.limits.max_connections,
            max_per_address: config.limits.max_connections_per_ip,
            handshake_timeout: config.limits.handshake_timeout(),
            trusted_proxies: trusted_proxies.clone(),
        },
        metrics.clone(),
    );
    let (stop, _) = watch::channel(false);
    let limits = RwLock::new(Arc::new(config.limits.clone()));
    let relay = Arc::new(Relay {
        extras,
        event_limits: config.limits.event_limits(),
        store,
        config,
        metrics,
        subs: RwLock::new(SubIndex::default()),
        next_key: AtomicU64::new(0),
        per_ip: Mutex::new(HashMap::new()),
        trusted_proxies,
        open: AtomicUsize::new(0),
        all_closed: Notify::new(),
        stop,
        broadcaster_stop: AtomicBool::new(false),
        rules,
        rules_version: watch::channel(0).0,
        sync_items_held: AtomicUsize::new(0),
        limits,
    });
    let commits = relay.store.commits(COMMIT_STREAM_CAPACITY);
    let broadcaster = std::thread::Builder::new()
        .name("megalith-live".to_string())
        .spawn({
            let relay = Arc::clone(&relay);
            move || broadcast(&relay, &commits)
        })?;
    let watcher = tokio::spawn(watch_health(Arc::clone(&relay)));
    // Taken before the relay says it listens: a SIGHUP from then on
    // reloads the rules (without a handler it would end the process).
    let hangup = if relay.rules.path().is_some() || relay.extras.reload_limits.is_some() {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    } else {
        None
    };
    let rules_watcher = tokio::spawn(watch_rules(Arc::clone(&relay), hangup));
    let mut app = Router::new()
        .route("/", get(root).options(preflight))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(Arc::clone(&relay));
    if let Some(routes) = relay.extras.routes.clone() {
        app = merge_routes(app, routes)?;
    }
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&relay),
            client_address,
        ))
        .into_make_service_with_connect_info::<Peer>();
    let local = axum::serve::Listener::local_addr(&listener)?;
    info!(address = %local, "relay listening");
    let served = {
        let relay = Arc::clone(&relay);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                info!("shutting down: closing subscriptions and connections");
                relay.stop.send_replace(true);
            })
            .await
    };
    watcher.abort();
    rules_watcher.abort();
    // Upgraded connections are not axum's to wait for.
    let wait_closed = async {
        loop {
            let notified = relay.all_closed.notified();
            if relay.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait_closed)
        .await
        .is_err()
    {
        warn!(
            open = relay.open.load(Ordering::Acquire),
            "connections still open after 10 s; leaving them"
        );
    }
    relay.broadcaster_stop.store(true, Ordering::Release);
    let _ = tokio::task::spawn_blocking(move || broadcaster.join()).await;
    served
}

/// The largest message the WebSocket layer takes: 4x the limit, at least
/// 1 MiB, so a client just over the limit gets a NOTICE, not a dropped
/// connection.
fn transport_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(4).max(1 << 20)
}

/// The broadcaster: takes committed events and queues each to the open
/// subscriptions it matches, never waiting on a connection.
fn broadcast(relay: &Relay, commits: &Commits) {
    let mut lagged_seen = 0;
    let mut matched = Vec::new();
    let mut batch = Vec::new();
    loop {
        if relay.broadcaster_stop.load(Ordering::Acquire) {
            return;
        }
        match commits.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(first)) => batch.push(first),
            Ok(None) => continue,
            Err(()) => return,
        }
        while batch.len() < 1024 {
            match commits.try_recv() {
                Some(committed) => batch.push(committed),
                None => break,
            }
        }
        let index = relay.subs.read();
        for committed in batch.drain(..) {
            let event = match committed.event() {
                Ok(event) => event,
                Err(e) => {
                    warn!(error = %e, "skipping an undecodable committed event");
                    continue;
                }
            };
            index.matching(&event, &mut matched);
            if matched.is_empty() {
                continue;
            }
            let json = event.to_json();
            let ephemeral = event.kind_class() == megalith::event::KindClass::Ephemeral;
            for sub in matched.drain(..) {
                if committed.sequence() <= sub.after {
                    continue;
                }
                let mut state = sub.state.lock();
                match &mut *state {
                    SubState::Pending(pending) => {
                        if pending.len() < MAX_PENDING {
                            pending.push(committed.clone());
                        } else {
                            sub.outbox.overflow();
                        }
                    }
                    SubState::Live
                        if sub.wants(committed.sequence(), ephemeral)
                            && sub.viewer.may_see(&event) =>
                    {
                        match sub.outbox.push(event_frame(&sub.sub_json, &json)) {
                            Pushed::Queued => {
                                relay.metrics.sent("EVENT");
                                relay.metrics.live_deliveries.inc();
                            }
                            Pushed::Overflowed | Pushed::Closed => {}
                        }
                    }
                    SubState::Live => {}
                    SubState::Closed => {}
                }
            }
        }
        drop(index);
        let lagged = commits.lagged();
        if lagged > lagged_seen {
            warn!(
                missed = lagged - lagged_seen,
                "live delivery fell behind the writers and missed events"
            );
            relay.metrics.lagged.inc_by(lagged - lagged_seen);
            lagged_seen = lagged;
        }
    }
}

/// The relay's routes and a service's, or an error naming the clash.
fn merge_routes(relay: Router, more: Router) -> std::io::Result<Router> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || relay.merge(more))).map_err(
        |panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the extra routes clash with the relay's: {why}"),
            )
        },
    )
}

/// Puts the client's address (behind a trusted proxy: the forwarded one) on
/// every request as `ConnectInfo<SocketAddr>`, for the extra routes; lifts
/// the handshake deadline of a connection that gets an event stream.
async fn client_address(
    State(relay): State<Arc<Relay>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = gate::client_ip(peer.addr.ip(), request.headers(), &relay.trusted_proxies);
    request
        .extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::new(ip, peer.addr.port())));
    let response = next.run(request).await;
    // A Server-Sent Events answer is long-lived like a WebSocket: the
    // handshake deadline (for sending the request) no longer applies, or
    // the stream would be cut at it.
    if response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        peer.mark_upgraded();
    }
    response
}

fn cors(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
}

/// `/`: the WebSocket, or NIP-11, or a short page for browsers.
async fn root(
    State(relay): State<Arc<Relay>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Ok(upgrade) = upgrade {
        let transport = transport_limit(relay.limits().max_message_bytes);
        let ip = gate::client_ip(peer.addr.ip(), &headers, &relay.trusted_proxies);
        let url = match &relay.config.relay_url {
            Some(url) => auth::RelayUrl::Configured(url.clone()),
            None => auth::RelayUrl::Host(
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
            ),
        };
        peer.mark_upgraded();
        return upgrade
            .max_message_size(transport)
            // A frame is refused at its header when longer than this, with
            // its payload still unread: closing then resets the connection
            // and the client may never read the NOTICE that says why. A
            // frame up to twice the bound is read whole first, then refused
            // as a message too long, and the NOTICE arrives.
            .max_frame_size(transport.saturating_mul(2))
            .on_upgrade(move |socket| conn::serve(relay, socket, ip, url));
    }
    let wants_info = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/nostr+json"));
    let mut response = if wants_info {
        (
            [(header::CONTENT_TYPE, "application/nostr+json")],
            relay.info_document().to_string(),
        )
            .into_response()
    } else if let Some(home) = &relay.extras.home {
        return home();
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "{}: a Nostr relay (Megalith {}). Connect a Nostr client with WebSocket to this \
                 address; GET with 'Accept: application/nostr+json' for its NIP-11 document.\n",
                relay.config.info.name,
                env!("CARGO_PKG_VERSION")
            ),
        )
            .into_response()
    };
    cors(&mut response);
    response
}

async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    cors(&mut response);
    response
}

/// Logs each shard's change between taking writes and refusing them (what
/// failed, with its files; what the recovery did), once a second.
async fn watch_health(relay: Arc<Relay>) {
    let mut writable: Vec<bool> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let shards = relay.store.health();
        writable.resize(shards.len(), true);
        for (was, shard) in writable.iter_mut().zip(&shards) {
            match (*was, shard.writable) {
                (true, false) => warn!(
                    shard = shard.shard.0,
                    problem = shard.problem.as_deref().unwrap_or(""),
                    "shard refuses writes; it retries in place"
                ),
                (false, true) => info!(
                    shard = shard.shard.0,
                    recovery = shard.last_recovery.as_deref().unwrap_or(""),
                    "shard takes writes again"
                ),
                _ => {}
            }
            *was = shard.writable;
        }
    }
}

/// `/health`: 200 and `ok` while the store answers reads and every shard
/// takes writes; 503 with the reason otherwise (no file paths: details go
/// to the log).
async fn health(State(relay): State<Arc<Relay>>) -> Response {
    let store = Arc::clone(&relay.store);
    // Reads the newest event: the indexes and the log answer.
    let probe = tokio::task::spawn_blocking(move || {
        store
            .query(&[megalith::Filter::new().limit(1)])
            .map(|_| store.health())
    })
    .await;
    let unavailable = |reason: String| {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            "no-store".parse().expect("a valid header"),
        );
        response
    };
    match probe {
        Ok(Ok(shards)) => {
            let refusing: Vec<String> = shards
                .iter()
                .filter(|s| !s.writable)
                .map(|s| {
                    format!(
                        "shard {} refuses writes ({}); retrying",
                        s.shard,
                        s.cause.as_deref().unwrap_or("a write failed")
                    )
                })
                .collect();
            if refusing.is_empty() {
                (StatusCode::OK, "ok\n").into_response()
            } else {
                unavailable(format!("store unavailable: {}\n", refusing.join("; ")))
            }
        }
        Ok(Err(e)) => {
            warn!(error = %e, "health probe: the store cannot answer a read");
            unavailable("store unavailable: reads fail\n".to_string())
        }
        Err(e) => {
            warn!(error = %e, "health probe failed");
            unavailable("internal error\n".to_string())
        }
    }
}

/// `/metrics`: Prometheus text format.
async fn metrics_text(State(relay): State<Arc<Relay>>) -> Response {
    let relay2 = Arc::clone(&relay);
    let rendered = tokio::task::spawn_blocking(move || {
        let mut text = relay2.metrics.render(&relay2.store);
        if let Some(extra) = &relay2.extras.metrics {
            text.push_str(&extra());
        }
        text
    });
    match rendered.await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
