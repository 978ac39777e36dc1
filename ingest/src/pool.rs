//! The relay pool: one task owns every outbound relay connection; callers
//! hold a [`PoolHandle`] and talk to it through a bounded command queue,
//! and hear back on bounded streams, so no caller ever touches a socket.
//!
//! One connection per normalized relay URL, shared by every subscription
//! and publish that names it, at most [`PoolConfig::max_connections`] open
//! (further relays wait their turn). Each open relay is served by a
//! connection task the pool started and alone commands; it dials with a
//! timeout, reconnects on the [`Backoff`] schedule, pings, declares the
//! connection dead after a silence, answers NIP-42 AUTH challenges when
//! the pool has a key, and re-sends every subscription after a reconnect
//! with `since` moved up to what it already received (docs/ingester.md).
//!
//! Back-pressure: a connection task hands each event to its subscriber's
//! bounded stream and waits while that stream is full, so a slow consumer
//! slows the socket reads (and TCP slows the relay) instead of growing a
//! buffer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use megalith::event::Limits;
use megalith::{Event, EventId, Filter, Keys};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, connect_async_tls_with_config};

use crate::backoff::Backoff;
use crate::message::RelayMessage;
use crate::stats::{Stats, now_ms, now_secs};
use crate::url::RelayUrl;

/// A subscription's id, the same on every relay it is sent to.
pub type SubId = Arc<str>;

/// How the pool behaves; [`PoolConfig::default`] gives the documented
/// defaults.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most connections open at once (default 256); further relays wait.
    pub max_connections: usize,
    /// Largest WebSocket message and frame accepted, in bytes (default 1 MiB).
    pub max_message_bytes: usize,
    /// Limits each received event is held to.
    pub limits: Limits,
    /// How long a dial (TCP, TLS, WebSocket handshake) may take (default 10 s).
    pub connect_timeout: Duration,
    /// How often an idle connection is pinged (default 30 s).
    pub ping_interval: Duration,
    /// Silence after which a connection is dead (default 90 s).
    pub dead_after: Duration,
    /// How long a connection with no subscription and nothing to publish
    /// stays open (default 60 s); relays added with
    /// [`PoolHandle::add_relay`] stay until removed.
    pub idle_close: Duration,
    /// Seconds subtracted from the newest event seen when a subscription
    /// resumes after a reconnect (default 60): duplicates are cheap, gaps
    /// are not.
    pub resume_margin: u64,
    /// Multiplies every reconnect wait (default 1.0; tests shrink it).
    pub reconnect_scale: f64,
    /// The key that answers NIP-42 AUTH challenges (none: challenges are
    /// ignored and `auth-required` refusals reach the caller).
    pub auth_keys: Option<Keys>,
    /// Capacity of the command queue (default 1,024).
    pub command_capacity: usize,
    /// Subscriptions open at once on one relay (default 100); more wait
    /// their turn. A relay that refuses a subscription as one too many
    /// (`CLOSED` saying so) lowers this for itself, and the refused one
    /// waits instead of failing.
    pub max_subscriptions_per_relay: usize,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            max_connections: 256,
            max_message_bytes: 1 << 20,
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            dead_after: Duration::from_secs(90),
            idle_close: Duration::from_secs(60),
            resume_margin: 60,
            reconnect_scale: 1.0,
            auth_keys: None,
            command_capacity: 1024,
            max_subscriptions_per_relay: 100,
        }
    }
}

/// What the pool tells a subscriber or a publisher.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolEvent {
    /// An event for a subscription: parsed and its id checked, its
    /// signature not yet checked (the store does that).
    Event {
        relay: RelayUrl,
        sub: SubId,
        event: Box<Event>,
    },
    /// The relay has sent everything it had stored for the subscription.
    Eose { relay: RelayUrl, sub: SubId },
    /// The relay ended the subscription.
    Closed {
        relay: RelayUrl,
        sub: SubId,
        reason: String,
    },
    /// A NOTICE from a relay.
    Notice { relay: RelayUrl, message: String },
    /// The relay's answer to a publish.
    Ok {
        relay: RelayUrl,
        id: EventId,
        accepted: bool,
        message: String,
    },
    /// A connection came up (the subscriptions on it have been re-sent).
    Connected { relay: RelayUrl },
    /// A connection went down; the pool will dial again.
    Disconnected { relay: RelayUrl, why: String },
    /// Something went wrong with a relay: a failed dial, a message that
    /// does not parse, a refused AUTH.
    Error { relay: RelayUrl, what: String },
}

impl PoolEvent {
    /// The relay it is about.
    pub fn relay(&self) -> &RelayUrl {
        match self {
            PoolEvent::Event { relay, .. }
            | PoolEvent::Eose { relay, .. }
            | PoolEvent::Closed { relay, .. }
            | PoolEvent::Notice { relay, .. }
            | PoolEvent::Ok { relay, .. }
            | PoolEvent::Connected { relay }
            | PoolEvent::Disconnected { relay, .. }
            | PoolEvent::Error { relay, .. } => relay,
        }
    }
}

/// Why a command could not be given to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolClosed;

