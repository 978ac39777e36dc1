//! Removing what an operator asks for: every stored event matching a
//! filter (`EventStore::purge`, `megalith delete`, retention rules).
//!
//! The matches are found with ordinary queries, a page at a time, newest
//! first, and removed a page at a time by the shards' writers (remove
//! records of reason `Purged`, so replay repeats them). Paging goes down
//! `until`: the next page asks for events up to the oldest second of the
//! last one, and skips the events of that second it has already handled,
//! asking for as many more as it skips, so events that share a second
//! (more of them than a page holds, or spared ones that stay) are all
//! reached once and the walk always ends.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;
use crate::event::{EventId, Pubkey};
use crate::query::Filter;

/// Matches a page asks for (beyond the already handled ones it repeats).
pub(crate) const PAGE: usize = 4_096;

/// What [`EventStore::purge`](crate::EventStore::purge) found and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Stored events that matched (and were not spared).
    pub matched: u64,
    /// Of those, the ones removed (0 for a dry run; fewer than matched
    /// when something else removed them first).
    pub removed: u64,
}

impl std::ops::AddAssign for PurgeReport {
    fn add_assign(&mut self, other: PurgeReport) {
        self.matched += other.matched;
        self.removed += other.removed;
    }
}

/// An inclusive range of event kinds (`7`, or `30000-39999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindRange {
    pub first: u16,
    pub last: u16,
}

impl KindRange {
    /// One kind.
    pub fn one(kind: u16) -> KindRange {
        KindRange {
            first: kind,
            last: kind,
        }
    }

    pub fn contains(&self, kind: u16) -> bool {
        (self.first..=self.last).contains(&kind)
    }

    /// Reads `7` or `30000-39999` (first at most last, both 0 to 65535).
    pub fn parse(text: &str) -> Result<KindRange, String> {
        let kind = |part: &str| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| format!("kind range {text:?}: {part:?} is not a kind (0 to 65535)"))
        };
        let range = match text.split_once('-') {
            Some((first, last)) => KindRange {
                first: kind(first)?,
                last: kind(last)?,
            },
            None => KindRange::one(kind(text)?),
        };
        if range.first > range.last {
            return Err(format!(
                "kind range {text:?}: its first kind is above its last"
            ));
        }
        Ok(range)
    }

    fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }
}

impl std::fmt::Display for KindRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One retention rule: events of these kinds (every kind when empty)
/// older than `max_age` seconds go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionRule {
    pub kinds: Vec<KindRange>,
    pub max_age: u64,
}

/// Retention rules, and the kinds no rule removes (profiles, contact
/// lists, deletion requests...). Applied with
/// [`EventStore::apply_retention`](crate::EventStore::apply_retention).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retention {
    pub rules: Vec<RetentionRule>,
    pub never: Vec<KindRange>,
    /// The most bytes the store may hold (`None`: no limit): past it, the
    /// oldest events of the kinds not in `never` go, as many as the excess
    /// takes at the store's bytes per event. The store's bytes are its log
    /// and index files on disk less the bytes of removed events that
    /// compaction has not taken out yet.
    pub max_bytes: Option<u64>,
}

/// A rule's kinds are asked of the index one by one up to this many;
/// beyond, the rule walks every event older than its age and spares those
/// of other kinds.
const LISTED_KINDS: usize = 256;

impl Retention {
    /// For each rule: the filter that finds its events (`until` the newest
    /// second it removes, the kinds when few enough to list), and whether
    /// it covers a kind (its kinds, less the `never` kinds). `None` for a
    /// rule that can remove nothing at `now`.
    #[cfg(test)]
    pub(crate) fn plans(&self, now: u64) -> Vec<(Filter, impl Fn(u16) -> bool + '_)> {
        self.plans_with(now, None)
    }

    /// The kinds of `never` as a list, when they are few enough to count
    /// one by one (`None`: more than 256).
    pub(crate) fn never_listed(&self) -> Option<Vec<u16>> {
        listed(&self.never)
    }

