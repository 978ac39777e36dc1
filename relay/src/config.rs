//! The relay's settings: where it listens, what it tells clients about
//! itself (NIP-11), and the limits it enforces. Every field has a default
//! (strfry's where strfry has one); a TOML file or flags change them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `megalith serve` needs: the store to open and the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// The store's data directory (created if missing).
    pub data: PathBuf,
    /// Shards of a new store (an existing store keeps its own); `None`: one
    /// per core.
    pub shards: Option<u32>,
    /// When an acknowledged event is on disk: `always`, `batch` or `never`.
    pub durability: DurabilityName,
    /// Keep the NIP-50 search index (`None`: whatever the store has).
    pub search: Option<bool>,
    /// Keep the video analytics and serve the video API under `/api/`
    /// (`None`: whatever the store has; a new store has none).
    pub analytics: Option<bool>,
    /// The bearer token every `/api/` endpoint but `/api/openapi.json`
    /// asks for. Default none: the API is open.
    pub api_token: Option<String>,
    /// What opening does when the log does not end cleanly: `strict`,
    /// `tolerate-torn-tail` (default) or `repair` (see `RecoveryMode`).
    pub recovery: RecoveryName,
    /// After a failed write (a full disk), a shard refuses writes and
    /// retries in place after this many milliseconds, doubling each time
    /// (see `Options::recover_after`). Default 1000.
    pub recover_after_ms: u64,
    /// Address to listen on. Default `127.0.0.1:7777`.
    pub listen: SocketAddr,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For`
    /// or `Forwarded` header names the client. Default none.
    pub trusted_proxies: Vec<String>,
    /// The relay's public URL (`wss://relay.example.com`), which a NIP-42
    /// authentication event's `relay` tag must name. Default none: the
    /// `Host` the client connected to.
    pub relay_url: Option<String>,
    /// The access rules file (TOML; see docs/server.md), reloaded on
    /// SIGHUP and when it changes. Default none: anyone may publish and
    /// read anything within the limits.
    pub rules: Option<PathBuf>,
    /// NIP-11 fields (`[info]`).
    pub info: RelayInfo,
    /// What the relay enforces (`[limits]`).
    pub limits: RelayLimits,
    /// Other relays to copy into this one (`[[mirror]]` tables), run by
    /// `megalith serve` beside the relay (see `megalith mirror`).
    pub mirror: Vec<MirrorEntry>,
    /// The feed pages and their feed jobs (`[feed]`), run by `megalith
    /// serve` beside the relay (docs/web.md).
    pub feed: FeedEntry,
    /// The primary relay this one is a read replica of (`ws://` or
    /// `wss://`): a NIP-77 sync at start and every `follow_resync_secs`,
    /// its live stream in between; clients' EVENTs are refused
    /// (docs/server.md, "Replicas"). Default none.
    pub follow: Option<String>,
    /// Seconds between the replica's NIP-77 syncs with its primary, which
    /// bring what the live stream cannot (events with old timestamps that
    /// reached the primary while the stream was down). Default 600.
    pub follow_resync_secs: u64,
    /// Retention rules (`[retention]`), applied by `megalith serve`.
    pub retention: RetentionEntry,
    /// Background compaction (`[compaction]`), run by `megalith serve`.
    pub compaction: CompactionEntry,
}

/// The `[compaction]` table: when `megalith serve` takes removed events'
/// bytes out of the log in the background (`EventStore::garbage`,
/// `EventStore::compact`; docs/compaction.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionEntry {
    /// A pass runs when removed events take at least this share of the
    /// log's bytes, and rewrites each sealed segment in which they take
    /// at least this share; 0 turns background compaction off. Default 0.25.
    pub garbage_ratio: f64,
    /// Seconds between two looks at the share; the first look (after one
    /// interval) always runs a pass, which counts what the log held at
    /// start. Default 600.
    pub check_secs: u64,
    /// At most this many MiB written per second by a pass; 0: no limit.
    /// Default 32.
    pub rate_mib: u64,
}

impl Default for CompactionEntry {
    fn default() -> CompactionEntry {
        CompactionEntry {
            garbage_ratio: 0.25,
            check_secs: 600,
            rate_mib: 32,
        }
    }
}

