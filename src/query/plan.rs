//! The planner: one index per filter, chosen strfry-style (ids > search
//! terms > most selective tag > author+kind > author > kind > time), and the
//! key prefixes its cursors scan.

use crate::event::EventId;
use crate::index::{IndexKind, TagSlot, author_kind_prefix, tag_prefix};
use crate::search;

use super::filter::Filter;

/// A search intersects the index entries of at most this many of its terms;
/// the record confirms the rest.
const MAX_TERM_CURSORS: usize = 8;

/// Past this many author x kind pairs, one cursor per author is cheaper than
/// one per pair.
const MAX_AUTHOR_KIND_CURSORS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Some list is empty or the time range is inverted.
    Nothing,
    /// Look each id up in the primary index.
    Ids(Vec<EventId>),
    /// Intersect one newest-first cursor per search term over `term_time`
    /// (each prefix is a term hash); the record confirms every term.
    Terms {
        prefixes: Vec<Vec<u8>>,
        since: u64,
        until: u64,
    },
    /// Merge one newest-first cursor per prefix over a time-ordered index.
    Scan {
        index: IndexKind,
        prefixes: Vec<Vec<u8>>,
        since: u64,
        until: u64,
    },
}

impl Plan {
    /// The index the plan reads, for metrics and `explain`.
    pub fn index_name(&self) -> &'static str {
        match self {
            Plan::Nothing => "none",
            Plan::Ids(_) => IndexKind::Primary.name(),
            Plan::Terms { .. } => IndexKind::TermTime.name(),
            Plan::Scan { index, .. } => index.name(),
        }
    }
}

/// Whether [`plan`] reads an author index for `filter` (no ids, search
/// terms or tags come first, and it names authors): the case a follow feed
/// may be answered by a scan of kind_time or time instead.
pub(crate) fn leads_with_authors(filter: &Filter, search_index: bool) -> bool {
    filter.authors.is_some()
        && filter.ids.is_none()
        && filter.tags.is_empty()
        && !filter.matches_nothing()
        && !filter
            .search
            .as_ref()
            .is_some_and(|s| search_index && !search::query_terms(s).is_empty())
}

/// The plan for `filter` on a store that keeps the term_time index or not
/// (`search_index`); without it a search is checked on the records of
/// whatever index the rest of the filter picks.
pub(crate) fn plan(filter: &Filter, search_index: bool) -> Plan {
    // `limit` is applied by the executor (COUNT ignores it), not here.
    if filter.matches_nothing() {
        return Plan::Nothing;
    }
    if let Some(ids) = &filter.ids {
        let mut ids = ids.clone();
        ids.sort_unstable();
        ids.dedup();
        return Plan::Ids(ids);
    }
    let since = filter.since.unwrap_or(0);
    let until = filter.until.unwrap_or(u64::MAX);
    let scan = |index: IndexKind, prefixes: Vec<Vec<u8>>| Plan::Scan {
        index,
        prefixes,
        since,
        until,
    };
    // A search's terms, longest (likely rarest) first so the intersection
    // is driven by the shortest posting list more often than not.
    if let Some(search) = filter.search.as_ref().filter(|_| search_index) {
        let mut terms = search::query_terms(search);
        if !terms.is_empty() {
            terms.sort_by_key(|t| std::cmp::Reverse(t.len()));
            let mut prefixes: Vec<Vec<u8>> = Vec::new();
            for term in terms {
                let prefix = search::term_hash(&term).to_be_bytes().to_vec();
                if !prefixes.contains(&prefix) && prefixes.len() < MAX_TERM_CURSORS {
                    prefixes.push(prefix);
                }
            }
            return Plan::Terms {
                prefixes,
                since,
                until,
            };
        }
    }
    // The tag with the fewest values opens the fewest cursors; e/p values are
    // ids and pubkeys, so they win ties over free-text tags.
    if let Some((&letter, values)) = filter.tags.iter().min_by_key(|(letter, values)| {
        (
            values.len(),
            !matches!(letter, b'e' | b'p' | b'a' | b'E' | b'A' | b'd'),
        )
    }) {
        let mut prefixes: Vec<Vec<u8>> = values
            .iter()
            .map(|v| tag_prefix(letter, &TagSlot::from_str(v)).to_vec())
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        return scan(IndexKind::TagTime, prefixes);
    }
    let mut authors = filter.authors.clone().unwrap_or_default();
    authors.sort_unstable();
    authors.dedup();
    let mut kinds = filter.kinds.clone().unwrap_or_default();
    kinds.sort_unstable();
    kinds.dedup();
    match (filter.authors.is_some(), filter.kinds.is_some()) {
        (true, true) if authors.len() * kinds.len() <= MAX_AUTHOR_KIND_CURSORS => {
            let prefixes = authors
                .iter()
                .flat_map(|a| {
                    kinds
                        .iter()
                        .map(move |&k| author_kind_prefix(a, k).to_vec())
                })
                .collect();
            scan(IndexKind::AuthorKindTime, prefixes)
        }
        (true, _) => scan(
            IndexKind::AuthorTime,
            authors.iter().map(|a| a.0.to_vec()).collect(),
        ),
        (false, true) => scan(
            IndexKind::KindTime,
            kinds.iter().map(|k| k.to_be_bytes().to_vec()).collect(),
        ),
        (false, false) => scan(IndexKind::Time, vec![Vec::new()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Pubkey;

    fn index_of(filter: &Filter) -> &'static str {
        plan(filter, true).index_name()
    }

    #[test]
    fn picks_indexes_in_the_documented_order() {
        let a = Pubkey([1; 32]);
        assert_eq!(
            index_of(&Filter::new().ids([EventId([2; 32])]).authors([a])),
            "primary"
        );
        assert_eq!(
            index_of(&Filter::new().authors([a]).kinds([1]).tag('t', ["x"])),
            "tag_time"
        );
        assert_eq!(
            index_of(&Filter::new().authors([a]).kinds([1, 7])),
            "author_kind_time"
        );
        assert_eq!(index_of(&Filter::new().authors([a])), "author_time");
        assert_eq!(index_of(&Filter::new().kinds([1])), "kind_time");
        assert_eq!(index_of(&Filter::new().since(3)), "time");
        assert_eq!(index_of(&Filter::new().kinds([])), "none");
        assert_eq!(
            index_of(&Filter::new().limit(0)),
            "time",
            "limit is not the planner's business"
        );
        let many: Vec<Pubkey> = (0..600u16)
            .map(|i| {
                let mut key = [0u8; 32];
                key[..2].copy_from_slice(&i.to_be_bytes());
                Pubkey(key)
            })
            .collect();
        let wide = Filter::new().authors(many).kinds([1, 6, 7, 16]);
        assert_eq!(index_of(&wide), "author_time");
    }

    #[test]
    fn fewest_values_tag_wins() {
        let e = "e".repeat(0) + &"ab".repeat(32);
        let f = Filter::new()
            .tag('t', ["a", "b", "c"])
            .tag('e', [e.clone(), e]);
        let Plan::Scan { prefixes, .. } = plan(&f, true) else {
            panic!("expected a scan")
        };
        assert_eq!(prefixes.len(), 1, "duplicate values open one cursor");
        assert_eq!(prefixes[0][0], b'e');
    }
}
