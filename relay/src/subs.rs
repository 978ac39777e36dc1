//! Open subscriptions, indexed for live delivery: each filter is filed
//! under one thing an event must have to match it (one of its ids, authors,
//! tag values or kinds, in that order of preference), so a new event only
//! meets the filters filed under its id, author, kind or tag values, plus
//! the few that name none of these. Each candidate filter is then checked in
//! full.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use megalith::event::{EventId, EventRef, Pubkey};
use megalith::{Committed, Filter};

use super::auth::Viewer;
use super::outbox::Outbox;

/// A subscription's key in the index (unique for the relay's life).
pub type SubKey = u64;

/// Where a subscription stands.
#[derive(Debug)]
pub enum SubState {
    /// Its stored events are being sent: live events wait here (sent after
    /// EOSE, less those already sent).
    Pending(Vec<Committed>),
    /// Live events go straight to the connection.
    Live,
    /// Closed or replaced.
    Closed,
}

/// One open REQ.
#[derive(Debug)]
pub struct LiveSub {
    pub key: SubKey,
    /// The subscription id as a JSON string.
    pub sub_json: String,
    pub filters: Vec<Filter>,
    /// The store's commit sequence when this was registered: events up to
    /// it were committed before the REQ and are never live.
    pub after: u64,
    /// The commit sequence of the state the stored part read (set before
    /// the subscription goes live): stored events up to it were the stored
    /// part's to answer, or to leave out past its limit.
    pub stored_through: AtomicU64,
    pub outbox: Arc<Outbox>,
    /// Who the connection proved to be (NIP-42): private events go only
    /// to their author or a recipient.
    pub viewer: Arc<Viewer>,
    pub state: Mutex<SubState>,
}

impl LiveSub {
    /// Whether a committed event, matching this subscription's filters,
    /// is one to deliver live: committed after registration, and, if
    /// stored, after the state the stored part read. (An ephemeral event is
    /// never in a stored part.)
    pub fn wants(&self, sequence: u64, ephemeral: bool) -> bool {
        sequence > self.after
            && (ephemeral || sequence > self.stored_through.load(Ordering::Acquire))
    }
}

/// Most live events a pending subscription holds while its stored events
/// are sent; past it the connection is treated as too slow.
pub const MAX_PENDING: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Entry {
    sub: SubKey,
    filter: u32,
}

/// The entries filed under one value. A set, so taking one subscription out
/// costs the same however many others share the value.
type Entries = HashSet<Entry>;

/// The subscriptions of every connection.
#[derive(Debug, Default)]
pub struct SubIndex {
    subs: HashMap<SubKey, Arc<LiveSub>>,
    by_id: HashMap<EventId, Entries>,
    by_author: HashMap<Pubkey, Entries>,
    by_kind: HashMap<u16, Entries>,
    by_tag: HashMap<u8, HashMap<String, Entries>>,
    any: Entries,
}