/// The `[retention]` table: which stored events `megalith serve` removes
/// as they age (`EventStore::apply_retention`; docs/config.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionEntry {
    /// Seconds between two runs of the rules; the first runs at start and
    /// after each SIGHUP. Default 3600.
    pub interval_secs: u64,
    /// Kinds (a number, or a `"first-last"` range) no rule removes.
    /// Default: profiles, contact lists, deletion requests, requests to
    /// vanish and relay lists (0, 3, 5, 62, 10002); removing a deletion
    /// request would let what it deleted be stored again.
    pub never_kinds: Vec<KindSpec>,
    /// The most bytes the store may hold (its logs and indexes on disk,
    /// less removed events not compacted yet): past it, the oldest events
    /// of the kinds not in `never_kinds` go at each run. Default 0: no
    /// limit.
    pub max_store_bytes: u64,
    /// The rules (`[[retention.rule]]` tables). Default none.
    pub rule: Vec<RetentionRuleEntry>,
}

impl Default for RetentionEntry {
    fn default() -> RetentionEntry {
        RetentionEntry {
            interval_secs: 3600,
            never_kinds: [0, 3, 5, 62, 10002].map(KindSpec::Kind).to_vec(),
            max_store_bytes: 0,
            rule: Vec::new(),
        }
    }
}

/// One `[[retention.rule]]`: events of these kinds older than this go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleEntry {
    /// Kinds (numbers or `"first-last"` ranges). Default: every kind.
    #[serde(default)]
    pub kinds: Vec<KindSpec>,
    /// Age in days (`created_at` before now less this) past which they go.
    pub max_age_days: f64,
}

/// A kind, or a range of kinds as `"30000-39999"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KindSpec {
    Kind(u16),
    Range(String),
}

impl KindSpec {
    fn range(&self) -> Result<megalith::KindRange, String> {
        match self {
            KindSpec::Kind(kind) => Ok(megalith::KindRange::one(*kind)),
            KindSpec::Range(text) => megalith::KindRange::parse(text),
        }
    }
}

impl RetentionEntry {
    /// The rules as the engine takes them (`None`: no rules); an error
    /// says which setting is wrong.
    pub fn retention(&self) -> Result<Option<megalith::Retention>, String> {
        let never = self
            .never_kinds
            .iter()
            .map(KindSpec::range)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("[retention] never_kinds: {e}"))?;
        let mut rules = Vec::with_capacity(self.rule.len());
        for (n, rule) in self.rule.iter().enumerate() {
            let what = format!("[[retention.rule]] number {}", n + 1);
            let days = rule.max_age_days;
            if !(days.is_finite() && days > 0.0 && days <= 1e6) {
                return Err(format!(
                    "{what}: max_age_days {days} must be a number of days above 0 (at most 1000000)"
                ));
            }
            let kinds = rule
                .kinds
                .iter()
                .map(KindSpec::range)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{what}: {e}"))?;
            rules.push(megalith::RetentionRule {
                kinds,
                max_age: (days * 86_400.0).round() as u64,
            });
        }
        let max_bytes = (self.max_store_bytes > 0).then_some(self.max_store_bytes);
        Ok(
            (!rules.is_empty() || max_bytes.is_some()).then_some(megalith::Retention {
                rules,
                never,
                max_bytes,
            }),
        )
    }
}

/// The `[feed]` table: the feed pages (`/start`, `/timeline`, ...) and the
/// jobs they start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedEntry {
    /// Serve the pages and run the jobs. Default true.
    pub enabled: bool,
    /// Where jobs look for a person's contact list and relay list. Default:
    /// empty, meaning the well-known public relays of docs/web.md.
    pub relays: Vec<String>,
    /// Jobs running at once; the rest queue. Default 24.
    pub max_running: usize,
    /// Dial relays that relay lists name on loopback or private networks.
    /// Default false.
    pub allow_private_relays: bool,
    /// `/start` requests one client address may make at once. Default 10.
    pub start_burst: u32,
    /// ...and the seconds after which it may make one more. Default 6.
    pub start_every_secs: f64,
}

impl Default for FeedEntry {
    fn default() -> FeedEntry {
        FeedEntry {
            enabled: true,
            relays: Vec::new(),
            max_running: 24,
            allow_private_relays: false,
            start_burst: 10,
            start_every_secs: 6.0,
        }
    }
}

/// One `[[mirror]]` table: what `megalith mirror` would do, run beside the
/// relay (backfill, then live; resume points in DIR/mirror/).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorEntry {
    /// The relays to copy from (`ws://` or `wss://`).
    pub relays: Vec<String>,
    /// The NIP-01 filter, as JSON text. Default `{}`: everything.
    #[serde(default = "MirrorEntry::everything")]
    pub filter: String,
    /// Events per page of the backfill. Default 500.
    #[serde(default = "MirrorEntry::default_page_size")]
    pub page_size: usize,
}

