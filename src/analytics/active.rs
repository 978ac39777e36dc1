//! Active authors per UTC day: an author is active on a day when the store
//! holds an event of theirs created that day (docs/analytics.md). Exact:
//! a count of live events per (day, author), so a deletion of an author's
//! only event of a day takes the day away.

use std::collections::{BTreeMap, HashMap, HashSet};

use foldhash::fast::RandomState;

use crate::event::Pubkey;

/// Authors hashed with foldhash, seeded per process: SipHash of a 32-byte
/// key cost most of a 30-day series (4.3 ms at 1M events).
type AuthorMap<K, V> = HashMap<K, V, RandomState>;

/// Seconds in a day.
pub const DAY: u64 = 86_400;

#[derive(Debug, Default)]
pub(crate) struct Active {
    /// Per day, live events per author.
    days: BTreeMap<u32, AuthorMap<Pubkey, u32>>,
}

impl Active {
    pub fn change(&mut self, author: Pubkey, created_at: u64, add: bool) {
        let day = (created_at / DAY).min(u64::from(u32::MAX)) as u32;
        let authors = self.days.entry(day).or_default();
        if add {
            *authors.entry(author).or_default() += 1;
        } else if let Some(n) = authors.get_mut(&author) {
            *n -= 1;
            if *n == 0 {
                authors.remove(&author);
            }
        }
        if authors.is_empty() {
            self.days.remove(&day);
        }
    }

    /// Distinct authors over the `days` days ending with `day` (day
    /// numbers: `created_at / 86400`).
    pub fn distinct(&self, day: u64, days: u64) -> u64 {
        let last = day.min(u64::from(u32::MAX)) as u32;
        let first = day
            .saturating_sub(days.saturating_sub(1))
            .min(u64::from(u32::MAX)) as u32;
        let mut range = self.days.range(first..=last);
        if days <= 1 {
            return range.next().map_or(0, |(_, a)| a.len() as u64);
        }
        let mut seen: HashSet<&Pubkey, RandomState> = HashSet::default();
        for (_, authors) in range {
            seen.extend(authors.keys());
        }
        seen.len() as u64
    }

    /// For each of the `days` days ending with `last` (oldest first), the
    /// distinct authors over the `window` days ending with it: one pass
    /// over the days involved, a count per author of the window's days
    /// they are active on (adding the day that enters, dropping the one
    /// that leaves), not a union per point.
    pub fn series(&self, last: u64, days: u64, window: u64) -> Vec<u64> {
        let window = window.max(1);
        let first = last.saturating_sub(days.saturating_sub(1));
        let day_of = |d: u64| d.min(u64::from(u32::MAX)) as u32;
        let authors = |d: u64| self.days.get(&day_of(d));
        if window == 1 {
            // A day's own authors: no union to make.
            return (first..=last)
                .map(|d| authors(d).map_or(0, |list| list.len() as u64))
                .collect();
        }
        let mut in_window: AuthorMap<&Pubkey, u32> = AuthorMap::default();
        let mut out = Vec::with_capacity(days as usize);
        let start = first.saturating_sub(window - 1);
        for d in start..=last {
            if let Some(list) = authors(d) {
                for author in list.keys() {
                    *in_window.entry(author).or_default() += 1;
                }
            }
            if d >= window
                && d - window >= start
                && let Some(list) = authors(d - window)
            {
                for author in list.keys() {
                    if let Some(n) = in_window.get_mut(author) {
                        *n -= 1;
                        if *n == 0 {
                            in_window.remove(author);
                        }
                    }
                }
            }
            if d >= first {
                out.push(in_window.len() as u64);
            }
        }
        out
    }

    /// (day, author, live events) for a snapshot.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &Pubkey, u32)> {
        self.days
            .iter()
            .flat_map(|(day, authors)| authors.iter().map(move |(a, n)| (*day, a, *n)))
    }

    pub fn restore(&mut self, day: u32, author: Pubkey, events: u32) {
        self.days.entry(day).or_default().insert(author, events);
    }
}
