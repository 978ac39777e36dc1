//! Runs a plan on one shard: a k-way merge of newest-first index cursors that
//! checks each candidate on its record and stops at the limit, holding the
//! shard's index lock in slices that end whenever its writer waits.

use std::borrow::Cow;
use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::ops::Deref;
use std::time::Instant;

use crate::event::{EventId, EventRef, Pubkey};
use crate::ids::Location;
use crate::index::{
    AUTHOR_HASH_AT, AUTHOR_HASH_LEN, Cursor, IndexKind, IndexSet, TIME_SUFFIX_LEN, author_hash,
    location_at_end, time_range,
};
use crate::search;
use crate::wal::LogSnapshot;

use super::error::QueryError;
use super::filter::Filter;
use super::plan::{Plan, leads_with_authors, plan};

/// A matching event: enough to order, deduplicate and fetch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Hit {
    pub created_at: u64,
    pub id: EventId,
    pub location: Location,
}

impl Ord for Hit {
    /// NIP-01 order: newest first, ties by lowest id.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .created_at
            .cmp(&self.created_at)
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// How an executor reads one shard's indexes: read-locked in slices. A
/// slice ends, its guard dropped and taken again, as soon as a writer waits
/// for the lock, so a writer waits for one step of a reader (one index entry
/// or record), never for a whole query. Executors keep their positions as
/// keys across slices and seek them again; entries of groups applied since
/// the query began are skipped ([`IndexAccess::visible`]), so a query
/// answers exactly what was stored when it began, less what was removed
/// while it ran.
pub(crate) trait IndexAccess {
    type Guard<'g>: Deref<Target = IndexSet>
    where
        Self: 'g;
    /// The indexes, read-locked (waiting for a writer that waits first).
    fn lock(&self) -> Result<Self::Guard<'_>, QueryError>;
    /// A writer waits for the lock: end the slice.
    fn writer_waiting(&self) -> bool;
    /// Whether an event stored at `location` was visible when the query
    /// began.
    fn visible(&self, location: Location) -> bool;
}

/// Calls `visit` with each event matching `filter` in NIP-01 order (exact up
/// to events sharing created_at and the first 8 id bytes, which the caller's
/// final sort settles), at most `limit` times (`None`: no limit). Events
/// expired at `now` (NIP-40) are skipped. Returns how many were visited.
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute<'l>(
    access: &impl IndexAccess,
    log: &'l LogSnapshot,
    filter: &Filter,
    now: u64,
    limit: Option<usize>,
    deadline: &Deadline,
    mut visit: impl FnMut(Hit, EventRef<'l>),
) -> Result<usize, QueryError> {
    let limit = limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(0);
    }
    let search_terms = filter.search.as_deref().map(search::query_terms);
    // Authors sorted once and found by binary search (a follow feed names
    // hundreds; the store hands each shard its authors already sorted); the
    // rest of the filter is checked as written.
    let authors: Option<Cow<'_, [Pubkey]>> = filter.authors.as_ref().map(|authors| {
        if authors.windows(2).all(|pair| pair[0] < pair[1]) {
            Cow::Borrowed(authors.as_slice())
        } else {
            let mut authors = authors.clone();
            authors.sort_unstable();
            authors.dedup();
            Cow::Owned(authors)
        }
    });
    let rest = filter.without_authors_and_search();
    let accept = |event: &EventRef<'_>| {
        rest.matches_unsearched(event)
            && authors
                .as_ref()
                .is_none_or(|a| a.binary_search(&event.pubkey()).is_ok())
            && event.expiration().is_none_or(|e| e > now)
            && search_terms
                .as_ref()
                .is_none_or(|terms| search::event_has_terms(event, terms))
    };
    let search_index = access.lock()?.has(IndexKind::TermTime);
    // Many authors and a limit (a follow feed): followed authors tend to be
    // active ones, so a newest-first scan of the kinds asked for (or of all
    // events) that keeps their events often fills the limit long before
    // one cursor per author could even be opened. Entries of other authors
    // are skipped by their author hash, records are read only for the
    // rest; the scan gets a budget of each per author, and if one runs out
    // the per-author cursors of the plan answer as usual.
    if limit != usize::MAX
        && let Some(authors) = &authors
        && authors.len() >= WIDE_AUTHORS
        && leads_with_authors(filter, search_index)
    {
        let (scan_index, scan_prefixes) = match &filter.kinds {
            Some(kinds) => {
                let mut kinds = kinds.clone();
                kinds.sort_unstable();
                kinds.dedup();
                let prefixes = kinds.iter().map(|k| k.to_be_bytes().to_vec()).collect();
                (IndexKind::KindTime, prefixes)
            }
            None => (IndexKind::Time, vec![Vec::new()]),
        };
        let prefilter = AuthorPrefilter::new(
            authors
                .iter()
                .map(|a| u32::from_be_bytes(author_hash(a)))
                .collect(),
            authors.len() * SKIPS_PER_AUTHOR,
        );
        let mut found = Vec::new();
        let complete = merge(
            access,
            log,
            scan_index,
            &scan_prefixes,
            (filter.since.unwrap_or(0), filter.until.unwrap_or(u64::MAX)),
            authors.len() * CANDIDATES_PER_AUTHOR,
            Some(&prefilter),
            deadline,
            accept,
            |hit, event| {
                found.push((hit, event));
                found.len() == limit
            },
        )?;
        if complete {
            let visited = found.len();
            for (hit, event) in found {
                visit(hit, event);
            }
            return Ok(visited);
        }
    }
    match &plan(filter, search_index) {
        Plan::Nothing => Ok(0),
        Plan::Ids(ids) => {
            let mut hits = Vec::new();
            let mut guard = access.lock()?;
            for id in ids {
                deadline.tick()?;
                if access.writer_waiting() {
                    drop(guard);
                    guard = access.lock()?;
                }
                let Some(location) = guard.find_id(id)? else {
                    continue;
                };
                if !access.visible(location) {
                    continue;
                }
                let event = log.read_event(location)?;
                if accept(&event) {
                    hits.push((
                        Hit {
                            created_at: event.created_at(),
                            id: *id,
                            location,
                        },
                        event,
                    ));
                }
            }
            drop(guard);
            hits.sort_unstable_by_key(|(hit, _)| *hit);
            hits.truncate(limit);
            let visited = hits.len();
            for (hit, event) in hits {
                visit(hit, event);
            }
            Ok(visited)
        }
        Plan::Terms {
            prefixes,
            since,
            until,
        } => intersect(
            access,
            log,
            prefixes,
            (*since, *until),
            accept,
            limit,
            deadline,
            visit,
        ),
        Plan::Scan {
            index,
            prefixes,
            since,
            until,
        } => {
            let mut visited = 0;
            merge(
                access,
                log,
                *index,
                prefixes,
                (*since, *until),
                usize::MAX,
                None,
                deadline,
                accept,
                |hit, event| {
                    visit(hit, event);
                    visited += 1;
                    visited == limit
                },
            )?;
            Ok(visited)
        }
    }
}

