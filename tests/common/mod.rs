//! Shared test support: a deterministic event generator and a brute-force
//! NIP-01 / NIP-09 reference model, written independently of the engine so
//! that differential tests can catch the engine's mistakes.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use megalith::{Event, EventId, Filter, InsertOutcome, Keys, Pubkey};

/// SplitMix64: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub const BASE_TIME: u64 = 1_700_000_000;
pub const TOPICS: [&str; 6] = ["nostr", "bitcoin", "rust", "art", "music", "zaps"];

/// Generates a stream of signed events with many collisions: few distinct
/// timestamps, replaceable and addressable versions, deletions (by `e` and
/// `a`), reactions, duplicates, ephemeral and already-expired events.
pub struct Generator {
    pub rng: Rng,
    pub keys: Vec<Keys>,
    pub produced: Vec<Event>,
    pub d_values: Vec<String>,
}

impl Generator {
    pub fn new(seed: u64, authors: usize) -> Generator {
        let keys = (0..authors as u64)
            .map(|i| Keys::from_seed(seed.wrapping_mul(1000).wrapping_add(i)))
            .collect();
        let d_values = vec![
            String::new(),
            "a".into(),
            "b".into(),
            "article:one".into(),
            "x".repeat(40), // longer than a key slot: hashed
            "y".repeat(40),
        ];
        Generator {
            rng: Rng::new(seed),
            keys,
            produced: Vec::new(),
            d_values,
        }
    }

    pub fn pubkeys(&self) -> Vec<Pubkey> {
        self.keys.iter().map(Keys::pubkey).collect()
    }

    fn time(&mut self) -> u64 {
        // ~3,000 distinct seconds for tens of thousands of events: many ties.
        BASE_TIME + self.rng.below(3000)
    }

    fn earlier_event(&mut self) -> Option<Event> {
        if self.produced.is_empty() {
            return None;
        }
        let i = self.rng.below(self.produced.len() as u64) as usize;
        Some(self.produced[i].clone())
    }

    pub fn next_event(&mut self) -> Event {
        // Now and then, send an earlier event again (duplicate, or refused
        // because it was replaced or deleted meanwhile).
        if self.rng.chance(3)
            && let Some(again) = self.earlier_event()
        {
            return again;
        }
        let author = self.rng.below(self.keys.len() as u64) as usize;
        let created_at = self.time();
        let roll = self.rng.below(100);
        let mut tags: Vec<Vec<String>> = Vec::new();
        let (kind, content) = match roll {
            0..=39 => {
                for _ in 0..self.rng.below(3) {
                    tags.push(vec!["t".into(), self.rng.pick(&TOPICS).to_string()]);
                }
                if self.rng.chance(30) {
                    let p = self.keys[self.rng.below(self.keys.len() as u64) as usize].pubkey();
                    tags.push(vec!["p".into(), p.to_hex()]);
                }
                if self.rng.chance(20)
                    && let Some(target) = self.earlier_event()
                {
                    tags.push(vec![
                        "e".into(),
                        target.id.to_hex(),
                        String::new(),
                        "reply".into(),
                    ]);
                }
                (
                    1,
                    format!("note {} \"quoted\" \\ \n line", self.rng.next_u64()),
                )
            }
            40..=54 => {
                if let Some(target) = self.earlier_event() {
                    tags.push(vec!["e".into(), target.id.to_hex()]);
                    tags.push(vec!["p".into(), target.pubkey.to_hex()]);
                    // The same pubkey twice: must be indexed (and found) once.
                    if self.rng.chance(20) {
                        tags.push(vec!["p".into(), target.pubkey.to_hex()]);
                    }
                }
                (7, "+".to_string())
            }
            55..=59 => (0, format!("{{\"name\":\"user {}\"}}", self.rng.below(1000))),
            60..=62 => {
                for _ in 0..self.rng.below(5) {
                    let p = self.keys[self.rng.below(self.keys.len() as u64) as usize].pubkey();
                    tags.push(vec!["p".into(), p.to_hex()]);
                }
                (3, String::new())
            }
            63..=64 => (10002, String::new()),
            65..=74 => {
                let d = self.rng.pick(&self.d_values).clone();
                if !(d.is_empty() && self.rng.chance(50)) {
                    tags.push(vec!["d".into(), d]);
                }
                tags.push(vec!["t".into(), self.rng.pick(&TOPICS).to_string()]);
                (30023, format!("article body {}", self.rng.next_u64()))
            }
            75..=81 => {
                // Deletions: mostly of the author's own events, sometimes of others'.
                for _ in 0..1 + self.rng.below(3) {
                    if let Some(target) = self.earlier_event() {
                        tags.push(vec!["e".into(), target.id.to_hex()]);
                    }
                }
                if self.rng.chance(40) {
                    let d = self.rng.pick(&self.d_values).clone();
                    let who = if self.rng.chance(80) {
                        author
                    } else {
                        self.rng.below(self.keys.len() as u64) as usize
                    };
                    let kind = if self.rng.chance(70) { 30023 } else { 0 };
                    tags.push(vec![
                        "a".into(),
                        format!("{kind}:{}:{d}", self.keys[who].pubkey().to_hex()),
                    ]);
                }
                (5, String::new())
            }
            82..=83 => (20001, "ephemeral".to_string()),
            84..=88 => {
                if let Some(target) = self.earlier_event() {
                    tags.push(vec!["e".into(), target.id.to_hex()]);
                    tags.push(vec!["k".into(), target.kind.to_string()]);
                }
                (6, String::new())
            }
            89..=90 => {
                // NIP-40: far in the future (kept) or already past (refused).
                let at = if self.rng.chance(50) {
                    4_000_000_000u64
                } else {
                    1_000
                };
                tags.push(vec!["expiration".into(), at.to_string()]);
                (1, "expiring".to_string())
            }
            _ => {
                tags.push(vec!["E".into(), "f".repeat(64)]);
                tags.push(vec!["t".into(), self.rng.pick(&TOPICS).to_string()]);
                (1111, "comment".to_string())
            }
        };
        // Deletions name the author's own events most of the time.
        let keys = if kind == 5 && self.rng.chance(70) {
            self.produced
                .iter()
                .rev()
                .find(|e| tags.iter().any(|t| t.get(1) == Some(&e.id.to_hex())))
                .and_then(|e| self.keys.iter().find(|k| k.pubkey() == e.pubkey))
                .unwrap_or(&self.keys[author])
                .clone()
        } else {
            self.keys[author].clone()
        };
        let event = keys.sign(created_at, kind, tags, content);
        self.produced.push(event.clone());
        event
    }