impl std::fmt::Display for PoolClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the relay pool has shut down")
    }
}

impl std::error::Error for PoolClosed {}

enum Command {
    AddRelay(RelayUrl),
    RemoveRelay(RelayUrl),
    Subscribe {
        id: SubId,
        relays: Vec<RelayUrl>,
        filters: Vec<Filter>,
        to: mpsc::Sender<PoolEvent>,
    },
    Unsubscribe(SubId),
    Publish {
        relays: Vec<RelayUrl>,
        event: Box<Event>,
        to: mpsc::Sender<PoolEvent>,
    },
    Shutdown,
}

/// A cheap, cloneable handle on the pool.
#[derive(Debug, Clone)]
pub struct PoolHandle {
    commands: mpsc::Sender<Command>,
    stats: Stats,
    next_sub: Arc<AtomicU64>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::AddRelay(_) => "AddRelay",
            Command::RemoveRelay(_) => "RemoveRelay",
            Command::Subscribe { .. } => "Subscribe",
            Command::Unsubscribe(_) => "Unsubscribe",
            Command::Publish { .. } => "Publish",
            Command::Shutdown => "Shutdown",
        })
    }
}

/// A subscription's stream. Dropping it closes the subscription.
#[derive(Debug)]
pub struct Subscription {
    pub id: SubId,
    events: mpsc::Receiver<PoolEvent>,
    commands: mpsc::Sender<Command>,
}

impl Subscription {
    /// The next event, `None` once the pool has shut down.
    pub async fn recv(&mut self) -> Option<PoolEvent> {
        self.events.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Best effort: if the queue is full, the connection tasks notice
        // the dropped stream at the subscription's next event.
        let _ = self
            .commands
            .try_send(Command::Unsubscribe(self.id.clone()));
    }
}

/// Starts the pool on the current tokio runtime.
pub fn start(config: PoolConfig) -> (PoolHandle, JoinHandle<()>) {
    let (commands, receiver) = mpsc::channel(config.command_capacity.max(1));
    let stats = Stats::default();
    let connector = tls_connector();
    let pool = Pool {
        config: Arc::new(config),
        stats: stats.clone(),
        connector,
        relays: HashMap::new(),
        waiting: VecDeque::new(),
        subs: HashMap::new(),
        open: 0,
    };
    let task = tokio::spawn(pool.run(receiver));
    let handle = PoolHandle {
        commands,
        stats,
        next_sub: Arc::new(AtomicU64::new(1)),
    };
    (handle, task)
}

impl PoolHandle {
    async fn send(&self, command: Command) -> Result<(), PoolClosed> {
        self.commands.send(command).await.map_err(|_| PoolClosed)
    }

    /// Opens a connection to `relay` and keeps it open (reconnecting) until
    /// [`PoolHandle::remove_relay`].
    pub async fn add_relay(&self, relay: RelayUrl) -> Result<(), PoolClosed> {
        self.send(Command::AddRelay(relay)).await
    }

    /// Closes the connection to `relay`; its subscriptions get `Closed`.
    pub async fn remove_relay(&self, relay: RelayUrl) -> Result<(), PoolClosed> {
        self.send(Command::RemoveRelay(relay)).await
    }

    /// Subscribes to `filters` on each of `relays` (connecting as needed);
    /// the stream holds at most `capacity` undelivered events.
    pub async fn subscribe(
        &self,
        relays: Vec<RelayUrl>,
        filters: Vec<Filter>,
        capacity: usize,
    ) -> Result<Subscription, PoolClosed> {
        let n = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let id: SubId = Arc::from(format!("m{n}"));
        let (to, events) = mpsc::channel(capacity.max(1));
        self.send(Command::Subscribe {
            id: id.clone(),
            relays,
            filters,
            to,
        })
        .await?;
        Ok(Subscription {
            id,
            events,
            commands: self.commands.clone(),
        })
    }

    /// Ends a subscription on every relay (dropping its [`Subscription`]
    /// does the same).
    pub async fn unsubscribe(&self, id: SubId) -> Result<(), PoolClosed> {
        self.send(Command::Unsubscribe(id)).await
    }

    /// Publishes `event` to `relays`; each relay's `OK` (or an `Error` for a
    /// relay that could not take it) arrives on the returned stream.
    pub async fn publish(
        &self,
        relays: Vec<RelayUrl>,
        event: Event,
    ) -> Result<mpsc::Receiver<PoolEvent>, PoolClosed> {
        let (to, answers) = mpsc::channel(relays.len().max(1) * 4);
        self.send(Command::Publish {
            relays,
            event: Box::new(event),
            to,
        })
        .await?;
        Ok(answers)
    }

    /// Closes every connection and ends the pool task.
    pub async fn shutdown(&self) {
        let _ = self.send(Command::Shutdown).await;
    }

