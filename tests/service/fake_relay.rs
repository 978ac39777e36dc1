//! A small misbehaving relay for the ingester's tests: it answers REQs
//! from a list of events it holds (the brute-force matcher, newest first,
//! `limit` honoured) and can drop the connection mid-answer, never send
//! EOSE, send bad signatures or malformed JSON, answer slowly, or stop
//! reading its socket (so pings go unanswered). Every REQ it receives is
//! logged for the test to inspect.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use megalith::{Event, Filter};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

use crate::common::matches;

/// How the fake misbehaves. Counts are per connection unless said.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Close the connection after sending this many events of a REQ's
    /// stored answer, on the first `drops` connections.
    pub drop_after_events: Option<usize>,
    pub drops: usize,
    /// Never send EOSE.
    pub no_eose: bool,
    /// Corrupt the signature of every n-th event sent (0: none).
    pub bad_sig_every: usize,
    /// Change the content of every n-th event sent after it was signed, so
    /// its id no longer matches (0: none).
    pub forged_every: usize,
    /// Send a malformed message before every n-th event (0: none).
    pub garbage_every: usize,
    /// Wait this long before each event.
    pub event_delay: Duration,
    /// Accept the WebSocket, then never read from it again (no pongs, no
    /// answers).
    pub deaf: bool,
    /// Refuse a REQ beyond this many open subscriptions on a connection
    /// with `CLOSED` "error: too many concurrent subscriptions" (strfry's
    /// wording).
    pub max_subs: Option<usize>,
    /// AUTH challenges sent as soon as a connection opens.
    pub challenges: usize,
    /// Answer a verb it does not know (NIP-77's NEG-OPEN, ...) with a
    /// NOTICE, as strfry without negentropy does; else ignore it.
    pub notice_unknown: bool,
}

