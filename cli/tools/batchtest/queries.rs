//! Query shapes a relay and a feed really send, with parameters drawn from
//! the events the reference holds, so most queries find something.

use std::collections::BTreeMap;

use megalith::reference::Reference;
use megalith::search::{SEARCHABLE_KINDS, owned_event_terms};
use megalith::{Event, EventId, Filter, Pubkey};

/// A shape's name and how it is answered.
#[derive(Debug, Clone)]
pub struct Query {
    pub shape: &'static str,
    pub filters: Vec<Filter>,
    /// NIP-45 COUNT rather than REQ.
    pub count: bool,
}

/// Every shape, in the order reports list them.
pub const SHAPES: [&str; 13] = [
    "ids",
    "author_feed",
    "follow_feed",
    "follow_feed_until",
    "kind",
    "reactions",
    "mentions",
    "hashtag",
    "address",
    "time_range",
    "union",
    "count_reactions",
    "count_author",
];

/// NIP-50 search shapes, added to the mix by `--search`.
pub const SEARCH_SHAPES: [&str; 4] = ["search", "search_words", "search_video", "count_search"];

/// Draws queries from a snapshot of the reference's events.
pub struct Sampler<'r> {
    events: Vec<&'r Event>,
    /// Positions in `events` by kind, for drawing an event of one kind.
    by_kind: BTreeMap<u16, Vec<usize>>,
    authors: Vec<Pubkey>,
    state: u64,
}

