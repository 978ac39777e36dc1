//! A brute-force reference store: NIP-01 replaceable and addressable
//! events, NIP-09 deletions, NIP-40 expiry on arrival and ephemeral kinds,
//! written from the NIPs with hash maps and full scans, sharing no code with
//! the engine's write path, indexes or planner (NIP-50 search terms come
//! from [`crate::search`], the tokenizer that defines them, which has its own
//! tests). `batchtest` and the differential tests check the engine's answers
//! against it.
//!
//! Inserts cost O(tags); a query scans every live event. Memory is the
//! owned events, so it suits the millions of events a test generates, not
//! a production store.

pub mod analytics;

use std::collections::{HashMap, HashSet};

use crate::event::{Event, EventId, KindClass, Pubkey};
use crate::query::Filter;

/// What the reference decided for one event; compare with
/// [`crate::InsertOutcome`] through [`RefOutcome::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefOutcome {
    Stored,
    Replaced,
    Duplicate,
    Superseded,
    Deleted,
    Ephemeral,
    Invalid,
}

impl RefOutcome {
    /// The reference's name for an engine outcome.
    pub fn of(outcome: &crate::InsertOutcome) -> RefOutcome {
        use crate::InsertOutcome as O;
        match outcome {
            O::Stored => RefOutcome::Stored,
            O::Replaced { .. } => RefOutcome::Replaced,
            O::Duplicate => RefOutcome::Duplicate,
            O::Superseded => RefOutcome::Superseded,
            O::Deleted => RefOutcome::Deleted,
            O::Ephemeral => RefOutcome::Ephemeral,
            O::Invalid(_) => RefOutcome::Invalid,
        }
    }
}

/// (kind, author, d): the slot a replaceable (d empty) or addressable event fills.
type Address = (u16, Pubkey, String);

/// The brute-force store.
#[derive(Debug, Default)]
pub struct Reference {
    /// Live events by slot; `None` once removed.
    events: Vec<Option<Event>>,
    slot_of: HashMap<EventId, usize>,
    /// The live version of each address.
    current: HashMap<Address, EventId>,
    /// (author, id) pairs some stored kind 5 of that author names in an `e` tag.
    deleted_ids: HashSet<(Pubkey, EventId)>,
    /// Per address, the newest `created_at` a deletion by its author names it up to.
    deleted_until: HashMap<Address, u64>,
    /// NIP-50 terms of each event, by slot (computed once, on insert).
    terms: Vec<Vec<String>>,
    live: usize,
    /// Per author, the newest honored NIP-62 request to vanish.
    vanished_until: HashMap<Pubkey, u64>,
    /// Relay URLs a request to vanish may name besides `ALL_RELAYS`.
    relay_urls: Vec<String>,
}

impl Reference {
    pub fn new() -> Reference {
        Reference::default()
    }

    /// A reference that honors NIP-62 requests naming `urls` (as
    /// `Options::relay_urls`).
    pub fn with_relay_urls(urls: Vec<String>) -> Reference {
        Reference {
            relay_urls: urls,
            ..Reference::default()
        }
    }

