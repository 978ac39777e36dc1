//! The sorted in-memory level of a random-order index: the entries the
//! writer staged since the last merge into the tree, as a few sorted runs of
//! fixed-width entries (docs/engine-at-scale.md, "The sorted in-memory
//! level").
//!
//! A group's entries for an index arrive sorted, so staging them appends
//! to the newest run; the first entry not above the newest run's last
//! starts a new run. Before a run is started, the newest runs are merged
//! while the older of the two is at most [`GROWTH`] times the newer, so the
//! runs' sizes grow geometrically from the newest to the oldest and there
//! are about log₄(entries ÷ group) of them. A read seeks each run by binary
//! search and merges them; for a key in several runs the newest wins.
//!
//! Each entry carries two states: the one its first staging gave it and the
//! one its last gave it (added or removed). The write path stages a change
//! only when it flips the entry's state as tree and level show it (it adds
//! what is absent, removes what is present), so the first state says what
//! the tree holds (a first add: absent from the tree) and the last what a
//! read shows; an entry whose two states agree changes the index's count by
//! one, one whose states differ by nothing.
//!
//! The runs replace an ordered map of boxed keys, whose inserts were most of
//! a writer's time (a search of a million-key map per entry, and an
//! allocation per entry).

use std::cmp::Ordering;
use std::ops::Range;
use std::sync::Arc;

use super::node::compare_keys;

/// Runs are merged while the older is at most this many times the newer.
const GROWTH: usize = 4;

/// A run never has more than this many neighbours: past it the newest
/// two are merged whatever their sizes (it takes many tiny groups in a
/// row, a replay of single records, to get near it).
const MOST_RUNS: usize = 24;

/// Flag bits of an entry.
pub(crate) const LAST_ADD: u8 = 1;
pub(crate) const FIRST_ADD: u8 = 2;

/// How an entry whose first and last states are `flags` changes the count
/// of the index under it.
pub(crate) fn effect(flags: u8) -> i64 {
    match flags & (LAST_ADD | FIRST_ADD) {
        0 => -1,
        3 => 1,
        _ => 0,
    }
}

/// The bytes a spilled run reads its entries from: a map of its file, or
/// the file read into memory where the storage cannot map it.
pub(crate) enum RunBytes {
    Mapped(crate::storage::Mapping),
    Read(Vec<u8>),
}

impl std::ops::Deref for RunBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            RunBytes::Mapped(map) => map,
            RunBytes::Read(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for RunBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunBytes({} bytes)", self.len())
    }
}

/// Where a run's entries are.
#[derive(Debug)]
enum Entries {
    /// Staged in memory (or copied there from a file to be changed).
    Owned { keys: Vec<u8>, flags: Vec<u8> },
    /// In a run file: `len` keys from byte `keys_at`, then their flags.
    Shared {
        bytes: Arc<RunBytes>,
        keys_at: usize,
        flags_at: usize,
        len: usize,
    },
}

impl Default for Entries {
    fn default() -> Entries {
        Entries::Owned {
            keys: Vec::new(),
            flags: Vec::new(),
        }
    }
}

/// Entries sorted, each once; those before `skip` have gone into the tree.
/// A spilled run is one a file holds (see `index::levelfile`): it takes no
/// appends, and it is merged only with spilled runs.
#[derive(Debug, Default)]
struct Run {
    entries: Entries,
    skip: usize,
    spilled: bool,
}

impl Run {
    fn keys(&self) -> &[u8] {
        match &self.entries {
            Entries::Owned { keys, .. } => keys,
            Entries::Shared {
                bytes,
                keys_at,
                flags_at,
                ..
            } => &bytes[*keys_at..*flags_at],
        }
    }

    fn flags(&self) -> &[u8] {
        match &self.entries {
            Entries::Owned { flags, .. } => flags,
            Entries::Shared {
                bytes,
                flags_at,
                len,
                ..
            } => &bytes[*flags_at..*flags_at + *len],
        }
    }