    /// The per-relay counters, shared with the store sink.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// What the pool tells a connection task.
enum RelayCommand {
    Subscribe {
        id: SubId,
        filters: Vec<Filter>,
        to: mpsc::Sender<PoolEvent>,
    },
    Unsubscribe(SubId),
    Publish {
        event: Box<Event>,
        to: mpsc::Sender<PoolEvent>,
    },
    /// Close if nothing is subscribed or waiting for an `OK`; answers
    /// with `Internal::Idle`.
    CloseIfIdle,
    Close,
}

/// What connection tasks tell the pool.
enum Internal {
    /// The task dropped a subscription on its own (the relay closed it, or
    /// its stream was dropped).
    SubEnded(RelayUrl, SubId),
    /// The answer to `CloseIfIdle`: whether the task has ended.
    Idle(RelayUrl, bool),
}

struct RelayEntry {
    /// The connection task's queue; `None` while waiting for a free slot
    /// or while an idle close is in flight.
    tx: Option<mpsc::UnboundedSender<RelayCommand>>,
    /// Commands held while `tx` is `None`.
    held: Vec<RelayCommand>,
    /// Added with `add_relay`: never closed for idleness.
    pinned: bool,
    /// Subscriptions on it.
    subs: HashSet<SubId>,
    /// Since when it had no subscription.
    idle_since: Instant,
    /// An idle close is in flight.
    closing: bool,
    task: Option<JoinHandle<()>>,
}

struct Pool {
    config: Arc<PoolConfig>,
    stats: Stats,
    connector: Connector,
    relays: HashMap<RelayUrl, RelayEntry>,
    /// Relays waiting for a connection slot, in arrival order.
    waiting: VecDeque<RelayUrl>,
    /// Which relays each subscription is on.
    subs: HashMap<SubId, Vec<RelayUrl>>,
    /// Connection tasks running.
    open: usize,
}

impl Pool {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let (internal_tx, mut internal) = mpsc::unbounded_channel::<Internal>();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.command(command, &internal_tx),
                },
                Some(message) = internal.recv() => self.internal(message, &internal_tx),
                _ = tick.tick() => self.close_idle(),
            }
        }
        for entry in self.relays.values_mut() {
            if let Some(tx) = &entry.tx {
                let _ = tx.send(RelayCommand::Close);
            }
        }
        for entry in self.relays.into_values() {
            if let Some(task) = entry.task {
                let _ = task.await;
            }
        }
    }

    fn command(&mut self, command: Command, internal: &mpsc::UnboundedSender<Internal>) {
        match command {
            Command::AddRelay(url) => {
                self.entry(&url, internal).pinned = true;
            }
            Command::RemoveRelay(url) => {
                self.waiting.retain(|u| u != &url);
                if let Some(entry) = self.relays.remove(&url) {
                    for sub in &entry.subs {
                        if let Some(relays) = self.subs.get_mut(sub) {
                            relays.retain(|u| u != &url);
                        }
                    }
                    if let Some(tx) = entry.tx {
                        let _ = tx.send(RelayCommand::Close);
                        self.open -= 1;
                        self.start_waiting(internal);
                    }
                }
            }
            Command::Subscribe {
                id,
                relays,
                filters,
                to,
            } => {
                let mut unique = relays;
                unique.sort();
                unique.dedup();
                for url in &unique {
                    let entry = self.entry(url, internal);
                    entry.subs.insert(id.clone());
                    Self::deliver(
                        entry,
                        RelayCommand::Subscribe {
                            id: id.clone(),
                            filters: filters.clone(),
                            to: to.clone(),
                        },
                    );
                }
                self.subs.insert(id, unique);
            }
            Command::Unsubscribe(id) => {
                for url in self.subs.remove(&id).unwrap_or_default() {
                    if let Some(entry) = self.relays.get_mut(&url) {
                        entry.subs.remove(&id);
                        if entry.subs.is_empty() {
                            entry.idle_since = Instant::now();
                        }
                        Self::deliver(entry, RelayCommand::Unsubscribe(id.clone()));
                    }
                }
            }
            Command::Publish { relays, event, to } => {
                let mut unique = relays;
                unique.sort();
                unique.dedup();
                for url in &unique {
                    let entry = self.entry(url, internal);
                    entry.idle_since = Instant::now();
                    Self::deliver(
                        entry,
                        RelayCommand::Publish {
                            event: event.clone(),
                            to: to.clone(),
                        },
                    );
                }
            }
            Command::Shutdown => {}
        }
    }

    fn internal(&mut self, message: Internal, internal: &mpsc::UnboundedSender<Internal>) {
        match message {
            Internal::SubEnded(url, id) => {
                if let Some(relays) = self.subs.get_mut(&id) {
                    relays.retain(|u| u != &url);
                    if relays.is_empty() {
                        self.subs.remove(&id);
                    }
                }
                if let Some(entry) = self.relays.get_mut(&url) {
                    entry.subs.remove(&id);
                    if entry.subs.is_empty() {
                        entry.idle_since = Instant::now();
                    }
                }
            }
            Internal::Idle(url, ended) => {
                let Some(entry) = self.relays.get_mut(&url) else {
                    return;
                };
                entry.closing = false;
                if !ended {
                    let tx = entry.tx.clone();
                    if let Some(tx) = tx {
                        for command in entry.held.drain(..) {
                            let _ = tx.send(command);
                        }
                    }
                    entry.idle_since = Instant::now();
                    return;
                }
                entry.tx = None;
                entry.task = None;
                self.open -= 1;
                if entry.held.is_empty() && entry.subs.is_empty() && !entry.pinned {
                    self.relays.remove(&url);
                } else {
                    // Something arrived for it while it was closing.
                    self.waiting.push_back(url);
                }
                self.start_waiting(internal);
            }
        }
    }

    /// Asks connection tasks that have been idle long enough to end.
    fn close_idle(&mut self) {
        let idle_close = self.config.idle_close;
        for entry in self.relays.values_mut() {
            if entry.tx.is_some()
                && !entry.pinned
                && !entry.closing
                && entry.subs.is_empty()
                && entry.held.is_empty()
                && entry.idle_since.elapsed() >= idle_close
            {
                entry.closing = true;
                if let Some(tx) = &entry.tx {
                    let _ = tx.send(RelayCommand::CloseIfIdle);
                }
            }
        }
    }

    /// The relay's entry, starting its connection task when a slot is free.
    fn entry(
        &mut self,
        url: &RelayUrl,
        internal: &mpsc::UnboundedSender<Internal>,
    ) -> &mut RelayEntry {
        if !self.relays.contains_key(url) {
            self.relays.insert(
                url.clone(),
                RelayEntry {
                    tx: None,
                    held: Vec::new(),
                    pinned: false,
                    subs: HashSet::new(),
                    idle_since: Instant::now(),
                    closing: false,
                    task: None,
                },
            );
            self.waiting.push_back(url.clone());
            self.start_waiting(internal);
        }
        self.relays.get_mut(url).expect("inserted above")
    }

    /// Starts connection tasks for waiting relays while slots are free.
    fn start_waiting(&mut self, internal: &mpsc::UnboundedSender<Internal>) {
        while self.open < self.config.max_connections.max(1) {
            let Some(url) = self.waiting.pop_front() else {
                return;
            };
            let Some(entry) = self.relays.get_mut(&url) else {
                continue;
            };
            if entry.tx.is_some() || entry.closing {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            for command in entry.held.drain(..) {
                let _ = tx.send(command);
            }
            let connection = Connection {
                url: url.clone(),
                config: self.config.clone(),
                stats: self.stats.clone(),
                connector: self.connector.clone(),
                internal: internal.clone(),
                subs: HashMap::new(),
                waiting: VecDeque::new(),
                max_subs: self.config.max_subscriptions_per_relay.max(1),
                next_seq: 0,
                publishes: Vec::new(),
                auth: AuthState::default(),
                backoff: Backoff::new(seed_of(&url)),
                connections: 0,
            };
            entry.task = Some(tokio::spawn(connection.run(rx)));
            entry.tx = Some(tx);
            self.open += 1;
        }
    }

    /// Sends to the relay's task, or holds until it has one.
    fn deliver(entry: &mut RelayEntry, command: RelayCommand) {
        match &entry.tx {
            Some(tx) if !entry.closing => {
                let _ = tx.send(command);
            }
            _ => entry.held.push(command),
        }
    }
}

