//! NIP-77 negentropy sync with one relay, the client's side (`megalith
//! sync`): the store's (created_at, id) items for a filter are reconciled
//! with the relay's over `NEG-OPEN` / `NEG-MSG`, then what the relay lacks
//! is published (`up`) and what the store lacks is fetched by id (`down`).
//!
//! One WebSocket, one request at a time, except the publishing of `up`,
//! which keeps a window of events in flight. Events fetched are verified
//! and stored as any other insert; events sent are the store's own bytes.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_tls_with_config};

use megalith::event::Limits;
use megalith::{EventId, EventStore, Filter, InsertOutcome};

use crate::RelayMessage;
use crate::url::RelayUrl;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which way events go once the sets are reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Fetch what the relay has and the store lacks.
    Down,
    /// Publish what the store has and the relay lacks.
    Up,
    /// Both.
    Both,
}

impl Direction {
    pub fn parse(text: &str) -> Result<Direction, String> {
        match text {
            "down" => Ok(Direction::Down),
            "up" => Ok(Direction::Up),
            "both" => Ok(Direction::Both),
            other => Err(format!(
                "unknown direction {other:?}: expected down, up or both"
            )),
        }
    }

    fn down(self) -> bool {
        matches!(self, Direction::Down | Direction::Both)
    }

    fn up(self) -> bool {
        matches!(self, Direction::Up | Direction::Both)
    }
}

/// How a sync runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub direction: Direction,
    /// Largest negentropy message this side sends, in bytes before hex
    /// (at least 4,096). Default 60,000: under strfry's and Megalith's
    /// 128 KiB message limit once hex-encoded.
    pub frame_bytes: u64,
    /// Ids per `REQ` when fetching. Default 500 (the usual `max_limit`).
    pub fetch_batch: usize,
    /// Events published and not yet answered with `OK`. Default 100.
    pub publish_window: usize,
    /// Longest wait for any answer from the relay. Default 30 s.
    pub timeout: Duration,
    /// Reconcile only: report the differences, move no events.
    pub dry_run: bool,
    /// Times one event refused with `rate-limited:` is sent again (the
    /// sending slows down at each). Default 30.
    pub rate_limit_retries: u32,
}

impl Default for SyncOptions {
    fn default() -> SyncOptions {
        SyncOptions {
            direction: Direction::Down,
            frame_bytes: 60_000,
            fetch_batch: 500,
            publish_window: 100,
            timeout: Duration::from_secs(30),
            dry_run: false,
            rate_limit_retries: 30,
        }
    }
}

/// What a sync found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Events of the filter in the store when the sync began.
    pub local: usize,
    /// Events the store has and the relay lacks.
    pub only_here: usize,
    /// Events the relay has and the store lacks.
    pub only_there: usize,
    /// Negentropy round trips (`NEG-MSG` answers received).
    pub rounds: u32,
    /// Bytes of the reconciliation frames sent and received.
    pub reconcile_bytes_sent: u64,
    pub reconcile_bytes_received: u64,
    /// Events received when fetching, and what the store did with them.
    pub fetched: usize,
    pub stored: usize,
    pub duplicates: usize,
    /// Fetched events the store keeps out by the rules of replaceable
    /// events and deletions (a newer version or a deletion is here).
    pub superseded: usize,
    /// Fetched events the store refused (bad signature, limits, ...).
    pub invalid: usize,
    /// Ids the relay listed but did not send when asked.
    pub missing: usize,
    /// Events published, accepted and refused by the relay.
    pub sent: usize,
    pub accepted: usize,
    pub refused: usize,
    /// The first refusals (id and the relay's reason), at most 10.
    pub refusals: Vec<(String, String)>,
    /// Bytes of all frames sent and received, reconciliation included.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Wall time of the whole sync, of reading the store's items (part of
    /// the reconciliation), and of the reconciliation.
    pub seconds: f64,
    pub local_items_seconds: f64,
    pub reconcile_seconds: f64,
}

