//! The indexes of one shard, kept in step: every log record is applied to all
//! of them, and they checkpoint together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::btree::{BTree, PreparedCheckpoint, RunFile, RunJob};
use super::error::{IndexError, io_error};
use super::idfilter::{IdFilter, TreeStamp};
use super::keys::{IndexKind, for_each_entry, location_at_end, primary_lower};
use super::level::RunBytes;
use super::levelfile;
use crate::event::{EventId, EventRef};
use crate::ids::{Location, Lsn};
use crate::storage::Storage;

/// Whether a record adds an event's entries or takes them away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Apply {
    Insert,
    Remove,
}

/// A group's index entries, per index (flat, fixed-width), gathered by
/// [`IndexSet::collect`].
#[derive(Debug, Default)]
pub(crate) struct GroupEntries {
    inserts: Vec<Vec<u8>>,
    removes: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) struct IndexSet {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    /// By `IndexKind as usize`; `None` for an index the store does not keep
    /// (term_time without search).
    trees: Vec<Option<BTree>>,
    /// Records up to this LSN (ending at this log position) are already in
    /// the tree and its level (its checkpoint when opened, or what a saved
    /// level covers); replay skips them per tree, so a tree rebuilt from
    /// scratch catches up while the others do not apply anything twice.
    floors: Vec<(Lsn, Location)>,
    /// The filter of the primary index's ids find_id consults (none until
    /// one is complete), and the one being built to replace it.
    ids: Option<Arc<IdFilter>>,
    next_ids: Option<Arc<IdFilter>>,
    /// Builds that failed on these indexes; after [`MAX_FILTER_BUILDS_FAILED`]
    /// no other is started (a reopen in place makes new indexes).
    failed_filter_builds: u32,
    /// `ids` came from the file a clean close saved.
    id_filter_loaded: bool,
    /// The primary index state the filter file on disk was written for, if
    /// it was read or written by these indexes: a close that finds the
    /// index still there does not write the same file again (every
    /// one-shot reading command would).
    id_filter_saved: Option<(TreeStamp, Lsn)>,
    /// The filter in use came from the file and holds the id of every
    /// event through this LSN (see [`IndexSet::load_runs`]).
    id_filter_covers: Lsn,
}

/// Failed id filter builds after which the indexes go on without one.
const MAX_FILTER_BUILDS_FAILED: u32 = 3;

/// The id filter a clean close saved (see [`IndexSet::save_id_filter`]).
pub(crate) const ID_FILTER_FILE: &str = "primary.ids";

/// The file the first version saved the in-memory level of the index
/// `kind` to at a clean close (replaced by run files; removed at open, its
/// records replayed).
fn old_level_file_name(kind: IndexKind) -> String {
    format!("{}.level", kind.name())
}

/// Whether `file` is one of the run files of the index `kind` (see
/// `index::levelfile`), or the level file of the first version.
pub(crate) fn is_level_file(kind: IndexKind, file: &str) -> bool {
    levelfile::run_file_from(kind.name(), file).is_some() || file == old_level_file_name(kind)
}

/// Every index's run files and first-version level files in `dir`.
pub(crate) fn level_files(store: &dyn Storage, dir: &Path) -> std::io::Result<Vec<String>> {
    let mut files: Vec<String> = store
        .list(dir)?
        .into_iter()
        .filter_map(|name| name.into_string().ok())
        .filter(|name| IndexKind::ALL.iter().any(|&kind| is_level_file(kind, name)))
        .collect();
    files.sort();
    Ok(files)
}

/// Writes the run file of `job` in `dir` (through a temporary file, synced
/// and renamed into place, the directory synced) and reads it back through
/// a map.
pub(crate) fn write_run(
    store: &dyn Storage,
    dir: &Path,
    job: &RunJob,
) -> Result<Arc<RunBytes>, IndexError> {
    let path = dir.join(&job.name);
    let temporary = dir.join(format!("{}.tmp", job.name));
    crate::storage::replace_file(store, &temporary, &path, &job.bytes)
        .map_err(|(file, what, e)| io_error(&file, what)(e))?;
    read_run(store, &path)
}

/// Removes the run files `runs` from `dir` and syncs it.
pub(crate) fn remove_runs(
    store: &dyn Storage,
    dir: &Path,
    runs: &[RunFile],
) -> Result<(), IndexError> {
    for run in runs {
        let path = dir.join(&run.name);
        store
            .remove_file(&path)
            .map_err(io_error(&path, "remove"))?;
    }
    if !runs.is_empty() {
        store
            .sync_dir(dir)
            .map_err(io_error(dir, "sync directory"))?;
    }
    Ok(())
}

