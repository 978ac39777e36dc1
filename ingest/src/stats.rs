//! What the pool and the store sink count per relay, shared between them
//! and read by status pages and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::url::RelayUrl;

/// One relay's counters. Times are Unix milliseconds (0: never).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RelayStats {
    pub url: String,
    /// A WebSocket to it is open now.
    pub connected: bool,
    /// Dials tried (each connection attempt, successful or not).
    pub attempts: u64,
    /// Connections that came up after the first: reconnects.
    pub reconnects: u64,
    /// Events received (parsed, id checked).
    pub events: u64,
    /// Events refused as invalid: malformed, a wrong id, a bad signature.
    pub invalid: u64,
    /// Events the store already held.
    pub duplicates: u64,
    /// Events stored.
    pub stored: u64,
    /// Failed dials, dropped connections, protocol errors, timeouts.
    pub errors: u64,
    /// Times it went into the penalty box.
    pub penalties: u64,
    /// NOTICE messages.
    pub notices: u64,
    /// The newest `created_at` received from it (for the lag gauge).
    pub newest_created_at: u64,
    /// When `connected` last changed.
    pub last_change_ms: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// Per-relay counters behind one lock (updated per message: a short
/// critical section, never held across an await).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    relays: Arc<Mutex<BTreeMap<RelayUrl, RelayStats>>>,
}

impl Stats {
    /// Runs `f` on the relay's counters, creating them on first use.
    pub fn update(&self, relay: &RelayUrl, f: impl FnOnce(&mut RelayStats)) {
        let mut relays = self.relays.lock();
        let entry = relays.entry(relay.clone()).or_insert_with(|| RelayStats {
            url: relay.as_str().to_string(),
            ..RelayStats::default()
        });
        f(entry);
    }

    /// One relay's counters.
    pub fn get(&self, relay: &RelayUrl) -> Option<RelayStats> {
        self.relays.lock().get(relay).cloned()
    }

    /// Every relay's counters, by URL.
    pub fn snapshot(&self) -> Vec<RelayStats> {
        self.relays.lock().values().cloned().collect()
    }

    pub(crate) fn error(&self, relay: &RelayUrl, what: &str) {
        self.update(relay, |s| {
            s.errors += 1;
            s.last_error = Some(what.to_string());
        });
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, in Unix seconds.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