fn seed_of(url: &RelayUrl) -> u64 {
    // FNV-1a of the URL: relays that failed together come back apart.
    url.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// rustls with the Mozilla roots (webpki-roots) and the ring provider, so
/// no process-wide provider has to be installed.
fn tls_connector() -> Connector {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => Connector::Rustls(Arc::new(
            builder.with_root_certificates(roots).with_no_client_auth(),
        )),
        Err(_) => Connector::Plain,
    }
}

/// One subscription as a connection task keeps it.
struct SubState {
    filters: Vec<Filter>,
    to: mpsc::Sender<PoolEvent>,
    /// Newest `created_at` received for it.
    newest: Option<u64>,
    /// When (Unix seconds) its EOSE arrived, if it has.
    eose_at: Option<u64>,
    /// Closed with `auth-required:` and waiting for AUTH to succeed.
    awaiting_auth: bool,
    /// Already re-sent once after an AUTH.
    auth_retried: bool,
    /// Its REQ is out on the current connection (it holds a slot).
    sent: bool,
    /// Arrival order, for the waiting line.
    seq: u64,
}

impl SubState {
    /// The filters to send: as given before EOSE; after it, from the newest
    /// event seen (or the EOSE time) minus the margin, without the limit.
    fn resume_filters(&self, margin: u64) -> Vec<Filter> {
        let Some(eose_at) = self.eose_at else {
            return self.filters.clone();
        };
        let from = self.newest.unwrap_or(0).max(eose_at).saturating_sub(margin);
        self.filters
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f.since = Some(f.since.map_or(from, |s| s.max(from)));
                f.limit = None;
                f
            })
            .collect()
    }
}

#[derive(Default)]
struct AuthState {
    /// The id of the AUTH event sent on this connection, until its OK.
    pending: Option<EventId>,
    /// AUTH succeeded on this connection.
    done: bool,
    /// Challenges answered on this connection.
    answered: u32,
}

/// Challenges answered per connection at most: each answer is a signature,
/// and a relay must not be able to make the pool sign without end.
const MAX_AUTH_ANSWERS: u32 = 4;

