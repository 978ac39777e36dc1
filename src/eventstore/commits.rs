//! The commit stream: each event a store accepts as new (stored, replacing
//! an older version, or ephemeral), published once it is durable (per the
//! store's durability) and, for a stored event, in the same step that makes
//! it visible to queries, so a relay can deliver it live. A watcher that falls more
//! than its capacity behind loses events rather than slowing the writers;
//! it can tell how many from [`Commits::lagged`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;

use crate::event::{EventError, EventRef};

/// One accepted event, in the store's binary encoding (`docs/format.md`).
#[derive(Clone)]
pub struct Committed {
    payload: Arc<[u8]>,
    sequence: u64,
}

impl Committed {
    /// Its place in the stream: 1 for the first event published after the
    /// store opened, then one more for each. A stored event is published in
    /// the same step (under its shard's index lock) that makes it visible to
    /// queries, so a query that reports sequence `s`
    /// ([`EventStore::query_snapshot`]) saw exactly the stored events
    /// numbered up to `s` (of the shards it read).
    ///
    /// [`EventStore::query_snapshot`]: crate::EventStore::query_snapshot
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The event. The payload was encoded by the store, so this fails only
    /// on a bug; callers skip such an event.
    pub fn event(&self) -> Result<EventRef<'_>, EventError> {
        EventRef::parse(&self.payload)
    }
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.event() {
            Ok(event) => f
                .debug_struct("Committed")
                .field("sequence", &self.sequence)
                .field("id", &event.id())
                .field("kind", &event.kind())
                .finish(),
            Err(e) => f.debug_struct("Committed").field("error", &e).finish(),
        }
    }
}

/// A subscription to a store's commit stream ([`EventStore::commits`]).
/// Events arrive in the order their batches were acknowledged (events of
/// one batch in the order given). The stream ends (`recv` returns `None`)
/// when the store closes.
///
/// [`EventStore::commits`]: crate::EventStore::commits
#[derive(Debug)]
pub struct Commits {
    events: Receiver<Committed>,
    lagged: Arc<AtomicU64>,
}

impl Commits {
    /// The next event, waiting for one; `None` once the store is closed.
    pub fn recv(&self) -> Option<Committed> {
        self.events.recv().ok()
    }

    /// The next event, waiting at most `timeout`. `Ok(None)`: nothing came
    /// in time; `Err(())`: the store is closed.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Committed>, ()> {
        match self.events.recv_timeout(timeout) {
            Ok(event) => Ok(Some(event)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Committed> {
        self.events.try_recv().ok()
    }

    /// Events this subscription lost because it was full (it was more than
    /// its capacity behind the writers).
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

struct Watcher {
    events: Sender<Committed>,
    lagged: Arc<AtomicU64>,
}

impl crate::shard::CommitSink for Watchers {
    fn active(&self) -> bool {
        Watchers::active(self)
    }

    fn publish(&self, payloads: Vec<Arc<[u8]>>) {
        Watchers::publish(self, payloads);
    }
}

/// The store's side: its watchers.
#[derive(Default)]
pub(crate) struct Watchers {
    list: Mutex<Vec<Watcher>>,
    /// Some watcher is open: inserts keep a copy of each accepted payload.
    active: AtomicBool,
    /// Events published so far (the last sequence handed out).
    sequence: AtomicU64,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchers")
            .field("count", &self.list.lock().len())
            .finish()
    }
}

impl Watchers {
    pub(crate) fn subscribe(&self, capacity: usize) -> Commits {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let lagged = Arc::new(AtomicU64::new(0));
        let mut list = self.list.lock();
        list.push(Watcher {
            events: tx,
            lagged: Arc::clone(&lagged),
        });
        self.active.store(true, Ordering::Release);
        Commits { events: rx, lagged }
    }

    pub(crate) fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Acquire)
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Hands each payload to every watcher without blocking; drops watchers
    /// whose `Commits` is gone.
    pub(crate) fn publish(&self, payloads: impl IntoIterator<Item = Arc<[u8]>>) {
        let mut list = self.list.lock();
        for payload in payloads {
            // Under the lock: sequences reach every watcher in order.
            let sequence = self.sequence.fetch_add(1, Ordering::AcqRel) + 1;
            let committed = Committed { payload, sequence };
            list.retain(|watcher| match watcher.events.try_send(committed.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    watcher.lagged.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        }
        if list.is_empty() {
            self.active.store(false, Ordering::Release);
        }
    }

    /// Ends every stream (the store is closing).
    pub(crate) fn close(&self) {
        self.list.lock().clear();
        self.active.store(false, Ordering::Release);
    }
}