/// When a query gives up: a relay's time budget per query, so one heavy
/// filter cannot hold a shard's read view (and its writer) for long. The
/// executors tick it once per index entry or record they look at; it reads
/// the clock every [`Deadline::CLOCK_EVERY`] ticks.
#[derive(Debug)]
pub(crate) struct Deadline {
    at: Option<Instant>,
    ticks: Cell<u32>,
}

impl Deadline {
    const CLOCK_EVERY: u32 = 64;

    pub(crate) fn new(at: Option<Instant>) -> Deadline {
        Deadline {
            at,
            ticks: Cell::new(0),
        }
    }

    pub(crate) fn tick(&self) -> Result<(), QueryError> {
        let Some(at) = self.at else {
            return Ok(());
        };
        let ticks = self.ticks.get().wrapping_add(1);
        self.ticks.set(ticks);
        if ticks.is_multiple_of(Self::CLOCK_EVERY) && Instant::now() >= at {
            return Err(QueryError::TimedOut);
        }
        Ok(())
    }
}

/// A filter naming at least this many authors (with a limit) first tries a
/// newest-first scan of its kinds.
const WIDE_AUTHORS: usize = 32;

/// Records that scan may read per author before giving up.
const CANDIDATES_PER_AUTHOR: usize = 4;

/// Index entries of other authors that scan may skip per author before
/// giving up: skipping is cheap (no record is read), but on data where the
/// authors write a small share of the events, one cursor per author is
/// cheaper than a long scan.
const SKIPS_PER_AUTHOR: usize = 32;