pub struct FakeRelay {
    pub addr: SocketAddr,
    pub events: Arc<Mutex<Vec<Event>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Every REQ received: `[sub, filter, ...]`.
    pub reqs: Arc<Mutex<Vec<Value>>>,
    pub connections: Arc<AtomicUsize>,
    /// AUTH messages received from clients.
    pub auths: Arc<AtomicUsize>,
    live: broadcast::Sender<Event>,
    kick: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRelay {
    pub async fn start(events: Vec<Event>, behaviour: Behaviour) -> FakeRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(events));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let reqs = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let auths = Arc::new(AtomicUsize::new(0));
        let (live, _) = broadcast::channel(1024);
        let (kick, _) = broadcast::channel(4);
        let task = {
            let (events, behaviour, reqs, connections, live, kick, auths) = (
                events.clone(),
                behaviour.clone(),
                reqs.clone(),
                connections.clone(),
                live.clone(),
                kick.clone(),
                auths.clone(),
            );
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let n = connections.fetch_add(1, Ordering::SeqCst);
                    let (events, behaviour, reqs, live, mut kicked, auths) = (
                        events.clone(),
                        behaviour.clone(),
                        reqs.clone(),
                        live.subscribe(),
                        kick.subscribe(),
                        auths.clone(),
                    );
                    tokio::spawn(async move {
                        let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                            return;
                        };
                        tokio::select! {
                            _ = serve(ws, n, events, behaviour, reqs, live, auths) => {}
                            _ = kicked.recv() => {} // the socket is dropped
                        }
                    });
                }
            })
        };
        FakeRelay {
            addr,
            events,
            behaviour,
            reqs,
            connections,
            auths,
            live,
            kick,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Adds an event and sends it to the live subscriptions it matches.
    pub fn push(&self, event: Event) {
        self.events.lock().push(event.clone());
        let _ = self.live.send(event);
    }

    /// Drops every open connection (the listener stays).
    pub fn kick(&self) {
        let _ = self.kick.send(());
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    connection: usize,
    events: Arc<Mutex<Vec<Event>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    reqs: Arc<Mutex<Vec<Value>>>,
    mut live: broadcast::Receiver<Event>,
    auths: Arc<AtomicUsize>,
) {
    let behaviour_now = behaviour.lock().clone();
    let (mut write, mut read) = ws.split();
    for i in 0..behaviour_now.challenges {
        let challenge = serde_json::json!(["AUTH", format!("challenge-{i}")]).to_string();
        if write.send(Message::text(challenge)).await.is_err() {
            return;
        }
    }
    if behaviour_now.deaf {
        // Hold the socket open and never read it.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    let mut subs: Vec<(String, Vec<Filter>)> = Vec::new();
    let mut sent = 0usize;
    loop {
        tokio::select! {
            message = read.next() => {
                let Some(Ok(message)) = message else { return };
                let Message::Text(text) = message else { continue };
                let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                match items.first().and_then(Value::as_str) {
                    Some("REQ") => {
                        reqs.lock().push(Value::Array(items[1..].to_vec()));
                        let sub = items[1].as_str().unwrap_or("").to_string();
                        let cap = behaviour.lock().max_subs;
                        if cap.is_some_and(|cap| subs.len() >= cap && !subs.iter().any(|(s, _)| *s == sub)) {
                            let closed = serde_json::json!(["CLOSED", sub, "error: too many concurrent subscriptions"]).to_string();
                            if write.send(Message::text(closed)).await.is_err() { return; }
                            continue;
                        }
                        let filters: Vec<Filter> = items[2..]
                            .iter()
                            .map(|f| Filter::from_value(f).unwrap())
                            .collect();
                        let answer = answer(&events.lock(), &filters);
                        let b = behaviour.lock().clone();
                        for event in answer {
                            if b.drop_after_events.is_some_and(|n| sent >= n) && connection < b.drops {
                                return; // drop the connection mid-answer
                            }
                            if !send_event(&mut write, &sub, &event, sent, &b).await {
                                return;
                            }
                            sent += 1;
                        }
                        if !b.no_eose {
                            let eose = serde_json::json!(["EOSE", sub]).to_string();
                            if write.send(Message::text(eose)).await.is_err() { return; }
                        }
                        subs.retain(|(s, _)| s != &sub);
                        subs.push((sub, filters));
                    }
                    Some("AUTH") => {
                        auths.fetch_add(1, Ordering::SeqCst);
                    }
                    Some("CLOSE") => {
                        let sub = items.get(1).and_then(Value::as_str).unwrap_or("");
                        subs.retain(|(s, _)| s != sub);
                    }
                    Some("EVENT") => {
                        if let Some(Ok(event)) = items.get(1).map(|e| Event::from_json(&e.to_string())) {
                            let ok = serde_json::json!(["OK", event.id.to_hex(), true, ""]).to_string();
                            events.lock().push(event);
                            if write.send(Message::text(ok)).await.is_err() { return; }
                        }
                    }
                    _ => {
                        if behaviour.lock().notice_unknown {
                            let notice = serde_json::json!(["NOTICE", "ERROR: bad msg: unknown cmd"]).to_string();
                            if write.send(Message::text(notice)).await.is_err() { return; }
                        }
                    }
                }
            }
            event = live.recv() => {
                let Ok(event) = event else { continue };
                let b = behaviour.lock().clone();
                for (sub, filters) in &subs {
                    if filters.iter().any(|f| matches(f, &event)) {
                        if !send_event(&mut write, sub, &event, sent, &b).await { return; }
                        sent += 1;
                    }
                }
            }
        }
    }
}

type Write = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    Message,
>;

async fn send_event(write: &mut Write, sub: &str, event: &Event, n: usize, b: &Behaviour) -> bool {
    if !b.event_delay.is_zero() {
        tokio::time::sleep(b.event_delay).await;
    }
    if b.garbage_every > 0 && n.is_multiple_of(b.garbage_every) {
        let garbage = format!("[\"EVENT\",\"{sub}\",{{\"id\":\"nonsense\"");
        if write.send(Message::text(garbage)).await.is_err() {
            return false;
        }
    }
    let mut event = event.clone();
    if b.bad_sig_every > 0 && n % b.bad_sig_every == b.bad_sig_every - 1 {
        event.sig.0[5] ^= 0x40;
    }
    if b.forged_every > 0 && n % b.forged_every == b.forged_every - 1 {
        event.content.push_str(" (edited)");
    }
    let text = format!(
        "[\"EVENT\",{},{}]",
        Value::String(sub.to_string()),
        event.to_json()
    );
    write.send(Message::text(text)).await.is_ok()
}

/// The NIP-01 answer: matching events newest first (ties by id), each
/// filter's limit applied, no event twice.
pub fn answer(events: &[Event], filters: &[Filter]) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for filter in filters {
        let mut hits: Vec<&Event> = events.iter().filter(|e| matches(filter, e)).collect();
        hits.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.0.cmp(&b.id.0)));
        if let Some(limit) = filter.limit {
            hits.truncate(limit);
        }
        for e in hits {
            if seen.insert(e.id) {
                out.push(e.clone());
            }
        }
    }
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.0.cmp(&b.id.0)));
    out
}
