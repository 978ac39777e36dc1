//! One WebSocket connection: a reader that handles the client's messages
//! in order, and a writer task that drains the connection's outbox (and
//! pings). Queries and inserts run on tokio's blocking pool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tracing::{debug, warn};

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use megalith::event::KindClass;
use megalith::{Answer, Error, Filter, InsertOutcome};

use super::auth::{self, RelayUrl, Viewer};
use super::bucket::TokenBucket;
use super::metrics::kind_label;
use super::outbox::{Outbox, Pushed, Take};
use super::protocol::{
    ClientMessage, auth_frame, closed_frame, count_frame, eose_frame, event_frame,
    event_message_id, json_string, neg_err_frame, neg_message, neg_msg_frame, notice_frame,
    ok_frame, parse_event, parse_filters,
};
use super::subs::{LiveSub, SubKey, SubState, held_bytes};
use super::sync::Session;
use super::{AddressShare, Relay, transport_limit};

/// The OK message for an event the store could not take now (its shard's
/// write failed: a full disk); `/health` and `/metrics` say which shard,
/// the log says why.
const STORE_UNAVAILABLE: &str = "error: store unavailable, try again later";

/// WebSocket close codes used here (RFC 6455).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;

/// Sorts and deduplicates a filter's lists (a filter is a set of
/// conditions): what is held, filed and checked is each distinct value
/// once, however often the client repeated it.
fn normalize(filter: &mut Filter) {
    fn set<T: Ord>(values: &mut Vec<T>) {
        values.sort_unstable();
        values.dedup();
    }
    if let Some(ids) = &mut filter.ids {
        set(ids);
    }
    if let Some(authors) = &mut filter.authors {
        set(authors);
    }
    if let Some(kinds) = &mut filter.kinds {
        set(kinds);
    }
    for values in filter.tags.values_mut() {
        set(values);
    }
}

/// Events of a REQ's stored part written out at a time.
const STREAM_CHUNK: usize = 32;

/// Most messages that already arrived handled in one go (and EVENTs
/// stored in one batch).
const READ_BATCH: usize = 256;