struct PendingPublish {
    event: Box<Event>,
    to: mpsc::Sender<PoolEvent>,
    awaiting_auth: bool,
    auth_retried: bool,
}

/// Why a connection ended.
enum End {
    /// The pool asked it to close: the task ends.
    Closed,
    /// It dropped or failed: dial again.
    Dropped(String),
}

/// One relay's connection task.
struct Connection {
    url: RelayUrl,
    config: Arc<PoolConfig>,
    stats: Stats,
    connector: Connector,
    internal: mpsc::UnboundedSender<Internal>,
    subs: HashMap<SubId, SubState>,
    /// Subscriptions waiting for a slot, in arrival order.
    waiting: VecDeque<SubId>,
    /// Slots: subscriptions open at once (lowered by a relay's refusals).
    max_subs: usize,
    next_seq: u64,
    /// Sent or to send, waiting for their `OK`, in the order they were
    /// made (they are sent again in that order after a reconnect).
    publishes: Vec<PendingPublish>,
    auth: AuthState,
    backoff: Backoff,
    connections: u64,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Connection {
    async fn run(mut self, commands: mpsc::UnboundedReceiver<RelayCommand>) {
        self.serve_until_closed(commands).await;
        // Removed from the pool, or the pool shut down: whoever still
        // listens hears it (a subscription on other relays goes on there).
        for (id, sub) in &self.subs {
            let _ = sub.to.try_send(PoolEvent::Closed {
                relay: self.url.clone(),
                sub: id.clone(),
                reason: "closed by the pool: the relay was removed or the pool shut down"
                    .to_string(),
            });
        }
        for publish in &self.publishes {
            let _ = publish.to.try_send(PoolEvent::Error {
                relay: self.url.clone(),
                what: "no answer before the relay was removed or the pool shut down".to_string(),
            });
        }
    }

    async fn serve_until_closed(&mut self, mut commands: mpsc::UnboundedReceiver<RelayCommand>) {
        let mut last_error: Option<String>;
        loop {
            // Take what is queued first, so that everyone waiting hears how
            // this dial goes.
            while let Ok(command) = commands.try_recv() {
                match command {
                    RelayCommand::Close => return,
                    RelayCommand::CloseIfIdle => {
                        let idle = self.idle();
                        let _ = self.internal.send(Internal::Idle(self.url.clone(), idle));
                        if idle {
                            return;
                        }
                    }
                    command => self.offline_command(command),
                }
            }
            self.stats.update(&self.url, |s| s.attempts += 1);
            let started = Instant::now();
            let lasted = match self.dial().await {
                Ok(socket) => {
                    last_error = None;
                    self.connections += 1;
                    let reconnect = self.connections > 1;
                    self.stats.update(&self.url, |s| {
                        s.connected = true;
                        s.last_change_ms = now_ms();
                        if reconnect {
                            s.reconnects += 1;
                        }
                    });
                    let end = self.serve(socket, &mut commands).await;
                    self.stats.update(&self.url, |s| {
                        s.connected = false;
                        s.last_change_ms = now_ms();
                    });
                    match end {
                        End::Closed => return,
                        End::Dropped(why) => {
                            self.stats.error(&self.url, &why);
                            self.tell_all(PoolEvent::Disconnected {
                                relay: self.url.clone(),
                                why,
                            })
                            .await;
                        }
                    }
                    started.elapsed()
                }
                Err(what) => {
                    self.stats.error(&self.url, &what);
                    last_error = Some(what.clone());
                    self.tell_all(PoolEvent::Error {
                        relay: self.url.clone(),
                        what,
                    })
                    .await;
                    Duration::ZERO
                }
            };
            let scale = self.config.reconnect_scale.max(0.0);
            let was_penalized = self.backoff.penalized();
            let wait = self
                .backoff
                .failed(lasted.div_f64(scale.max(1e-9)))
                .mul_f64(scale);
            if self.backoff.penalized() && !was_penalized {
                self.stats.update(&self.url, |s| s.penalties += 1);
            }
            // Wait, still taking commands (subscriptions made meanwhile are
            // sent when the connection comes up).
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    command = commands.recv() => match command {
                        None | Some(RelayCommand::Close) => return,
                        Some(RelayCommand::CloseIfIdle) => {
                            if self.idle() {
                                let _ = self.internal.send(Internal::Idle(self.url.clone(), true));
                                return;
                            }
                            let _ = self.internal.send(Internal::Idle(self.url.clone(), false));
                        }
                        Some(command) => {
                            // A newcomer hears at once that the relay is failing.
                            let newcomer = match &command {
                                RelayCommand::Subscribe { to, .. } | RelayCommand::Publish { to, .. } => Some(to.clone()),
                                _ => None,
                            };
                            self.offline_command(command);
                            if let (Some(to), Some(what)) = (newcomer, &last_error) {
                                let _ = to.try_send(PoolEvent::Error {
                                    relay: self.url.clone(),
                                    what: what.clone(),
                                });
                            }
                        }
                    },
                }
            }
        }
    }

    fn idle(&self) -> bool {
        self.subs.is_empty() && self.publishes.is_empty()
    }

    async fn dial(&self) -> Result<Socket, String> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.config.max_message_bytes))
            .max_frame_size(Some(self.config.max_message_bytes));
        let dial = connect_async_tls_with_config(
            self.url.as_str(),
            Some(config),
            true, // TCP_NODELAY
            Some(self.connector.clone()),
        );
        match tokio::time::timeout(self.config.connect_timeout, dial).await {
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(e)) => Err(format!("connect: {e}")),
            Err(_) => Err(format!(
                "connect: no answer within {} ms",
                self.config.connect_timeout.as_millis()
            )),
        }
    }

    /// A command while disconnected: remembered for the next connection.
    fn offline_command(&mut self, command: RelayCommand) {
        match command {
            RelayCommand::Subscribe { id, filters, to } => {
                self.add_sub(id, filters, to);
            }
            RelayCommand::Unsubscribe(id) => {
                self.subs.remove(&id);
                self.waiting.retain(|w| *w != id);
            }
            RelayCommand::Publish { event, to } => {
                self.publishes.push(PendingPublish::new(event, to));
            }
            RelayCommand::CloseIfIdle | RelayCommand::Close => {}
        }
    }

    /// Tells every subscriber and publisher on this relay.
    async fn tell_all(&mut self, event: PoolEvent) {
        let mut gone = Vec::new();
        for (id, sub) in &self.subs {
            if sub.to.send(event.clone()).await.is_err() {
                gone.push(id.clone());
            }
        }
        for id in gone {
            self.drop_sub(&id);
        }
        for publish in &self.publishes {
            let _ = publish.to.try_send(event.clone());
        }
    }

    fn add_sub(&mut self, id: SubId, filters: Vec<Filter>, to: mpsc::Sender<PoolEvent>) {
        self.next_seq += 1;
        self.waiting.push_back(id.clone());
        self.subs
            .insert(id, SubState::new(filters, to, self.next_seq));
    }

    /// Sends waiting subscriptions while slots are free.
    fn admit(&mut self, out: &mut Vec<String>) {
        let mut open = self.subs.values().filter(|s| s.sent).count();
        while open < self.max_subs {
            let Some(id) = self.waiting.pop_front() else {
                return;
            };
            let Some(state) = self.subs.get_mut(&id) else {
                continue;
            };
            if state.sent {
                continue;
            }
            state.sent = true;
            out.push(req(&id, &state.resume_filters(self.config.resume_margin)));
            open += 1;
        }
    }

    fn drop_sub(&mut self, id: &SubId) {
        self.waiting.retain(|w| w != id);
        if self.subs.remove(id).is_some() {
            let _ = self
                .internal
                .send(Internal::SubEnded(self.url.clone(), id.clone()));
        }
    }

    async fn serve(
        &mut self,
        socket: Socket,
        commands: &mut mpsc::UnboundedReceiver<RelayCommand>,
    ) -> End {
        let (mut write, mut read) = socket.split();
        self.auth = AuthState::default();
        let mut out: Vec<String> = Vec::new();
        // Every subscription queues again, in arrival order, for a slot.
        let mut order: Vec<(u64, SubId)> = Vec::new();
        for (id, sub) in &mut self.subs {
            sub.awaiting_auth = false;
            sub.auth_retried = false;
            sub.sent = false;
            order.push((sub.seq, id.clone()));
        }
        order.sort();
        self.waiting = order.into_iter().map(|(_, id)| id).collect();
        self.admit(&mut out);
        for publish in &mut self.publishes {
            publish.awaiting_auth = false;
            out.push(event_message(&publish.event));
        }
        self.tell_all(PoolEvent::Connected {
            relay: self.url.clone(),
        })
        .await;
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            self.admit(&mut out);
            for text in out.drain(..) {
                if let Err(e) = write.send(Message::text(text)).await {
                    return End::Dropped(format!("send: {e}"));
                }
            }
            tokio::select! {
                message = read.next() => {
                    last_heard = Instant::now();
                    match message {
                        None => return End::Dropped("the relay closed the connection".to_string()),
                        Some(Err(e)) => return End::Dropped(format!("receive: {e}")),
                        Some(Ok(Message::Text(text))) => self.received(text.as_str(), &mut out).await,
                        Some(Ok(Message::Binary(_))) => {
                            self.protocol_error("a binary message (NIP-01 is text only)").await;
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| format!("the relay closed the connection ({} {})", f.code, f.reason))
                                .unwrap_or_else(|| "the relay closed the connection".to_string());
                            return End::Dropped(why);
                        }
                        Some(Ok(_)) => {} // ping, pong: tungstenite answers pings itself
                    }
                }
                command = commands.recv() => match command {
                    None | Some(RelayCommand::Close) => {
                        let _ = write.send(Message::Close(None)).await;
                        return End::Closed;
                    }
                    Some(RelayCommand::CloseIfIdle) => {
                        if self.idle() {
                            let _ = write.send(Message::Close(None)).await;
                            let _ = self.internal.send(Internal::Idle(self.url.clone(), true));
                            return End::Closed;
                        }
                        let _ = self.internal.send(Internal::Idle(self.url.clone(), false));
                    }
                    Some(RelayCommand::Subscribe { id, filters, to }) => {
                        self.add_sub(id, filters, to);
                    }
                    Some(RelayCommand::Unsubscribe(id)) => {
                        self.waiting.retain(|w| *w != id);
                        if self.subs.remove(&id).is_some_and(|s| s.sent) {
                            out.push(serde_json::json!(["CLOSE", &*id]).to_string());
                        }
                    }
                    Some(RelayCommand::Publish { event, to }) => {
                        out.push(event_message(&event));
                        self.publishes.push(PendingPublish::new(event, to));
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() >= self.config.dead_after {
                        return End::Dropped(format!(
                            "no answer for {} s: the connection is dead",
                            last_heard.elapsed().as_secs()
                        ));
                    }
                    if let Err(e) = write.send(Message::Ping(Vec::new().into())).await {
                        return End::Dropped(format!("send: {e}"));
                    }
                }
            }
        }
    }

    async fn protocol_error(&mut self, what: &str) {
        self.stats.error(&self.url, what);
        self.tell_all(PoolEvent::Error {
            relay: self.url.clone(),
            what: what.to_string(),
        })
        .await;
    }

    /// One text message from the relay; what to send back goes to `out`.
    async fn received(&mut self, text: &str, out: &mut Vec<String>) {
        let message = match RelayMessage::parse(text, &self.config.limits) {
            Ok(message) => message,
            Err(why) => {
                if text.starts_with("[\"EVENT\"") {
                    self.stats.update(&self.url, |s| s.invalid += 1);
                }
                self.protocol_error(&why).await;
                return;
            }
        };
        match message {
            RelayMessage::Event { sub, event } => {
                let created_at = event.created_at;
                self.stats.update(&self.url, |s| {
                    s.events += 1;
                    s.newest_created_at = s.newest_created_at.max(created_at);
                });
                let Some(state) = self.subs.get_mut(sub.as_str()) else {
                    return; // a subscription closed meanwhile
                };
                state.newest = Some(state.newest.map_or(created_at, |n| n.max(created_at)));
                let id: SubId = Arc::from(sub.as_str());
                let delivered = state
                    .to
                    .send(PoolEvent::Event {
                        relay: self.url.clone(),
                        sub: id.clone(),
                        event,
                    })
                    .await;
                if delivered.is_err() {
                    self.drop_sub(&id);
                    out.push(serde_json::json!(["CLOSE", &*id]).to_string());
                }
            }
            RelayMessage::Eose { sub } => {
                let Some(state) = self.subs.get_mut(sub.as_str()) else {
                    return;
                };
                state.eose_at.get_or_insert_with(now_secs);
                let id: SubId = Arc::from(sub.as_str());
                let event = PoolEvent::Eose {
                    relay: self.url.clone(),
                    sub: id.clone(),
                };
                if state.to.send(event).await.is_err() {
                    self.drop_sub(&id);
                    out.push(serde_json::json!(["CLOSE", &*id]).to_string());
                }
            }
            RelayMessage::Closed { sub, reason } => {
                let Some(state) = self.subs.get_mut(sub.as_str()) else {
                    return;
                };
                if reason.starts_with("auth-required:")
                    && self.config.auth_keys.is_some()
                    && !state.auth_retried
                    && !self.auth.done
                {
                    // Re-sent once AUTH succeeds.
                    state.awaiting_auth = true;
                    return;
                }
                let was_sent = state.sent;
                if was_sent && too_many_subscriptions(&reason) {
                    let open = self.subs.values().filter(|s| s.sent).count();
                    if open > 1 {
                        // The relay's own cap: wait for a slot under it.
                        self.max_subs = open - 1;
                        let id: SubId = Arc::from(sub.as_str());
                        let seq = self.subs.get_mut(&id).map_or(0, |state| {
                            state.sent = false;
                            state.seq
                        });
                        // Back in line in arrival order.
                        let at = self
                            .waiting
                            .iter()
                            .position(|w| self.subs.get(w).is_some_and(|s| s.seq > seq))
                            .unwrap_or(self.waiting.len());
                        self.waiting.insert(at, id);
                        return;
                    }
                }
                let id: SubId = Arc::from(sub.as_str());
                if let Some(state) = self.subs.get(&id) {
                    let _ = state
                        .to
                        .send(PoolEvent::Closed {
                            relay: self.url.clone(),
                            sub: id.clone(),
                            reason,
                        })
                        .await;
                }
                self.drop_sub(&id);
            }
            RelayMessage::Notice { message } => {
                self.stats.update(&self.url, |s| s.notices += 1);
                self.tell_all(PoolEvent::Notice {
                    relay: self.url.clone(),
                    message,
                })
                .await;
            }
            RelayMessage::Ok {
                id,
                accepted,
                message,
            } => self.ok(id, accepted, message, out).await,
            RelayMessage::Auth { challenge } => {
                if self.auth.answered >= MAX_AUTH_ANSWERS {
                    self.protocol_error("AUTH: too many challenges on one connection; ignored")
                        .await;
                    return;
                }
                if let Some(keys) = &self.config.auth_keys {
                    self.auth.answered += 1;
                    let event = keys.sign(
                        now_secs(),
                        22242,
                        vec![
                            vec!["relay".to_string(), self.url.as_str().to_string()],
                            vec!["challenge".to_string(), challenge],
                        ],
                        String::new(),
                    );
                    self.auth.pending = Some(event.id);
                    out.push(
                        serde_json::json!([
                            "AUTH",
                            serde_json::from_str::<serde_json::Value>(&event.to_json())
                                .unwrap_or_default()
                        ])
                        .to_string(),
                    );
                }
            }
            RelayMessage::Count { .. } => {} // the pool never sends COUNT
        }
    }

    async fn ok(&mut self, id: EventId, accepted: bool, message: String, out: &mut Vec<String>) {
        if self.auth.pending == Some(id) {
            self.auth.pending = None;
            if !accepted {
                self.protocol_error(&format!("AUTH refused: {message}"))
                    .await;
                // The refusals held for AUTH reach their callers now.
                let held: Vec<SubId> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| s.awaiting_auth)
                    .map(|(id, _)| id.clone())
                    .collect();
                for sub in held {
                    if let Some(state) = self.subs.get(&sub) {
                        let _ = state
                            .to
                            .send(PoolEvent::Closed {
                                relay: self.url.clone(),
                                sub: sub.clone(),
                                reason: format!("auth-required: AUTH refused: {message}"),
                            })
                            .await;
                    }
                    self.drop_sub(&sub);
                }
                return;
            }
            self.auth.done = true;
            for (sub, state) in &mut self.subs {
                if state.awaiting_auth {
                    state.awaiting_auth = false;
                    state.auth_retried = true;
                    out.push(req(sub, &state.resume_filters(self.config.resume_margin)));
                }
            }
            for publish in &mut self.publishes {
                if publish.awaiting_auth {
                    publish.awaiting_auth = false;
                    publish.auth_retried = true;
                    out.push(event_message(&publish.event));
                }
            }
            return;
        }
        let Some(at) = self.publishes.iter().position(|p| p.event.id == id) else {
            return;
        };
        let publish = &mut self.publishes[at];
        if !accepted
            && message.starts_with("auth-required:")
            && self.config.auth_keys.is_some()
            && !publish.auth_retried
            && !self.auth.done
        {
            publish.awaiting_auth = true;
            return;
        }
        let publish = self.publishes.remove(at);
        let _ = publish.to.try_send(PoolEvent::Ok {
            relay: self.url.clone(),
            id,
            accepted,
            message,
        });
    }
}