/// The authors a scan of an author-hashed index (kind_time, time) keeps:
/// entries whose author hash is not among `hashes` are skipped without
/// reading their records, at most `skips` of them.
struct AuthorPrefilter {
    /// Sorted.
    hashes: Vec<u32>,
    /// One bit per value of a hash's high 16 bits: most other authors'
    /// hashes are turned away by one load, before the binary search.
    high: Box<[u64; 1024]>,
    skips: usize,
}

impl AuthorPrefilter {
    fn new(mut hashes: Vec<u32>, skips: usize) -> AuthorPrefilter {
        hashes.sort_unstable();
        hashes.dedup();
        let mut high = Box::new([0u64; 1024]);
        for hash in &hashes {
            let top = (hash >> 16) as usize;
            high[top >> 6] |= 1 << (top & 63);
        }
        AuthorPrefilter {
            hashes,
            high,
            skips,
        }
    }

    fn keeps(&self, hash: u32) -> bool {
        let top = (hash >> 16) as usize;
        self.high[top >> 6] & (1 << (top & 63)) != 0 && self.hashes.binary_search(&hash).is_ok()
    }
}

/// Entries one step of a scan may skip by their author hash before it
/// stops at the last of them (so a writer waiting for the lock waits for
/// at most this many entries of a reader, not for a whole run of them).
const SKIP_RUN: usize = 64;

/// Merges one newest-first cursor per prefix of `index`, reads each
/// candidate's record, and passes those `accept` takes to `take` until it
/// returns true. Returns false if `budget` candidates were read first, or
/// `prefilter` skipped its number of entries (the answer is then
/// incomplete), true otherwise.
///
/// Between slices (see [`IndexAccess`]) its state is the heap of each
/// source's head: a source's cursor is sought again just after its head.
#[allow(clippy::too_many_arguments)]
fn merge<'l>(
    access: &impl IndexAccess,
    log: &'l LogSnapshot,
    index: IndexKind,
    prefixes: &[Vec<u8>],
    (since, until): (u64, u64),
    budget: usize,
    prefilter: Option<&AuthorPrefilter>,
    deadline: &Deadline,
    accept: impl Fn(&EventRef<'_>) -> bool,
    mut take: impl FnMut(Hit, EventRef<'l>) -> bool,
) -> Result<bool, QueryError> {
    let prefix_len = index.time_prefix_len().unwrap_or(0);
    let hashed = index.author_hashed();
    let mut scan = Scan {
        prefix_len,
        hashed,
        prefilter: prefilter.filter(|_| hashed),
        skipped: 0,
    };
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = prefixes
        .iter()
        .map(|prefix| time_range(index, prefix, since, until))
        .collect();
    let mut heap: BinaryHeap<Reverse<(Head, usize, bool)>> =
        BinaryHeap::with_capacity(ranges.len());
    // Sources whose first head has been looked for.
    let mut opened = 0;
    let mut read = 0;
    let mut last: Option<Head> = None;
    let mut key = Vec::with_capacity(index.width());
    'slices: loop {
        let guard = access.lock()?;
        let tree = guard.tree(index);
        // This slice's cursors, opened as they are needed.
        let mut cursors: Vec<Option<Cursor<'_>>> = Vec::new();
        cursors.resize_with(ranges.len(), || None);
        while opened < ranges.len() {
            deadline.tick()?;
            let (lower, upper) = &ranges[opened];
            let mut cursor = tree.seek(lower)?;
            match scan.next(&mut cursor, upper)? {
                Step::End => {}
                Step::Exhausted => return Ok(false),
                Step::Entry(head) => heap.push(Reverse((head, opened, false))),
                Step::Skipped(head) => heap.push(Reverse((head, opened, true))),
            }
            cursors[opened] = Some(cursor);
            opened += 1;
            if access.writer_waiting() {
                continue 'slices;
            }
        }
        while let Some(Reverse((head, source, skipped))) = heap.pop() {
            let (lower, upper) = &ranges[source];
            let cursor = match &mut cursors[source] {
                Some(cursor) => Some(cursor),
                slot => {
                    key.clear();
                    key.extend_from_slice(&lower[..prefix_len]);
                    if head.write_after(&mut key, hashed) {
                        Some(slot.insert(tree.seek(&key)?))
                    } else {
                        None
                    }
                }
            };
            if let Some(cursor) = cursor {
                match scan.next(cursor, upper)? {
                    Step::End => {}
                    Step::Exhausted => return Ok(false),
                    Step::Entry(next) => heap.push(Reverse((next, source, false))),
                    Step::Skipped(next) => heap.push(Reverse((next, source, true))),
                }
            }
            // A run of skipped entries ended here: only a position.
            if skipped {
                deadline.tick()?;
                if access.writer_waiting() {
                    continue 'slices;
                }
                continue;
            }
            // One event reached through two cursors (two matching tag
            // values) has the same suffix twice in a row.
            if last == Some(head) {
                continue;
            }
            last = Some(head);
            if read == budget {
                return Ok(false);
            }
            read += 1;
            deadline.tick()?;
            if let Some((hit, event)) = candidate(access, log, head.location(), &accept)?
                && take(hit, event)
            {
                return Ok(true);
            }
            if access.writer_waiting() {
                continue 'slices;
            }
        }
        return Ok(true);
    }
}