/// The store's sealed items for `filter` (its `limit`, if any, keeps the
/// newest), and how many. Runs a store query: call it off the async
/// runtime.
pub fn local_items(
    store: &EventStore,
    filter: &Filter,
) -> Result<(NegentropyStorageVector, usize), String> {
    let answer = store
        .query_answer(std::slice::from_ref(filter), None)
        .map_err(|e| format!("reading the store: {e}"))?;
    let mut items = NegentropyStorageVector::with_capacity(answer.len());
    answer
        .visit(0..answer.len(), |event| {
            // Only a sealed vector refuses an insert.
            let _ = items.insert(
                event.created_at(),
                Id::from_byte_array(*event.id().as_bytes()),
            );
            Ok(())
        })
        .map_err(|e| format!("reading the store: {e}"))?;
    items
        .seal()
        .map_err(|e| format!("sorting the items: {e}"))?;
    Ok((items, answer.len()))
}

/// Syncs `store`'s events matching `filter` with the relay at `url`.
/// The error says what failed (the relay's `NEG-ERR` reason, a relay
/// without NIP-77, a lost connection, a store that cannot write).
pub async fn sync(
    store: Arc<EventStore>,
    url: &RelayUrl,
    filter: Filter,
    options: &SyncOptions,
) -> Result<SyncReport, String> {
    let started = Instant::now();
    let mut report = SyncReport::default();
    let (items, local) = {
        let store = Arc::clone(&store);
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || local_items(&store, &filter))
            .await
            .map_err(|e| format!("reading the store: {e}"))??
    };
    report.local = local;
    report.local_items_seconds = started.elapsed().as_secs_f64();
    let mut link = Link::connect(url, options.timeout).await?;
    let (have, need) = reconcile(&mut link, items, &filter, options, &mut report).await?;
    report.reconcile_seconds = started.elapsed().as_secs_f64();
    report.only_here = have.len();
    report.only_there = need.len();
    if !options.dry_run {
        if options.direction.down() && !need.is_empty() {
            fetch(&mut link, &store, &need, options, &mut report).await?;
        }
        if options.direction.up() && !have.is_empty() {
            publish(&mut link, &store, &have, options, &mut report).await?;
        }
    }
    link.close().await;
    report.bytes_sent = link.sent;
    report.bytes_received = link.received;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The subscription id of this sync's `NEG-OPEN` and `REQ`s.
const SUB: &str = "megalith-sync";

/// The relay's limits when reading its messages: events are checked by
/// the store when inserted; this only bounds parsing.
fn parse_limits() -> Limits {
    Limits {
        max_event_bytes: usize::MAX,
        max_tags: usize::MAX,
        max_tag_value_bytes: usize::MAX,
        max_content_bytes: usize::MAX,
    }
}

async fn reconcile(
    link: &mut Link,
    items: NegentropyStorageVector,
    filter: &Filter,
    options: &SyncOptions,
    report: &mut SyncReport,
) -> Result<(Vec<Id>, Vec<Id>), String> {
    let mut reconciler = Reconciler::new(items, options.frame_bytes)?;
    let first = reconciler.first()?;
    let open = format!(
        "[\"NEG-OPEN\",\"{SUB}\",{},\"{}\"]",
        filter.to_json(),
        megalith::hex::encode(&first)
    );
    report.reconcile_bytes_sent += open.len() as u64;
    link.send(open).await?;
    loop {
        let text = link.next_text().await.map_err(|e| {
            if report.rounds == 0 {
                format!("{e} (waiting for the answer to NEG-OPEN: does the relay speak NIP-77?)")
            } else {
                e
            }
        })?;
        let items: Vec<serde_json::Value> = match serde_json::from_str(&text) {
            Ok(items) => items,
            Err(e) => return Err(format!("the relay sent a message that is not JSON: {e}")),
        };
        let verb = items.first().and_then(|v| v.as_str()).unwrap_or("");
        let ours = items.get(1).and_then(|v| v.as_str()) == Some(SUB);
        match verb {
            "NEG-MSG" if ours => {
                report.rounds += 1;
                report.reconcile_bytes_received += text.len() as u64;
                let message = items
                    .get(2)
                    .and_then(|v| v.as_str())
                    .ok_or("the relay's NEG-MSG has no hex message")?;
                let message = megalith::hex::decode(message)
                    .map_err(|e| format!("the relay's NEG-MSG message is {e}"))?;
                match reconciler.answer(&message)? {
                    Some(next) => {
                        let frame = format!(
                            "[\"NEG-MSG\",\"{SUB}\",\"{}\"]",
                            megalith::hex::encode(&next)
                        );
                        report.reconcile_bytes_sent += frame.len() as u64;
                        link.send(frame).await?;
                    }
                    None => {
                        let frame = format!("[\"NEG-CLOSE\",\"{SUB}\"]");
                        report.reconcile_bytes_sent += frame.len() as u64;
                        link.send(frame).await?;
                        return Ok(reconciler.finish());
                    }
                }
            }
            "NEG-ERR" if ours => {
                let reason = items.get(2).and_then(|v| v.as_str()).unwrap_or("");
                return Err(format!("the relay refused the sync: {reason}"));
            }
            // A NOTICE instead of the first answer is how relays without
            // NIP-77 refuse an unknown verb ("unknown message type",
            // "unknown cmd").
            "NOTICE" if report.rounds == 0 => {
                let notice = items.get(1).and_then(|v| v.as_str()).unwrap_or("");
                return Err(format!(
                    "the relay answered NEG-OPEN with a NOTICE; it may not speak NIP-77 \
                     negentropy: {notice}"
                ));
            }
            // AUTH challenges and anything else are not for this exchange.
            _ => {}
        }
    }
}