    /// A random filter over the generated data, biased so results are often non-empty.
    pub fn filter(&mut self) -> Filter {
        let mut filter = Filter::new();
        let pubkeys = self.pubkeys();
        let shape = self.rng.below(10);
        if shape == 0 {
            let ids: Vec<EventId> = (0..1 + self.rng.below(6))
                .map(|_| self.earlier_event().map_or(EventId([7; 32]), |e| e.id))
                .collect();
            filter = filter.ids(ids);
        }
        if self.rng.chance(45) {
            let authors: Vec<Pubkey> = (0..1 + self.rng.below(12))
                .map(|_| *self.rng.pick(&pubkeys))
                .collect();
            filter = filter.authors(authors);
        }
        if self.rng.chance(50) {
            let choices = [0u16, 1, 3, 5, 6, 7, 1111, 10002, 20001, 30023];
            let kinds: Vec<u16> = (0..1 + self.rng.below(3))
                .map(|_| *self.rng.pick(&choices))
                .collect();
            filter = filter.kinds(kinds);
        }
        if self.rng.chance(30) {
            match self.rng.below(5) {
                0 => {
                    let values: Vec<String> = (0..1 + self.rng.below(3))
                        .map(|_| {
                            self.earlier_event()
                                .map_or("0".repeat(64), |e| e.id.to_hex())
                        })
                        .collect();
                    filter = filter.tag('e', values);
                }
                1 => {
                    let values: Vec<String> = (0..1 + self.rng.below(3))
                        .map(|_| self.rng.pick(&pubkeys).to_hex())
                        .collect();
                    filter = filter.tag('p', values);
                }
                2 => {
                    let values: Vec<String> = (0..1 + self.rng.below(2))
                        .map(|_| self.rng.pick(&TOPICS).to_string())
                        .collect();
                    filter = filter.tag('t', values);
                }
                3 => {
                    let values: Vec<String> = (0..1 + self.rng.below(2))
                        .map(|_| self.rng.pick(&self.d_values).clone())
                        .collect();
                    filter = filter.tag('d', values);
                }
                _ => {
                    filter = filter
                        .tag('t', [self.rng.pick(&TOPICS).to_string()])
                        .tag('p', [self.rng.pick(&pubkeys).to_hex()]);
                }
            }
        }
        if self.rng.chance(30) {
            filter = filter.since(BASE_TIME + self.rng.below(3000));
        }
        if self.rng.chance(30) {
            filter = filter.until(BASE_TIME + self.rng.below(3000));
        }
        if self.rng.chance(70) {
            filter = filter.limit(self.rng.below(120) as usize);
        }
        if self.rng.chance(3) {
            filter = filter.kinds([]);
        }
        filter
    }
}

/// What the reference model decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOutcome {
    Stored,
    Replaced,
    Duplicate,
    Superseded,
    Deleted,
    Ephemeral,
    Invalid,
}