    /// [`Retention::plans`], with one more rule: every kind (less the
    /// `never` kinds) created at or before `oldest_until` (the store's size
    /// limit).
    pub(crate) fn plans_with(
        &self,
        now: u64,
        oldest_until: Option<u64>,
    ) -> Vec<(Filter, impl Fn(u16) -> bool + '_)> {
        let sized = oldest_until.map(|until| (None, until));
        self.rules
            .iter()
            .filter_map(|rule| {
                // Older than max_age: created_at < now - max_age.
                let until = now.checked_sub(rule.max_age)?.checked_sub(1)?;
                Some((Some(rule), until))
            })
            .chain(sized)
            .filter_map(|(rule, until)| {
                let every: &[KindRange] = &[];
                let rule_kinds = rule.map_or(every, |rule| &rule.kinds[..]);
                let covers = move |kind: u16| {
                    (rule_kinds.is_empty() || rule_kinds.iter().any(|r| r.contains(kind)))
                        && !self.never.iter().any(|r| r.contains(kind))
                };
                let kinds = (!rule_kinds.is_empty())
                    .then(|| listed(rule_kinds))
                    .flatten()
                    .map(|mut kinds| {
                        kinds.retain(|k| covers(*k));
                        kinds
                    });
                if kinds.as_ref().is_some_and(Vec::is_empty) {
                    return None;
                }
                let filter = Filter {
                    kinds,
                    until: Some(until),
                    ..Filter::default()
                };
                Some((filter, covers))
            })
            .collect()
    }
}

/// The kinds of `ranges`, sorted, once each; `None` when more than
/// `LISTED_KINDS`.
fn listed(ranges: &[KindRange]) -> Option<Vec<u16>> {
    let count: usize = ranges.iter().map(KindRange::len).sum();
    (count <= LISTED_KINDS).then(|| {
        let mut kinds: Vec<u16> = ranges.iter().flat_map(|r| r.first..=r.last).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    })
}

/// One match of a page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub created_at: u64,
    pub id: EventId,
    pub pubkey: Pubkey,
    /// The caller keeps it whatever the filter says.
    pub spared: bool,
}