impl MirrorEntry {
    fn everything() -> String {
        "{}".to_string()
    }

    fn default_page_size() -> usize {
        500
    }
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            data: PathBuf::from("./megalith-data"),
            shards: None,
            durability: DurabilityName::Always,
            search: None,
            analytics: None,
            api_token: None,
            recovery: RecoveryName::TolerateTornTail,
            recover_after_ms: 1000,
            listen: RelayConfig::default().listen,
            trusted_proxies: Vec::new(),
            relay_url: None,
            rules: None,
            info: RelayInfo::default(),
            limits: RelayLimits::default(),
            mirror: Vec::new(),
            feed: FeedEntry::default(),
            follow: None,
            follow_resync_secs: 600,
            retention: RetentionEntry::default(),
            compaction: CompactionEntry::default(),
        }
    }
}

impl ServeConfig {
    /// Reads a TOML file; unknown keys are errors, missing keys keep their
    /// defaults.
    pub fn from_toml_file(path: &Path) -> Result<ServeConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ServeConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses TOML text (see `docs/server.md` for the keys).
    pub fn from_toml(text: &str) -> Result<ServeConfig, String> {
        let config: ServeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// Checks every setting's range.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=3_600_000).contains(&self.recover_after_ms) {
            return Err(format!(
                "recover_after_ms {} is outside 1 ..= 3600000",
                self.recover_after_ms
            ));
        }
        if !(10..=86_400).contains(&self.follow_resync_secs) {
            return Err(format!(
                "follow_resync_secs {} is outside 10 ..= 86400",
                self.follow_resync_secs
            ));
        }
        if !(1..=30 * 86_400).contains(&self.retention.interval_secs) {
            return Err(format!(
                "[retention] interval_secs {} is outside 1 ..= 2592000",
                self.retention.interval_secs
            ));
        }
        self.retention.retention()?;
        let compaction = &self.compaction;
        if !(compaction.garbage_ratio.is_finite() && (0.0..1.0).contains(&compaction.garbage_ratio))
        {
            return Err(format!(
                "[compaction] garbage_ratio {} is outside 0 ..< 1 (0 turns it off)",
                compaction.garbage_ratio
            ));
        }
        if !(1..=30 * 86_400).contains(&compaction.check_secs) {
            return Err(format!(
                "[compaction] check_secs {} is outside 1 ..= 2592000",
                compaction.check_secs
            ));
        }
        let feed = &self.feed;
        if feed.max_running == 0 || feed.start_burst == 0 {
            return Err("[feed] max_running and start_burst must be at least 1".to_string());
        }
        if !(feed.start_every_secs.is_finite() && feed.start_every_secs > 0.0) {
            return Err(format!(
                "[feed] start_every_secs {} must be a positive number of seconds",
                feed.start_every_secs
            ));
        }
        self.relay().check()
    }

    /// The relay part.
    pub fn relay(&self) -> RelayConfig {
        RelayConfig {
            listen: self.listen,
            trusted_proxies: self.trusted_proxies.clone(),
            relay_url: self.relay_url.clone(),
            rules: self.rules.clone(),
            info: self.info.clone(),
            limits: self.limits.clone(),
            replica_of: self.follow.clone(),
        }
    }
}

/// The durability names a config file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityName {
    /// fsync before acknowledging each batch.
    Always,
    /// fsync at least every 100 ms.
    Batch,
    /// fsync only at checkpoints and close.
    Never,
}

impl DurabilityName {
    pub fn durability(self) -> megalith::Durability {
        match self {
            DurabilityName::Always => megalith::Durability::Always,
            DurabilityName::Batch => megalith::Durability::Batch(Duration::from_millis(100)),
            DurabilityName::Never => megalith::Durability::Never,
        }
    }
}

/// The recovery mode names a config file uses (`RecoveryMode::name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryName {
    /// Refuse a torn tail as well as damage.
    Strict,
    /// Cut a torn tail; refuse damage.
    TolerateTornTail,
    /// Cut a torn tail; repair damage (quarantine it, keep every valid record).
    Repair,
}