/// The run files of an index read and checked against its tree.
pub(crate) struct RunChain {
    /// The chain from the tree's checkpoint, oldest first.
    pub taken: Vec<(String, levelfile::RunHeader, Arc<RunBytes>)>,
    /// Every other file, with why it is not used.
    pub unused: Vec<(String, String)>,
}

/// Reads the run files `names` of the index `kind` in `dir` and sorts them
/// out for the tree whose durable meta is `meta`, over a log whose last
/// record is `log_last`: the chain the open takes (see
/// `levelfile::decode` and `levelfile::chain`), and every other file with
/// the reason it is not used. Used by the open and by index-doctor alike.
pub(crate) fn read_chain(
    store: &dyn Storage,
    dir: &Path,
    kind: IndexKind,
    names: &[&String],
    meta: &super::format::Meta,
    log_last: Lsn,
) -> Result<RunChain, IndexError> {
    let mut usable = Vec::new();
    let mut unused = Vec::new();
    for &name in names {
        let bytes = read_run(store, &dir.join(name))?;
        let checked = levelfile::decode(&bytes, meta, log_last).and_then(|header| {
            if levelfile::run_file_from(kind.name(), name) == Some(header.from.0) {
                Ok(header)
            } else {
                Err("its name does not say where it starts".to_string())
            }
        });
        match checked {
            Ok(header) => usable.push((name.clone(), header, bytes)),
            Err(reason) => unused.push((name.clone(), reason)),
        }
    }
    let headers: Vec<levelfile::RunHeader> = usable.iter().map(|(_, h, _)| *h).collect();
    let order = levelfile::chain(&headers, meta);
    let mut taken = Vec::with_capacity(order.len());
    let mut slots: Vec<Option<_>> = usable.into_iter().map(Some).collect();
    for at in order {
        taken.extend(slots[at].take());
    }
    unused.extend(slots.into_iter().flatten().map(|(name, _, _)| {
        (
            name,
            "not in the chain from the checkpoint (replaced by a merge, or after a gap)".into(),
        )
    }));
    Ok(RunChain { taken, unused })
}

/// Reads the run file `path` through a map (a copy where the storage cannot
/// map it).
pub(crate) fn read_run(store: &dyn Storage, path: &Path) -> Result<Arc<RunBytes>, IndexError> {
    let file = store
        .open(path, crate::storage::OpenMode::Read)
        .map_err(io_error(path, "open"))?;
    let bytes = match file.map(0).map_err(io_error(path, "map"))? {
        Some(map) => RunBytes::Mapped(map),
        None => RunBytes::Read(store.read_file(path).map_err(io_error(path, "read"))?),
    };
    Ok(Arc::new(bytes))
}

