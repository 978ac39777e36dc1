//! Prometheus metrics: strfry's names for protocol traffic, plus the
//! store's own figures. `GET /metrics` renders them in the text format.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

use megalith::EventStore;

/// The `kind` label of `nostr_events_total`: the kinds the NIPs define, by
/// number; every other kind is `other`, so a client publishing thousands
/// of made-up kinds cannot make thousands of series.
pub fn kind_label(kind: u16) -> &'static str {
    match kind {
        0 => "0",
        1 => "1",
        2 => "2",
        3 => "3",
        4 => "4",
        5 => "5",
        6 => "6",
        7 => "7",
        8 => "8",
        9 => "9",
        10 => "10",
        11 => "11",
        12 => "12",
        13 => "13",
        14 => "14",
        15 => "15",
        16 => "16",
        17 => "17",
        20 => "20",
        21 => "21",
        22 => "22",
        40 => "40",
        41 => "41",
        42 => "42",
        43 => "43",
        44 => "44",
        64 => "64",
        1018 => "1018",
        1021 => "1021",
        1022 => "1022",
        1040 => "1040",
        1059 => "1059",
        1060 => "1060",
        1063 => "1063",
        1068 => "1068",
        1111 => "1111",
        1222 => "1222",
        1244 => "1244",
        1311 => "1311",
        1617 => "1617",
        1621 => "1621",
        1622 => "1622",
        1630 => "1630",
        1633 => "1633",
        1971 => "1971",
        1984 => "1984",
        1985 => "1985",
        2003 => "2003",
        2004 => "2004",
        4550 => "4550",
        5000 => "5000",
        6000 => "6000",
        7000 => "7000",
        9041 => "9041",
        9321 => "9321",
        9467 => "9467",
        9734 => "9734",
        9735 => "9735",
        9802 => "9802",
        10000 => "10000",
        10001 => "10001",
        10002 => "10002",
        10003 => "10003",
        10004 => "10004",
        10005 => "10005",
        10006 => "10006",
        10007 => "10007",
        10009 => "10009",
        10015 => "10015",
        10030 => "10030",
        10050 => "10050",
        10063 => "10063",
        10096 => "10096",
        13194 => "13194",
        21000 => "21000",
        22242 => "22242",
        23194 => "23194",
        23195 => "23195",
        24133 => "24133",
        24242 => "24242",
        27235 => "27235",
        30000 => "30000",
        30001 => "30001",
        30002 => "30002",
        30003 => "30003",
        30004 => "30004",
        30005 => "30005",
        30007 => "30007",
        30008 => "30008",
        30009 => "30009",
        30015 => "30015",
        30017 => "30017",
        30018 => "30018",
        30019 => "30019",
        30020 => "30020",
        30023 => "30023",
        30024 => "30024",
        30030 => "30030",
        30063 => "30063",
        30078 => "30078",
        30311 => "30311",
        30315 => "30315",
        30382 => "30382",
        30383 => "30383",
        30384 => "30384",
        30388 => "30388",
        30402 => "30402",
        30403 => "30403",
        30617 => "30617",
        30618 => "30618",
        30818 => "30818",
        30819 => "30819",
        31234 => "31234",
        31388 => "31388",
        31890 => "31890",
        31922 => "31922",
        31923 => "31923",
        31924 => "31924",
        31925 => "31925",
        31989 => "31989",
        31990 => "31990",
        34235 => "34235",
        34236 => "34236",
        34550 => "34550",
        39000 => "39000",
        39001 => "39001",
        39002 => "39002",
        39003 => "39003",
        _ => "other",
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `nostr_client_messages_total{verb}`: messages received, by verb.
    pub client_messages: IntCounterVec,
    /// `nostr_relay_messages_total{verb}`: messages sent, by verb.
    pub relay_messages: IntCounterVec,
    /// `nostr_events_total{kind}`: events accepted from clients, by kind.
    pub events: IntCounterVec,
    /// `megalith_events_rejected_total{reason}`: events answered `OK false`.
    pub rejected: IntCounterVec,
    /// `megalith_insert_batches_total`
    pub insert_batches: IntCounter,
    /// `megalith_insert_seconds`: time to acknowledge one insert batch.
    pub insert_seconds: Histogram,
    /// `megalith_query_seconds{index}`: time of one REQ/COUNT in the store, by
    /// the index its first filter's plan uses.
    pub query_seconds: HistogramVec,
    /// `megalith_query_timeouts_total`
    pub query_timeouts: IntCounter,
    /// `megalith_live_deliveries_total`: live events queued to subscribers.
    pub live_deliveries: IntCounter,
    /// `megalith_commit_stream_lagged_total`: committed events the live
    /// broadcaster missed (it fell behind the writers).
    pub lagged: IntCounter,
    /// `megalith_slow_clients_disconnected_total`
    pub slow_disconnects: IntCounter,
    /// Reloads of the access rules, by result (`ok`, `error`).
    pub rules_reloads: IntCounterVec,
    /// Reloads of the limits on SIGHUP, by result (`ok`, `error`).
    pub limits_reloads: IntCounterVec,
    /// Times a connection stopped reading because its address passed its
    /// byte budget.
    pub ingress_pauses: IntCounter,
    /// `megalith_connections`: open WebSocket connections.
    pub connections: IntGauge,
    /// `megalith_tcp_connections`: open TCP connections (WebSocket or not).
    pub tcp_connections: IntGauge,
    /// `megalith_connections_refused_total{reason}`: TCP connections turned
    /// away at accept (`relay_full`, `address_full`).
    pub connections_refused: IntCounterVec,
    /// `megalith_handshake_timeouts_total`: connections closed for not
    /// becoming a WebSocket in time.
    pub handshake_timeouts: IntCounter,
    /// `megalith_auth_total{result}`: NIP-42 AUTH messages, `ok` or `refused`.
    pub auths: IntCounterVec,
    /// `megalith_subscriptions`: open subscriptions.
    pub subscriptions: IntGauge,
    /// `megalith_sync_sessions`: open NIP-77 sync sessions.
    pub sync_sessions: IntGauge,
    /// `megalith_sync_items_held`: (time, id) items those sessions hold.
    pub sync_items_held: IntGauge,
    events_stored: IntGauge,
    log_bytes: IntGauge,
    index_bytes: IntGauge,
    garbage_bytes: IntGauge,
    shard_writable: IntGaugeVec,
    shard_recoveries: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let client_messages = IntCounterVec::new(
            Opts::new(
                "nostr_client_messages_total",
                "Messages received from clients, by verb",
            ),
            &["verb"],
        )?;
        let relay_messages = IntCounterVec::new(
            Opts::new(
                "nostr_relay_messages_total",
                "Messages sent to clients, by verb",
            ),
            &["verb"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "nostr_events_total",
                "Events accepted from clients (stored, replacing or ephemeral), by kind (the kinds \
                 the NIPs define; `other` for the rest)",
            ),
            &["kind"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "megalith_events_rejected_total",
                "Events answered OK false, by reason",
            ),
            &["reason"],
        )?;
        let insert_batches = IntCounter::new(
            "megalith_insert_batches_total",
            "Insert batches written for clients",
        )?;
        let insert_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "megalith_insert_seconds",
                "Time to acknowledge one insert batch",
            )
            .buckets(exponential_buckets(0.000_05, 2.0, 16)?),
        )?;
        let query_seconds = HistogramVec::new(
            HistogramOpts::new(
                "megalith_query_seconds",
                "Time of one REQ or COUNT in the store, by the index of its first filter's plan",
            )
            .buckets(exponential_buckets(0.000_01, 2.0, 20)?),
            &["index"],
        )?;
        let query_timeouts = IntCounter::new(
            "megalith_query_timeouts_total",
            "REQs and COUNTs closed for running past the time budget",
        )?;
        let live_deliveries = IntCounter::new(
            "megalith_live_deliveries_total",
            "Live events queued to subscribers",
        )?;
        let lagged = IntCounter::new(
            "megalith_commit_stream_lagged_total",
            "Committed events the live broadcaster missed because it fell behind",
        )?;
        let slow_disconnects = IntCounter::new(
            "megalith_slow_clients_disconnected_total",
            "Connections closed because their outbound queue passed its bound",
        )?;
        let rules_reloads = IntCounterVec::new(
            Opts::new(
                "megalith_rules_reloads_total",
                "Reloads of the access rules file, by result",
            ),
            &["result"],
        )?;
        let limits_reloads = IntCounterVec::new(
            Opts::new(
                "megalith_limits_reloads_total",
                "Reloads of the limits on SIGHUP, by result",
            ),
            &["result"],
        )?;
        let ingress_pauses = IntCounter::new(
            "megalith_ingress_pauses_total",
            "Times the relay stopped reading from a connection whose address passed its byte budget",
        )?;
        let connections = IntGauge::new("megalith_connections", "Open WebSocket connections")?;
        let subscriptions = IntGauge::new("megalith_subscriptions", "Open subscriptions")?;
        let sync_sessions = IntGauge::new("megalith_sync_sessions", "Open NIP-77 sync sessions")?;
        let sync_items_held = IntGauge::new(
            "megalith_sync_items_held",
            "Items (event time and id) the open NIP-77 sync sessions hold",
        )?;
        let tcp_connections = IntGauge::new(
            "megalith_tcp_connections",
            "Open TCP connections, upgraded to WebSocket or not",
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "megalith_connections_refused_total",
                "TCP connections turned away at accept, by reason (relay_full, address_full)",
            ),
            &["reason"],
        )?;
        let handshake_timeouts = IntCounter::new(
            "megalith_handshake_timeouts_total",
            "Connections closed for not becoming a WebSocket within the handshake timeout",
        )?;
        let auths = IntCounterVec::new(
            Opts::new(
                "megalith_auth_total",
                "NIP-42 AUTH messages, by result (ok, refused)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(auths.clone()))?;
        registry.register(Box::new(tcp_connections.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(handshake_timeouts.clone()))?;
        let events_stored = IntGauge::new("megalith_events_stored", "Events in the store")?;
        let log_bytes = IntGauge::new("megalith_log_bytes", "Bytes of the log on disk")?;
        let index_bytes = IntGauge::new("megalith_index_bytes", "Bytes of the indexes on disk")?;
        let garbage_bytes = IntGauge::new(
            "megalith_log_garbage_bytes",
            "Bytes of removed events still in the log (compaction takes them out)",
        )?;
        let shard_writable = IntGaugeVec::new(
            Opts::new(
                "megalith_shard_writable",
                "1 while the shard takes writes, 0 while it refuses them after a failed write \
                 (a full disk) and retries in place",
            ),
            &["shard"],
        )?;
        let shard_recoveries = IntGaugeVec::new(
            Opts::new(
                "megalith_shard_recoveries",
                "Times the shard recovered in place after a failed write since the relay started",
            ),
            &["shard"],
        )?;
        registry.register(Box::new(shard_writable.clone()))?;
        registry.register(Box::new(shard_recoveries.clone()))?;
        registry.register(Box::new(client_messages.clone()))?;
        registry.register(Box::new(relay_messages.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(insert_batches.clone()))?;
        registry.register(Box::new(insert_seconds.clone()))?;
        registry.register(Box::new(query_seconds.clone()))?;
        registry.register(Box::new(query_timeouts.clone()))?;
        registry.register(Box::new(live_deliveries.clone()))?;
        registry.register(Box::new(lagged.clone()))?;
        registry.register(Box::new(slow_disconnects.clone()))?;
        registry.register(Box::new(ingress_pauses.clone()))?;
        registry.register(Box::new(rules_reloads.clone()))?;
        registry.register(Box::new(limits_reloads.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(subscriptions.clone()))?;
        registry.register(Box::new(sync_sessions.clone()))?;
        registry.register(Box::new(sync_items_held.clone()))?;
        registry.register(Box::new(events_stored.clone()))?;
        registry.register(Box::new(log_bytes.clone()))?;
        registry.register(Box::new(index_bytes.clone()))?;
        registry.register(Box::new(garbage_bytes.clone()))?;
        Ok(Metrics {
            registry,
            client_messages,
            relay_messages,
            events,
            rejected,
            insert_batches,
            insert_seconds,
            query_seconds,
            query_timeouts,
            live_deliveries,
            lagged,
            slow_disconnects,
            ingress_pauses,
            rules_reloads,
            limits_reloads,
            connections,
            tcp_connections,
            connections_refused,
            handshake_timeouts,
            auths,
            subscriptions,
            sync_sessions,
            sync_items_held,
            events_stored,
            log_bytes,
            index_bytes,
            garbage_bytes,
            shard_writable,
            shard_recoveries,
        })
    }

    pub fn sent(&self, verb: &str) {
        self.relay_messages.with_label_values(&[verb]).inc();
    }

    /// The text exposition, with the store's gauges read now.
    pub fn render(&self, store: &EventStore) -> String {
        let gauges = store.gauges();
        self.events_stored
            .set(i64::try_from(gauges.events).unwrap_or(i64::MAX));
        self.log_bytes
            .set(i64::try_from(gauges.log_bytes).unwrap_or(i64::MAX));
        self.index_bytes
            .set(i64::try_from(gauges.index_bytes).unwrap_or(i64::MAX));
        self.garbage_bytes
            .set(i64::try_from(gauges.garbage_bytes).unwrap_or(i64::MAX));
        for shard in store.health() {
            let label = shard.shard.0.to_string();
            self.shard_writable
                .with_label_values(&[label.as_str()])
                .set(i64::from(shard.writable));
            self.shard_recoveries
                .with_label_values(&[label.as_str()])
                .set(i64::try_from(shard.recoveries).unwrap_or(i64::MAX));
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_labels_are_a_bounded_set() {
        let labels: std::collections::HashSet<&str> = (0..=u16::MAX).map(kind_label).collect();
        assert!(labels.len() < 200, "{} labels", labels.len());
        assert_eq!(kind_label(1), "1");
        assert_eq!(kind_label(30023), "30023");
        assert_eq!(kind_label(4242), "other");
        for label in labels {
            assert!(label == "other" || label.parse::<u16>().is_ok(), "{label}");
        }
    }
}