impl RecoveryName {
    pub fn mode(self) -> megalith::RecoveryMode {
        match self {
            RecoveryName::Strict => megalith::RecoveryMode::Strict,
            RecoveryName::TolerateTornTail => megalith::RecoveryMode::TolerateCorruptTail,
            RecoveryName::Repair => megalith::RecoveryMode::Repair,
        }
    }
}

/// The relay: address, NIP-11 description and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Address to listen on. Default `127.0.0.1:7777`.
    pub listen: SocketAddr,
    /// Reverse proxies (addresses or CIDR ranges) whose forwarding headers
    /// name the client.
    pub trusted_proxies: Vec<String>,
    /// The URL a NIP-42 `relay` tag must name (`None`: the `Host` header).
    pub relay_url: Option<String>,
    /// The access rules file (`None`: no rules).
    pub rules: Option<PathBuf>,
    /// NIP-11 fields.
    pub info: RelayInfo,
    /// What the relay enforces (and advertises in NIP-11).
    pub limits: RelayLimits,
    /// The primary this relay is a read replica of: clients' EVENTs are
    /// refused with `blocked:` naming it (`None`: clients may publish).
    pub replica_of: Option<String>,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7777)),
            trusted_proxies: Vec::new(),
            relay_url: None,
            rules: None,
            info: RelayInfo::default(),
            limits: RelayLimits::default(),
            replica_of: None,
        }
    }
}

impl RelayConfig {
    /// Checks the limits and the proxy list.
    pub fn check(&self) -> Result<(), String> {
        self.trusted_proxy_ranges()?;
        self.limits.check()
    }

    /// `trusted_proxies`, parsed.
    pub fn trusted_proxy_ranges(&self) -> Result<Vec<super::gate::Cidr>, String> {
        self.trusted_proxies
            .iter()
            .map(|text| super::gate::Cidr::parse(text).map_err(|e| format!("trusted_proxies: {e}")))
            .collect()
    }
}

/// NIP-11's descriptive fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayInfo {
    pub name: String,
    pub description: String,
    /// The operator's pubkey (hex), if any.
    pub pubkey: Option<String>,
    /// How to reach the operator, if any.
    pub contact: Option<String>,
}

impl Default for RelayInfo {
    fn default() -> RelayInfo {
        RelayInfo {
            name: "megalith".to_string(),
            description: "A Nostr relay on the Megalith storage engine".to_string(),
            pubkey: None,
            contact: None,
        }
    }
}

/// The limits a relay enforces. Defaults after strfry's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    /// Default 131,072 (128 KiB).
    pub max_message_bytes: usize,
    /// Largest event, in bytes of its JSON. Default 65,536.
    pub max_event_bytes: usize,
    /// Most tags an event may have. Default 2,000.
    pub max_event_tags: usize,
    /// Longest content, in bytes. Default 65,536.
    pub max_content_bytes: usize,
    /// Most open subscriptions per connection. Default 200.
    pub max_subscriptions: usize,
    /// Most filters in one REQ or COUNT. Default 200.
    pub max_filters: usize,
    /// Bytes the open subscriptions of one connection may hold, counted
    /// after parsing (values, and their entries in the live index); a REQ
    /// past it is CLOSED. Default 2,097,152 (2 MiB).
    pub max_subscription_bytes: usize,
    /// Longest subscription id, in characters. Default 64.
    pub max_subid_length: usize,
    /// Largest `limit` a filter gets (larger ones are clamped). Default 500.
    pub max_limit: usize,
    /// The `limit` of a filter that has none. Default 500.
    pub default_limit: usize,
    /// Time one REQ or COUNT may spend in the store, in milliseconds;
    /// past it the subscription is CLOSED with `error:`. Default 2,000.
    pub query_time_budget_ms: u64,
    /// Bytes queued for one client before it is disconnected as too slow.
    /// Default 8 MiB.
    pub max_outbound_bytes: usize,
    /// Open connections per client address (IPv6: per /64), counted from
    /// the TCP accept, before any HTTP is read. Default 64.
    pub max_connections_per_ip: usize,
    /// Open connections in all, counted from the TCP accept. Default 10,000
    /// (keep it below the process's file descriptor limit).
    pub max_connections: usize,
    /// Bytes per second the connections of one client address (IPv6: one
    /// /64) may send together; past the burst, the relay stops reading
    /// from them until they are back within it (TCP pushes back on the
    /// client). Default 1,048,576 (1 MiB/s).
    pub ingress_bytes_per_second: usize,
    /// Bytes one address may send at once before the rate applies.
    /// Default 4,194,304 (4 MiB).
    pub ingress_burst_bytes: usize,
    /// Store queries (REQ, COUNT) the connections of one address may have
    /// running at once; more wait their turn. Default 2.
    pub max_queries_per_ip: usize,
    /// Seconds a connection has to become a WebSocket; an HTTP request
    /// (NIP-11, /health, /metrics) must be done by then too. Default 10.
    pub handshake_timeout_secs: u64,
    /// Events per second one connection may publish (a token bucket).
    /// Default 100.
    pub events_per_second: f64,
    /// Events one connection may publish in a burst. Default 1,000.
    pub events_burst: f64,
    /// Seconds without any frame from the client (pongs count) before the
    /// connection is closed; the relay pings every third of it. Default 300.
    pub idle_timeout_secs: u64,
    /// How far in the future `created_at` may be, in seconds. Default 900.
    pub created_at_future_secs: u64,
    /// Most events a NIP-77 `NEG-OPEN` filter may match (strfry's
    /// `maxSyncEvents`); past it the relay answers `NEG-ERR` `blocked:`.
    /// Default 1,000,000.
    pub max_sync_events: usize,
    /// Largest negentropy message the relay sends, in bytes before hex
    /// (the protocol's frame size limit; 0 means none, else at least
    /// 4,096). Default 60,000, as strfry.
    pub sync_frame_bytes: usize,
    /// Open NIP-77 sync sessions per connection. Default 8.
    pub max_sync_sessions: usize,
    /// Items (an event's time and id, 40 bytes each) all open sync
    /// sessions of the relay may hold together; a `NEG-OPEN` past it gets
    /// `NEG-ERR` `blocked:` until others close. Default 20,000,000 (800 MB).
    pub max_sync_items_held: usize,
    /// Time a `NEG-OPEN` may spend reading its filter's events, in
    /// milliseconds. Default 30,000.
    pub sync_time_budget_ms: u64,
}