/// The initiator's side of one reconciliation, apart from the transport.
#[derive(Debug)]
pub struct Reconciler {
    neg: Negentropy<'static, NegentropyStorageVector>,
    have: Vec<Id>,
    need: Vec<Id>,
}

impl Reconciler {
    /// On sealed `items`; messages sent are at most `frame_bytes`.
    pub fn new(items: NegentropyStorageVector, frame_bytes: u64) -> Result<Reconciler, String> {
        Ok(Reconciler {
            neg: Negentropy::owned(items, frame_bytes).map_err(|e| format!("negentropy: {e}"))?,
            have: Vec::new(),
            need: Vec::new(),
        })
    }

    /// The `NEG-OPEN`'s message.
    pub fn first(&mut self) -> Result<Vec<u8>, String> {
        self.neg.initiate().map_err(|e| format!("negentropy: {e}"))
    }

    /// The next message for the relay's `message`, or `None` when the
    /// reconciliation is complete.
    pub fn answer(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.neg
            .reconcile_with_ids(message, &mut self.have, &mut self.need)
            .map_err(|e| format!("the relay's negentropy message: {e}"))
    }

    /// The ids only this side has, and those only the relay has, each
    /// once. The crate (0.5.3) reports some ids more than once when the
    /// frame limit splits a range: on 1M items with 1% only on each side,
    /// 18,838 "have" entries for 10,000 ids, and in the 1M-event benchmark
    /// 10,692 "need" entries for 8,836 (each fetched twice).
    pub fn finish(self) -> (Vec<Id>, Vec<Id>) {
        let unique = |mut ids: Vec<Id>| {
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        (unique(self.have), unique(self.need))
    }
}

/// Asks for `need` by id, a batch at a time, and stores what comes. A
/// relay may answer a REQ with fewer events than asked (its `max_limit`
/// below the batch): the rest is asked again until a round brings
/// nothing new; what never comes is counted as missing.
async fn fetch(
    link: &mut Link,
    store: &Arc<EventStore>,
    need: &[Id],
    options: &SyncOptions,
    report: &mut SyncReport,
) -> Result<(), String> {
    let limits = parse_limits();
    for batch in need.chunks(options.fetch_batch.max(1)) {
        let mut wanted: HashSet<[u8; 32]> = batch.iter().map(|id| *id.as_bytes()).collect();
        while !wanted.is_empty() {
            let ids: Vec<String> = wanted.iter().map(|id| EventId(*id).to_hex()).collect();
            let req = serde_json::json!(["REQ", SUB, {"ids": ids, "limit": wanted.len()}]);
            link.send(req.to_string()).await?;
            let mut events = Vec::with_capacity(wanted.len());
            loop {
                let text = link.next_text().await?;
                match RelayMessage::parse(&text, &limits) {
                    // Only what was asked for: a relay cannot slip in others.
                    Ok(RelayMessage::Event { sub, event })
                        if sub == SUB && wanted.remove(event.id.as_bytes()) =>
                    {
                        events.push(*event);
                    }
                    Ok(RelayMessage::Eose { sub }) if sub == SUB => break,
                    Ok(RelayMessage::Closed { sub, reason }) if sub == SUB => {
                        return Err(format!("the relay closed the fetch: {reason}"));
                    }
                    _ => {}
                }
            }
            link.send(format!("[\"CLOSE\",\"{SUB}\"]")).await?;
            if events.is_empty() {
                break;
            }
            report.fetched += events.len();
            let store = Arc::clone(store);
            let outcomes = tokio::task::spawn_blocking(move || store.insert(&events))
                .await
                .map_err(|e| format!("storing: {e}"))?
                .map_err(|e| format!("storing: {e}"))?;
            for outcome in outcomes {
                match outcome {
                    InsertOutcome::Stored | InsertOutcome::Replaced { .. } => report.stored += 1,
                    InsertOutcome::Duplicate => report.duplicates += 1,
                    InsertOutcome::Invalid(_) => report.invalid += 1,
                    // Superseded, deleted, ephemeral.
                    _ => report.superseded += 1,
                }
            }
        }
        report.missing += wanted.len();
    }
    Ok(())
}

/// Publishes `have` from the store, keeping `publish_window` events in
/// flight. An event refused as `rate-limited:` goes again later, and the
/// sending slows down: the gap between events doubles at each such
/// refusal of an event sent since the last doubling, and shrinks by a
/// sixteenth at each acceptance, so the pace settles at the relay's rate
/// instead of bursting into it (300 events into a relay taking 100 a
/// second after a burst of 20: 2.8 s, against 14 s when each refused
/// event waited a second).
async fn publish(
    link: &mut Link,
    store: &Arc<EventStore>,
    have: &[Id],
    options: &SyncOptions,
    report: &mut SyncReport,
) -> Result<(), String> {
    let mut queue: VecDeque<(EventId, u32)> =
        have.iter().map(|id| (EventId(*id.as_bytes()), 0)).collect();
    // Events sent and not answered: id, tries so far, when sent.
    let mut in_flight: Vec<(EventId, u32, Instant)> = Vec::new();
    let window = options.publish_window.max(1);
    let mut pace = Duration::ZERO;
    let mut next_send = Instant::now();
    // Refusals of events sent before the last slow-down are echoes of the
    // burst it answered: they do not slow down again.
    let mut slowed_at = Instant::now();
    while !queue.is_empty() || !in_flight.is_empty() {
        let may_send = !queue.is_empty() && in_flight.len() < window;
        if may_send && Instant::now() >= next_send {
            let Some((id, tries)) = queue.pop_front() else {
                continue;
            };
            let event = {
                let store = Arc::clone(store);
                tokio::task::spawn_blocking(move || store.get(&id))
                    .await
                    .map_err(|e| format!("reading the store: {e}"))?
                    .map_err(|e| format!("reading the store: {e}"))?
            };
            // Removed since the items were read: nothing to send.
            let Some(event) = event else { continue };
            link.send(format!("[\"EVENT\",{}]", event.to_json()))
                .await?;
            if tries == 0 {
                report.sent += 1;
            }
            let now = Instant::now();
            in_flight.push((id, tries, now));
            next_send = now + pace;
            continue;
        }
        let text = if in_flight.is_empty() {
            // Only waiting for the pace.
            tokio::time::sleep_until(next_send.into()).await;
            continue;
        } else if may_send {
            tokio::select! {
                text = link.next_text() => text?,
                () = tokio::time::sleep_until(next_send.into()) => continue,
            }
        } else {
            link.next_text().await?
        };
        let Ok(RelayMessage::Ok {
            id,
            accepted,
            message,
        }) = RelayMessage::parse(&text, &parse_limits())
        else {
            continue;
        };
        let Some(at) = in_flight.iter().position(|(sent, ..)| *sent == id) else {
            continue;
        };
        let (id, tries, sent_at) = in_flight.swap_remove(at);
        if accepted || message.starts_with("duplicate:") {
            report.accepted += 1;
            pace = pace * 15 / 16;
        } else if message.starts_with("rate-limited:") && tries < options.rate_limit_retries {
            queue.push_back((id, tries + 1));
            if sent_at >= slowed_at {
                pace = (pace * 2).clamp(Duration::from_millis(2), Duration::from_secs(1));
                slowed_at = Instant::now();
                next_send = slowed_at + pace;
            }
        } else {
            report.refused += 1;
            if report.refusals.len() < 10 {
                report.refusals.push((id.to_hex(), message));
            }
        }
    }
    Ok(())
}

/// The WebSocket, counting bytes both ways.
struct Link {
    socket: Socket,
    timeout: Duration,
    sent: u64,
    received: u64,
}

impl Link {
    async fn connect(url: &RelayUrl, timeout: Duration) -> Result<Link, String> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let dial = connect_async_tls_with_config(
            url.as_str(),
            Some(config),
            true, // TCP_NODELAY
            Some(crate::pool::tls_connector()),
        );
        let (socket, _) = tokio::time::timeout(timeout, dial)
            .await
            .map_err(|_| format!("connect: no answer within {} s", timeout.as_secs()))?
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Link {
            socket,
            timeout,
            sent: 0,
            received: 0,
        })
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        self.sent += text.len() as u64;
        tokio::time::timeout(self.timeout, self.socket.send(Message::text(text)))
            .await
            .map_err(|_| "sending timed out".to_string())?
            .map_err(|e| format!("sending: {e}"))
    }

    /// The next text message (pings are answered by the library).
    async fn next_text(&mut self) -> Result<String, String> {
        loop {
            let next = tokio::time::timeout(self.timeout, self.socket.next())
                .await
                .map_err(|_| format!("no answer within {} s", self.timeout.as_secs()))?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    self.received += text.len() as u64;
                    return Ok(text.to_string());
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(format!("the relay closed the connection {why}")
                        .trim_end()
                        .to_string());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("reading: {e}")),
                None => return Err("the connection ended".to_string()),
            }
        }
    }

    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// 1M items, the first 1% only on the relay, the next 1% only here,
    /// reconciled in memory with the crate's own relay side at strfry's
    /// frame limit: the ids come out exactly, each once (the crate alone
    /// repeats thousands of them).
    #[test]
    fn a_reconciliation_names_each_differing_id_once() {
        let n = 1_000_000u64;
        let slice = n / 100;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut here, mut there) = (
            NegentropyStorageVector::new(),
            NegentropyStorageVector::new(),
        );
        let (mut only_here, mut only_there) = (BTreeSet::new(), BTreeSet::new());
        for i in 0..n {
            let mut id = [0u8; 32];
            for chunk in id.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            let time = 1_700_000_000 + i / 3;
            if i >= slice {
                there.insert(time, Id::from_byte_array(id)).unwrap();
            } else {
                only_there.insert(id);
            }
            if !(slice..2 * slice).contains(&i) {
                here.insert(time, Id::from_byte_array(id)).unwrap();
            } else {
                only_here.insert(id);
            }
        }
        // `there` lacks the first slice, `here` the second.
        std::mem::swap(&mut only_here, &mut only_there);
        here.seal().unwrap();
        there.seal().unwrap();
        let mut relay = Negentropy::owned(there, 60_000).unwrap();
        let mut reconciler = Reconciler::new(here, 60_000).unwrap();
        let mut message = reconciler.first().unwrap();
        loop {
            let reply = relay.reconcile(&message).unwrap();
            match reconciler.answer(&reply).unwrap() {
                Some(next) => message = next,
                None => break,
            }
        }
        let (have, need) = reconciler.finish();
        let have: Vec<[u8; 32]> = have.iter().map(|id| *id.as_bytes()).collect();
        let need: Vec<[u8; 32]> = need.iter().map(|id| *id.as_bytes()).collect();
        assert_eq!(
            (have.len(), need.len()),
            (only_here.len(), only_there.len())
        );
        assert_eq!(have, only_here.into_iter().collect::<Vec<_>>());
        assert_eq!(need, only_there.into_iter().collect::<Vec<_>>());
    }
}