impl SubState {
    fn new(filters: Vec<Filter>, to: mpsc::Sender<PoolEvent>, seq: u64) -> SubState {
        SubState {
            filters,
            to,
            newest: None,
            eose_at: None,
            awaiting_auth: false,
            auth_retried: false,
            sent: false,
            seq,
        }
    }
}

impl PendingPublish {
    fn new(event: Box<Event>, to: mpsc::Sender<PoolEvent>) -> PendingPublish {
        PendingPublish {
            event,
            to,
            awaiting_auth: false,
            auth_retried: false,
        }
    }
}

/// Whether a `CLOSED` reason says the connection has too many
/// subscriptions (strfry, nostr-rs-relay and others word it differently).
fn too_many_subscriptions(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("subscri")
        && (reason.contains("too many") || reason.contains("max") || reason.contains("limit"))
}

fn req(id: &str, filters: &[Filter]) -> String {
    let mut text = format!("[\"REQ\",{}", serde_json::Value::String(id.to_string()));
    for filter in filters {
        text.push(',');
        text.push_str(&filter.to_json());
    }
    text.push(']');
    text
}

fn event_message(event: &Event) -> String {
    format!("[\"EVENT\",{}]", event.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_resumes_from_what_it_saw() {
        let (to, _rx) = mpsc::channel(1);
        let mut sub = SubState::new(vec![Filter::new().kinds([1]).since(100).limit(10)], to, 1);
        // Before EOSE: the backfill was not finished, sent again as given.
        sub.newest = Some(5_000);
        assert_eq!(sub.resume_filters(60), sub.filters);
        // After EOSE: from the newest seen minus the margin, no limit.
        sub.eose_at = Some(4_000);
        let resumed = sub.resume_filters(60);
        assert_eq!(resumed[0].since, Some(4_940));
        assert_eq!(resumed[0].limit, None);
        assert_eq!(resumed[0].kinds, Some(vec![1]));
        // Nothing received: from the EOSE time; a later own since wins.
        sub.newest = None;
        assert_eq!(sub.resume_filters(60)[0].since, Some(3_940));
        sub.filters[0].since = Some(3_990);
        assert_eq!(sub.resume_filters(60)[0].since, Some(3_990));
    }

    #[test]
    fn req_messages_are_nip01() {
        let text = req("m1", &[Filter::new().kinds([1]), Filter::new().limit(2)]);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value[0], "REQ");
        assert_eq!(value[1], "m1");
        assert_eq!(value[2]["kinds"][0], 1);
        assert_eq!(value[3]["limit"], 2);
    }
}