/// Serves one upgraded connection until it closes.
pub(super) async fn serve(relay: Arc<Relay>, socket: WebSocket, ip: IpAddr, url: RelayUrl) {
    let (mut sink, mut stream) = socket.split();
    let Some(slot) = relay.connection_slot(ip) else {
        let limit = relay.limits().max_connections_per_ip;
        let notice = notice_frame(&format!(
            "rate-limited: too many connections from your address (at most {limit})"
        ));
        relay.metrics.sent("NOTICE");
        let _ = sink.send(Message::Text(notice.into())).await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CLOSE_POLICY,
                reason: "too many connections".into(),
            })))
            .await;
        return;
    };
    let limits = &relay.limits();
    // A reply waits for room at most as long as the client may stay silent.
    let outbox = Arc::new(Outbox::new(
        limits.max_outbound_bytes,
        limits.idle_timeout(),
    ));
    let ping_every = (limits.idle_timeout() / 3).max(Duration::from_secs(1));
    let mut writer = tokio::spawn({
        let outbox = Arc::clone(&outbox);
        async move {
            write_loop(sink, Arc::clone(&outbox), ping_every).await;
            outbox.writer_gone();
        }
    });
    let mut conn = Conn {
        relay: Arc::clone(&relay),
        outbox: Arc::clone(&outbox),
        viewer: Arc::new(Viewer::new(Arc::clone(&relay.rules))),
        url,
        subs: HashMap::new(),
        sub_bytes: 0,
        bucket: TokenBucket::new(limits.events_per_second, limits.events_burst),
        share: Arc::clone(&slot.share),
        syncs: HashMap::new(),
    };
    let mut stop = relay.stop.subscribe();
    let mut rules_changed = relay.rules_version.subscribe();
    // A shutdown that began before this connection subscribed.
    if *stop.borrow_and_update() {
        outbox.close(CLOSE_GOING_AWAY, "relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        return;
    }
    // NIP-42: the challenge comes first.
    conn.send("AUTH", auth_frame(conn.viewer.challenge())).await;
    let idle = limits.idle_timeout();
    let read_batch_bytes = transport_limit(limits.max_message_bytes).saturating_mul(4);
    let mut writer_done = false;
    let close = loop {
        let idle_at = tokio::time::Instant::now() + idle;
        tokio::select! {
            message = stream.next() => {
                // What else has already arrived is handled with it, so a
                // client that pipelines EVENTs gets them stored together.
                // Bounded in count and bytes: up to 4 messages of the
                // largest size the transport takes.
                let mut texts = Vec::new();
                let mut bytes = 0;
                let mut next = Some(message);
                while let Some(message) = next.take() {
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            bytes += text.len();
                            texts.push(text);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                    if texts.len() < READ_BATCH && bytes < read_batch_bytes {
                        next = stream.next().now_or_never();
                    }
                }
                if !texts.is_empty() {
                    // The address's byte budget: past it, nothing more is
                    // read from this connection until it is paid back
                    // (the client's TCP window fills; it waits).
                    let pause = slot.share.read(bytes);
                    if !pause.is_zero() {
                        relay.metrics.ingress_pauses.inc();
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.changed() => {}
                        }
                    }
                    // A reply may wait for room in the queue of a client
                    // that stopped reading (up to the idle timeout): a
                    // shutdown does not wait for it. Everything `on_texts`
                    // registers is undone by `close_all` below.
                    let handled = tokio::select! {
                        () = conn.on_texts(&texts) => true,
                        _ = stop.changed() => false,
                    };
                    if !handled {
                        break conn.shutting_down();
                    }
                    if outbox.overflowed() {
                        break (CLOSE_POLICY, "");
                    }
                }
                match next {
                    None => {}
                    Some(None | Some(Ok(Message::Close(_)))) => break (CLOSE_NORMAL, ""),
                    Some(Some(Err(e))) => {
                        // Over the transport's size bound, or a protocol error.
                        debug!(%ip, error = %e, "websocket read failed");
                        conn.notice(&format!("error: closing the connection: {e}")).await;
                        break (CLOSE_POLICY, "protocol error");
                    }
                    Some(Some(Ok(Message::Binary(_)))) => {
                        conn.notice("invalid: binary messages are not supported; send JSON text")
                            .await;
                    }
                    Some(Some(Ok(_))) => {}
                }
            }
            _ = tokio::time::sleep_until(idle_at) => {
                conn.notice(&format!(
                    "error: closing the connection after {} s without a message",
                    idle.as_secs()
                ))
                .await;
                break (CLOSE_NORMAL, "idle timeout");
            }
            _ = rules_changed.changed() => {
                conn.recheck_subscriptions().await;
            }
            _ = stop.changed() => break conn.shutting_down(),
            _ = &mut writer => {
                writer_done = true;
                break (CLOSE_POLICY, "");
            }
        }
    };
    conn.close_all();
    outbox.close(close.0, close.1);
    if !writer_done {
        // A client that stopped reading cannot hold the task forever, nor
        // a shutdown for long.
        let wait = if close.0 == CLOSE_GOING_AWAY { 1 } else { 5 };
        let _ = tokio::time::timeout(Duration::from_secs(wait), &mut writer).await;
        writer.abort();
    }
    if outbox.overflowed() {
        relay.metrics.slow_disconnects.inc();
        debug!(%ip, "disconnected a client that stopped reading");
    }
}

/// Sends the outbox's frames and a ping every `ping_every`; returns when
/// the connection closes, the socket fails, or the client falls too far
/// behind (then at once, without waiting on the socket).
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox>,
    ping_every: Duration,
) {
    let mut frames = Vec::new();
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        tokio::select! {
            take = outbox.take(&mut frames) => match take {
                Take::Frames => {
                    for frame in frames.drain(..) {
                        let len = frame.len();
                        tokio::select! {
                            sent = sink.send(Message::Text(frame.into())) => {
                                if sent.is_err() {
                                    return;
                                }
                            }
                            _ = outbox.overflowed_wait() => return,
                        }
                        outbox.sent(len);
                    }
                }
                Take::Close(code, reason) => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        sink.send(Message::Close(Some(frame))),
                    )
                    .await;
                    return;
                }
                Take::Overflowed => return,
            },
            _ = ping.tick() => {
                tokio::select! {
                    sent = sink.send(Message::Ping(Default::default())) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                    _ = outbox.overflowed_wait() => return,
                }
            }
        }
    }
}