impl<'r> Sampler<'r> {
    pub fn new(reference: &'r Reference, seed: u64) -> Sampler<'r> {
        let mut events: Vec<&Event> = reference.events().collect();
        // The reference's order is its insertion order less removals; sorting
        // makes draws independent of how it stores them.
        events.sort_by_key(|e| e.id);
        let mut by_kind: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, event) in events.iter().enumerate() {
            by_kind.entry(event.kind).or_default().push(i);
        }
        let mut authors: Vec<Pubkey> = events.iter().map(|e| e.pubkey).collect();
        authors.sort_unstable();
        authors.dedup();
        Sampler {
            events,
            by_kind,
            authors,
            state: seed,
        }
    }

    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A random stored event of one of `kinds`, or of any kind.
    fn event(&mut self, kinds: &[u16]) -> Option<&'r Event> {
        if kinds.is_empty() {
            if self.events.is_empty() {
                return None;
            }
            let at = self.below(self.events.len());
            return Some(self.events[at]);
        }
        let total: usize = kinds
            .iter()
            .filter_map(|k| self.by_kind.get(k))
            .map(Vec::len)
            .sum();
        if total == 0 {
            return None;
        }
        let mut at = self.below(total);
        for positions in kinds.iter().filter_map(|k| self.by_kind.get(k)) {
            if at < positions.len() {
                return Some(self.events[positions[at]]);
            }
            at -= positions.len();
        }
        None
    }

    /// An id no event has (with overwhelming probability).
    fn missing_id(&mut self) -> EventId {
        let mut id = [0u8; 32];
        for chunk in id.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        EventId(id)
    }

    fn author(&mut self) -> Pubkey {
        if self.authors.is_empty() {
            return Pubkey([1; 32]);
        }
        let at = self.below(self.authors.len());
        self.authors[at]
    }

    /// An active author: the author of a random note, so authors are drawn
    /// in proportion to how much they write.
    fn active_author(&mut self) -> Pubkey {
        self.event(&[1])
            .map(|e| e.pubkey)
            .unwrap_or_else(|| self.author())
    }

    fn tag_value(&mut self, kinds: &[u16], letter: &str) -> Option<String> {
        for _ in 0..20 {
            let event = self.event(kinds)?;
            let values: Vec<&String> = event
                .tags
                .iter()
                .filter(|t| t.len() >= 2 && t[0] == letter)
                .map(|t| &t[1])
                .collect();
            if !values.is_empty() {
                let at = self.below(values.len());
                return Some(values[at].clone());
            }
        }
        None
    }

    /// A follow list of up to 500 authors: a stored contact list's, topped
    /// up with random authors.
    fn follows(&mut self) -> Vec<Pubkey> {
        let mut follows: Vec<Pubkey> = self
            .event(&[3])
            .map(|e| {
                e.tags
                    .iter()
                    .filter(|t| t.len() >= 2 && t[0] == "p")
                    .filter_map(|t| Pubkey::from_hex(&t[1]).ok())
                    .take(500)
                    .collect()
            })
            .unwrap_or_default();
        while follows.len() < 500.min(self.authors.len()) {
            follows.push(self.author());
        }
        follows.sort_unstable();
        follows.dedup();
        follows
    }

    /// A search string of `words` terms of one random searchable event of
    /// `kinds` (any searchable kind when empty), so the search finds it.
    fn search_words(&mut self, kinds: &[u16], words: usize) -> String {
        let kinds = if kinds.is_empty() {
            &SEARCHABLE_KINDS[..]
        } else {
            kinds
        };
        for _ in 0..20 {
            let Some(event) = self.event(kinds) else {
                break;
            };
            let terms = owned_event_terms(event);
            if terms.is_empty() {
                continue;
            }
            let picked: Vec<&str> = (0..words)
                .map(|_| terms[self.below(terms.len())].as_str())
                .collect();
            return picked.join(" ");
        }
        "nothing".to_string()
    }

    fn time(&mut self) -> u64 {
        self.event(&[]).map_or(0, |e| e.created_at)
    }

    /// One query of `shape`.
    pub fn query(&mut self, shape: &'static str) -> Query {
        let mut count = false;
        let filters = match shape {
            "ids" => {
                let ids: Vec<EventId> = (0..1 + self.below(5))
                    .map(|_| match self.event(&[]) {
                        // One in five asks for an id nobody stored.
                        Some(e) if self.below(5) > 0 => e.id,
                        _ => self.missing_id(),
                    })
                    .collect();
                vec![Filter::new().ids(ids)]
            }
            "author_feed" => {
                let author = self.active_author();
                vec![Filter::new().authors([author]).kinds([1]).limit(50)]
            }
            "follow_feed" => {
                vec![Filter::new().authors(self.follows()).kinds([1]).limit(100)]
            }
            "follow_feed_until" => {
                let until = self.time();
                vec![
                    Filter::new()
                        .authors(self.follows())
                        .kinds([1])
                        .until(until)
                        .limit(100),
                ]
            }
            "kind" => {
                let kinds = [0u16, 1, 3, 6, 7, 16, 1111, 10002, 34235, 34236, 5];
                let kind = kinds[self.below(kinds.len())];
                vec![Filter::new().kinds([kind]).limit(100)]
            }
            "reactions" => {
                let note = self.tag_value(&[7], "e").unwrap_or_default();
                vec![Filter::new().kinds([7]).tag('e', [note]).limit(500)]
            }
            "mentions" => {
                let who = self.tag_value(&[1, 7, 1111], "p").unwrap_or_default();
                vec![Filter::new().tag('p', [who]).limit(100)]
            }
            "hashtag" => {
                let tag = self.tag_value(&[1, 34235, 34236], "t").unwrap_or_default();
                vec![Filter::new().tag('t', [tag]).limit(100)]
            }
            "address" => match self.event(&[34235, 34236, 30023]) {
                Some(video) => vec![
                    Filter::new()
                        .kinds([video.kind])
                        .authors([video.pubkey])
                        .tag('d', [video.d_tag().to_string()]),
                ],
                None => vec![Filter::new().kinds([34235]).tag('d', ["none".to_string()])],
            },
            "time_range" => {
                let since = self.time();
                let span = 1 + self.below(3_600) as u64;
                vec![Filter::new().since(since).until(since + span).limit(200)]
            }
            "union" => {
                let author = self.active_author();
                let note = self.tag_value(&[7], "e").unwrap_or_default();
                vec![
                    Filter::new().authors([author]).limit(20),
                    Filter::new().kinds([7, 1111]).tag('e', [note]).limit(100),
                    Filter::new().kinds([0]).authors([author]),
                ]
            }
            "count_reactions" => {
                count = true;
                let note = self.tag_value(&[7], "e").unwrap_or_default();
                vec![Filter::new().kinds([7]).tag('e', [note])]
            }
            "count_author" => {
                count = true;
                vec![Filter::new().authors([self.active_author()])]
            }
            "search" => vec![Filter::new().search(self.search_words(&[], 1)).limit(50)],
            "search_words" => {
                let words = 2 + self.below(2);
                vec![
                    Filter::new()
                        .search(self.search_words(&[1], words))
                        .limit(50),
                ]
            }
            "search_video" => vec![
                Filter::new()
                    .kinds([34235, 34236])
                    .search(self.search_words(&[34235, 34236], 1))
                    .limit(20),
            ],
            "count_search" => {
                count = true;
                vec![Filter::new().kinds([1]).search(self.search_words(&[1], 2))]
            }
            other => unreachable!("unknown shape {other}"),
        };
        Query {
            shape,
            filters,
            count,
        }
    }
}
