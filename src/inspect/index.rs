//! Index files for tools: [`check_store`] checks every index file of a store
//! on its own (pages, order, fences, free list, reachability) and against the
//! log it was built from; [`rebuild`] recreates every index from the log; the
//! page codecs ([`decode_tree_page`], [`check_index_bytes`], ...) let a fuzzer
//! or a dump tool work on single pages and made-up files.
//!
//! An index may legitimately lag the log: it holds the log up to the LSN in
//! its meta page, and opening the store replays the rest. The cross-check
//! therefore compares each index with the events live *as of its own
//! checkpoint LSN*, and reports the records after it as pending replay (not
//! as a problem).

mod log_walk;
mod pages;
mod rebuild;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use pages::{
    FREE_IDS_PER_PAGE, FileCheck, FreeListPage, IndexStats, MetaInfo, PAGE_SIZE, TreePage,
    check_index_bytes, check_index_bytes_with, decode_free_list_page, decode_meta_page,
    decode_tree_page, encode_free_list_page, encode_meta_page, encode_tree_page, reseal_page,
};
pub use rebuild::{RebuildReport, rebuild};

use crate::error::{Error, io_error};
use crate::eventstore::{MANIFEST_FILE, load_manifest, lock_store_dir_shared};
use crate::hex::encode as hex;
use crate::ids::{Location, Lsn, ShardId};
use crate::index::levelfile::RunHeader;
use crate::index::{IndexKind, LAST_ADD, location_at_end};
use crate::storage::FileStorage;
use crate::wal::{Log, WalError};
use log_walk::{LogWalk, header_never_written, walk_log};

/// Problems listed per index and kind of mismatch before the rest are
/// summed up in one line.
const LISTED_PER_KIND: usize = 50;

/// One thing wrong with the store, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The index file, log segment or directory concerned.
    pub file: PathBuf,
    /// The index page, when the problem is in one.
    pub page: Option<u64>,
    /// Byte offset in `file`, when known (a page's start, a record's frame).
    pub offset: Option<u64>,
    /// The index concerned, if any.
    pub index: Option<IndexKind>,
    /// The event concerned (64 hex characters), if any.
    pub event_id: Option<String>,
    pub reason: String,
}

/// One index file's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSummary {
    pub shard: ShardId,
    pub kind: IndexKind,
    pub path: PathBuf,
    /// The file exists.
    pub present: bool,
    /// What checking the file found (`None` when it is missing).
    pub check: Option<FileCheck>,
    /// The LSN its meta page in use says it holds.
    pub checkpoint_lsn: Option<Lsn>,
    /// Log records after the checkpoint, which opening the store replays
    /// into this index (every record for a missing or unreadable file).
    pub pending_replay: u64,
    /// Entries the log's live events must have in this index as of its
    /// checkpoint (or as of what its saved level covers).
    pub expected_entries: Option<u64>,
    /// The run files of the index's level the next open takes back (see
    /// docs/recovery.md, "Spilled runs"): the index is then compared as
    /// the tree and the runs together.
    pub saved_level: Option<SavedLevelSummary>,
    /// Problems found in this index (listed in [`Report::problems`]).
    pub problems: usize,
}

/// The chain of run files the next open takes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedLevelSummary {
    /// Run files in the chain.
    pub runs: usize,
    /// Entries they stage (added or removed; a key in two runs twice).
    pub entries: u64,
    /// What it changes the tree's entry count by.
    pub change: i64,
    /// The last log record it covers: replay starts after it.
    pub covers: Lsn,
}

/// One shard's log, as walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    pub shard: ShardId,
    pub dir: PathBuf,
    pub segments: usize,
    /// Records of whole batches (what opening the store keeps).
    pub records: u64,
    pub event_records: u64,
    pub remove_records: u64,
    /// Events live after the last record.
    pub live_events: u64,
    pub last_lsn: Lsn,
    /// Facts that are not damage (a torn tail the next open cuts, ...).
    pub notes: Vec<String>,
}

/// Everything [`check_store`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub data_dir: PathBuf,
    pub problems: Vec<Problem>,
    pub indexes: Vec<IndexSummary>,
    pub logs: Vec<LogSummary>,
}