/// A brute-force NIP-01 / NIP-09 / NIP-40 store: a list of live events.
#[derive(Default)]
pub struct Model {
    pub live: HashMap<EventId, Event>,
    /// Every stored kind 5, in arrival order (they are never removed).
    deletions: Vec<Event>,
}

fn is_replaceable(kind: u16) -> bool {
    kind == 0 || kind == 3 || (10000..20000).contains(&kind)
}

fn is_addressable(kind: u16) -> bool {
    (30000..40000).contains(&kind)
}

fn tag_value<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event
        .tags
        .iter()
        .find(|t| t.first().map(String::as_str) == Some(name))
        .and_then(|t| t.get(1))
        .map(String::as_str)
}

/// (kind, pubkey hex, d) for replaceable and addressable events.
fn address(kind: u16, pubkey: &str, d: &str) -> Option<(u16, String, String)> {
    if is_replaceable(kind) {
        Some((kind, pubkey.to_string(), String::new()))
    } else if is_addressable(kind) {
        Some((kind, pubkey.to_string(), d.to_string()))
    } else {
        None
    }
}

fn event_address(event: &Event) -> Option<(u16, String, String)> {
    address(
        event.kind,
        &event.pubkey.to_hex(),
        tag_value(event, "d").unwrap_or(""),
    )
}

fn newer(a: &Event, b: &Event) -> bool {
    a.created_at > b.created_at || (a.created_at == b.created_at && a.id < b.id)
}

