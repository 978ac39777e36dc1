//! Into the store: events from the pool are batched (up to
//! [`BATCH_EVENTS`] or [`BATCH_WAIT`]), the ids the store already holds
//! are dropped before any signature check (`EventStore::contains_events`),
//! and the rest go through `EventStore::insert`, which verifies them in the
//! store's verify pool and commits the batch as one group. Invalid events
//! are counted per relay and never stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use megalith::{Event, EventStore, InsertOutcome};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::stats::{Stats, now_ms};
use crate::url::RelayUrl;

/// Most events in one batch.
pub const BATCH_EVENTS: usize = 1_000;
/// Longest a batch waits to fill.
pub const BATCH_WAIT: Duration = Duration::from_millis(20);

/// What happened to the events one caller (a mirror, a feed job) sent to
/// the sink. Shared: the caller reads it while the sink writes it.
#[derive(Debug, Default)]
pub struct Tally {
    /// Events handed to the sink.
    pub received: AtomicU64,
    /// Stored (new, or a newer version of a replaceable event).
    pub stored: AtomicU64,
    /// Already held.
    pub duplicate: AtomicU64,
    /// Invalid: a bad signature (or anything else the store calls invalid).
    pub invalid: AtomicU64,
    /// Valid but not stored: superseded by a newer version, deleted by its
    /// author, expired, ephemeral.
    pub refused: AtomicU64,
    /// The newest `created_at` stored.
    pub newest_stored: AtomicU64,
    /// When the first event was stored (Unix ms; 0: not yet).
    pub first_stored_ms: AtomicU64,
    /// The newest `created_at` now in the store: stored, or already held.
    pub newest_held: AtomicU64,
    /// When the first event was stored or found already held (Unix ms; 0:
    /// not yet): a feed job whose follows another job fetched first has
    /// its posts all the same.
    pub first_held_ms: AtomicU64,
    /// The last store error, if any (the store refused a whole batch).
    pub last_error: Mutex<Option<String>>,
    /// Distinct events now in the store (stored or held), when counted:
    /// see [`Tally::distinct`].
    pub distinct_held: AtomicU64,
    /// The first 8 bytes of each id held, when distinct events are counted.
    seen: Mutex<Option<std::collections::HashSet<u64>>>,
}

impl Tally {
    /// A tally that also counts distinct events held (a feed job reads an
    /// author from several relays; it shows each post once).
    pub fn distinct() -> Tally {
        Tally {
            seen: Mutex::new(Some(std::collections::HashSet::new())),
            ..Tally::default()
        }
    }