/// A time-ordered entry's suffix (after its prefix) as numbers, which
/// order as its bytes do: reversed time, id prefix, author hash (0 in the
/// indexes without one), location. Compared without `memcmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Head {
    rtime: u64,
    id8: u64,
    hash: u32,
    location: u64,
}

impl Head {
    fn of(suffix: &[u8], hashed: bool) -> Head {
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&suffix[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let hash = if hashed {
            let mut bytes = [0u8; AUTHOR_HASH_LEN];
            bytes.copy_from_slice(&suffix[AUTHOR_HASH_AT..AUTHOR_HASH_AT + AUTHOR_HASH_LEN]);
            u32::from_be_bytes(bytes)
        } else {
            0
        };
        Head {
            rtime: word(0),
            id8: word(8),
            hash,
            location: word(suffix.len() - 8),
        }
    }

    fn location(&self) -> Location {
        Location::from_bytes(self.location.to_be_bytes())
    }

    /// Appends the smallest suffix after this one; false if none can
    /// follow it.
    fn write_after(&self, out: &mut Vec<u8>, hashed: bool) -> bool {
        let start = out.len();
        out.extend_from_slice(&self.rtime.to_be_bytes());
        out.extend_from_slice(&self.id8.to_be_bytes());
        if hashed {
            out.extend_from_slice(&self.hash.to_be_bytes());
        }
        out.extend_from_slice(&self.location.to_be_bytes());
        increment(&mut out[start..])
    }
}

/// What one step of a cursor found.
enum Step {
    /// No entry left in the range.
    End,
    /// The next entry.
    Entry(Head),
    /// [`SKIP_RUN`] entries of other authors skipped; this is the last.
    Skipped(Head),
    /// The prefilter's skips ran out.
    Exhausted,
}

/// How a merge steps one source's cursor.
struct Scan<'p> {
    prefix_len: usize,
    hashed: bool,
    prefilter: Option<&'p AuthorPrefilter>,
    skipped: usize,
}

impl Scan<'_> {
    /// The cursor's next entry up to `upper` (inclusive, a whole entry)
    /// that the prefilter keeps, skipping at most [`SKIP_RUN`] others.
    fn next(&mut self, cursor: &mut Cursor<'_>, upper: &[u8]) -> Result<Step, QueryError> {
        let mut run = 0;
        loop {
            let Some(entry) = cursor.next()? else {
                return Ok(Step::End);
            };
            if entry > upper {
                return Ok(Step::End);
            }
            let head = Head::of(&entry[self.prefix_len..], self.hashed);
            let Some(prefilter) = self.prefilter else {
                return Ok(Step::Entry(head));
            };
            if prefilter.keeps(head.hash) {
                return Ok(Step::Entry(head));
            }
            if self.skipped == prefilter.skips {
                return Ok(Step::Exhausted);
            }
            self.skipped += 1;
            run += 1;
            if run == SKIP_RUN {
                return Ok(Step::Skipped(head));
            }
        }
    }
}