impl Model {
    pub fn insert(&mut self, event: &Event, now: u64) -> ModelOutcome {
        if let Some(exp) = tag_value(event, "expiration").and_then(|v| v.parse::<u64>().ok())
            && exp <= now
        {
            return ModelOutcome::Invalid;
        }
        if (20000..30000).contains(&event.kind) {
            return ModelOutcome::Ephemeral;
        }
        if self.live.contains_key(&event.id) {
            return ModelOutcome::Duplicate;
        }
        let id_hex = event.id.to_hex();
        // A deletion request naming a deletion request has no effect.
        let deleted_by_id = event.kind != 5
            && self.deletions.iter().any(|d| {
                d.pubkey == event.pubkey
                    && d.tags.iter().any(|t| {
                        t.first().map(String::as_str) == Some("e") && t.get(1) == Some(&id_hex)
                    })
            });
        if deleted_by_id {
            return ModelOutcome::Deleted;
        }
        let mut outcome = ModelOutcome::Stored;
        if let Some(addr) = event_address(event) {
            let deleted_by_address = self.deletions.iter().any(|d| {
                d.pubkey == event.pubkey
                    && d.created_at >= event.created_at
                    && d.tags.iter().any(|t| {
                        t.first().map(String::as_str) == Some("a")
                            && t.get(1).and_then(|v| parse_address(v)) == Some(addr.clone())
                    })
            });
            if deleted_by_address {
                return ModelOutcome::Deleted;
            }
            let current: Vec<Event> = self
                .live
                .values()
                .filter(|e| event_address(e) == Some(addr.clone()))
                .cloned()
                .collect();
            assert!(
                current.len() <= 1,
                "the model keeps one version per address"
            );
            if let Some(current) = current.first() {
                if newer(current, event) {
                    return ModelOutcome::Superseded;
                }
                self.live.remove(&current.id);
                outcome = ModelOutcome::Replaced;
            }
        }
        self.live.insert(event.id, event.clone());
        if event.kind == 5 {
            self.deletions.push(event.clone());
            for tag in &event.tags {
                match (tag.first().map(String::as_str), tag.get(1)) {
                    (Some("e"), Some(v)) => {
                        let target = EventId::from_hex(v)
                            .ok()
                            .and_then(|id| self.live.get(&id))
                            .cloned();
                        if let Some(target) = target
                            && target.pubkey == event.pubkey
                            && target.kind != 5
                        {
                            self.live.remove(&target.id);
                        }
                    }
                    (Some("a"), Some(v)) => {
                        if let Some(addr) = parse_address(v)
                            && addr.1 == event.pubkey.to_hex()
                        {
                            let doomed: Vec<EventId> = self
                                .live
                                .values()
                                .filter(|e| {
                                    event_address(e) == Some(addr.clone())
                                        && e.created_at <= event.created_at
                                })
                                .map(|e| e.id)
                                .collect();
                            for id in doomed {
                                self.live.remove(&id);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        outcome
    }

    /// The operator removed `id` (`EventStore::purge`): it is gone, and a
    /// removed deletion request no longer keeps what it named out.
    pub fn purge(&mut self, id: &EventId) {
        self.live.remove(id);
        self.deletions.retain(|d| d.id != *id);
    }

    /// NIP-01 evaluation of several filters: union, newest first, ties by
    /// lowest id, each filter's limit applied to that filter.
    pub fn query(&self, filters: &[Filter]) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        let mut seen = HashSet::new();
        for filter in filters {
            let mut matching: Vec<&Event> =
                self.live.values().filter(|e| matches(filter, e)).collect();
            matching.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
            if let Some(limit) = filter.limit {
                matching.truncate(limit);
            }
            for e in matching {
                if seen.insert(e.id) {
                    out.push(e.clone());
                }
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        out
    }

    pub fn count(&self, filters: &[Filter]) -> u64 {
        self.live
            .values()
            .filter(|e| filters.iter().any(|f| matches(f, e)))
            .count() as u64
    }
}

fn parse_address(value: &str) -> Option<(u16, String, String)> {
    let mut parts = value.splitn(3, ':');
    let kind_text = parts.next()?;
    let kind: u16 = kind_text.parse().ok()?;
    if kind.to_string() != kind_text {
        return None; // only the canonical spelling names an address
    }
    let pubkey = parts.next()?;
    if pubkey.len() != 64
        || !pubkey
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let d = parts.next()?; // `kind:pubkey:` keeps its colon even when d is empty
    if is_replaceable(kind) && !d.is_empty() {
        return None; // a replaceable event's address has an empty d
    }
    address(kind, pubkey, d)
}

/// NIP-01 filter matching written from the spec.
pub fn matches(filter: &Filter, event: &Event) -> bool {
    filter
        .ids
        .as_ref()
        .is_none_or(|ids| ids.contains(&event.id))
        && filter
            .authors
            .as_ref()
            .is_none_or(|a| a.contains(&event.pubkey))
        && filter
            .kinds
            .as_ref()
            .is_none_or(|k| k.contains(&event.kind))
        && filter.since.is_none_or(|s| event.created_at >= s)
        && filter.until.is_none_or(|u| event.created_at <= u)
        && filter.tags.iter().all(|(letter, values)| {
            event
                .tags
                .iter()
                .any(|t| t.len() >= 2 && t[0].as_bytes() == [*letter] && values.contains(&t[1]))
        })
        && filter.search.as_ref().is_none_or(|search| {
            megalith::search::is_searchable(event.kind)
                && megalith::search::terms_match(
                    &megalith::search::owned_event_terms(event),
                    &megalith::search::query_terms(search),
                )
        })
}

/// The repository's root: the crate's directory, or the nearest one above
/// it that holds `tests/common` (these helpers serve every crate's tests).
pub fn repo_root() -> std::path::PathBuf {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .find(|dir| dir.join("tests/common/mod.rs").is_file())
        .unwrap_or(crate_dir)
        .to_path_buf()
}

/// The real events shipped in `../shared/data/nostrdb-testdata/` (the 720
/// one-a-line events), with the original JSON object text of each.
pub fn real_events() -> Vec<(String, Event)> {
    let dir = repo_root().join("../shared/data/nostrdb-testdata");
    let files = [
        "test_counts.json",
        "profiles.json",
        "contacts.json",
        "reactions.json",
        "random.json",
        "search.json",
        "old-new.json",
        "profile-updates.json",
    ];
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = match &value {
                serde_json::Value::Array(items) => items.last().unwrap().clone(),
                other => other.clone(),
            };
            let json = object.to_string();
            let event = Event::from_json(&json).unwrap_or_else(|e| panic!("{file}: {e}"));
            out.push((json, event));
        }
    }
    out
}
pub mod crash;
pub mod model_run;
pub mod video_stream;

/// The model's name for what the store answered.
pub fn outcome_kind(outcome: &InsertOutcome) -> ModelOutcome {
    match outcome {
        InsertOutcome::Stored => ModelOutcome::Stored,
        InsertOutcome::Replaced { .. } => ModelOutcome::Replaced,
        InsertOutcome::Duplicate => ModelOutcome::Duplicate,
        InsertOutcome::Superseded => ModelOutcome::Superseded,
        InsertOutcome::Deleted => ModelOutcome::Deleted,
        InsertOutcome::Ephemeral => ModelOutcome::Ephemeral,
        other => {
            assert!(
                matches!(other, InsertOutcome::Invalid(_)),
                "unexpected outcome {other:?}"
            );
            ModelOutcome::Invalid
        }
    }
}

/// Seconds since the Unix epoch, as the store's clock reads them.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The ids of every event `store` holds, sorted.
pub fn stored_ids(store: &megalith::EventStore) -> Vec<EventId> {
    let mut ids: Vec<EventId> = store
        .query(&[Filter::new()])
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.sort();
    ids
}

/// A benchmark test's size from the environment (`default` when unset or
/// not a number).
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0 to 1) of sorted latencies (zero for none).
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}