struct Conn {
    relay: Arc<Relay>,
    outbox: Arc<Outbox>,
    /// What this connection shares with the others of its address.
    share: Arc<AddressShare>,
    /// The keys this connection proved (NIP-42).
    viewer: Arc<Viewer>,
    /// What an authentication event's `relay` tag must name.
    url: RelayUrl,
    /// Open subscriptions by id, with the bytes each holds.
    subs: HashMap<String, (SubKey, usize)>,
    /// The sum of those bytes (at most `max_subscription_bytes`).
    sub_bytes: usize,
    /// Events this connection may publish (`events_per_second`).
    bucket: TokenBucket,
    /// Open NIP-77 sync sessions by subscription id (a namespace of
    /// their own, as in strfry).
    syncs: HashMap<String, Session>,
}

impl Conn {
    async fn send(&self, verb: &'static str, frame: String) {
        self.relay.metrics.sent(verb);
        self.outbox.send(frame).await;
    }

    async fn notice(&self, message: &str) {
        self.send("NOTICE", notice_frame(message)).await;
    }

    async fn closed(&self, sub_json: &str, reason: &str) {
        self.send("CLOSED", closed_frame(sub_json, reason)).await;
    }

    /// Handles messages in order; runs of EVENTs are stored as one batch
    /// (one group commit), their OKs sent in order.
    async fn on_texts(&mut self, texts: &[Utf8Bytes]) {
        let mut events: Vec<&RawValue> = Vec::new();
        for text in texts {
            let Some(message) = self.parse(text.as_str()).await else {
                continue;
            };
            if let ClientMessage::Event(raw) = message {
                events.push(raw);
                continue;
            }
            if !events.is_empty() {
                self.on_events(&events).await;
                events.clear();
            }
            match message {
                ClientMessage::Event(_) => {}
                ClientMessage::Req { sub_id, filters } => self.on_req(sub_id, &filters).await,
                ClientMessage::Count { sub_id, filters } => self.on_count(sub_id, &filters).await,
                ClientMessage::Close(sub_id) => self.on_close(&sub_id),
                ClientMessage::Auth(raw) => self.on_auth(raw).await,
                ClientMessage::NegOpen {
                    sub_id,
                    filter,
                    message,
                } => self.on_neg_open(sub_id, filter, message).await,
                ClientMessage::NegMsg { sub_id, message } => self.on_neg_msg(sub_id, message).await,
                ClientMessage::NegClose(sub_id) => {
                    self.syncs.remove(&sub_id);
                }
            }
        }
        if !events.is_empty() {
            self.on_events(&events).await;
        }
    }