/// The field a filter is filed under.
enum Anchor<'f> {
    Ids(&'f [EventId]),
    Authors(&'f [Pubkey]),
    Tag(u8, &'f [String]),
    Kinds(&'f [u16]),
    Any,
}

fn anchor(filter: &Filter) -> Anchor<'_> {
    if let Some(ids) = &filter.ids {
        return Anchor::Ids(ids);
    }
    if let Some(authors) = &filter.authors {
        return Anchor::Authors(authors);
    }
    // The tag with the fewest values: the most selective guess.
    if let Some((letter, values)) = filter.tags.iter().min_by_key(|(_, values)| values.len()) {
        return Anchor::Tag(*letter, values);
    }
    if let Some(kinds) = &filter.kinds {
        return Anchor::Kinds(kinds);
    }
    Anchor::Any
}

/// Bytes a set of filters holds once parsed and filed in the index (an
/// estimate from the sizes of what is stored: values, their `String` and
/// hash table slots, the index entries). What a connection's budget of
/// subscription bytes counts.
pub fn held_bytes(filters: &[Filter]) -> usize {
    /// A hash table slot with its entry set, per distinct value filed.
    const FILED: usize = 96;
    fn distinct<T: std::hash::Hash + Eq>(values: &[T]) -> usize {
        values.iter().collect::<HashSet<_>>().len()
    }
    let mut bytes = 0usize;
    for filter in filters {
        bytes += std::mem::size_of::<Filter>() + 64;
        if let Some(ids) = &filter.ids {
            bytes += ids.len() * 32 + distinct(ids) * FILED;
        }
        if let Some(authors) = &filter.authors {
            bytes += authors.len() * 32 + distinct(authors) * FILED;
        }
        if let Some(kinds) = &filter.kinds {
            bytes += kinds.len() * 2 + distinct(kinds) * FILED;
        }
        for values in filter.tags.values() {
            bytes += 48 + values.iter().map(|v| v.len() + 24).sum::<usize>();
            bytes += distinct(values) * FILED;
        }
        bytes += filter.search.as_ref().map_or(0, |s| s.len() + 24);
    }
    bytes
}

/// Files (`Some(entries)` to add to) or unfiles (`None`) `entry` under each
/// distinct key.
fn file<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Entries>,
    keys: impl Iterator<Item = K>,
    entry: Entry,
    add: bool,
) {
    for key in keys {
        if add {
            map.entry(key).or_default().insert(entry);
        } else if let Some(set) = map.get_mut(&key) {
            set.remove(&entry);
            if set.is_empty() {
                map.remove(&key);
            }
        }
    }
}

impl SubIndex {
    /// Files a subscription under each of its filters.
    pub fn insert(&mut self, sub: Arc<LiveSub>) {
        self.file_all(&sub, true);
        self.subs.insert(sub.key, sub);
    }

    /// Takes a subscription out (and marks it closed, so a delivery racing
    /// with this sends nothing more). Costs time in the subscription's own
    /// size, never in the number of others.
    pub fn get(&self, key: SubKey) -> Option<Arc<LiveSub>> {
        self.subs.get(&key).cloned()
    }

    pub fn remove(&mut self, key: SubKey) -> Option<Arc<LiveSub>> {
        let sub = self.subs.remove(&key)?;
        *sub.state.lock() = SubState::Closed;
        self.file_all(&sub, false);
        Some(sub)
    }

    fn file_all(&mut self, sub: &LiveSub, add: bool) {
        for (i, filter) in sub.filters.iter().enumerate() {
            let entry = Entry {
                sub: sub.key,
                filter: i as u32,
            };
            match anchor(filter) {
                Anchor::Ids(ids) => file(&mut self.by_id, ids.iter().copied(), entry, add),
                Anchor::Authors(authors) => {
                    file(&mut self.by_author, authors.iter().copied(), entry, add)
                }
                Anchor::Tag(letter, values) => {
                    let map = self.by_tag.entry(letter).or_default();
                    file(map, values.iter().cloned(), entry, add);
                    if map.is_empty() {
                        self.by_tag.remove(&letter);
                    }
                }
                Anchor::Kinds(kinds) => file(&mut self.by_kind, kinds.iter().copied(), entry, add),
                Anchor::Any => {
                    if add {
                        self.any.insert(entry);
                    } else {
                        self.any.remove(&entry);
                    }
                }
            }
        }
    }

    /// The subscriptions `event` matches, each once.
    pub fn matching(&self, event: &EventRef<'_>, out: &mut Vec<Arc<LiveSub>>) {
        let mut candidates: Vec<Entry> = Vec::new();
        let mut add = |list: Option<&Entries>| {
            if let Some(list) = list {
                candidates.extend(list.iter().copied());
            }
        };
        add(self.by_id.get(&event.id()));
        add(self.by_author.get(&event.pubkey()));
        add(self.by_kind.get(&event.kind()));
        add(Some(&self.any));
        if !self.by_tag.is_empty() {
            let mut value = String::new();
            for tag in event.tags() {
                let Some(letter) = tag.name().and_then(|n| n.is_single_letter()) else {
                    continue;
                };
                let (Some(map), Some(field)) = (self.by_tag.get(&letter), tag.value()) else {
                    continue;
                };
                value.clear();
                field.write_str_to(&mut value);
                add(map.get(value.as_str()));
            }
        }
        // One check per (subscription, filter), and one delivery per
        // subscription.
        candidates.sort_unstable_by_key(|e| (e.sub, e.filter));
        candidates.dedup();
        let mut last = None;
        for entry in candidates {
            if last == Some(entry.sub) {
                continue;
            }
            let Some(sub) = self.subs.get(&entry.sub) else {
                continue;
            };
            if sub.filters[entry.filter as usize].matches(event) {
                last = Some(entry.sub);
                out.push(Arc::clone(sub));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use megalith::Keys;
    use megalith::reference;

    /// SplitMix64.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % n as u64) as usize
        }
    }

    /// The index finds exactly the subscriptions a brute-force check of
    /// every filter finds, as subscriptions come and go.
    #[test]
    fn matching_equals_checking_every_filter() {
        let mut rng = Rng(7);
        let keys: Vec<Keys> = (0..12).map(Keys::from_seed).collect();
        let words = ["a", "b", "c", "d"];
        let mut events = Vec::new();
        for i in 0..300u64 {
            let mut tags = Vec::new();
            if rng.below(2) == 0 {
                tags.push(vec!["t".to_string(), words[rng.below(4)].to_string()]);
            }
            if rng.below(3) == 0 {
                tags.push(vec!["p".to_string(), keys[rng.below(12)].pubkey().to_hex()]);
            }
            let kind = [1, 7, 6, 30023][rng.below(4)];
            events.push(keys[rng.below(12)].sign(1_000 + i, kind, tags, String::new()));
        }
        let random_filter = |rng: &mut Rng| {
            let mut filter = Filter::new();
            if rng.below(4) == 0 {
                filter = filter.ids((0..1 + rng.below(3)).map(|_| events[rng.below(300)].id));
            }
            if rng.below(3) == 0 {
                filter =
                    filter.authors((0..1 + rng.below(3)).map(|_| keys[rng.below(12)].pubkey()));
            }
            if rng.below(3) == 0 {
                filter =
                    filter.kinds((0..1 + rng.below(2)).map(|_| [1, 7, 6, 30023][rng.below(4)]));
            }
            if rng.below(3) == 0 {
                filter = filter.tag('t', (0..1 + rng.below(2)).map(|_| words[rng.below(4)]));
            }
            if rng.below(4) == 0 {
                filter = filter.tag('p', [keys[rng.below(12)].pubkey().to_hex()]);
            }
            if rng.below(5) == 0 {
                filter = filter.since(1_000 + rng.below(300) as u64);
            }
            filter
        };
        let outbox = Arc::new(Outbox::new(1 << 20, std::time::Duration::from_secs(1)));
        let mut index = SubIndex::default();
        let mut open: Vec<Arc<LiveSub>> = Vec::new();
        let mut payload = Vec::new();
        for key in 0..400u64 {
            let filters = (0..1 + rng.below(3))
                .map(|_| random_filter(&mut rng))
                .collect();
            let sub = Arc::new(LiveSub {
                key,
                sub_json: format!("\"s{key}\""),
                filters,
                after: 0,
                stored_through: AtomicU64::new(0),
                outbox: Arc::clone(&outbox),
                viewer: Arc::new(Viewer::default()),
                state: Mutex::new(SubState::Live),
            });
            index.insert(Arc::clone(&sub));
            open.push(sub);
            if rng.below(3) == 0 {
                let gone = open.swap_remove(rng.below(open.len()));
                assert!(index.remove(gone.key).is_some());
            }
            if key % 20 != 19 {
                continue;
            }
            for event in &events {
                payload.clear();
                event.encode_payload(&mut payload).unwrap();
                let event_ref = EventRef::parse(&payload).unwrap();
                let mut found = Vec::new();
                index.matching(&event_ref, &mut found);
                let mut found: Vec<SubKey> = found.iter().map(|s| s.key).collect();
                let n = found.len();
                found.sort_unstable();
                found.dedup();
                assert_eq!(found.len(), n, "a subscription matched twice");
                let mut expected: Vec<SubKey> = open
                    .iter()
                    .filter(|s| s.filters.iter().any(|f| reference::matches(f, event)))
                    .map(|s| s.key)
                    .collect();
                expected.sort_unstable();
                assert_eq!(found, expected, "event {}", event.id);
            }
        }
    }
}