    /// Entries, those before `skip` included.
    fn total(&self) -> usize {
        match &self.entries {
            Entries::Owned { flags, .. } => flags.len(),
            Entries::Shared { len, .. } => *len,
        }
    }

    fn len(&self) -> usize {
        self.total() - self.skip
    }

    fn key(&self, i: usize, width: usize) -> &[u8] {
        &self.keys()[i * width..(i + 1) * width]
    }

    /// The first position at or after `from` whose entry is not below `key`
    /// (a whole entry or a prefix).
    fn lower_bound(&self, key: &[u8], from: usize, width: usize) -> usize {
        let keys = self.keys();
        let (mut lo, mut hi) = (from, self.total());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if compare_keys(&keys[mid * width..(mid + 1) * width], key) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The entries as vectors this run owns (a file's are copied first).
    fn owned(&mut self) -> (&mut Vec<u8>, &mut Vec<u8>) {
        if let Entries::Shared { .. } = self.entries {
            self.entries = Entries::Owned {
                keys: self.keys().to_vec(),
                flags: self.flags().to_vec(),
            };
        }
        match &mut self.entries {
            Entries::Owned { keys, flags } => (keys, flags),
            Entries::Shared { .. } => unreachable!("copied above"),
        }
    }

    fn push(&mut self, key: &[u8], flags: u8) {
        let (keys, all) = self.owned();
        keys.extend_from_slice(key);
        all.push(flags);
    }
}

/// The level of one index: its runs, oldest first.
#[derive(Debug)]
pub(crate) struct Level {
    width: usize,
    runs: Vec<Run>,
    /// Entries in all runs (a key in two runs counts twice).
    len: usize,
}

impl Level {
    pub fn new(width: usize) -> Level {
        Level {
            width,
            runs: Vec::new(),
            len: 0,
        }
    }

    /// Entries held, a key held by several runs once per run: the budget
    /// the writer counts, and never less than the keys a merge will take.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stages `key` as added (`add`) or removed, a flip of its state;
    /// returns what that changes the index's count by. Keys of one group
    /// come in ascending order and land in the newest run.
    pub fn stage(&mut self, key: &[u8], add: bool) -> i64 {
        debug_assert_eq!(key.len(), self.width);
        let width = self.width;
        let step = if add { 1 } else { -1 };
        if let Some(run) = self.runs.last_mut()
            && run.len() > 0
            && !run.spilled
        {
            let last = run.total() - 1;
            match compare_keys(key, run.key(last, width)) {
                Ordering::Greater => {
                    run.push(key, if add { LAST_ADD | FIRST_ADD } else { 0 });
                    self.len += 1;
                    return step;
                }
                Ordering::Equal => {
                    let flags = &mut run.owned().1[last];
                    if (*flags & LAST_ADD != 0) == add {
                        return 0;
                    }
                    *flags = (*flags & FIRST_ADD) | if add { LAST_ADD } else { 0 };
                    return step;
                }
                Ordering::Less => {}
            }
        }
        self.settle();
        let mut run = Run::default();
        run.push(key, if add { LAST_ADD | FIRST_ADD } else { 0 });
        self.runs.push(run);
        self.len += 1;
        step
    }

    /// Merges the newest runs while the older is at most [`GROWTH`] times
    /// the newer (or there are too many).
    fn settle(&mut self) {
        let spilled = self.spilled_runs();
        while let [.., older, newer] = &self.runs[spilled..] {
            if older.len() > GROWTH * newer.len() && self.runs.len() - spilled <= MOST_RUNS {
                break;
            }
            let newer = self.runs.pop().unwrap_or_default();
            let older = self.runs.pop().unwrap_or_default();
            let before = older.len() + newer.len();
            let merged = merge(older, newer, self.width);
            // A key in both runs is now held once.
            self.len -= before - merged.len();
            self.runs.push(merged);
        }
    }

    /// A key's state as a read shows it: `Some(true)` staged as added,
    /// `Some(false)` as removed, `None` not staged.
    pub fn get(&self, key: &[u8]) -> Option<bool> {
        let width = self.width;
        self.runs.iter().rev().find_map(|run| {
            let at = run.lower_bound(key, run.skip, width);
            (at < run.total() && run.key(at, width) == key).then(|| run.flags()[at] & LAST_ADD != 0)
        })
    }

    /// Drops `key` from every run (a direct change of the tree follows);
    /// returns what its staging had changed the index's count by.
    pub fn unstage(&mut self, key: &[u8]) -> i64 {
        let width = self.width;
        let (mut first, mut last) = (None, None);
        for run in &mut self.runs {
            let at = run.lower_bound(key, run.skip, width);
            if at < run.total() && run.key(at, width) == key {
                let (keys, all) = run.owned();
                let flags = all.remove(at);
                keys.drain(at * width..(at + 1) * width);
                first.get_or_insert(flags & FIRST_ADD);
                last = Some(flags & LAST_ADD);
                self.len -= 1;
            }
        }
        self.runs.retain(|run| run.len() > 0);
        match (first, last) {
            (Some(first), Some(last)) => effect(first | last),
            _ => 0,
        }
    }

    /// A cursor at the first staged key not below `key`.
    pub fn cursor(&self, key: &[u8]) -> LevelCursor<'_> {
        let width = self.width;
        LevelCursor {
            width,
            at: self
                .runs
                .iter()
                .map(|run| run.lower_bound(key, run.skip, width))
                .collect(),
            runs: &self.runs,
            head: None,
        }
    }

    /// Takes the lowest `most` keys out of the level, each with its state
    /// as a read shows it (entries of `width` bytes in `keys`, states in
    /// `adds`); returns what they had changed the index's count by.
    pub fn take_lowest(&mut self, most: usize, keys: &mut Vec<u8>, adds: &mut Vec<bool>) -> i64 {
        let mut change = 0;
        let mut cursor = self.cursor(&[]);
        let mut taken = 0;
        while taken < most {
            let Some((key, flags)) = cursor.next_flags() else {
                break;
            };
            keys.extend_from_slice(key);
            adds.push(flags & LAST_ADD != 0);
            change += effect(flags);
            taken += 1;
        }
        let ends: Vec<usize> = cursor.at;
        for (run, end) in self.runs.iter_mut().zip(ends) {
            self.len -= end - run.skip;
            run.skip = end;
        }
        self.runs.retain(|run| run.len() > 0);
        change
    }
}

impl Level {
    /// How many runs, the oldest, files hold (spilled runs come before
    /// the runs staged in memory).
    fn spilled_runs(&self) -> usize {
        self.runs.iter().take_while(|run| run.spilled).count()
    }