impl IndexSet {
    /// Opens (or creates) every index file in `dir`: all of them, term_time
    /// only with `search` (without it, a term_time file is removed). A file
    /// that fails its checks is set aside (renamed `*.idx.corrupt`) and
    /// started afresh, to be rebuilt by replaying the whole log; `rebuilt`
    /// names each one and why.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        search: bool,
        rebuilt: &mut Vec<String>,
    ) -> Result<IndexSet, IndexError> {
        let store = &*storage;
        store
            .create_dir_all(dir)
            .map_err(io_error(dir, "create directory"))?;
        let mut trees = Vec::with_capacity(IndexKind::ALL.len());
        for kind in IndexKind::ALL {
            let path = dir.join(kind.file_name());
            if kind == IndexKind::TermTime && !search {
                if store.exists(&path).map_err(io_error(&path, "stat"))? {
                    remove_durably(store, dir, &path)?;
                }
                remove_level_files(store, dir, kind)?;
                trees.push(None);
                continue;
            }
            let tree = match BTree::open(store, &path, kind.id(), kind.width()) {
                Ok(tree) => tree,
                Err(IndexError::Corrupt { reason, .. }) => {
                    rebuilt.push(format!("{}: {reason}", kind.name()));
                    set_aside(store, &path)?;
                    remove_level_files(store, dir, kind)?;
                    BTree::open(store, &path, kind.id(), kind.width())?
                }
                // An index of an older store format: nothing in it is
                // damaged, so it is removed, not set aside.
                Err(IndexError::Width {
                    found, expected, ..
                }) => {
                    rebuilt.push(format!(
                        "{}: format migration ({found}-byte entries of an older store format \
                         become {expected}-byte entries)",
                        kind.name()
                    ));
                    remove_durably(store, dir, &path)?;
                    remove_level_files(store, dir, kind)?;
                    BTree::open(store, &path, kind.id(), kind.width())?
                }
                Err(other) => return Err(other),
            };
            trees.push(Some(tree));
        }
        let floors = trees.iter().map(floor_of).collect();
        let mut set = IndexSet {
            storage,
            dir: dir.to_path_buf(),
            trees,
            floors,
            ids: None,
            next_ids: None,
            failed_filter_builds: 0,
            id_filter_loaded: false,
            id_filter_saved: None,
            id_filter_covers: Lsn::ZERO,
        };
        if let Some((ids, covers)) = set.load_id_filter()? {
            set.ids = Some(Arc::new(ids));
            set.id_filter_loaded = true;
            set.id_filter_covers = Lsn(covers);
            set.id_filter_saved = Some((set.primary_stamp(), Lsn(covers)));
        }
        Ok(set)
    }

    /// The primary index's durable checkpoint, as a saved filter names it.
    fn primary_stamp(&self) -> TreeStamp {
        let meta = self.tree(IndexKind::Primary).meta();
        TreeStamp {
            generation: meta.generation,
            checkpoint_lsn: meta.checkpoint_lsn.0,
            entry_count: meta.entry_count,
        }
    }

    /// The filter a clean close saved, if it was written for the primary
    /// index as it is on disk now (every id of the index is then in it;
    /// replay adds the ids of the records after it). Anything else (no
    /// file, another checkpoint, damage) is no filter: one is built by a
    /// scan, as without the file. The device failing to read it is an
    /// error, as for any other file of the store.
    fn load_id_filter(&self) -> Result<Option<(IdFilter, u64)>, IndexError> {
        let path = self.dir.join(ID_FILTER_FILE);
        if !self
            .storage
            .exists(&path)
            .map_err(io_error(&path, "stat"))?
        {
            return Ok(None);
        }
        let bytes = self
            .storage
            .read_file(&path)
            .map_err(io_error(&path, "read"))?;
        Ok(IdFilter::decode(&bytes, self.primary_stamp()).ok())
    }

    /// Stops consulting and filling any filter.
    pub fn drop_id_filter(&mut self) {
        self.ids = None;
        self.next_ids = None;
        self.id_filter_loaded = false;
    }

    /// Whether the filter in use came from the file a clean close saved.
    pub fn id_filter_loaded(&self) -> bool {
        self.id_filter_loaded
    }

    /// Saves the filter in use for the next open (at close, after the last
    /// checkpoint: the filter holds every id the primary index and its
    /// level hold). Written to a
    /// temporary file, synced and renamed into place. Without a complete
    /// filter, a saved one is removed. A failure loses nothing: the next
    /// open builds a filter by a scan.
    pub fn save_id_filter(&mut self, covers: Lsn) -> Result<(), IndexError> {
        let path = self.dir.join(ID_FILTER_FILE);
        let stamp = self.primary_stamp();
        // The tree on disk is the one in memory (the stamp names it). A
        // level, saved or not, needs nothing: the filter holds its ids,
        // and replay adds them again when the level is not taken.
        let settled = self.tree(IndexKind::Primary).dirty_nodes() == 0;
        let Some(ids) = self.ids.as_ref().filter(|ids| ids.is_complete() && settled) else {
            if self
                .storage
                .exists(&path)
                .map_err(io_error(&path, "stat"))?
            {
                remove_durably(&*self.storage, &self.dir, &path)?;
            }
            self.id_filter_saved = None;
            return Ok(());
        };
        // The file holds a filter for this very index state already.
        if self.id_filter_saved == Some((stamp, covers)) {
            return Ok(());
        }
        let bytes = ids.encode(stamp, covers.0);
        let temporary = self.dir.join(format!("{ID_FILTER_FILE}.tmp"));
        crate::storage::replace_file(&*self.storage, &temporary, &path, &bytes)
            .map_err(|(file, what, e)| io_error(&file, what)(e))?;
        self.id_filter_saved = Some((stamp, covers));
        Ok(())
    }

    /// Takes the chains of run files (see `index::levelfile`): for each
    /// random-order index, the run that starts where its tree's checkpoint
    /// ends, staged over the tree exactly as it is on disk and covering
    /// records the log still holds (`log_last` is its last record), then
    /// the run that starts where that one ends, and so on. They become the
    /// tree's spilled runs, and replay starts for that tree where the chain
    /// ends. Every other run file (damaged, staged over another checkpoint,
    /// past the log's end, off the chain, or replaced by a merge of runs)
    /// and any level file of the first version is removed: replay stages
    /// its records again from the log. Returns how many runs were taken.
    /// Called by recovery before replay, never after a repair (the indexes
    /// are then rebuilt, and their runs are gone).
    pub fn load_runs(&mut self, log_last: Lsn) -> Result<u32, IndexError> {
        let mut loaded = 0;
        let listed = self
            .storage
            .list(&self.dir)
            .map_err(io_error(&self.dir, "list"))?;
        let mut names: Vec<String> = Vec::new();
        for name in listed.into_iter().filter_map(|n| n.into_string().ok()) {
            if name.ends_with(".run.tmp") || name.ends_with(".level.tmp") {
                // Left half-written by a crash: the log holds its records.
                remove_durably(&*self.storage, &self.dir, &self.dir.join(&name))?;
            } else if IndexKind::ALL
                .iter()
                .any(|&kind| is_level_file(kind, &name))
            {
                names.push(name);
            }
        }
        for kind in IndexKind::ALL {
            let i = kind as usize;
            let mine: Vec<&String> = names.iter().filter(|n| is_level_file(kind, n)).collect();
            if mine.is_empty() {
                continue;
            }
            let Some(tree) = self.trees[i].as_mut().filter(|_| kind.random_order()) else {
                // Not for any tree: gone, so that no later open mistakes
                // it for one.
                for name in mine {
                    remove_durably(&*self.storage, &self.dir, &self.dir.join(name))?;
                }
                continue;
            };
            let chain = read_chain(
                &*self.storage,
                &self.dir,
                kind,
                &mine,
                tree.meta(),
                log_last,
            )?;
            for (name, header, bytes) in chain.taken {
                tree.load_run(name, &header, bytes);
                loaded += 1;
            }
            for (name, _) in chain.unused {
                remove_durably(&*self.storage, &self.dir, &self.dir.join(name))?;
            }
            self.floors[i] = tree.runs_end();
        }
        // The saved filter must hold every id replay will not add again:
        // one saved before the records the primary's runs cover (a crash
        // between spilling the runs and saving the filter, or a filter
        // kept from an earlier close) is not used.
        let floor = self.floors[IndexKind::Primary as usize].0;
        if self.id_filter_loaded && self.id_filter_covers < floor {
            self.drop_id_filter();
            self.id_filter_saved = None;
        }
        Ok(loaded)
    }

    /// The run files of `kind`'s level (for statistics).
    pub fn run_paths(&self, kind: IndexKind) -> Vec<PathBuf> {
        self.trees[kind as usize]
            .as_ref()
            .map(|tree| {
                tree.runs()
                    .iter()
                    .map(|run| self.dir.join(&run.name))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The storage and directory run files are written with.
    pub fn run_io(&self) -> (Arc<dyn Storage>, PathBuf) {
        (Arc::clone(&self.storage), self.dir.clone())
    }

    /// Run files to write: each random-order index's memory runs spilled,
    /// covering the log through `covered` (synced by the caller).
    pub fn spill_jobs(&self, covered: (Lsn, Location)) -> Vec<(IndexKind, RunJob)> {
        self.random_order_trees()
            .filter_map(|(kind, tree)| Some((kind, tree.spill_job(kind.name(), covered)?)))
            .collect()
    }

    /// Run files to write: neighbouring spilled runs to merge (see
    /// `BTree::run_merge_job`), at most one per index.
    pub fn run_merge_jobs(&self) -> Vec<(IndexKind, RunJob)> {
        self.random_order_trees()
            .filter_map(|(kind, tree)| Some((kind, tree.run_merge_job(kind.name())?)))
            .collect()
    }

    fn random_order_trees(&self) -> impl Iterator<Item = (IndexKind, &BTree)> + '_ {
        IndexKind::ALL
            .into_iter()
            .filter(|kind| kind.random_order())
            .filter_map(|kind| Some((kind, self.trees[kind as usize].as_ref()?)))
    }

    /// Takes the run file `job` wrote for `kind`; returns the files it
    /// replaced, which the caller removes.
    pub fn adopt_run(
        &mut self,
        kind: IndexKind,
        job: &RunJob,
        bytes: Arc<RunBytes>,
    ) -> Vec<RunFile> {
        match self.trees[kind as usize].as_mut() {
            Some(tree) => tree.adopt_run(job, bytes),
            None => Vec::new(),
        }
    }

    /// Entries in spilled runs and in memory over the random-order indexes,
    /// and entries their trees hold: the writer merges the runs into the
    /// trees once they are a fair share of them (see `shard::writer`).
    pub fn level_and_tree_entries(&self) -> (u64, u64) {
        self.random_order_trees()
            .fold((0, 0), |(level, trees), (_, tree)| {
                (
                    level + tree.level_len() as u64,
                    trees + tree.tree_entry_count(),
                )
            })
    }

    /// Entries staged in memory, over all indexes (not yet in run files).
    pub fn memory_len(&self) -> usize {
        self.kept().map(BTree::memory_len).sum()
    }

    /// Sets aside and restarts the index `kind` (it will be rebuilt by replay).
    pub fn reset(&mut self, kind: IndexKind) -> Result<(), IndexError> {
        let path = self.dir.join(kind.file_name());
        set_aside(&*self.storage, &path)?;
        remove_level_files(&*self.storage, &self.dir, kind)?;
        let tree = Some(BTree::open(&*self.storage, &path, kind.id(), kind.width())?);
        self.floors[kind as usize] = floor_of(&tree);
        self.trees[kind as usize] = tree;
        if kind == IndexKind::Primary {
            // Built again for the rebuilt index.
            self.drop_id_filter();
        }
        Ok(())
    }

    /// Starts every index afresh (their files removed), to be rebuilt by
    /// replaying the whole log: after a repair moved damaged log records
    /// aside, entries pointing at them may be in any index.
    pub fn restart_all(&mut self) -> Result<(), IndexError> {
        let kinds: Vec<IndexKind> = self.kinds().collect();
        for kind in &kinds {
            let path = self.dir.join(kind.file_name());
            // Close the file before it goes.
            self.trees[*kind as usize] = None;
            self.storage
                .remove_file(&path)
                .map_err(io_error(&path, "remove"))?;
            remove_level_files(&*self.storage, &self.dir, *kind)?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(io_error(&self.dir, "sync directory"))?;
        for kind in kinds {
            let path = self.dir.join(kind.file_name());
            let tree = Some(BTree::open(&*self.storage, &path, kind.id(), kind.width())?);
            self.floors[kind as usize] = floor_of(&tree);
            self.trees[kind as usize] = tree;
        }
        self.drop_id_filter();
        Ok(())
    }

    /// The index `kind`. Panics for an index the store does not keep: ask
    /// [`IndexSet::has`] first about term_time.
    /// Where the event with this id is stored, from the primary index.
    pub fn find_id(&self, id: &EventId) -> Result<Option<Location>, IndexError> {
        if self.id_filter().is_some_and(|ids| !ids.may_contain(id)) {
            return Ok(None);
        }
        let mut cursor = self.tree(IndexKind::Primary).seek(&primary_lower(id))?;
        Ok(match cursor.next()? {
            Some(entry) if entry[..32] == id.0 => Some(location_at_end(entry)),
            _ => None,
        })
    }

    pub fn tree(&self, kind: IndexKind) -> &BTree {
        self.trees[kind as usize]
            .as_ref()
            .unwrap_or_else(|| panic!("the {} index is not kept", kind.name()))
    }

    /// Whether the store keeps the index `kind`.
    pub fn has(&self, kind: IndexKind) -> bool {
        self.trees[kind as usize].is_some()
    }

    /// The indexes the store keeps.
    pub fn kinds(&self) -> impl Iterator<Item = IndexKind> + '_ {
        IndexKind::ALL.into_iter().filter(|&k| self.has(k))
    }

    fn kept(&self) -> impl Iterator<Item = &BTree> {
        self.trees.iter().flatten()
    }

    /// Where replay must start: the oldest checkpoint among the indexes
    /// (`None`: some index has never been checkpointed, replay the whole log).
    pub fn replay_from(&self) -> Option<(Lsn, Location)> {
        let (lsn, position) = self
            .trees
            .iter()
            .zip(&self.floors)
            .filter(|(tree, _)| tree.is_some())
            .map(|(_, floor)| *floor)
            .min_by_key(|(lsn, _)| *lsn)?;
        (lsn != Lsn::ZERO).then_some((lsn, position))
    }

    /// The log position every index's durable checkpoint reaches: an open
    /// replays the log from there or later (run files only move it on).
    /// `None` while some index has no checkpoint (an open would replay
    /// the whole log).
    pub fn checkpoint_floor(&self) -> Option<Location> {
        let mut floor: Option<Location> = None;
        for tree in self.kept() {
            let meta = tree.meta();
            if meta.checkpoint_lsn == Lsn::ZERO {
                return None;
            }
            floor = Some(floor.map_or(meta.checkpoint_position, |f| {
                f.min(meta.checkpoint_position)
            }));
        }
        floor
    }

    /// The newest checkpoint among the indexes (where the log end search may start).
    pub fn newest_checkpoint(&self) -> Option<(Location, Lsn)> {
        let newest = self.kept().max_by_key(|t| t.meta().checkpoint_lsn)?;
        let meta = newest.meta();
        (meta.checkpoint_lsn != Lsn::ZERO)
            .then_some((meta.checkpoint_position, meta.checkpoint_lsn))
    }

    /// Adds or removes every entry of `event`, stored at `location`, in each
    /// index that does not already reflect the record at `lsn` (replay, and
    /// removals the store owes at open). The random-order indexes stage the
    /// change in their in-memory level (see [`BTree::stage_replayed`]): the
    /// writer merges it into the trees when the level is full, as it does
    /// with the write path's; the time-ordered ones take it at once.
    pub fn apply(
        &mut self,
        op: Apply,
        event: &EventRef<'_>,
        location: Location,
        lsn: Lsn,
    ) -> Result<(), IndexError> {
        let mut result = Ok(());
        let trees = &mut self.trees;
        let floors = &self.floors;
        let ids = [self.ids.as_deref(), self.next_ids.as_deref()];
        let terms = trees[IndexKind::TermTime as usize].is_some();
        for_each_entry(event, location, terms, |kind, entry| {
            let i = kind as usize;
            if result.is_err() || lsn <= floors[i].0 {
                return;
            }
            let Some(tree) = trees[i].as_mut() else {
                return;
            };
            if kind == IndexKind::Primary && op == Apply::Insert {
                add_id(ids, entry);
            }
            let add = op == Apply::Insert;
            let outcome = if kind.random_order() {
                tree.stage_replayed(entry, add)
            } else if add {
                tree.insert(entry).map(drop)
            } else {
                tree.remove(entry).map(drop)
            };
            if let Err(e) = outcome {
                result = Err(e);
            }
        });
        result
    }

    /// Adds what `apply` would do for one record to `group` instead of
    /// doing it (the floor and kept-index checks included), so a whole
    /// group of records can be applied in key order by [`IndexSet::apply_group`].
    pub fn collect(
        &self,
        op: Apply,
        event: &EventRef<'_>,
        location: Location,
        lsn: Lsn,
        group: &mut GroupEntries,
    ) {
        if group.inserts.is_empty() {
            group.inserts = vec![Vec::new(); self.trees.len()];
            group.removes = vec![Vec::new(); self.trees.len()];
        }
        let terms = self.trees[IndexKind::TermTime as usize].is_some();
        for_each_entry(event, location, terms, |kind, entry| {
            let i = kind as usize;
            if lsn <= self.floors[i].0 || self.trees[i].is_none() {
                return;
            }
            match op {
                Apply::Insert => group.inserts[i].extend_from_slice(entry),
                Apply::Remove => group.removes[i].extend_from_slice(entry),
            }
        });
    }

    /// Applies a group's entries, each index's in key order: consecutive
    /// inserts then walk down neighbouring paths whose nodes are already
    /// in the CPU's caches, instead of jumping across the tree. All inserts
    /// go before all removals; that gives the same set as the records'
    /// order, because an entry carries its record's location, so an entry
    /// removed in a group was either there before it or inserted in it,
    /// and is never inserted again.
    ///
    /// With `stage`, the random-order indexes (see
    /// [`IndexKind::random_order`]) stage their entries in the sorted
    /// in-memory level instead (see `BTree::stage`); the time-ordered ones,
    /// whose inserts land at the right edge, take theirs at once.
    pub fn apply_group(&mut self, group: GroupEntries, stage: bool) -> Result<(), IndexError> {
        let GroupEntries { inserts, removes } = group;
        for (i, (inserts, removes)) in inserts.iter().zip(&removes).enumerate() {
            let Some(tree) = self.trees[i].as_mut() else {
                continue;
            };
            let staged = stage && IndexKind::ALL[i].random_order();
            let width = tree.width();
            if IndexKind::ALL[i] == IndexKind::Primary {
                let filters = [self.ids.as_deref(), self.next_ids.as_deref()];
                for entry in inserts.chunks_exact(width) {
                    add_id(filters, entry);
                }
            }
            for (entries, add) in [(inserts, true), (removes, false)] {
                let mut sorted: Vec<&[u8]> = entries.chunks_exact(width).collect();
                sorted.sort_unstable();
                if staged {
                    for entry in sorted {
                        tree.stage(entry, add);
                    }
                } else {
                    sorted.dedup();
                    let batch: Vec<(&[u8], bool)> = sorted.into_iter().map(|e| (e, add)).collect();
                    tree.apply_sorted(&batch)?;
                }
            }
        }
        Ok(())
    }

    /// Whether the id filter needs the writer: a filter to start building
    /// (none yet, or the one in use is overfull), or a built one to put
    /// in use. Cheap: call it under the read lock before taking the write
    /// lock for [`IndexSet::id_filter_job`].
    pub fn id_filter_due(&self) -> bool {
        match &self.next_ids {
            Some(next) => next.is_complete() || next.is_abandoned(),
            None => {
                self.failed_filter_builds < MAX_FILTER_BUILDS_FAILED
                    && self.ids.as_ref().is_none_or(|ids| ids.overfull())
            }
        }
    }

    /// Puts a completely built filter in use, or starts a new one sized
    /// for twice the ids the primary index holds (at least `min`): returned to be filled by
    /// a scan of the primary index (see [`IndexSet::fill_id_filter`]),
    /// while every id stored meanwhile is added to it here.
    pub fn id_filter_job(&mut self, min: usize) -> Option<Arc<IdFilter>> {
        if self
            .next_ids
            .as_ref()
            .is_some_and(|next| next.is_complete())
        {
            self.ids = self.next_ids.take();
        }
        // A failed build: nothing more is added to it; another is tried
        // a few times.
        if self
            .next_ids
            .as_ref()
            .is_some_and(|next| next.is_abandoned())
        {
            self.next_ids = None;
            self.failed_filter_builds += 1;
        }
        if self.next_ids.is_some()
            || self.failed_filter_builds >= MAX_FILTER_BUILDS_FAILED
            || self.ids.as_ref().is_some_and(|ids| !ids.overfull())
        {
            return None;
        }
        let held = self.tree(IndexKind::Primary).entry_count() as usize;
        let next = Arc::new(IdFilter::with_capacity(held.saturating_mul(2).max(min)));
        self.next_ids = Some(Arc::clone(&next));
        Some(next)
    }

    /// Adds the ids of up to `most` primary entries from `from` on (the
    /// key after the last one a previous slice added; empty at the start)
    /// to `filter`; returns where the next slice starts, or `None` when
    /// the index has no more.
    pub fn fill_id_filter(
        &self,
        filter: &IdFilter,
        from: &[u8],
        most: usize,
    ) -> Result<Option<Vec<u8>>, IndexError> {
        let mut cursor = self.tree(IndexKind::Primary).seek(from)?;
        let mut next = Vec::new();
        for _ in 0..most.max(1) {
            let Some(entry) = cursor.next()? else {
                return Ok(None);
            };
            add_id([Some(filter), None], entry);
            next.clear();
            next.extend_from_slice(entry);
        }
        // The smallest key after the last one (of the same width).
        for byte in next.iter_mut().rev() {
            let (sum, carry) = byte.overflowing_add(1);
            *byte = sum;
            if !carry {
                return Ok(Some(next));
            }
        }
        Ok(None)
    }

    /// The filter find_id consults, if one is complete: a build whose scan
    /// has ended (every id of the index is in it) before the writer puts it
    /// in use, which on an idle store waits for the next housekeeping.
    pub fn id_filter(&self) -> Option<&IdFilter> {
        self.next_ids
            .as_deref()
            .filter(|next| next.is_complete())
            .or(self.ids.as_deref())
    }

    /// Merges up to `most` staged entries into their trees (index by index,
    /// each in key order); returns how many are still staged.
    pub fn merge_levels(&mut self, most: usize) -> Result<usize, IndexError> {
        let mut budget = most;
        let mut left = 0;
        for tree in self.trees.iter_mut().flatten() {
            let staged = tree.level_len();
            if budget > 0 && staged > 0 {
                let take = staged.min(budget);
                budget -= take;
                left += tree.merge_level(take)?;
            } else {
                left += staged;
            }
        }
        Ok(left)
    }

    /// Each index with the LSN its durable checkpoint covers.
    pub fn checkpoints(&self) -> impl Iterator<Item = (IndexKind, Lsn)> + '_ {
        IndexKind::ALL
            .into_iter()
            .zip(&self.trees)
            .filter_map(|(kind, tree)| Some((kind, tree.as_ref()?.meta().checkpoint_lsn)))
    }

    /// Maps the pages of every index file that the page cache already
    /// holds (`Mapping::map_resident`); returns the bytes mapped.
    pub fn map_resident(&self) -> std::io::Result<u64> {
        let mut mapped = 0;
        for tree in self.kept() {
            mapped += tree.map_resident()?;
        }
        Ok(mapped)
    }

    /// In-memory nodes over all indexes: what the next checkpoint will write.
    pub fn dirty_nodes(&self) -> usize {
        self.kept().map(BTree::dirty_nodes).sum()
    }

    /// Writes the checkpoint of index `kind` through `lsn` (see
    /// `BTree::prepare_checkpoint`); install it with [`IndexSet::install`]
    /// before preparing that index again.
    pub fn prepare_checkpoint(
        &self,
        kind: IndexKind,
        lsn: Lsn,
        position: Location,
    ) -> Result<Option<PreparedCheckpoint>, IndexError> {
        self.tree(kind).prepare_checkpoint(lsn, position)
    }

    /// Gives every index's free pages back to the file system (see
    /// `BTree::release_free_pages`); returns the bytes released.
    pub fn release_free_pages(&self) -> Result<u64, IndexError> {
        let mut released = 0;
        for tree in self.kept() {
            released += tree.release_free_pages()?;
        }
        Ok(released)
    }

    pub fn install(
        &mut self,
        kind: IndexKind,
        prepared: PreparedCheckpoint,
    ) -> Result<(), IndexError> {
        let Some(tree) = self.trees[kind as usize].as_mut() else {
            panic!("the {} index is not kept", kind.name());
        };
        tree.install(prepared)?;
        // Run files a merge emptied: the tree just made durable holds
        // their entries (and no longer matches their stamp).
        remove_runs(&*self.storage, &self.dir, &tree.take_stale_runs())
    }
}