impl Report {
    /// No problem found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every index file of the store in `data_dir`, on its own and
/// against the log. Holds the store's lock while it runs: `Err` when the
/// store is open elsewhere (`Error::Locked`), missing (`Error::Missing`),
/// or a file cannot be read. A missing index file is a problem, not an error.
pub fn check_store(data_dir: &Path) -> Result<Report, Error> {
    let _lock = lock_store(data_dir)?;
    let mut report = Report {
        data_dir: data_dir.to_path_buf(),
        problems: Vec::new(),
        indexes: Vec::new(),
        logs: Vec::new(),
    };
    let shards = shard_dirs(data_dir)?;
    // Which indexes the store keeps: term_time only with search.
    let manifest = load_manifest(&FileStorage, data_dir).ok();
    let search = match load_manifest(&FileStorage, data_dir) {
        Ok(manifest) => manifest.search,
        Err(e) => {
            report.problems.push(Problem {
                file: data_dir.join(MANIFEST_FILE),
                page: None,
                offset: None,
                index: None,
                event_id: None,
                reason: format!("{e} (checking term_time only where its file exists)"),
            });
            shards.iter().any(|(_, dir)| {
                dir.join("index")
                    .join(IndexKind::TermTime.file_name())
                    .exists()
            })
        }
    };
    if shards.is_empty() {
        report.problems.push(Problem {
            file: data_dir.to_path_buf(),
            page: None,
            offset: None,
            index: None,
            event_id: None,
            reason: "no shard directory (shard-NNNN)".to_string(),
        });
    }
    for (shard, dir) in &shards {
        check_shard(dir, *shard, search, &mut report)?;
    }
    if manifest.is_some_and(|m| m.analytics) && report.problems.is_empty() {
        check_analytics(data_dir, &shards, &mut report)?;
    }
    Ok(report)
}

/// The analytics checkpoint against the logs (when the logs themselves
/// are sound): see `analytics::check_checkpoint`.
fn check_analytics(
    data_dir: &Path,
    shards: &[(ShardId, PathBuf)],
    report: &mut Report,
) -> Result<(), Error> {
    let mut logs = Vec::with_capacity(shards.len());
    for (shard, dir) in shards {
        let log_dir = dir.join("log");
        let mut ids: Vec<(crate::ids::SegmentId, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&log_dir).map_err(io_error(&log_dir, "list"))? {
            let entry = entry.map_err(io_error(&log_dir, "list"))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(crate::wal::parse_segment_file_name)
            {
                ids.push((id, entry.path()));
            }
        }
        ids.sort();
        let mut segments = Vec::with_capacity(ids.len());
        for (id, path) in ids {
            // A last segment without a header (an unfinished rotation) is
            // removed at the next open: nothing in it.
            match crate::wal::Segment::open(&FileStorage, &path, *shard, id) {
                Ok(segment) => segments.push(std::sync::Arc::new(segment)),
                Err(_) if header_never_written(&path)? => {}
                Err(e) => return Err(e.into()),
            }
        }
        logs.push(crate::wal::LogSnapshot::of_segments(segments));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Ok(problems) = crate::analytics::check_checkpoint(&FileStorage, data_dir, &logs, now)? {
        let file = data_dir.join(crate::analytics::ANALYTICS_DIR).join("state");
        report
            .problems
            .extend(problems.into_iter().map(|reason| Problem {
                file: file.clone(),
                page: None,
                offset: None,
                index: None,
                event_id: None,
                reason,
            }));
    }
    Ok(())
}

fn check_shard(dir: &Path, shard: ShardId, search: bool, report: &mut Report) -> Result<(), Error> {
    let mut walk = walk_log(&dir.join("log"), shard, search)?;
    predict_open(dir, shard, search, &mut walk)?;
    let last_lsn = walk.last_lsn();
    report.problems.append(&mut walk.problems);
    report.logs.push(LogSummary {
        shard,
        dir: dir.join("log"),
        segments: walk.segments,
        records: walk.lsns.len() as u64,
        event_records: walk.events.len() as u64,
        remove_records: walk.removes,
        live_events: walk.events.iter().filter(|e| e.live_at(last_lsn)).count() as u64,
        last_lsn,
        notes: std::mem::take(&mut walk.notes),
    });
    for kind in IndexKind::ALL {
        if kind == IndexKind::TermTime && !search {
            continue;
        }
        let path = dir.join("index").join(kind.file_name());
        let before = report.problems.len();
        let summary = check_index_file(&path, shard, kind, &walk, &mut report.problems)?;
        report.indexes.push(IndexSummary {
            problems: report.problems.len() - before,
            ..summary
        });
    }
    Ok(())
}

/// Says what the next open does with the end of the shard's log, from the
/// same code the open runs: cuts a torn tail (a note), or refuses damage
/// (a problem, with how to repair it).
fn predict_open(dir: &Path, shard: ShardId, search: bool, walk: &mut LogWalk) -> Result<(), Error> {
    let log_dir = dir.join("log");
    if !log_dir.is_dir() {
        return Ok(());
    }
    let hint = newest_checkpoint(&dir.join("index"), search);
    match Log::predict_end(&FileStorage, &log_dir, shard, hint) {
        Ok(None) => {}
        Ok(Some(tail)) => walk.notes.push(format!(
            "{} at offset {}: {}; the next open cuts this torn tail (never acknowledged as durable)",
            tail.path.display(),
            tail.offset,
            tail.reason
        )),
        Err(WalError::Damaged(damage)) => walk.problems.push(Problem {
            file: damage.path.clone(),
            page: None,
            offset: Some(damage.offset),
            index: None,
            event_id: None,
            reason: format!(
                "damage, not a torn tail: {}; {} valid records follow it, and {}. The next \
                 open refuses the store; `megalith repair --data {}` moves the damaged bytes to \
                 a quarantine file and keeps every valid record",
                damage.reason,
                damage.valid_after,
                damage.evidence,
                dir.parent().unwrap_or(dir).display()
            ),
        }),
        Err(WalError::Io { path, op, source }) => return Err(io_error(&path, op)(source)),
        Err(other) => walk.problems.push(Problem {
            file: log_dir,
            page: None,
            offset: None,
            index: None,
            event_id: None,
            reason: format!("the next open refuses the store: {other}"),
        }),
    }
    Ok(())
}

/// The newest checkpoint among the index files of `dir` (the one the open
/// starts its search for the log's end from), read from their meta pages.
fn newest_checkpoint(dir: &Path, search: bool) -> Option<(Location, Lsn)> {
    let mut newest: Option<(Location, Lsn)> = None;
    for kind in IndexKind::ALL {
        if kind == IndexKind::TermTime && !search {
            continue;
        }
        let Ok(bytes) = read_prefix(&dir.join(kind.file_name()), 2 * PAGE_SIZE) else {
            continue;
        };
        let meta = (0..2u64)
            .filter_map(|slot| {
                let page = bytes.get(slot as usize * PAGE_SIZE..(slot as usize + 1) * PAGE_SIZE)?;
                decode_meta_page(page, slot).ok()
            })
            .max_by_key(|m| m.generation);
        if let Some(meta) = meta
            && meta.checkpoint_lsn != Lsn::ZERO
            && newest.is_none_or(|(_, lsn)| meta.checkpoint_lsn > lsn)
        {
            newest = Some((meta.checkpoint_position, meta.checkpoint_lsn));
        }
    }
    newest
}

fn read_prefix(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(len);
    File::open(path)?.take(len as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn check_index_file(
    path: &Path,
    shard: ShardId,
    kind: IndexKind,
    walk: &LogWalk,
    problems: &mut Vec<Problem>,
) -> Result<IndexSummary, Error> {
    let problem = |page: Option<u64>, event_id: Option<String>, reason: String| Problem {
        file: path.to_path_buf(),
        page,
        offset: page.map(|p| p * PAGE_SIZE as u64),
        index: Some(kind),
        event_id,
        reason,
    };
    let mut summary = IndexSummary {
        shard,
        kind,
        path: path.to_path_buf(),
        present: false,
        check: None,
        checkpoint_lsn: None,
        pending_replay: walk.lsns.len() as u64,
        expected_entries: None,
        saved_level: None,
        problems: 0,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(problem(
                None,
                None,
                "index file is missing (the next open rebuilds it from the whole log)".to_string(),
            ));
            return Ok(summary);
        }
        Err(e) => return Err(io_error(path, "read")(e)),
    };
    summary.present = true;
    let width = kind.width();
    let mut entries = Vec::new();
    let report = crate::index::check::check_index(&bytes, kind, |e| entries.extend_from_slice(e));
    let tree_meta = report.meta().copied();
    let mut check = FileCheck::from(report);
    drop(bytes);
    problems.extend(
        check
            .problems
            .iter()
            .map(|(page, reason)| problem(*page, None, reason.clone())),
    );
    let kind_matches = check
        .meta
        .is_some_and(|m| m.index_kind == kind.id() && usize::from(m.entry_width) == width);
    if let Some(meta) = check.meta.filter(|_| kind_matches) {
        summary.checkpoint_lsn = Some(meta.checkpoint_lsn);
        let mut lsn = meta.checkpoint_lsn;
        if let Some(tree_meta) = tree_meta.filter(|_| kind.random_order()) {
            let dir = path.parent().unwrap_or(Path::new("."));
            let storage = FileStorage;
            let names = crate::index::level_files(&storage, dir).map_err(io_error(dir, "list"))?;
            let mine: Vec<&String> = names
                .iter()
                .filter(|n| crate::index::is_level_file(kind, n))
                .collect();
            let chain =
                crate::index::read_chain(&storage, dir, kind, &mine, &tree_meta, walk.last_lsn())?;
            for (name, reason) in &chain.unused {
                check.notes.push(format!(
                    "{} is not used ({reason}): the next open removes it and replays its \
                     records",
                    dir.join(name).display()
                ));
            }
            if let Some((_, last, _)) = chain.taken.last() {
                let mut runs = SavedLevelSummary {
                    runs: chain.taken.len(),
                    entries: 0,
                    change: 0,
                    covers: last.covered.0,
                };
                for (_, header, bytes) in &chain.taken {
                    runs.entries += header.entries as u64;
                    runs.change += header.change;
                    entries = with_run(&entries, header, bytes, width);
                }
                check.notes.push(format!(
                    "{} run file(s) of {} entries cover the log through LSN {}; the next open \
                     takes them back",
                    runs.runs, runs.entries, runs.covers.0
                ));
                summary.saved_level = Some(runs);
                lsn = runs.covers;
            }
        }
        summary.pending_replay = walk.records_after(lsn);
        if lsn > walk.last_lsn() {
            problems.push(problem(
                None,
                None,
                format!(
                    "checkpoint LSN {lsn} is past the log's last LSN {} (the next open rebuilds this index)",
                    walk.last_lsn()
                ),
            ));
        } else {
            let mut found = Vec::new();
            let expected = cross_check(kind, lsn, walk, &entries, &mut found);
            summary.expected_entries = Some(expected);
            problems.extend(
                found
                    .into_iter()
                    .map(|(event, reason)| problem(None, event, reason)),
            );
        }
    }
    summary.check = Some(check);
    Ok(summary)
}

/// The tree's `entries` (in order) as a run file leaves them.
fn with_run(entries: &[u8], run: &RunHeader, bytes: &[u8], width: usize) -> Vec<u8> {
    let keys = &bytes[run.keys_at..run.flags_at];
    let flags = &bytes[run.flags_at..run.flags_at + run.entries];
    let staged = keys.chunks_exact(width).zip(flags);
    let mut out = Vec::with_capacity(entries.len());
    let mut tree = entries.chunks_exact(width).peekable();
    for (key, &flags) in staged {
        while let Some(entry) = tree.next_if(|e| *e < key) {
            out.extend_from_slice(entry);
        }
        while tree.next_if(|e| *e == key).is_some() {}
        if flags & LAST_ADD != 0 {
            out.extend_from_slice(key);
        }
    }
    for entry in tree {
        out.extend_from_slice(entry);
    }
    out
}

/// Compares the entries an index holds with those the events live at `lsn`
/// must have; pushes (event id, reason) for each mismatch and returns the
/// number of expected entries.
fn cross_check(
    kind: IndexKind,
    lsn: Lsn,
    walk: &LogWalk,
    held: &[u8],
    found: &mut Vec<(Option<String>, String)>,
) -> u64 {
    let width = kind.width();
    let list = &walk.entries[kind as usize];
    let key = |i: usize| &list.bytes[i * width..(i + 1) * width];
    let mut expected: Vec<usize> = (0..list.owners.len())
        .filter(|&i| walk.events[list.owners[i] as usize].live_at(lsn))
        .collect();
    expected.sort_unstable_by(|&a, &b| key(a).cmp(key(b)));
    // Entries whose presence a merge written part-way may have changed
    // already (see `docs/recovery.md`, "Checkpoint"): those of events
    // stored or removed by a record after the checkpoint. Replay sets each
    // of them again, so either state is right; every other entry must be
    // exactly as of the checkpoint.
    let mut unsettled: Vec<&[u8]> = (0..list.owners.len())
        .filter(|&i| {
            let event = &walk.events[list.owners[i] as usize];
            event.lsn > lsn || event.removed_at.is_some_and(|r| r > lsn)
        })
        .map(key)
        .collect();
    unsettled.sort_unstable();
    let settled = |entry: &[u8]| unsettled.binary_search(&entry).is_err();
    let mut got: Vec<&[u8]> = held.chunks_exact(width).collect();
    got.sort_unstable();

    let mut tally = Tally::default();
    for pair in got.windows(2) {
        if pair[0] == pair[1] {
            let event = event_at(walk, pair[0]);
            tally.push(
                found,
                Mismatch::Duplicate,
                event,
                format!(
                    "entry for {} appears more than once",
                    location_at_end(pair[0])
                ),
            );
        }
    }
    got.dedup();
    if kind == IndexKind::Primary {
        for pair in got.windows(2) {
            if pair[0][..32] == pair[1][..32] {
                tally.push(
                    found,
                    Mismatch::Duplicate,
                    Some(hex(&pair[0][..32])),
                    format!(
                        "event id has two entries, at {} and {}",
                        location_at_end(pair[0]),
                        location_at_end(pair[1])
                    ),
                );
            }
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < expected.len() || j < got.len() {
        let order = match (expected.get(i), got.get(j)) {
            (Some(&e), Some(g)) => key(e).cmp(g),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less if !settled(key(expected[i])) => i += 1,
            std::cmp::Ordering::Greater if !settled(got[j]) => j += 1,
            std::cmp::Ordering::Less => {
                let event = &walk.events[list.owners[expected[i]] as usize];
                tally.push(
                    found,
                    Mismatch::Missing,
                    Some(hex(&event.id)),
                    format!("no entry for the event at {}", event.location),
                );
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let (event, reason) = explain_extra(walk, got[j], lsn);
                tally.push(found, Mismatch::Extra, event, reason);
                j += 1;
            }
        }
    }
    tally.finish(found);
    expected.len() as u64
}

/// Why an entry the index holds should not be there.
fn explain_extra(walk: &LogWalk, entry: &[u8], lsn: Lsn) -> (Option<String>, String) {
    let location = location_at_end(entry);
    let Some(&owner) = walk.by_location.get(&location) else {
        let reason = if walk.remove_locations.contains(&location) {
            format!("entry points at {location}, a remove record, not an event")
        } else {
            format!("entry points at {location}, where no record of the log starts")
        };
        return (None, reason);
    };
    let event = &walk.events[owner as usize];
    let reason = if event.lsn > lsn {
        format!(
            "entry points at an event written at LSN {}, after the index's checkpoint LSN {lsn}",
            event.lsn
        )
    } else if let Some(removed) = event.removed_at.filter(|&r| r <= lsn) {
        format!(
            "entry points at an event removed (replaced or deleted) at LSN {removed}, at or before the checkpoint"
        )
    } else {
        format!("entry does not match the event at {location} (a wrong or stale key)")
    };
    (Some(hex(&event.id)), reason)
}

fn event_at(walk: &LogWalk, entry: &[u8]) -> Option<String> {
    let owner = walk.by_location.get(&location_at_end(entry))?;
    Some(hex(&walk.events[*owner as usize].id))
}

#[derive(Debug, Clone, Copy)]
enum Mismatch {
    Missing,
    Extra,
    Duplicate,
}

/// Lists the first few mismatches of each kind and counts the rest.
#[derive(Debug, Default)]
struct Tally {
    counts: [usize; 3],
}

impl Tally {
    fn push(
        &mut self,
        found: &mut Vec<(Option<String>, String)>,
        mismatch: Mismatch,
        event: Option<String>,
        reason: String,
    ) {
        self.counts[mismatch as usize] += 1;
        if self.counts[mismatch as usize] <= LISTED_PER_KIND {
            found.push((event, reason));
        }
    }

    fn finish(&self, found: &mut Vec<(Option<String>, String)>) {
        let names = [
            "missing entries",
            "entries that should not be there",
            "duplicate entries",
        ];
        for (count, name) in self.counts.iter().zip(names) {
            if *count > LISTED_PER_KIND {
                found.push((
                    None,
                    format!(
                        "... and {} more {name} (not listed)",
                        count - LISTED_PER_KIND
                    ),
                ));
            }
        }
    }
}

/// Takes the store's lock (`DATA/LOCK`) shared: no process can open the
/// store while it is held, so the files cannot change, and the lock file
/// is opened read-only (a check works on a read-only file system).
pub(super) fn lock_store(data_dir: &Path) -> Result<File, Error> {
    if !data_dir.join(MANIFEST_FILE).is_file() {
        return Err(Error::Missing(data_dir.to_path_buf()));
    }
    lock_store_dir_shared(data_dir)
}

/// The shard directories (`shard-NNNN`, as the store names them), in order.
pub(super) fn shard_dirs(data_dir: &Path) -> Result<Vec<(ShardId, PathBuf)>, Error> {
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(data_dir).map_err(io_error(data_dir, "list"))? {
        let entry = entry.map_err(io_error(data_dir, "list"))?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix("shard-")) else {
            continue;
        };
        if number.len() == 4
            && number.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = number.parse::<u32>()
            && entry.path().is_dir()
        {
            shards.push((ShardId(n), entry.path()));
        }
    }
    shards.sort();
    Ok(shards)
}
