//! One relay's connection task: dials, serves the socket, re-sends what
//! the pool gave it after a reconnect, and waits on the backoff schedule
//! between connections (see the pool's documentation in `mod.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use megalith::{Event, EventId, Filter};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, connect_async_tls_with_config};

use super::{Internal, PoolConfig, PoolEvent, RelayCommand, SubId};
use crate::backoff::Backoff;
use crate::message::RelayMessage;
use crate::stats::{Stats, now_ms, now_secs};
use crate::url::RelayUrl;

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
    /// Subscriptions out on the connection when its REQ was sent, itself
    /// included: a refusal as one too many with others open then is the
    /// relay's cap, whatever has closed since the refusal was written.
    open_at_send: usize,
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
pub(super) struct Connection {
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
    pub(super) fn new(
        url: RelayUrl,
        config: Arc<PoolConfig>,
        stats: Stats,
        connector: Connector,
        internal: mpsc::UnboundedSender<Internal>,
        backoff: Backoff,
    ) -> Connection {
        let max_subs = config.max_subscriptions_per_relay.max(1);
        Connection {
            url,
            config,
            stats,
            connector,
            internal,
            subs: HashMap::new(),
            waiting: VecDeque::new(),
            max_subs,
            next_seq: 0,
            publishes: Vec::new(),
            auth: AuthState::default(),
            backoff,
            connections: 0,
        }
    }

    pub(super) async fn run(mut self, commands: mpsc::UnboundedReceiver<RelayCommand>) {
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
                if self.take_offline(command) {
                    return;
                }
            }
            self.stats.update(&self.url, |s| s.attempts += 1);
            let started = Instant::now();
            // A relay that never answers must not hold up a removal or the
            // pool's shutdown for the whole dial timeout: commands are read
            // while dialing, and taken once the dial is over.
            let mut during = Vec::new();
            let dialed = {
                let dial = self.dial();
                tokio::pin!(dial);
                loop {
                    tokio::select! {
                        dialed = &mut dial => break dialed,
                        command = commands.recv() => match command {
                            None | Some(RelayCommand::Close) => return,
                            Some(command) => during.push(command),
                        },
                    }
                }
            };
            for command in during {
                if self.take_offline(command) {
                    return;
                }
            }
            let lasted = match dialed {
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

    /// A command while not connected; true when the connection is to end
    /// (closed, or closed because idle).
    fn take_offline(&mut self, command: RelayCommand) -> bool {
        match command {
            RelayCommand::Close => true,
            RelayCommand::CloseIfIdle => {
                let idle = self.idle();
                let _ = self.internal.send(Internal::Idle(self.url.clone(), idle));
                idle
            }
            command => {
                self.offline_command(command);
                false
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
            open += 1;
            state.open_at_send = open;
            out.push(req(&id, &state.resume_filters(self.config.resume_margin)));
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
                let open_at_send = state.open_at_send;
                if was_sent && too_many_subscriptions(&reason) {
                    // Counted when the REQ went out: by the time the refusal
                    // arrives, the others may have closed (a count taken now
                    // made the pool give up on a relay that only has a cap).
                    if open_at_send > 1 {
                        // The relay's own cap: wait for a slot under it.
                        self.max_subs = self.max_subs.min(open_at_send - 1);
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
            open_at_send: 0,
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