/// Adds the id of a primary entry to the filters there are.
fn add_id(filters: [Option<&IdFilter>; 2], entry: &[u8]) {
    let mut id = [0u8; 32];
    id.copy_from_slice(&entry[..32]);
    let id = EventId(id);
    for filter in filters.into_iter().flatten() {
        filter.add(&id);
    }
}

/// Renames `path` to `path.corrupt` (replacing an older one), durably.
fn set_aside(storage: &dyn Storage, path: &Path) -> Result<(), IndexError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    storage
        .rename(path, Path::new(&aside))
        .map_err(io_error(path, "rename"))?;
    if let Some(dir) = path.parent() {
        storage
            .sync_dir(dir)
            .map_err(io_error(dir, "sync directory"))?;
    }
    Ok(())
}

/// The floor of a tree as opened: its checkpoint.
fn floor_of(tree: &Option<BTree>) -> (Lsn, Location) {
    tree.as_ref()
        .map_or((Lsn::ZERO, Location::from_bytes([0; 8])), |t| {
            (t.meta().checkpoint_lsn, t.meta().checkpoint_position)
        })
}

/// Removes the run files of `kind` in `dir`: its tree is being rebuilt,
/// and they were staged over the old one.
fn remove_level_files(store: &dyn Storage, dir: &Path, kind: IndexKind) -> Result<(), IndexError> {
    for name in level_files(store, dir).map_err(io_error(dir, "list"))? {
        if is_level_file(kind, &name) {
            remove_durably(store, dir, &dir.join(name))?;
        }
    }
    Ok(())
}

