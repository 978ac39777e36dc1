//! The ingester's part of `/metrics`, in the Prometheus text format (the
//! names are listed in docs/server.md).

use std::fmt::Write;

use crate::feed::FeedJobs;
use crate::stats::{RelayStats, Stats, now_secs};

/// Per-relay counters of the pool and the sink, and feed jobs by phase.
pub fn render(stats: &Stats, jobs: Option<&FeedJobs>) -> String {
    let relays = stats.snapshot();
    let mut out = String::new();
    type Pick = fn(&RelayStats) -> Option<u64>;
    let families: [(&str, &str, &str, Pick); 10] = [
        (
            "megalith_ingest_relay_connected",
            "gauge",
            "Whether a connection to the relay is open (1) or not (0).",
            |r| Some(u64::from(r.connected)),
        ),
        (
            "megalith_ingest_relay_events_total",
            "counter",
            "Events received from the relay (parsed, id checked).",
            |r| Some(r.events),
        ),
        (
            "megalith_ingest_relay_stored_total",
            "counter",
            "Events from the relay stored.",
            |r| Some(r.stored),
        ),
        (
            "megalith_ingest_relay_duplicates_total",
            "counter",
            "Events from the relay the store already held.",
            |r| Some(r.duplicates),
        ),
        (
            "megalith_ingest_relay_invalid_total",
            "counter",
            "Events from the relay refused as invalid (malformed, wrong id, bad signature).",
            |r| Some(r.invalid),
        ),
        (
            "megalith_ingest_relay_errors_total",
            "counter",
            "Failed dials, dropped connections, protocol errors and timeouts.",
            |r| Some(r.errors),
        ),
        (
            "megalith_ingest_relay_attempts_total",
            "counter",
            "Dials of the relay.",
            |r| Some(r.attempts),
        ),
        (
            "megalith_ingest_relay_reconnects_total",
            "counter",
            "Connections to the relay after the first.",
            |r| Some(r.reconnects),
        ),
        (
            "megalith_ingest_relay_penalties_total",
            "counter",
            "Times the relay went into the penalty box.",
            |r| Some(r.penalties),
        ),
        (
            "megalith_ingest_relay_lag_seconds",
            "gauge",
            "Now minus the newest created_at received from the relay.",
            |r| (r.newest_created_at > 0).then(|| now_secs().saturating_sub(r.newest_created_at)),
        ),
    ];
    for (name, kind, help, pick) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for relay in &relays {
            if let Some(value) = pick(relay) {
                let _ = writeln!(out, "{name}{{relay=\"{}\"}} {value}", escape(&relay.url));
            }
        }
    }
    if let Some(jobs) = jobs {
        let name = "megalith_ingest_feed_jobs";
        let _ = writeln!(
            out,
            "# HELP {name} Feed jobs by phase.\n# TYPE {name} gauge"
        );
        for (phase, count) in jobs.phase_counts() {
            let _ = writeln!(out, "{name}{{phase=\"{}\"}} {count}", phase.name());
        }
    }
    out
}

/// A label value: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::RelayUrl;

    #[test]
    fn every_family_has_help_type_and_one_sample_per_relay() {
        let stats = Stats::default();
        let a = RelayUrl::parse("ws://127.0.0.1:1").unwrap();
        let b = RelayUrl::parse("wss://relay.example/\"x").unwrap();
        stats.update(&a, |s| {
            s.events = 5;
            s.connected = true;
            s.newest_created_at = now_secs() - 30;
        });
        stats.update(&b, |s| s.invalid = 2);
        let text = render(&stats, None);
        assert!(text.contains("megalith_ingest_relay_events_total{relay=\"ws://127.0.0.1:1\"} 5"));
        assert!(text.contains("megalith_ingest_relay_connected{relay=\"ws://127.0.0.1:1\"} 1"));
        assert!(text.contains(
            "megalith_ingest_relay_invalid_total{relay=\"wss://relay.example/\\\"x\"} 2"
        ));
        let lag = text
            .lines()
            .find(|l| l.starts_with("megalith_ingest_relay_lag_seconds{relay=\"ws://"))
            .unwrap();
        let seconds: u64 = lag.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((30..40).contains(&seconds), "{lag}");
        // No lag sample for a relay that sent nothing.
        assert_eq!(
            text.matches("megalith_ingest_relay_lag_seconds{").count(),
            1
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