    /// The entries of each spilled run, oldest first.
    pub fn spilled_lens(&self) -> Vec<usize> {
        self.runs[..self.spilled_runs()]
            .iter()
            .map(Run::len)
            .collect()
    }

    /// Entries staged in memory, not yet in a run file.
    pub fn memory_len(&self) -> usize {
        self.runs[self.spilled_runs()..].iter().map(Run::len).sum()
    }

    /// The runs staged in memory, as positions in the list of runs.
    pub fn memory_runs(&self) -> Range<usize> {
        self.spilled_runs()..self.runs.len()
    }

    /// Every key of the runs in `range` once, in order, with its first
    /// state from the oldest of them and its last from the newest: those
    /// runs as one, what a run file holds (see `index::levelfile`).
    pub fn flatten(&self, range: Range<usize>) -> (Vec<u8>, Vec<u8>) {
        let runs = &self.runs[range];
        let mut cursor = LevelCursor {
            width: self.width,
            at: runs.iter().map(|run| run.skip).collect(),
            runs,
            head: None,
        };
        let (mut keys, mut flags) = (Vec::new(), Vec::new());
        while let Some((key, bits)) = cursor.next_flags() {
            keys.extend_from_slice(key);
            flags.push(bits);
        }
        (keys, flags)
    }