/// Walks the matches of `filter` (no `limit`) a page at a time, newest
/// first: `page` answers a filter (with `until` and `limit` set) in NIP-01
/// order; `remove` is handed each page's matches that are not spared and
/// returns how many it removed. Gives up with `Error::Interrupted` before
/// a page once `stop` is set (what earlier pages removed stays removed).
pub(crate) fn purge_pages(
    filter: &Filter,
    page_size: usize,
    stop: &AtomicBool,
    mut page: impl FnMut(&Filter) -> Result<Vec<Found>, Error>,
    mut remove: impl FnMut(&[(Pubkey, EventId)]) -> Result<usize, Error>,
) -> Result<PurgeReport, Error> {
    let mut report = PurgeReport::default();
    let mut until = filter.until;
    // Events at `until` already handled (they come again in the next page).
    let mut handled: HashSet<EventId> = HashSet::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let mut ask = filter.clone();
        ask.until = until;
        let limit = page_size + handled.len();
        ask.limit = Some(limit);
        let found = page(&ask)?;
        let doomed: Vec<(Pubkey, EventId)> = found
            .iter()
            .filter(|f| !(f.spared || until == Some(f.created_at) && handled.contains(&f.id)))
            .map(|f| (f.pubkey, f.id))
            .collect();
        report.matched += doomed.len() as u64;
        if !doomed.is_empty() {
            report.removed += remove(&doomed)? as u64;
        }
        let Some(oldest) = found.last().map(|f| f.created_at) else {
            break;
        };
        if found.len() < limit {
            break;
        }
        if until != Some(oldest) {
            handled.clear();
            until = Some(oldest);
        }
        handled.extend(
            found
                .iter()
                .filter(|f| f.created_at == oldest)
                .map(|f| f.id),
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_stop_ends_the_walk_before_its_next_page() {
        let stop = AtomicBool::new(false);
        let mut pages = 0;
        let result = purge_pages(
            &Filter::default(),
            1,
            &stop,
            |_| {
                pages += 1;
                stop.store(true, Ordering::Relaxed);
                Ok(vec![Found {
                    created_at: 10 - pages,
                    id: EventId([pages as u8; 32]),
                    pubkey: Pubkey([0; 32]),
                    spared: false,
                }])
            },
            |doomed| Ok(doomed.len()),
        );
        assert!(matches!(result, Err(Error::Interrupted)), "{result:?}");
        assert_eq!(pages, 1);
    }

    #[test]
    fn kind_ranges_read_and_refuse() {
        assert_eq!(KindRange::parse("7"), Ok(KindRange::one(7)));
        assert_eq!(
            KindRange::parse("30000-39999"),
            Ok(KindRange {
                first: 30000,
                last: 39999
            })
        );
        assert_eq!(
            KindRange::parse("30000-39999").unwrap().to_string(),
            "30000-39999"
        );
        for bad in ["", "x", "7-", "-7", "5-3", "70000", "1-2-3"] {
            assert!(KindRange::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retention_plans_list_few_kinds_and_skip_rules_that_remove_nothing() {
        let retention = Retention {
            rules: vec![
                RetentionRule {
                    kinds: vec![
                        KindRange::one(1),
                        KindRange::one(3),
                        KindRange::parse("7-8").unwrap(),
                    ],
                    max_age: 100,
                },
                RetentionRule {
                    kinds: vec![KindRange::parse("30000-39999").unwrap()],
                    max_age: 10,
                },
                RetentionRule {
                    kinds: vec![],
                    max_age: 5000,
                },
                // Only never kinds: nothing to do.
                RetentionRule {
                    kinds: vec![KindRange::one(0)],
                    max_age: 1,
                },
            ],
            never: vec![KindRange::one(0), KindRange::one(3)],
            max_bytes: None,
        };
        let plans = retention.plans(1000);
        assert_eq!(
            plans.len(),
            2,
            "the rule older than now and the never-only one go"
        );
        assert_eq!(plans[0].0.kinds, Some(vec![1, 7, 8]));
        assert_eq!(plans[0].0.until, Some(899));
        assert!(plans[0].1(7) && !plans[0].1(3) && !plans[0].1(2));
        assert_eq!(plans[1].0.kinds, None, "10,000 kinds are not listed");
        assert_eq!(plans[1].0.until, Some(989));
        assert!(plans[1].1(30023) && !plans[1].1(1));
    }

    /// A store of (created_at, id) events; `answer` answers a filter's
    /// `since`, `until` and `limit` as a query would.
    struct Model {
        events: Vec<(u64, EventId)>,
    }

    impl Model {
        fn answer(&self, filter: &Filter, spared: &impl Fn(&EventId) -> bool) -> Vec<Found> {
            let mut hits: Vec<(u64, EventId)> = self
                .events
                .iter()
                .copied()
                .filter(|(t, _)| filter.until.is_none_or(|u| *t <= u))
                .filter(|(t, _)| filter.since.is_none_or(|s| *t >= s))
                .collect();
            hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            hits.truncate(filter.limit.expect("pages ask with a limit"));
            hits.into_iter()
                .map(|(created_at, id)| Found {
                    created_at,
                    id,
                    pubkey: Pubkey([0; 32]),
                    spared: spared(&id),
                })
                .collect()
        }
    }

    fn id(n: u32) -> EventId {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        EventId(bytes)
    }

    /// Every matching event is handed to `remove` exactly once, whatever
    /// the page size, however many share a second, with spared events
    /// staying in the store, in a real run and a dry run.
    #[test]
    fn pages_reach_every_match_once_and_end() {
        // Times with long runs of equal seconds.
        let times: Vec<u64> = (0..500u32)
            .map(|n| u64::from(if n < 200 { 50 } else { n % 37 + n / 100 }))
            .collect();
        for page_size in [1, 3, 7, 64, 1000] {
            for dry in [false, true] {
                for since in [None, Some(20)] {
                    let mut model = Model {
                        events: times
                            .iter()
                            .enumerate()
                            .map(|(n, t)| (*t, id(n as u32)))
                            .collect(),
                    };
                    let spared = |id: &EventId| id.0[3].is_multiple_of(5);
                    let expected: HashSet<EventId> = model
                        .events
                        .iter()
                        .filter(|(t, id)| since.is_none_or(|s| *t >= s) && !spared(id))
                        .map(|(_, id)| *id)
                        .collect();
                    let mut handed: Vec<EventId> = Vec::new();
                    let filter = Filter {
                        since,
                        until: Some(60),
                        ..Filter::default()
                    };
                    let store = std::cell::RefCell::new(&mut model);
                    let report = purge_pages(
                        &filter,
                        page_size,
                        &AtomicBool::new(false),
                        |ask| Ok(store.borrow().answer(ask, &spared)),
                        |doomed| {
                            handed.extend(doomed.iter().map(|(_, id)| *id));
                            if dry {
                                return Ok(0);
                            }
                            let gone: HashSet<EventId> = doomed.iter().map(|(_, id)| *id).collect();
                            store
                                .borrow_mut()
                                .events
                                .retain(|(_, id)| !gone.contains(id));
                            Ok(gone.len())
                        },
                    )
                    .unwrap();
                    let unique: HashSet<EventId> = handed.iter().copied().collect();
                    assert_eq!(unique.len(), handed.len(), "page {page_size}: handed twice");
                    assert_eq!(
                        unique, expected,
                        "page {page_size} dry {dry} since {since:?}"
                    );
                    assert_eq!(report.matched, expected.len() as u64);
                    let removed = if dry { 0 } else { expected.len() as u64 };
                    assert_eq!(report.removed, removed);
                    let left = model.events.len() as u64;
                    assert_eq!(left, times.len() as u64 - removed);
                }
            }
        }
    }
}
