//! Prometheus metrics: strfry's names for protocol traffic, plus the
//! store's own figures. `GET /metrics` renders them in the text format.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

use crate::EventStore;

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
    /// `megalith_connections`: open WebSocket connections.
    pub connections: IntGauge,
    /// `megalith_subscriptions`: open subscriptions.
    pub subscriptions: IntGauge,
    events_stored: IntGauge,
    log_bytes: IntGauge,
    index_bytes: IntGauge,
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
                "Events accepted from clients (stored, replacing or ephemeral), by kind",
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
        let connections = IntGauge::new("megalith_connections", "Open WebSocket connections")?;
        let subscriptions = IntGauge::new("megalith_subscriptions", "Open subscriptions")?;
        let events_stored = IntGauge::new("megalith_events_stored", "Events in the store")?;
        let log_bytes = IntGauge::new("megalith_log_bytes", "Bytes of the log on disk")?;
        let index_bytes = IntGauge::new("megalith_index_bytes", "Bytes of the indexes on disk")?;
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
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(subscriptions.clone()))?;
        registry.register(Box::new(events_stored.clone()))?;
        registry.register(Box::new(log_bytes.clone()))?;
        registry.register(Box::new(index_bytes.clone()))?;
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
            connections,
            subscriptions,
            events_stored,
            log_bytes,
            index_bytes,
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
