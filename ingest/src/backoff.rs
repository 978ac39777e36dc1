//! When to dial a relay again after its connection failed or dropped:
//! `min(10 s × (1 + failures / 2), 60 s)` ± 3 s of jitter (rust-nostr's
//! schedule), and after [`PENALTY_AFTER`] failures in a row a penalty box
//! that starts at 15 s and doubles up to 10 minutes (gossip's), so a relay
//! that is down costs almost nothing while the ones that work are served.
//! A connection that stays up for [`STABLE_AFTER`] clears the record.

use std::time::Duration;

/// Failures in a row after which the penalty box applies.
pub const PENALTY_AFTER: u32 = 5;
/// How long a connection must have lasted to count as a success.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

const BASE: Duration = Duration::from_secs(10);
const CAP: Duration = Duration::from_secs(60);
const JITTER_MS: u64 = 3_000;
const PENALTY_FIRST: Duration = Duration::from_secs(15);
const PENALTY_CAP: Duration = Duration::from_secs(600);

/// One relay's record of failures.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
    /// A small generator for the jitter (seeded per relay, so two relays
    /// that failed together do not come back together).
    state: u64,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            failures: 0,
            state: seed | 1,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the relay is in the penalty box.
    pub fn penalized(&self) -> bool {
        self.failures >= PENALTY_AFTER
    }

    /// A connection that lasted `lasted` ended, or a dial failed (`lasted`
    /// zero): how long to wait before dialing again.
    pub fn failed(&mut self, lasted: Duration) -> Duration {
        if lasted >= STABLE_AFTER {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        if self.penalized() {
            let doublings = (self.failures - PENALTY_AFTER).min(16);
            return (PENALTY_FIRST * (1 << doublings)).min(PENALTY_CAP);
        }
        let wait = (BASE * (1 + self.failures / 2)).min(CAP);
        let jitter = self.next() % (2 * JITTER_MS + 1);
        (wait + Duration::from_millis(jitter)).saturating_sub(Duration::from_millis(JITTER_MS))
    }

    /// The relay answered (a connection came up and stayed): no more
    /// penalty.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// xorshift64*.
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn waits_grow_to_the_cap_with_jitter_then_the_penalty_box_doubles() {
        let mut backoff = Backoff::new(7);
        // failures 1..4: 10 × (1 + n / 2) s (integer halves), ± 3 s.
        for (n, base) in [(1, 10.0), (2, 20.0), (3, 20.0), (4, 30.0)] {
            let wait = secs(backoff.failed(Duration::ZERO));
            assert!(
                (base - 3.0..=base + 3.0).contains(&wait),
                "failure {n}: {wait} s, expected {base} ± 3"
            );
        }
        assert!(!backoff.penalized());
        let boxed: Vec<f64> = (0..8)
            .map(|_| secs(backoff.failed(Duration::ZERO)))
            .collect();
        assert!(backoff.penalized());
        assert_eq!(boxed, [15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0]);
    }

    #[test]
    fn the_cap_holds_before_the_penalty_box() {
        // With the box out of the way (a stable connection between each
        // pair of failures), the wait never passes 60 s + jitter.
        let mut backoff = Backoff::new(3);
        for _ in 0..100 {
            let wait = backoff.failed(Duration::ZERO);
            assert!(wait <= CAP + Duration::from_millis(JITTER_MS));
            if backoff.failures() == PENALTY_AFTER - 1 {
                backoff.failed(STABLE_AFTER);
            }
        }
    }

    #[test]
    fn a_stable_connection_or_a_success_clears_the_record() {
        let mut backoff = Backoff::new(1);
        for _ in 0..6 {
            backoff.failed(Duration::ZERO);
        }
        assert!(backoff.penalized());
        let wait = backoff.failed(STABLE_AFTER);
        assert_eq!(backoff.failures(), 1);
        assert!(secs(wait) <= 13.0, "{wait:?}");
        backoff.succeeded();
        assert_eq!(backoff.failures(), 0);
    }

    #[test]
    fn relays_failing_together_come_back_apart() {
        let waits: Vec<Duration> = (1..=20u64)
            .map(|seed| Backoff::new(seed * 7919).failed(Duration::ZERO))
            .collect();
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 15, "{waits:?}");
    }
}