    /// Live events.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The live events, in no particular order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().flatten()
    }

    pub fn get(&self, id: &EventId) -> Option<&Event> {
        self.slot_of.get(id).and_then(|&s| self.events[s].as_ref())
    }

    /// Applies one event whose id and signature are already known to be
    /// good; `now` decides NIP-40 expiry.
    pub fn insert(&mut self, event: &Event, now: u64) -> RefOutcome {
        if event.expiration().is_some_and(|at| at <= now) {
            return RefOutcome::Invalid;
        }
        if KindClass::of(event.kind) == KindClass::Ephemeral {
            return RefOutcome::Ephemeral;
        }
        if self.get(&event.id).is_some() {
            return RefOutcome::Duplicate;
        }
        if event.kind != 5
            && event.kind != 62
            && self.deleted_ids.contains(&(event.pubkey, event.id))
        {
            return RefOutcome::Deleted;
        }
        if event.kind != 62
            && self
                .vanished_until
                .get(&event.pubkey)
                .is_some_and(|&until| event.created_at <= until)
        {
            return RefOutcome::Deleted;
        }
        let mut outcome = RefOutcome::Stored;
        if let Some(address) = address_of(event) {
            if self
                .deleted_until
                .get(&address)
                .is_some_and(|&until| until >= event.created_at)
            {
                return RefOutcome::Deleted;
            }
            if let Some(current) = self.current.get(&address).and_then(|id| self.get(id)) {
                let current_wins = current.created_at > event.created_at
                    || (current.created_at == event.created_at && current.id < event.id);
                if current_wins {
                    return RefOutcome::Superseded;
                }
                let id = current.id;
                self.remove(&id);
                outcome = RefOutcome::Replaced;
            }
            self.current.insert(address, event.id);
        }
        self.slot_of.insert(event.id, self.events.len());
        self.events.push(Some(event.clone()));
        self.terms.push(crate::search::owned_event_terms(event));
        self.live += 1;
        if event.kind == 5 {
            self.apply_deletion(event);
        }
        if event.kind == 62 && self.honors_vanish(event) {
            let until = self.vanished_until.entry(event.pubkey).or_insert(0);
            *until = (*until).max(event.created_at);
            let doomed: Vec<EventId> = self
                .events()
                .filter(|e| {
                    e.pubkey == event.pubkey && e.kind != 62 && e.created_at <= event.created_at
                })
                .map(|e| e.id)
                .collect();
            for id in doomed {
                self.remove(&id);
            }
        }
        outcome
    }

    /// NIP-62: a `relay` tag names `ALL_RELAYS` or one of the relay URLs
    /// (without a trailing `/`, any case).
    fn honors_vanish(&self, event: &Event) -> bool {
        let plain = |url: &str| url.trim_end_matches('/').to_ascii_lowercase();
        event.tags.iter().any(|tag| {
            tag.len() >= 2
                && tag[0] == "relay"
                && (tag[1] == "ALL_RELAYS"
                    || self.relay_urls.iter().any(|u| plain(u) == plain(&tag[1])))
        })
    }

    fn apply_deletion(&mut self, deletion: &Event) {
        for tag in &deletion.tags {
            match (tag.first().map(String::as_str), tag.get(1)) {
                (Some("e"), Some(value)) => {
                    let Ok(id) = EventId::from_hex(value) else {
                        continue;
                    };
                    self.deleted_ids.insert((deletion.pubkey, id));
                    let doomed = self.get(&id).is_some_and(|t| {
                        t.pubkey == deletion.pubkey && t.kind != 5 && t.kind != 62
                    });
                    if doomed {
                        self.remove(&id);
                    }
                }
                (Some("a"), Some(value)) => {
                    let Some(address) = parse_address(value) else {
                        continue;
                    };
                    if address.1 != deletion.pubkey {
                        continue;
                    }
                    let until = self.deleted_until.entry(address.clone()).or_insert(0);
                    *until = (*until).max(deletion.created_at);
                    let doomed = self
                        .current
                        .get(&address)
                        .and_then(|id| self.get(id))
                        .filter(|e| e.created_at <= deletion.created_at)
                        .map(|e| e.id);
                    if let Some(id) = doomed {
                        self.remove(&id);
                    }
                }
                _ => {}
            }
        }
    }

    fn remove(&mut self, id: &EventId) {
        if let Some(slot) = self.slot_of.remove(id)
            && let Some(event) = self.events[slot].take()
        {
            self.terms[slot] = Vec::new();
            self.live -= 1;
            if let Some(address) = address_of(&event)
                && self.current.get(&address) == Some(id)
            {
                self.current.remove(&address);
            }
        }
    }

    /// NIP-01 evaluation of several filters: union without duplicates,
    /// newest first, ties by lowest id, each filter's limit applied to that
    /// filter. Events expired at `now` are left out.
    pub fn query(&self, filters: &[Filter], now: u64) -> Vec<&Event> {
        let mut out: Vec<&Event> = Vec::new();
        let mut seen = HashSet::new();
        for filter in filters {
            let mut matching: Vec<&Event> = self.matching(filter, now).collect();
            matching.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
            if let Some(limit) = filter.limit {
                matching.truncate(limit);
            }
            out.extend(matching.into_iter().filter(|e| seen.insert(e.id)));
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        out
    }

    /// NIP-45: events matching any filter; limits ignored.
    pub fn count(&self, filters: &[Filter], now: u64) -> u64 {
        let mut ids = HashSet::new();
        for filter in filters {
            ids.extend(self.matching(filter, now).map(|e| e.id));
        }
        ids.len() as u64
    }

    /// The live events `filter` matches at `now`, limit aside.
    fn matching<'a>(
        &'a self,
        filter: &Filter,
        now: u64,
    ) -> impl Iterator<Item = &'a Event> + use<'a> {
        let query_terms = filter.search.as_deref().map(crate::search::query_terms);
        let unsearched = Filter {
            search: None,
            ..filter.clone()
        };
        self.events
            .iter()
            .zip(&self.terms)
            .filter_map(move |(event, terms)| {
                let event = event.as_ref()?;
                let found = matches(&unsearched, event)
                    && event.expiration().is_none_or(|at| at > now)
                    && query_terms.as_ref().is_none_or(|wanted| {
                        crate::search::is_searchable(event.kind)
                            && crate::search::terms_match(terms, wanted)
                    });
                found.then_some(event)
            })
    }
}

/// The address an event fills, if it is replaceable or addressable.
fn address_of(event: &Event) -> Option<Address> {
    match KindClass::of(event.kind) {
        KindClass::Replaceable => Some((event.kind, event.pubkey, String::new())),
        KindClass::Addressable => Some((event.kind, event.pubkey, event.d_tag().to_string())),
        _ => None,
    }
}

/// `kind:pubkey:d` in its one canonical spelling (decimal kind without
/// leading zeros, lowercase hex pubkey, the second colon always there, `d`
/// empty for replaceable kinds); anything else names nothing.
fn parse_address(value: &str) -> Option<Address> {
    let mut parts = value.splitn(3, ':');
    let kind_text = parts.next()?;
    let kind: u16 = kind_text.parse().ok()?;
    if kind.to_string() != kind_text {
        return None;
    }
    let pubkey_text = parts.next()?;
    if pubkey_text.len() != 64 || pubkey_text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let pubkey = Pubkey::from_hex(pubkey_text).ok()?;
    let d = parts.next()?;
    match KindClass::of(kind) {
        KindClass::Replaceable if d.is_empty() => Some((kind, pubkey, String::new())),
        KindClass::Addressable => Some((kind, pubkey, d.to_string())),
        _ => None,
    }
}

/// NIP-01 filter matching, on the owned event, from the spec.
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
            crate::search::is_searchable(event.kind)
                && crate::search::terms_match(
                    &crate::search::owned_event_terms(event),
                    &crate::search::query_terms(search),
                )
        })
}