/// Removes the file at `path` in `dir` and syncs the directory.
fn remove_durably(store: &dyn Storage, dir: &Path, path: &Path) -> Result<(), IndexError> {
    store.remove_file(path).map_err(io_error(path, "remove"))?;
    store.sync_dir(dir).map_err(io_error(dir, "sync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;

    /// A build that fails is dropped (the writer no longer adds to it) and
    /// another is started, a few times at most; a build that completes is
    /// put in use.
    #[test]
    fn a_failed_filter_build_is_dropped_and_retried_a_few_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut rebuilt = Vec::new();
        let mut set =
            IndexSet::open(Arc::new(FileStorage), dir.path(), false, &mut rebuilt).unwrap();
        assert!(set.id_filter_due(), "no filter yet");
        let mut builds = Vec::new();
        for _ in 0..MAX_FILTER_BUILDS_FAILED {
            let filter = set.id_filter_job(1024).expect("a build is started");
            assert!(builds.iter().all(|b| !Arc::ptr_eq(b, &filter)));
            assert!(!set.id_filter_due(), "one build at a time");
            assert!(set.id_filter_job(1024).is_none());
            filter.abandon();
            assert!(set.id_filter_due(), "the failed build needs the writer");
            builds.push(filter);
        }
        assert!(set.id_filter_job(1024).is_none(), "no fourth try");
        assert!(set.next_ids.is_none(), "nothing is added to a failed build");
        assert!(!set.id_filter_due());
        assert!(set.id_filter().is_none());

        let mut set =
            IndexSet::open(Arc::new(FileStorage), dir.path(), false, &mut rebuilt).unwrap();
        let filter = set.id_filter_job(1024).unwrap();
        filter.abandon();
        let filter = set.id_filter_job(1024).expect("tried again");
        filter.set_complete();
        assert!(set.id_filter_due());
        assert!(set.id_filter_job(1024).is_none());
        assert!(set.id_filter().is_some_and(|f| std::ptr::eq(f, &*filter)));
    }
}