impl Default for RelayLimits {
    fn default() -> RelayLimits {
        RelayLimits {
            max_message_bytes: 131_072,
            max_event_bytes: 65_536,
            max_event_tags: 2_000,
            max_content_bytes: 65_536,
            max_subscriptions: 200,
            max_filters: 200,
            max_subscription_bytes: 2 << 20,
            max_subid_length: 64,
            max_limit: 500,
            default_limit: 500,
            query_time_budget_ms: 2_000,
            max_outbound_bytes: 8 << 20,
            max_connections_per_ip: 64,
            max_connections: 10_000,
            handshake_timeout_secs: 10,
            ingress_bytes_per_second: 1 << 20,
            ingress_burst_bytes: 4 << 20,
            max_queries_per_ip: 2,
            events_per_second: 100.0,
            events_burst: 1_000.0,
            idle_timeout_secs: 300,
            created_at_future_secs: 900,
            max_sync_events: 1_000_000,
            sync_frame_bytes: 60_000,
            max_sync_sessions: 8,
            max_sync_items_held: 20_000_000,
            sync_time_budget_ms: 30_000,
        }
    }
}

impl RelayLimits {
    /// Rejects settings that cannot work.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_message_bytes", self.max_message_bytes),
            ("max_event_bytes", self.max_event_bytes),
            ("max_subscriptions", self.max_subscriptions),
            ("max_filters", self.max_filters),
            ("max_subscription_bytes", self.max_subscription_bytes),
            ("max_subid_length", self.max_subid_length),
            ("max_limit", self.max_limit),
            ("max_outbound_bytes", self.max_outbound_bytes),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_connections", self.max_connections),
            ("ingress_bytes_per_second", self.ingress_bytes_per_second),
            ("ingress_burst_bytes", self.ingress_burst_bytes),
            ("max_queries_per_ip", self.max_queries_per_ip),
            ("max_sync_events", self.max_sync_events),
            ("max_sync_sessions", self.max_sync_sessions),
            ("max_sync_items_held", self.max_sync_items_held),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("limits.{name} must be at least 1"));
            }
        }
        if !(1..=3_600_000).contains(&self.query_time_budget_ms) {
            return Err("limits.query_time_budget_ms must be 1 to 3600000".to_string());
        }
        if !(1..=3_600_000).contains(&self.sync_time_budget_ms) {
            return Err("limits.sync_time_budget_ms must be 1 to 3600000".to_string());
        }
        if (1..4_096).contains(&self.sync_frame_bytes) {
            return Err(format!(
                "limits.sync_frame_bytes must be 0 (no limit) or at least 4096, got {}",
                self.sync_frame_bytes
            ));
        }
        if !(1..=3_600).contains(&self.handshake_timeout_secs) {
            return Err("limits.handshake_timeout_secs must be 1 to 3600".to_string());
        }
        if !(1..=86_400).contains(&self.idle_timeout_secs) {
            return Err("limits.idle_timeout_secs must be 1 to 86400".to_string());
        }
        if !(self.events_per_second > 0.0 && self.events_per_second.is_finite()) {
            return Err("limits.events_per_second must be a positive number".to_string());
        }
        if !(self.events_burst >= 1.0 && self.events_burst.is_finite()) {
            return Err("limits.events_burst must be at least 1".to_string());
        }
        if self.max_event_bytes > self.max_message_bytes {
            return Err(format!(
                "limits.max_event_bytes ({}) cannot exceed limits.max_message_bytes ({})",
                self.max_event_bytes, self.max_message_bytes
            ));
        }
        Ok(())
    }

    /// The store-side event limits these imply.
    pub fn event_limits(&self) -> megalith::Limits {
        megalith::Limits {
            max_event_bytes: self.max_event_bytes,
            max_tags: self.max_event_tags,
            max_content_bytes: self.max_content_bytes,
            ..megalith::Limits::default()
        }
    }

    pub fn sync_time_budget(&self) -> Duration {
        Duration::from_millis(self.sync_time_budget_ms)
    }

    pub fn query_time_budget(&self) -> Duration {
        Duration::from_millis(self.query_time_budget_ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(ServeConfig::from_toml("").unwrap(), ServeConfig::default());
    }

    #[test]
    fn every_section_parses() {
        let config = ServeConfig::from_toml(
            r#"
            data = "/srv/nostr"
            listen = "0.0.0.0:8080"
            shards = 4
            durability = "batch"
            search = true
            [info]
            name = "n"
            contact = "c"
            [limits]
            max_limit = 100
            events_per_second = 2.5
            idle_timeout_secs = 60
            "#,
        )
        .unwrap();
        assert_eq!(config.data, PathBuf::from("/srv/nostr"));
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.shards, Some(4));
        assert_eq!(config.durability, DurabilityName::Batch);
        assert_eq!(config.search, Some(true));
        assert_eq!(config.info.name, "n");
        assert_eq!(config.info.contact.as_deref(), Some("c"));
        assert_eq!(config.limits.max_limit, 100);
        assert_eq!(config.limits.events_per_second, 2.5);
        assert_eq!(
            config.limits.max_filters,
            RelayLimits::default().max_filters
        );
        assert_eq!(
            config.relay().limits.idle_timeout(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn the_feed_table_parses() {
        let config = ServeConfig::from_toml(
            "[feed]\nenabled = false\nrelays = [\"ws://127.0.0.1:9\"]\nmax_running = 3\n\
             start_burst = 4\nstart_every_secs = 0.5\nallow_private_relays = true\n",
        )
        .unwrap();
        assert_eq!(
            config.feed,
            FeedEntry {
                enabled: false,
                relays: vec!["ws://127.0.0.1:9".into()],
                max_running: 3,
                allow_private_relays: true,
                start_burst: 4,
                start_every_secs: 0.5,
            }
        );
        assert!(ServeConfig::default().feed.enabled);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, expect) in [
            ("lisen = \"x\"", "lisen"),
            ("[limits]\nmax_limit = -1", "max_limit"),
            ("[limits]\nmax_subscriptions = 0", "max_subscriptions"),
            ("[limits]\nevents_per_second = 0.0", "events_per_second"),
            ("[limits]\nmax_event_bytes = 200000", "max_event_bytes"),
            ("durability = \"often\"", "often"),
            ("trusted_proxies = [\"10.0.0.0/40\"]", "trusted_proxies"),
            (
                "[limits]\nhandshake_timeout_secs = 0",
                "handshake_timeout_secs",
            ),
            ("[feed]\nmax_running = 0", "max_running"),
            ("[feed]\nstart_every_secs = 0", "start_every_secs"),
            ("[feed]\nrelay = [\"wss://x\"]", "relay"),
        ] {
            let error = ServeConfig::from_toml(text).unwrap_err();
            assert!(error.contains(expect), "{text}: {error}");
        }
    }
}
