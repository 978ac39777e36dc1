//! Generated events placed on relays as their authors' relay lists say:
//! each author's events on the write relays of their newest kind 10002
//! among `urls`; profiles, contact lists and relay lists also (and authors
//! without a usable list only) on the first relay, where feed jobs start.

#![allow(dead_code)]

use std::collections::HashMap;

use megalith::{Event, Pubkey};
use megalith_ingest::feed::write_relays;

/// Each author's relays (indexes into `urls`), from their newest relay list.
pub fn homes(events: &[Event], urls: &[String]) -> HashMap<Pubkey, Vec<usize>> {
    let mut newest: HashMap<Pubkey, &Event> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == 10_002) {
        if newest
            .get(&e.pubkey)
            .is_none_or(|n| n.created_at <= e.created_at)
        {
            newest.insert(e.pubkey, e);
        }
    }
    newest
        .into_iter()
        .map(|(author, list)| {
            let relays = write_relays(list)
                .iter()
                .filter_map(|u| urls.iter().position(|x| x == u.as_str()))
                .collect();
            (author, relays)
        })
        .collect()
}

/// The relays (indexes) one event goes to.
pub fn relays_of(homes: &HashMap<Pubkey, Vec<usize>>, event: &Event) -> Vec<usize> {
    let mut to = homes.get(&event.pubkey).cloned().unwrap_or_default();
    if to.is_empty() || matches!(event.kind, 0 | 3 | 10_002) {
        to.push(0);
    }
    to.sort();
    to.dedup();
    to
}

/// Every event, on its relays: one list per URL.
pub fn place(events: &[Event], urls: &[String]) -> Vec<Vec<Event>> {
    let homes = homes(events, urls);
    let mut placed = vec![Vec::new(); urls.len()];
    for e in events {
        for r in relays_of(&homes, e) {
            placed[r].push(e.clone());
        }
    }
    placed
}