    /// Replaces the runs in `range` with one spilled run: the `len`
    /// entries a run file holds in `bytes` (keys from `keys_at`, flags
    /// from `flags_at`), which are what [`Level::flatten`] gave for them.
    /// Loading a chain at open appends with an empty range at the end.
    pub fn replace_with_spilled(
        &mut self,
        range: Range<usize>,
        bytes: Arc<RunBytes>,
        keys_at: usize,
        flags_at: usize,
        len: usize,
    ) {
        debug_assert!(range.start <= self.spilled_runs());
        let removed: usize = self.runs[range.clone()].iter().map(Run::len).sum();
        let run = Run {
            entries: Entries::Shared {
                bytes,
                keys_at,
                flags_at,
                len,
            },
            skip: 0,
            spilled: true,
        };
        self.runs.splice(range, [run]);
        self.len = self.len - removed + len;
    }

    /// What the level changes the index's count by.
    #[cfg(test)]
    fn change(&self) -> i64 {
        let (_, flags) = self.flatten(0..self.runs.len());
        flags.iter().map(|&f| effect(f)).sum()
    }
}

/// Merges two runs, `newer`'s states over `older`'s.
fn merge(older: Run, newer: Run, width: usize) -> Run {
    let total = older.len() + newer.len();
    let mut keys = Vec::with_capacity(total * width);
    let mut flags = Vec::with_capacity(total);
    let (older_keys, older_flags) = (older.keys(), older.flags());
    let (newer_keys, newer_flags) = (newer.keys(), newer.flags());
    let (mut i, mut j) = (older.skip, newer.skip);
    while i < older_flags.len() && j < newer_flags.len() {
        let (a, b) = (older.key(i, width), newer.key(j, width));
        match compare_keys(a, b) {
            Ordering::Less => {
                keys.extend_from_slice(a);
                flags.push(older_flags[i]);
                i += 1;
            }
            Ordering::Greater => {
                keys.extend_from_slice(b);
                flags.push(newer_flags[j]);
                j += 1;
            }
            Ordering::Equal => {
                keys.extend_from_slice(b);
                flags.push((older_flags[i] & FIRST_ADD) | (newer_flags[j] & LAST_ADD));
                i += 1;
                j += 1;
            }
        }
    }
    keys.extend_from_slice(&older_keys[i * width..]);
    flags.extend_from_slice(&older_flags[i..]);
    keys.extend_from_slice(&newer_keys[j * width..]);
    flags.extend_from_slice(&newer_flags[j..]);
    Run {
        entries: Entries::Owned { keys, flags },
        skip: 0,
        spilled: false,
    }
}

/// Walks the level's keys in order, each once, in the state its newest
/// run gives it.
#[derive(Debug)]
pub(crate) struct LevelCursor<'l> {
    width: usize,
    runs: &'l [Run],
    /// Each run's next position.
    at: Vec<usize>,
    /// The next key's runs, found by [`LevelCursor::peek`]: (first run
    /// holding it, newest run holding it).
    head: Option<(usize, usize)>,
}

impl<'l> LevelCursor<'l> {
    /// Moves to the first key not below `key`, which must not be below the
    /// last key returned. A key equal to the last one returned is returned
    /// again, as the tree's cursor does: each run is searched from its
    /// start, not from where the cursor is.
    pub fn seek_forward(&mut self, key: &[u8]) {
        let width = self.width;
        for (run, at) in self.runs.iter().zip(&mut self.at) {
            *at = run.lower_bound(key, run.skip, width);
        }
        self.head = None;
    }

    /// The next key and whether it is staged as added, without moving.
    pub fn peek(&mut self) -> Option<(&'l [u8], bool)> {
        self.find_head()
            .map(|(key, flags)| (key, flags & LAST_ADD != 0))
    }

    /// The next key and whether it is staged as added.
    pub fn next(&mut self) -> Option<(&'l [u8], bool)> {
        self.next_flags()
            .map(|(key, flags)| (key, flags & LAST_ADD != 0))
    }

    fn next_flags(&mut self) -> Option<(&'l [u8], u8)> {
        let (key, flags) = self.find_head()?;
        let width = self.width;
        for (run, at) in self.runs.iter().zip(&mut self.at) {
            if *at < run.total() && run.key(*at, width) == key {
                *at += 1;
            }
        }
        self.head = None;
        Some((key, flags))
    }

