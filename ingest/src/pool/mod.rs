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

use megalith::event::Limits;
use megalith::{Event, EventId, Filter, Keys};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::Connector;

use crate::backoff::Backoff;
use crate::stats::Stats;
use crate::url::RelayUrl;

mod connection;

use connection::Connection;

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
            let connection = Connection::new(
                url.clone(),
                self.config.clone(),
                self.stats.clone(),
                self.connector.clone(),
                internal.clone(),
                Backoff::new(seed_of(&url)),
            );
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
    // Per relay: relays that failed together come back apart.
    crate::url::fnv1a(url.as_str().bytes())
}

/// rustls with the Mozilla roots (webpki-roots) and the ring provider, so
/// no process-wide provider has to be installed.
pub(crate) fn tls_connector() -> Connector {
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