    fn distinct_one(&self, id: &megalith::EventId) {
        let mut seen = self.seen.lock();
        if let Some(seen) = seen.as_mut() {
            let key = u64::from_le_bytes(id.0[..8].try_into().unwrap_or_default());
            if seen.insert(key) {
                self.distinct_held.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts an event the store held already.
    fn held(&self, created_at: u64) {
        self.duplicate.fetch_add(1, Ordering::Relaxed);
        self.newest_held.fetch_max(created_at, Ordering::Relaxed);
        let _ =
            self.first_held_ms
                .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    fn count(&self, outcome: &InsertOutcome, created_at: u64) -> Fate {
        match outcome {
            InsertOutcome::Stored | InsertOutcome::Replaced { .. } => {
                self.stored.fetch_add(1, Ordering::Relaxed);
                self.newest_stored.fetch_max(created_at, Ordering::Relaxed);
                self.newest_held.fetch_max(created_at, Ordering::Relaxed);
                let now = now_ms();
                let _ = self.first_stored_ms.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                let _ = self.first_held_ms.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                Fate::Stored
            }
            InsertOutcome::Duplicate => {
                self.held(created_at);
                Fate::Duplicate
            }
            InsertOutcome::Invalid(rejection)
                if matches!(rejection.code, "bad-signature" | "bad-id" | "malformed") =>
            {
                self.invalid.fetch_add(1, Ordering::Relaxed);
                Fate::Invalid
            }
            _ => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Fate::Refused
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Stored,
    Duplicate,
    Invalid,
    Refused,
}

type Arrival = (RelayUrl, Box<Event>, Arc<Tally>);
type Flushed = oneshot::Sender<Result<(), String>>;

enum Item {
    Event {
        relay: RelayUrl,
        event: Box<Event>,
        tally: Arc<Tally>,
    },
    /// Answered once everything sent before it is in the store (or failed:
    /// then with the store's error).
    Flush(oneshot::Sender<Result<(), String>>),
}

/// A handle on the sink task; cheap to clone.
#[derive(Clone)]
pub struct Sink {
    items: mpsc::Sender<Item>,
    store: Arc<EventStore>,
    stats: Stats,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Item::Event { .. } => "Event",
            Item::Flush(_) => "Flush",
        })
    }
}

impl Sink {
    /// Starts the sink task on the current runtime; it ends when every
    /// handle is dropped.
    pub fn start(store: Arc<EventStore>, stats: Stats) -> (Sink, JoinHandle<()>) {
        let (items, receiver) = mpsc::channel(4 * BATCH_EVENTS);
        let task = tokio::spawn(run(store.clone(), stats.clone(), receiver));
        (
            Sink {
                items,
                store,
                stats,
            },
            task,
        )
    }

    /// Stores a few events now, beside the queue rather than behind it (a
    /// feed job's contact and relay lists must not wait for other jobs'
    /// posts), with the same checks and counts.
    pub async fn store_now(
        &self,
        events: Vec<(RelayUrl, Box<Event>)>,
        tally: &Arc<Tally>,
    ) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        tally
            .received
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let batch: Vec<Arrival> = events
            .into_iter()
            .map(|(relay, event)| (relay, event, tally.clone()))
            .collect();
        let (store, stats) = (self.store.clone(), self.stats.clone());
        tokio::task::spawn_blocking(move || write(&store, &stats, batch))
            .await
            .map_err(|e| format!("the store writer panicked: {e}"))?
    }

    /// Hands one event to the sink (waits while the sink is full).
    pub async fn send(&self, relay: RelayUrl, event: Box<Event>, tally: &Arc<Tally>) {
        tally.received.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .items
            .send(Item::Event {
                relay,
                event,
                tally: tally.clone(),
            })
            .await;
    }

    /// Waits until everything sent before is in the store; the error is
    /// the store's, if a batch since the last flush failed.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.items
            .send(Item::Flush(tx))
            .await
            .map_err(|_| "the store sink has stopped".to_string())?;
        rx.await
            .map_err(|_| "the store sink has stopped".to_string())?
    }
}

async fn run(store: Arc<EventStore>, stats: Stats, mut items: mpsc::Receiver<Item>) {
    let mut failed: Option<String> = None;
    while let Some(first) = items.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        fn push(item: Item, batch: &mut Vec<Arrival>, flushes: &mut Vec<Flushed>) {
            match item {
                Item::Event {
                    relay,
                    event,
                    tally,
                } => batch.push((relay, event, tally)),
                Item::Flush(tx) => flushes.push(tx),
            }
        }
        push(first, &mut batch, &mut flushes);
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_EVENTS {
            if flushes.is_empty() {
                match tokio::time::timeout_at(deadline, items.recv()).await {
                    Ok(Some(item)) => push(item, &mut batch, &mut flushes),
                    _ => break,
                }
            } else {
                // Someone waits: no more waiting, but what is already queued
                // (the next page of a mirror, often) joins this batch, and
                // the flush is answered when the batch is stored.
                match items.try_recv() {
                    Ok(item) => push(item, &mut batch, &mut flushes),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let store = store.clone();
            let stats = stats.clone();
            let result = tokio::task::spawn_blocking(move || write(&store, &stats, batch)).await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = Some(e),
                Err(e) => failed = Some(format!("the store writer panicked: {e}")),
            }
        }
        for tx in flushes {
            let _ = tx.send(match failed.take() {
                None => Ok(()),
                Some(e) => Err(e),
            });
        }
    }
}

/// Stores one batch; counts every event's fate in its tally and its
/// relay's counters.
fn write(store: &EventStore, stats: &Stats, batch: Vec<Arrival>) -> Result<(), String> {
    let ids: Vec<_> = batch.iter().map(|(_, e, _)| (e.id, e.pubkey)).collect();
    let held = store
        .contains_events(&ids)
        .map_err(|e| format!("store: {e}"))?;
    let mut fresh = Vec::with_capacity(batch.len());
    let mut origins = Vec::with_capacity(batch.len());
    for ((relay, event, tally), held) in batch.into_iter().zip(held) {
        if held {
            tally.held(event.created_at);
            tally.distinct_one(&event.id);
            stats.update(&relay, |s| s.duplicates += 1);
        } else {
            origins.push((relay, tally, event.created_at, event.id));
            fresh.push(*event);
        }
    }
    if fresh.is_empty() {
        return Ok(());
    }
    let outcomes = match store.insert(&fresh) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let message = format!("store: {e}");
            for (relay, tally, _, _) in &origins {
                *tally.last_error.lock() = Some(message.clone());
                stats.error(relay, &message);
            }
            return Err(message);
        }
    };
    for ((relay, tally, created_at, id), outcome) in origins.iter().zip(&outcomes) {
        match tally.count(outcome, *created_at) {
            Fate::Stored => {
                tally.distinct_one(id);
                stats.update(relay, |s| s.stored += 1);
            }
            Fate::Duplicate => {
                tally.distinct_one(id);
                stats.update(relay, |s| s.duplicates += 1);
            }
            Fate::Invalid => stats.update(relay, |s| s.invalid += 1),
            Fate::Refused => {}
        }
    }
    Ok(())
}