    /// The smallest next key over the runs, with its first state from the
    /// oldest run holding it and its last from the newest.
    fn find_head(&mut self) -> Option<(&'l [u8], u8)> {
        let width = self.width;
        let runs = self.runs;
        if self.head.is_none() {
            let mut head: Option<(usize, usize)> = None;
            for (r, (run, &at)) in runs.iter().zip(&self.at).enumerate() {
                if at >= run.total() {
                    continue;
                }
                head = match head {
                    None => Some((r, r)),
                    Some((first, newest)) => {
                        let best = runs[newest].key(self.at[newest], width);
                        match compare_keys(run.key(at, width), best) {
                            Ordering::Less => Some((r, r)),
                            Ordering::Equal => Some((first, r)),
                            Ordering::Greater => Some((first, newest)),
                        }
                    }
                };
            }
            self.head = head;
        }
        let (first, newest) = self.head?;
        let key = runs[newest].key(self.at[newest], width);
        let flags = (runs[first].flags()[self.at[first]] & FIRST_ADD)
            | (runs[newest].flags()[self.at[newest]] & LAST_ADD);
        Some((key, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn key(n: u64) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&(n % 61).to_be_bytes());
        k[8..].copy_from_slice(&(n as u32).wrapping_mul(2_654_435_761).to_be_bytes());
        k
    }

    /// The level against a model (key → (first state, last state)) under
    /// the write path's rule, in groups of sorted keys and single stages,
    /// with slices taken out from the bottom and keys unstaged: every read
    /// and every count change as the model says.
    #[test]
    fn runs_read_as_one_ordered_map() {
        let mut level = Level::new(12);
        let mut model: BTreeMap<[u8; 12], (bool, bool)> = BTreeMap::new();
        let mut tree: std::collections::BTreeSet<[u8; 12]> = Default::default();
        let mut count: i64 = 0;
        let mut rng = crate::datagen::rng::Rng::new(7);
        let mut next = move || rng.next_u64();
        for round in 0..300u64 {
            let group = 1 + (next() % 200) as usize;
            let mut keys: Vec<[u8; 12]> = (0..group).map(|_| key(next() % 3000)).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let present = model.get(&k).map_or(tree.contains(&k), |&(_, last)| last);
                let add = !present;
                count += level.stage(&k, add);
                model
                    .entry(k)
                    .and_modify(|(_, last)| *last = add)
                    .or_insert((add, add));
            }
            if round % 37 == 5 {
                let k = key(next() % 3000);
                let before = model.remove(&k);
                let change = level.unstage(&k);
                let want = match before {
                    Some((first, last)) if first == last => {
                        if last {
                            1
                        } else {
                            -1
                        }
                    }
                    _ => 0,
                };
                assert_eq!(change, want);
                count -= change;
            }
            if round % 23 == 11 {
                let most = (next() % 400) as usize;
                let (mut keys, mut adds) = (Vec::new(), Vec::new());
                let change = level.take_lowest(most, &mut keys, &mut adds);
                let taken: Vec<_> = model.keys().take(most).copied().collect();
                assert_eq!(keys, taken.concat());
                let mut want = 0;
                for (k, add) in taken.iter().zip(&adds) {
                    let (first, last) = model.remove(k).unwrap();
                    assert_eq!(*add, last);
                    if first == last {
                        want += if last { 1 } else { -1 };
                    }
                    if last {
                        tree.insert(*k);
                    } else {
                        tree.remove(k);
                    }
                }
                assert_eq!(change, want);
                count -= change;
            }
            // Every read matches the model.
            let mut cursor = level.cursor(&[]);
            for (k, &(_, last)) in &model {
                assert_eq!(cursor.next(), Some((&k[..], last)));
            }
            assert_eq!(cursor.next(), None);
            let probe = key(next() % 3000);
            assert_eq!(level.get(&probe), model.get(&probe).map(|&(_, last)| last));
            let skip_to = key(next() % 3000);
            let start = &probe[..1 + (next() % 12) as usize];
            let mut cursor = level.cursor(start);
            let expected: Vec<_> = model
                .iter()
                .filter(|(k, _)| compare_keys(&k[..], start) != Ordering::Less)
                .take(3)
                .map(|(k, &(_, last))| (k.to_vec(), last))
                .collect();
            for e in &expected {
                assert_eq!(cursor.next().map(|(k, a)| (k.to_vec(), a)), Some(e.clone()));
            }
            if let Some(last) = expected.last()
                && skip_to[..] >= last.0[..]
            {
                cursor.seek_forward(&skip_to);
                let want = model
                    .range(skip_to..)
                    .next()
                    .map(|(k, &(_, last))| (k.to_vec(), last));
                assert_eq!(cursor.peek().map(|(k, a)| (k.to_vec(), a)), want);
            }
            assert!(level.runs.len() <= MOST_RUNS + 1);
            assert_eq!(level.len(), level.runs.iter().map(Run::len).sum::<usize>());
            let net: i64 = model
                .values()
                .map(|&(first, last)| match (first, last) {
                    (true, true) => 1,
                    (false, false) => -1,
                    _ => 0,
                })
                .sum();
            assert_eq!(count, net, "round {round}");
        }
        assert!(level.len() >= model.len());
    }