    /// Checks a message's size and parses it, counting it by verb; answers
    /// a bad one with a NOTICE.
    async fn parse<'t>(&self, text: &'t str) -> Option<ClientMessage<'t>> {
        let metrics = &self.relay.metrics;
        let max = self.relay.limits().max_message_bytes;
        if text.len() > max {
            metrics
                .client_messages
                .with_label_values(&["TOO_LARGE"])
                .inc();
            let message = format!(
                "invalid: message is {} bytes, more than the limit of {max}",
                text.len()
            );
            // An EVENT gets its OK, so the client can match the refusal.
            match event_message_id(text) {
                Some(id) => {
                    self.reject("too_large");
                    self.send("OK", ok_frame(&id, false, &message)).await;
                }
                None => self.notice(&message).await,
            }
            return None;
        }
        let message = match ClientMessage::parse(text) {
            Ok(message) => message,
            Err(notice) => {
                metrics
                    .client_messages
                    .with_label_values(&["INVALID"])
                    .inc();
                self.notice(&notice).await;
                return None;
            }
        };
        let verb = match &message {
            ClientMessage::Event(_) => "EVENT",
            ClientMessage::Req { .. } => "REQ",
            ClientMessage::Count { .. } => "COUNT",
            ClientMessage::Close(_) => "CLOSE",
            ClientMessage::Auth(_) => "AUTH",
            ClientMessage::NegOpen { .. } => "NEG-OPEN",
            ClientMessage::NegMsg { .. } => "NEG-MSG",
            ClientMessage::NegClose(_) => "NEG-CLOSE",
        };
        metrics.client_messages.with_label_values(&[verb]).inc();
        Some(message)
    }

    fn reject(&self, reason: &str) {
        self.relay
            .metrics
            .rejected
            .with_label_values(&[reason])
            .inc();
    }

    /// EVENTs received together: each parsed and rate-limited, the valid
    /// ones stored in one insert, then one reply per event in order (`OK`,
    /// or a `NOTICE` for an event whose id cannot be read).
    async fn on_events(&mut self, raws: &[&RawValue]) {
        let relay = Arc::clone(&self.relay);
        let mut replies: Vec<Option<(&'static str, String)>> = vec![None; raws.len()];
        let mut batch = Vec::new();
        let mut positions = Vec::new();
        for (i, raw) in raws.iter().enumerate() {
            let event = match parse_event(raw, &relay.event_limits) {
                Ok(event) => event,
                Err((id, message)) => {
                    self.reject("malformed");
                    replies[i] = Some(match id {
                        Some(id) => ("OK", ok_frame(&id, false, &message)),
                        None => ("NOTICE", notice_frame(&message)),
                    });
                    continue;
                }
            };
            if let Some(primary) = &relay.config.replica_of {
                self.reject("replica");
                let message =
                    format!("blocked: this relay is a read replica of {primary}; publish there");
                replies[i] = Some(("OK", ok_frame(&event.id.to_hex(), false, &message)));
                continue;
            }
            let keys = self.viewer.keys();
            if let Err(message) = relay.rules.current().check_write(
                &event,
                raw.get().len(),
                &keys,
                &relay.rules.rates,
            ) {
                self.reject(if message.starts_with("rate-limited") {
                    "author-rate-limited"
                } else {
                    "restricted"
                });
                replies[i] = Some(("OK", ok_frame(&event.id.to_hex(), false, &message)));
                continue;
            }
            if !self.bucket.try_take(1.0) {
                self.reject("rate-limited");
                let message = format!(
                    "rate-limited: more than {} events per second from this connection; slow down",
                    relay.limits().events_per_second
                );
                replies[i] = Some(("OK", ok_frame(&event.id.to_hex(), false, &message)));
                continue;
            }
            batch.push(event);
            positions.push(i);
        }
        if !batch.is_empty() {
            let started = Instant::now();
            let store = Arc::clone(&relay.store);
            // One result per event: a shard that cannot write (a full
            // disk) fails only its own events.
            let result = tokio::task::spawn_blocking(move || {
                let outcomes = store.insert_each(&batch);
                (batch, outcomes)
            })
            .await;
            relay.metrics.insert_batches.inc();
            relay
                .metrics
                .insert_seconds
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok((batch, outcomes)) => {
                    let mut logged = false;
                    for ((event, outcome), i) in batch.iter().zip(outcomes).zip(&positions) {
                        let frame = match outcome {
                            Ok(outcome) => {
                                if matches!(
                                    outcome,
                                    InsertOutcome::Stored
                                        | InsertOutcome::Replaced { .. }
                                        | InsertOutcome::Ephemeral
                                ) {
                                    relay
                                        .metrics
                                        .events
                                        .with_label_values(&[kind_label(event.kind)])
                                        .inc();
                                } else if !outcome.accepted() {
                                    self.reject(outcome.label());
                                }
                                ok_frame(&event.id.to_hex(), outcome.accepted(), &outcome.message())
                            }
                            // The client learns only that it may try again;
                            // what failed, with file paths, goes to the log.
                            Err(e) => {
                                if !logged {
                                    warn!(error = %e, "insert failed");
                                    logged = true;
                                }
                                self.reject("unavailable");
                                ok_frame(&event.id.to_hex(), false, STORE_UNAVAILABLE)
                            }
                        };
                        replies[*i] = Some(("OK", frame));
                    }
                }
                Err(e) => {
                    warn!(error = %e, "insert task failed");
                    for (raw, i) in raws.iter().zip(0..) {
                        if replies[i].is_none() {
                            self.reject("error");
                            let id = parse_event(raw, &relay.event_limits)
                                .map(|e| e.id.to_hex())
                                .unwrap_or_default();
                            replies[i] = Some((
                                "OK",
                                ok_frame(&id, false, "error: internal error while storing"),
                            ));
                        }
                    }
                }
            }
        }
        for (verb, frame) in replies.into_iter().flatten() {
            self.send(verb, frame).await;
        }
    }

    /// `["AUTH", event]`: on success the event's key joins the
    /// connection's; either way an `OK` answers.
    async fn on_auth(&mut self, raw: &RawValue) {
        let relay = Arc::clone(&self.relay);
        let id = event_message_id(&format!("[\"EVENT\",{}]", raw.get())).unwrap_or_default();
        match auth::verify(raw.get(), &relay.event_limits, &self.viewer, &self.url) {
            Ok(event) => {
                self.viewer.add(event.pubkey);
                relay.metrics.auths.with_label_values(&["ok"]).inc();
                self.send("OK", ok_frame(&id, true, "")).await;
            }
            Err(message) => {
                relay.metrics.auths.with_label_values(&["refused"]).inc();
                self.send("OK", ok_frame(&id, false, &message)).await;
            }
        }
    }

    /// Private kinds (DMs, gift wraps) named by a filter need an
    /// authenticated connection; the error is the CLOSED reason.
    fn check_private(&self, filters: &[Filter]) -> Result<(), String> {
        if !self.viewer.is_authenticated() && filters.iter().any(auth::names_private_kinds) {
            return Err(
                "auth-required: direct messages and gift wraps (kinds 4, 1059, 1060) \
                        are served only to their author or recipient; send AUTH first"
                    .to_string(),
            );
        }
        Ok(())
    }

    fn check_sub_id(&self, sub_id: &str) -> Result<(), String> {
        let max = self.relay.limits().max_subid_length;
        let chars = sub_id.chars().count();
        if chars == 0 || chars > max {
            return Err(format!(
                "invalid: subscription id must be 1 to {max} characters, got {chars}"
            ));
        }
        Ok(())
    }

    /// What this connection may read: private kinds and the access rules.
    fn check_readable(&self, filters: &[Filter]) -> Result<(), String> {
        self.check_private(filters)?;
        self.relay
            .rules
            .current()
            .check_read(filters, &self.viewer.keys())
    }

    /// The checks REQ and COUNT share; the error is the CLOSED reason.
    fn checked_filters(&self, sub_id: &str, raw: &[&RawValue]) -> Result<Vec<Filter>, String> {
        let limits = &self.relay.limits();
        self.check_sub_id(sub_id)?;
        if raw.is_empty() {
            return Err("invalid: at least one filter is needed".to_string());
        }
        if raw.len() > limits.max_filters {
            return Err(format!(
                "invalid: {} filters, more than the limit of {}",
                raw.len(),
                limits.max_filters
            ));
        }
        let mut filters = parse_filters(raw)?;
        for filter in &mut filters {
            let limit = filter.limit.unwrap_or(limits.default_limit);
            filter.limit = Some(limit.min(limits.max_limit));
            normalize(filter);
        }
        self.check_readable(&filters)?;
        Ok(filters)
    }

    async fn neg_err(&self, sub_json: &str, reason: &str) {
        self.send("NEG-ERR", neg_err_frame(sub_json, reason)).await;
    }

    /// NIP-77 `NEG-OPEN`: the filter's items are read (one query slot of
    /// the address, on the blocking pool) and the first message answered.
    /// One with an open session's id replaces it.
    async fn on_neg_open(&mut self, sub_id: String, filter: &RawValue, message: &RawValue) {
        let sub_json = json_string(&sub_id);
        self.syncs.remove(&sub_id);
        let checked = self.check_sub_id(&sub_id).and_then(|()| {
            let mut filters = parse_filters(&[filter])?;
            normalize(&mut filters[0]);
            self.check_readable(&filters)?;
            let first = neg_message(message).map_err(|e| format!("invalid: {e}"))?;
            Ok((filters.remove(0), first))
        });
        let (filter, first) = match checked {
            Ok(checked) => checked,
            Err(reason) => return self.neg_err(&sub_json, &reason).await,
        };
        let max = self.relay.limits().max_sync_sessions;
        if self.syncs.len() >= max {
            let reason = format!(
                "blocked: at most {max} open sync sessions per connection; NEG-CLOSE one first"
            );
            return self.neg_err(&sub_json, &reason).await;
        }
        let opened = {
            let relay = Arc::clone(&self.relay);
            let viewer = Arc::clone(&self.viewer);
            let _slot = self.share.query_slot().await;
            tokio::task::spawn_blocking(move || {
                let (items, count) = relay.sync_items(filter, &viewer)?;
                Session::open(&relay, items, count, &first)
            })
            .await
        };
        match opened {
            Ok(Ok((session, reply))) => {
                self.syncs.insert(sub_id, session);
                self.send("NEG-MSG", neg_msg_frame(&sub_json, &reply)).await;
            }
            Ok(Err(reason)) => self.neg_err(&sub_json, &reason).await,
            Err(e) => {
                warn!(error = %e, "sync task failed");
                self.neg_err(&sub_json, "error: internal error while syncing")
                    .await;
            }
        }
    }

    /// NIP-77 `NEG-MSG`: the open session answers (on the blocking pool:
    /// a message may cover a million items). A message the session cannot
    /// read ends it.
    async fn on_neg_msg(&mut self, sub_id: String, message: &RawValue) {
        let sub_json = json_string(&sub_id);
        let Some(mut session) = self.syncs.remove(&sub_id) else {
            let reason = "closed: no open sync session with this id; send NEG-OPEN first";
            return self.neg_err(&sub_json, reason).await;
        };
        let message = match neg_message(message) {
            Ok(message) => message,
            Err(e) => return self.neg_err(&sub_json, &format!("invalid: {e}")).await,
        };
        // An answer may cover every item of the session (a million take
        // about 25 ms): one of the address's query slots, as a REQ.
        let answered = {
            let _slot = self.share.query_slot().await;
            tokio::task::spawn_blocking(move || {
                let reply = session.answer(&message);
                (session, reply)
            })
            .await
        };
        match answered {
            Ok((session, Ok(reply))) => {
                self.syncs.insert(sub_id, session);
                self.send("NEG-MSG", neg_msg_frame(&sub_json, &reply)).await;
            }
            Ok((_, Err(reason))) => self.neg_err(&sub_json, &reason).await,
            Err(e) => {
                warn!(error = %e, "sync task failed");
                self.neg_err(&sub_json, "error: internal error while syncing")
                    .await;
            }
        }
    }

    async fn on_req(&mut self, sub_id: String, raw: &[&RawValue]) {
        let sub_json = json_string(&sub_id);
        let filters = match self.checked_filters(&sub_id, raw) {
            Ok(filters) => filters,
            Err(reason) => {
                self.closed(&sub_json, &reason).await;
                return;
            }
        };
        let relay = Arc::clone(&self.relay);
        let limits = &relay.limits();
        let bytes = held_bytes(&filters);
        let replaced = self.subs.get(&sub_id).map_or(0, |&(_, bytes)| bytes);
        if self.sub_bytes - replaced + bytes > limits.max_subscription_bytes {
            let reason = if bytes > limits.max_subscription_bytes {
                format!(
                    "invalid: these filters would hold {bytes} bytes, more than the {} a \
                     connection's subscriptions may hold; split or narrow them",
                    limits.max_subscription_bytes
                )
            } else {
                format!(
                    "rate-limited: this connection's subscriptions would hold {} bytes, more \
                     than the limit of {}; CLOSE some first",
                    self.sub_bytes - replaced + bytes,
                    limits.max_subscription_bytes
                )
            };
            self.closed(&sub_json, &reason).await;
            return;
        }
        // A REQ with an open subscription's id replaces it.
        if let Some((old, old_bytes)) = self.subs.remove(&sub_id) {
            self.sub_bytes -= old_bytes;
            relay.remove_sub(old);
        } else if self.subs.len() >= limits.max_subscriptions {
            let reason = format!(
                "rate-limited: at most {} open subscriptions per connection; CLOSE one first",
                limits.max_subscriptions
            );
            self.closed(&sub_json, &reason).await;
            return;
        }
        // Registered before the stored part is read, so no event committed
        // meanwhile is missed; those wait in `Pending` until after EOSE.
        // Events committed before registration (sequence up to `after`) are
        // the stored part's alone, even those its limit leaves out.
        let sub = LiveSub {
            key: relay.next_sub_key(),
            sub_json: sub_json.clone(),
            filters,
            after: 0, // set by add_sub
            // Nothing stored is live until the stored part says what it read.
            stored_through: AtomicU64::new(u64::MAX),
            outbox: Arc::clone(&self.outbox),
            viewer: Arc::clone(&self.viewer),
            state: Mutex::new(SubState::Pending(Vec::new())),
        };
        let sub = relay.add_sub(sub);
        self.subs.insert(sub_id, (sub.key, bytes));
        self.sub_bytes += bytes;
        let answer = {
            let relay = Arc::clone(&relay);
            let sub = Arc::clone(&sub);
            let _slot = self.share.query_slot().await;
            tokio::task::spawn_blocking(move || relay.stored_answer(&sub.filters)).await
        };
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                self.drop_sub(&sub);
                self.closed(&sub_json, &reason).await;
                return;
            }
            Err(e) => {
                warn!(error = %e, "query task failed");
                self.drop_sub(&sub);
                self.closed(&sub_json, "error: internal error while querying")
                    .await;
                return;
            }
        };
        // Streamed: a few events are written out at a time, each waiting
        // for room in the outbox, so a client that reads slowly holds the
        // answer's places, not its JSON. Cut (newest kept) once its JSON
        // passes 4x the outbound bound, so one REQ cannot pull gigabytes.
        let cap = limits.max_outbound_bytes.saturating_mul(4);
        let (mut at, mut bytes, mut sent) = (0, 0usize, 0u64);
        let mut json = Vec::new();
        let mut frames = Vec::new();
        while at < answer.len() && bytes < cap {
            let end = (at + STREAM_CHUNK).min(answer.len());
            let read = answer.visit(at..end, |event| {
                if bytes < cap && self.viewer.may_see(event) {
                    json.clear();
                    event.write_json(&mut json);
                    bytes += json.len();
                    // The store writes valid UTF-8 JSON.
                    frames.push(event_frame(&sub_json, &String::from_utf8_lossy(&json)));
                }
                Ok(())
            });
            if let Err(e) = read {
                let reason = relay.query_failure(e);
                self.drop_sub(&sub);
                self.closed(&sub_json, &reason).await;
                return;
            }
            at = end;
            for frame in frames.drain(..) {
                if !self.outbox.send(frame).await {
                    return;
                }
                sent += 1;
            }
        }
        relay
            .metrics
            .relay_messages
            .with_label_values(&["EVENT"])
            .inc_by(sent);
        self.send("EOSE", eose_frame(&sub_json)).await;
        // Live from here: first what came in while the stored part was
        // read (less what it already had), under the state lock so no
        // newer live event overtakes them.
        let mut state = sub.state.lock();
        sub.stored_through
            .store(answer.sequence(), AtomicOrdering::Release);
        if let SubState::Pending(pending) = std::mem::replace(&mut *state, SubState::Live) {
            for committed in pending {
                let Ok(event) = committed.event() else {
                    continue;
                };
                let ephemeral = event.kind_class() == KindClass::Ephemeral;
                // Stored events the stored part saw are numbered at most
                // its sequence, so `wants` alone keeps them out.
                if !sub.wants(committed.sequence(), ephemeral) || !self.viewer.may_see(&event) {
                    continue;
                }
                let frame = event_frame(&sub.sub_json, &event.to_json());
                if self.outbox.push(frame) == Pushed::Queued {
                    relay.metrics.sent("EVENT");
                    relay.metrics.live_deliveries.inc();
                }
            }
        }
    }

    async fn on_count(&mut self, sub_id: String, raw: &[&RawValue]) {
        let sub_json = json_string(&sub_id);
        let mut filters = match self.checked_filters(&sub_id, raw) {
            Ok(filters) => filters,
            Err(reason) => {
                self.closed(&sub_json, &reason).await;
                return;
            }
        };
        // NIP-45 counts everything that matches: limits do not apply.
        for filter in &mut filters {
            filter.limit = None;
        }
        let relay = Arc::clone(&self.relay);
        let result = {
            let relay = Arc::clone(&relay);
            let _slot = self.share.query_slot().await;
            tokio::task::spawn_blocking(move || relay.count(&filters)).await
        };
        match result {
            Ok(Ok(count)) => self.send("COUNT", count_frame(&sub_json, count)).await,
            Ok(Err(reason)) => self.closed(&sub_json, &reason).await,
            Err(e) => {
                warn!(error = %e, "count task failed");
                self.closed(&sub_json, "error: internal error while counting")
                    .await;
            }
        }
    }

    /// After the access rules changed: every open subscription the
    /// connection may no longer hold is CLOSED with the reason.
    async fn recheck_subscriptions(&mut self) {
        let rules = self.relay.rules.current();
        let keys = self.viewer.keys();
        let mut lost = Vec::new();
        for (sub_id, (key, _)) in &self.subs {
            let Some(sub) = self.relay.subs.read().get(*key) else {
                continue;
            };
            if let Err(reason) = rules.check_read(&sub.filters, &keys) {
                lost.push((sub_id.clone(), reason));
            }
        }
        for (sub_id, reason) in lost {
            self.on_close(&sub_id);
            self.closed(&json_string(&sub_id), &reason).await;
        }
    }

    fn on_close(&mut self, sub_id: &str) {
        if let Some((key, bytes)) = self.subs.remove(sub_id) {
            self.sub_bytes -= bytes;
            self.relay.remove_sub(key);
        }
    }

    fn drop_sub(&mut self, sub: &LiveSub) {
        let mut freed = 0;
        self.subs.retain(|_, (key, bytes)| {
            let keep = *key != sub.key;
            if !keep {
                freed += *bytes;
            }
            keep
        });
        self.sub_bytes -= freed;
        self.relay.remove_sub(sub.key);
    }

    /// The relay is shutting down: a CLOSED for every open subscription
    /// (queued without waiting), and the close frame to send after them.
    fn shutting_down(&self) -> (u16, &'static str) {
        for sub_id in self.subs.keys() {
            let frame = closed_frame(&json_string(sub_id), "error: the relay is shutting down");
            self.relay.metrics.sent("CLOSED");
            self.outbox.push(frame);
        }
        (CLOSE_GOING_AWAY, "relay shutting down")
    }

    /// Takes every subscription out, on the blocking pool: a connection
    /// may hold hundreds, and the runtime thread has other clients.
    fn close_all(&mut self) {
        let keys: Vec<SubKey> = self.subs.drain().map(|(_, (key, _))| key).collect();
        self.sub_bytes = 0;
        if keys.is_empty() {
            return;
        }
        let relay = Arc::clone(&self.relay);
        tokio::task::spawn_blocking(move || {
            for key in keys {
                relay.remove_sub(key);
            }
        });
    }
}