/// The event an index entry points at (stored at `location`), if it was
/// visible when the query began and `accept` takes it.
fn candidate<'l>(
    access: &impl IndexAccess,
    log: &'l LogSnapshot,
    location: Location,
    accept: &impl Fn(&EventRef<'_>) -> bool,
) -> Result<Option<(Hit, EventRef<'l>)>, QueryError> {
    if !access.visible(location) {
        return Ok(None);
    }
    let event = log.read_event(location)?;
    if !accept(&event) {
        return Ok(None);
    }
    let hit = Hit {
        created_at: event.created_at(),
        id: event.id(),
        location,
    };
    Ok(Some((hit, event)))
}

/// Leapfrogs one newest-first `term_time` cursor per prefix (term hash):
/// each term in turn moves to its first entry at or after the current
/// target, and a term that lands past it moves the target there; when every
/// term lands on the target, that event has them all. Each candidate is
/// confirmed on its record by `accept`. Returns how many were visited.
///
/// Between slices (see [`IndexAccess`]) its state is the target and each
/// term's head: a term's cursor is sought again at the target when it must
/// move, which is where it would have moved anyway.
#[allow(clippy::too_many_arguments)]
fn intersect<'l>(
    access: &impl IndexAccess,
    log: &'l LogSnapshot,
    prefixes: &[Vec<u8>],
    (since, until): (u64, u64),
    accept: impl Fn(&EventRef<'_>) -> bool,
    limit: usize,
    deadline: &Deadline,
    mut visit: impl FnMut(Hit, EventRef<'l>),
) -> Result<usize, QueryError> {
    let Some(first) = prefixes.first() else {
        return Ok(0);
    };
    let (lower, upper) = time_range(IndexKind::TermTime, first, since, until);
    let prefix_len = first.len();
    let mut target = [0u8; TIME_SUFFIX_LEN];
    target.copy_from_slice(&lower[prefix_len..]);
    let upper_suffix = &upper[prefix_len..];
    // Per term: the entry suffix it stands on (the first at or after every
    // target so far).
    let mut heads: Vec<Option<[u8; TIME_SUFFIX_LEN]>> = vec![None; prefixes.len()];
    let mut key = Vec::with_capacity(prefix_len + TIME_SUFFIX_LEN);
    let mut visited = 0;
    let mut agreed = 0;
    let mut term = 0;
    'slices: loop {
        let guard = access.lock()?;
        let tree = guard.tree(IndexKind::TermTime);
        let mut cursors: Vec<Option<Cursor<'_>>> = Vec::new();
        cursors.resize_with(prefixes.len(), || None);
        loop {
            // Move each term in turn (round robin) until all agree on the target.
            while agreed < prefixes.len() {
                deadline.tick()?;
                let head = &mut heads[term];
                if head.is_none_or(|h| h < target) {
                    key.clear();
                    key.extend_from_slice(&prefixes[term]);
                    key.extend_from_slice(&target);
                    let cursor = match &mut cursors[term] {
                        Some(cursor) => {
                            cursor.seek_forward(&key)?;
                            cursor
                        }
                        slot => slot.insert(tree.seek(&key)?),
                    };
                    let Some(entry) = cursor.next()? else {
                        return Ok(visited);
                    };
                    if entry[..prefix_len] != prefixes[term][..]
                        || &entry[prefix_len..] > upper_suffix
                    {
                        return Ok(visited);
                    }
                    let mut suffix = [0u8; TIME_SUFFIX_LEN];
                    suffix.copy_from_slice(&entry[prefix_len..]);
                    *head = Some(suffix);
                }
                let landed = head.unwrap_or(target);
                if landed == target {
                    agreed += 1;
                } else {
                    target = landed;
                    agreed = 1;
                }
                term = (term + 1) % prefixes.len();
                if access.writer_waiting() {
                    continue 'slices;
                }
            }
            if let Some((hit, event)) = candidate(access, log, location_at_end(&target), &accept)? {
                visit(hit, event);
                visited += 1;
                if visited == limit {
                    return Ok(visited);
                }
            }
            // The next target is the smallest suffix after this one.
            if !increment(&mut target) {
                return Ok(visited);
            }
            agreed = 0;
            term = 0;
            if access.writer_waiting() {
                continue 'slices;
            }
        }
    }
}

/// Adds one to a big-endian number; false if it was all ones.
fn increment(bytes: &mut [u8]) -> bool {
    for byte in bytes.iter_mut().rev() {
        let (next, carry) = byte.overflowing_add(1);
        *byte = next;
        if !carry {
            return true;
        }
    }
    false
}