    /// Runs spilled to a file (twice, then the two files merged into one)
    /// read the same, count the same, and take further stages the same as
    /// a level that kept everything in memory; an entry dropped from a
    /// spilled run is dropped from a copy, not from the file's bytes.
    #[test]
    fn spilled_runs_read_as_the_memory_they_replace() {
        let mut level = Level::new(12);
        let mut kept = Level::new(12);
        let mut delta = 0;
        let mut rng = crate::datagen::rng::Rng::new(11);
        let file = |level: &Level, range: Range<usize>| {
            let (keys, flags) = level.flatten(range);
            let len = flags.len();
            let keys_at = 3;
            let mut bytes = vec![9u8; keys_at];
            bytes.extend_from_slice(&keys);
            bytes.extend_from_slice(&flags);
            (
                Arc::new(RunBytes::Read(bytes)),
                keys_at,
                keys_at + keys.len(),
                len,
            )
        };
        for round in 0..60 {
            let mut keys: Vec<[u8; 12]> = (0..50).map(|_| key(rng.next_u64() % 500)).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let add = level.get(&k) != Some(true);
                assert_eq!(kept.get(&k), level.get(&k));
                let step = level.stage(&k, add);
                assert_eq!(kept.stage(&k, add), step);
                delta += step;
            }
            if round == 20 || round == 40 {
                let memory = level.memory_runs();
                assert!(memory.len() > 1, "the test wants several runs");
                let (bytes, keys_at, flags_at, len) = file(&level, memory.clone());
                level.replace_with_spilled(memory, bytes, keys_at, flags_at, len);
                assert_eq!(level.memory_len(), 0);
                assert_eq!(level.spilled_lens().last(), Some(&len));
            }
            if round == 50 {
                assert_eq!(level.spilled_lens().len(), 2);
                let (bytes, keys_at, flags_at, len) = file(&level, 0..2);
                level.replace_with_spilled(0..2, bytes, keys_at, flags_at, len);
                assert_eq!(level.spilled_lens(), vec![len]);
                assert!(level.memory_len() > 0);
            }
            assert_eq!(level.change(), delta);
            assert_eq!(kept.change(), delta);
            let mut a = level.cursor(&[]);
            let mut b = kept.cursor(&[]);
            loop {
                let (x, y) = (a.next_flags(), b.next_flags());
                assert_eq!(x, y);
                if x.is_none() {
                    break;
                }
            }
        }
        // Dropping an entry a spilled run holds copies that run.
        let (keys, _) = level.flatten(0..1);
        let victim = keys[..12].to_vec();
        assert_eq!(level.unstage(&victim), kept.unstage(&victim));
        assert_eq!(level.get(&victim), kept.get(&victim));
        assert_eq!(
            level.flatten(0..level.runs.len()),
            kept.flatten(0..kept.runs.len())
        );
    }
}