impl Relay {
    /// A REQ's stored events, as places in the log to stream from (run on
    /// the blocking pool). The error is the CLOSED reason.
    fn stored_answer(&self, filters: &[Filter]) -> Result<Answer, String> {
        let started = Instant::now();
        let deadline = started + self.limits().query_time_budget();
        let result = self.store.query_answer(filters, Some(deadline));
        self.observe_query(filters, started);
        result.map_err(|e| self.query_failure(e))
    }

    /// NIP-45 count (on the blocking pool); the error is the CLOSED reason.
    fn count(&self, filters: &[Filter]) -> Result<u64, String> {
        let started = Instant::now();
        let deadline = started + self.limits().query_time_budget();
        let result = self.store.count_with_deadline(filters, Some(deadline));
        self.observe_query(filters, started);
        result.map_err(|e| self.query_failure(e))
    }

    pub(crate) fn observe_query(&self, filters: &[Filter], started: Instant) {
        let index = self
            .store
            .explain(&filters[..filters.len().min(1)])
            .first()
            .copied()
            .unwrap_or("none");
        self.metrics
            .query_seconds
            .with_label_values(&[index])
            .observe(started.elapsed().as_secs_f64());
    }

    pub(crate) fn query_failure(&self, error: Error) -> String {
        match error {
            Error::TimedOut => {
                self.metrics.query_timeouts.inc();
                format!(
                    "error: the query ran past its {} ms time budget; narrow the filter",
                    self.limits().query_time_budget_ms
                )
            }
            Error::Filter(e) => format!("invalid: {e}"),
            Error::Interrupted => {
                "error: the store recovered from a failure while answering; ask again".to_string()
            }
            // Details (file paths, offsets) go to the log, not to clients.
            e => {
                warn!(error = %e, "query failed");
                "error: the store could not answer this query; try again later".to_string()
            }
        }
    }
}
