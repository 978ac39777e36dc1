//! NIP-77 negentropy sync, the relay's side: `NEG-OPEN` reads the
//! (created_at, id) items of the events its filter matches (those the
//! connection may see), and the session answers each `NEG-MSG` from them
//! until `NEG-CLOSE` or the connection ends. docs/server.md says what is
//! refused and why.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use negentropy::{Id, Negentropy, NegentropyStorageVector};

use megalith::Filter;

use crate::Relay;
use crate::auth::Viewer;

/// One open sync session: the items, sealed, and the protocol state.
pub(crate) struct Session {
    neg: Negentropy<'static, NegentropyStorageVector>,
    /// Gives the items back to the relay's budget when the session ends.
    _held: Held,
}

impl Session {
    /// Starts a session on `items` (as [`Relay::sync_items`] gives them)
    /// and answers the client's first message. The error is the `NEG-ERR`
    /// reason.
    pub(crate) fn open(
        relay: &Arc<Relay>,
        items: NegentropyStorageVector,
        count: usize,
        first: &[u8],
    ) -> Result<(Session, Vec<u8>), String> {
        let held = Held::take(relay, count)?;
        let frame = relay.limits().sync_frame_bytes as u64;
        let neg = Negentropy::owned(items, frame)
            .map_err(|e| format!("error: could not start the sync session: {e}"))?;
        let mut session = Session { neg, _held: held };
        let reply = session.answer(first)?;
        Ok((session, reply))
    }

    /// The relay's answer to one client message. The error is the
    /// `NEG-ERR` reason.
    pub(crate) fn answer(&mut self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.neg
            .reconcile(message)
            .map_err(|e| format!("invalid: negentropy message: {e}"))
    }
}

/// A session's items, counted against `max_sync_items_held` (and the
/// session in the gauges) while it lives.
struct Held {
    relay: Arc<Relay>,
    items: usize,
}

impl Held {
    fn take(relay: &Arc<Relay>, items: usize) -> Result<Held, String> {
        let max = relay.limits().max_sync_items_held;
        let held = &relay.sync_items_held;
        let mut now = held.load(Ordering::Relaxed);
        loop {
            if now.saturating_add(items) > max {
                return Err(format!(
                    "blocked: the relay's open sync sessions hold {now} items and this one \
                     needs {items}, more than the {max} they may hold together; try again later \
                     or narrow the filter"
                ));
            }
            match held.compare_exchange_weak(now, now + items, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        relay.metrics.sync_items_held.add(items as i64);
        relay.metrics.sync_sessions.inc();
        Ok(Held {
            relay: Arc::clone(relay),
            items,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.relay
            .sync_items_held
            .fetch_sub(self.items, Ordering::AcqRel);
        self.relay.metrics.sync_items_held.sub(self.items as i64);
        self.relay.metrics.sync_sessions.dec();
    }
}

impl Relay {
    /// The sealed (created_at, id) items of the stored events `filter`
    /// matches that `viewer` may see, and how many (on the blocking pool).
    /// A filter's own `limit` keeps its newest events, as in a REQ; past
    /// `max_sync_events` the error (the `NEG-ERR` reason) says so.
    pub(crate) fn sync_items(
        &self,
        mut filter: Filter,
        viewer: &Viewer,
    ) -> Result<(NegentropyStorageVector, usize), String> {
        let max = self.limits().max_sync_events;
        let asked = filter.limit;
        filter.limit = Some(asked.unwrap_or(usize::MAX).min(max.saturating_add(1)));
        let started = Instant::now();
        let deadline = started + self.limits().sync_time_budget();
        let filters = [filter];
        let answer = self.store.query_answer(&filters, Some(deadline));
        self.observe_query(&filters, started);
        let answer = answer.map_err(|e| match e {
            megalith::Error::TimedOut => {
                self.metrics.query_timeouts.inc();
                format!(
                    "blocked: reading this filter's events ran past the {} ms sync time \
                     budget; narrow it (since/until) and sync in parts",
                    self.limits().sync_time_budget_ms
                )
            }
            e => self.query_failure(e),
        })?;
        if answer.len() > max {
            return Err(format!(
                "blocked: too many query results: this filter matches more than {max} events; \
                 narrow it (since/until) and sync in parts"
            ));
        }
        let mut items = NegentropyStorageVector::with_capacity(answer.len());
        let mut count = 0;
        answer
            .visit(0..answer.len(), |event| {
                if viewer.may_see(event) {
                    // Only a sealed vector refuses an insert.
                    let _ = items.insert(
                        event.created_at(),
                        Id::from_byte_array(*event.id().as_bytes()),
                    );
                    count += 1;
                }
                Ok(())
            })
            .map_err(|e| self.query_failure(e))?;
        items
            .seal()
            .map_err(|e| format!("error: could not sort the sync items: {e}"))?;
        Ok((items, count))
    }
}
