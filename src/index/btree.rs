//! A persistent B+Tree over fixed-width entries (the whole entry is the key),
//! stored in one page file.
//!
//! Crash safety (copy-on-write checkpoints):
//! - Clean pages are read in place from a read-only map of the file. A change
//!   copies every node on its path into memory (`MemNode`); the pages it
//!   replaced become "pending free": the durable meta still points at them.
//! - A checkpoint writes the in-memory nodes to pages that no durable tree
//!   uses (the free list, then the end of the file), writes the free list,
//!   syncs, then writes the *other* meta page and syncs again. A crash at any
//!   point leaves the older meta page and every page it reaches intact.
//! - Pages pending free become reusable only after the meta that no longer
//!   reaches them is durable. Invariant: a meta's free list holds exactly the
//!   pages of the file that its tree and its own free-list pages do not use.
//! - Deletion frees a node only when it empties. A sorted batch
//!   ([`BTree::apply_sorted`]) packs the in-memory leaves of each branch it
//!   changes into the fewest pages; single inserts and removals do not.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::error::{IndexError, io_error};
use super::format::{
    FREE_IDS_PER_PAGE, Meta, PAGE_SIZE, decode_free_list_page, decode_meta, encode_free_list_page,
    encode_meta,
};
use super::level::{Level, LevelCursor, RunBytes};
use super::levelfile::{self, RunHeader};
use super::node::{
    MemNode, Node, NodeRef, PageView, compare_keys, encode_node_into, fits, leaf_fits,
};
use crate::ids::{Location, Lsn, PageId, SegmentId};
use crate::storage::{Mapping, OpenMode, Storage, StorageFile};

const META_SLOTS: [PageId; 2] = [PageId(0), PageId(1)];

/// A spilled run is merged with the one before it while that one holds at
/// most this many times its entries. At 1 the runs' sizes go as a binary
/// counter's bits: each entry is rewritten about log₂(runs ÷ spill)
/// times, and a small spill (a close after a small import) merges with
/// nothing bigger than itself. At 4, measured on the 10M probe, a small
/// spill cascaded through every run (a run 4 times its size merged with
/// it, then one 4 times that...), and the probe into a 4M store ran at
/// half its rate into a 1M one.
const RUN_GROWTH: usize = 1;

/// Past this many spilled runs, the newest two are merged whatever their
/// sizes.
const MOST_SPILLED_RUNS: usize = 8;

/// A run file of a tree's level (see `index::levelfile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunFile {
    /// The file's name in the index directory.
    pub name: String,
    pub from: (Lsn, Location),
    pub covered: (Lsn, Location),
    pub entries: usize,
}

/// A run file to write: the memory runs spilled, or two spilled runs
/// merged (`runs`, positions in the level's list of runs).
#[derive(Debug)]
pub(crate) struct RunJob {
    pub name: String,
    pub runs: std::ops::Range<usize>,
    pub bytes: Vec<u8>,
    pub from: (Lsn, Location),
    pub covered: (Lsn, Location),
    pub entries: usize,
}

#[derive(Debug)]
pub(crate) struct BTree {
    path: PathBuf,
    file: Box<dyn StorageFile>,
    map: Option<Mapping>,
    /// The map's address range grows in multiples of this ([`MAP_STEP`];
    /// smaller in tests).
    map_step: u64,
    width: usize,
    /// Slot (0 or 1) of the durable meta page, and what it says.
    meta_slot: usize,
    meta: Meta,
    root: Option<NodeRef>,
    mem: Vec<MemNode>,
    /// Key buffers of nodes the last checkpoint wrote, kept for the next
    /// copies of pages: memory the system has already handed out, instead of
    /// fresh pages it must zero first (a fifth of the time of ingest into a
    /// large store went there). At most as many as that checkpoint wrote.
    spare: Vec<Vec<u8>>,
    /// Bytes of leaf entries packing has copied (see
    /// [`BTree::pack_leaves`]), for tests.
    packed_bytes: u64,
    /// Pages usable by the next checkpoint.
    free: Vec<PageId>,
    /// Pages the durable meta still reaches but the in-memory tree does not.
    pending_free: Vec<PageId>,
    /// Pages holding the durable meta's free list.
    free_list_pages: Vec<PageId>,
    entry_count: u64,
    /// The sorted in-memory level: entries staged by the writer since the
    /// last merge, each with its newest state (true: added, false: removed).
    /// Reads see it over the tree; [`BTree::merge_level`] applies it to the
    /// tree in key order, so one copy of a leaf serves every entry that
    /// falls in it. Not durable: the log is. The tree's checkpoint LSN stays
    /// below every record the level holds, and replay stages those records
    /// again (see [`BTree::stage_replayed`]).
    level: Level,
    /// What the level changes the entry count by, assuming (as the write
    /// path guarantees) that an entry is added only when absent and removed
    /// only when present; exact again after a merge.
    level_delta: i64,
    /// The files of the level's spilled runs, oldest first: a chain over
    /// the log from the tree's checkpoint (see `index::levelfile`).
    runs: Vec<RunFile>,
    /// Run files whose entries a merge moved into the tree: removed once a
    /// checkpoint has made the tree durable with them.
    stale_runs: Vec<RunFile>,
    verified: VerifiedPages,
    /// Set once a checkpoint starts writing a meta page, cleared when it is
    /// installed. While set, the durable meta may reach pages that memory
    /// counts as free, so no further checkpoint may be written.
    meta_unsettled: AtomicBool,
}

/// A checkpoint written to disk but not yet installed in memory.
#[derive(Debug)]
pub(crate) struct PreparedCheckpoint {
    meta: Meta,
    slot: usize,
    free: Vec<PageId>,
    free_list_pages: Vec<PageId>,
    /// Pages this checkpoint wrote: their verified bits must be cleared.
    written: Vec<PageId>,
}

/// One bit per page: its checksum was verified since it was last written. A
/// clean page cannot change while it is reachable (see the module comment),
/// so each page is checksummed once, not on every read.
#[derive(Debug, Default)]
struct VerifiedPages(Vec<AtomicU64>);

impl VerifiedPages {
    fn is_set(&self, page: PageId) -> bool {
        let (word, bit) = (page.0 / 64, page.0 % 64);
        self.0
            .get(word as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << bit) != 0)
    }

    fn set(&self, page: PageId) {
        let (word, bit) = (page.0 / 64, page.0 % 64);
        if let Some(w) = self.0.get(word as usize) {
            w.fetch_or(1 << bit, Ordering::Relaxed);
        }
    }

    /// Grows to cover `pages` pages and forgets the `written` ones.
    fn reset(&mut self, pages: u64, written: &[PageId]) {
        let words = pages.div_ceil(64) as usize;
        if self.0.len() < words {
            self.0.resize_with(words, AtomicU64::default);
        }
        for page in written {
            if let Some(w) = self.0.get_mut((page.0 / 64) as usize) {
                *w.get_mut() &= !(1 << (page.0 % 64));
            }
        }
    }
}

impl BTree {
    /// Opens `path`, creating an empty tree when the file does not exist.
    pub fn open(
        storage: &dyn Storage,
        path: &Path,
        index_kind: u8,
        width: usize,
    ) -> Result<BTree, IndexError> {
        let exists = storage.exists(path).map_err(io_error(path, "stat"))?;
        let file = storage
            .open(path, OpenMode::ReadWriteCreate)
            .map_err(io_error(path, "open"))?;
        let corrupt = |page: Option<PageId>, reason: String| IndexError::Corrupt {
            path: path.to_path_buf(),
            page,
            reason,
        };
        if !exists || file.size().map_err(io_error(path, "stat"))? == 0 {
            let meta = Meta {
                index_kind,
                entry_width: width as u16,
                generation: 1,
                root: None,
                entry_count: 0,
                page_count: 2,
                checkpoint_lsn: Lsn::ZERO,
                checkpoint_position: Location {
                    segment: SegmentId(0),
                    offset: 0,
                },
                free_list_head: None,
                free_page_count: 0,
                past_floor: false,
            };
            file.write_all_at(&encode_meta(&meta, META_SLOTS[0]), 0)
                .map_err(io_error(path, "write"))?;
            file.write_all_at(&vec![0u8; PAGE_SIZE], PAGE_SIZE as u64)
                .map_err(io_error(path, "write"))?;
            // The first meta page is durable before the file's name is.
            file.sync().map_err(io_error(path, "sync"))?;
            if let Some(dir) = path.parent() {
                storage
                    .sync_dir(dir)
                    .map_err(io_error(dir, "sync directory"))?;
            }
        }
        let mut slots = [None, None];
        let mut reasons = Vec::new();
        for (i, slot) in META_SLOTS.iter().enumerate() {
            let mut page = vec![0u8; PAGE_SIZE];
            match file.read_exact_at(&mut page, slot.0 * PAGE_SIZE as u64) {
                Ok(()) => match decode_meta(&page, *slot) {
                    Ok(meta) => slots[i] = Some(meta),
                    Err(reason) => reasons.push(format!("meta page {i}: {reason}")),
                },
                // A file too short to hold the page is damage; any other
                // read error is the device's, and must not pass for damage
                // (which would set a good index aside).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    reasons.push(format!("meta page {i}: the file ends before it"));
                }
                Err(e) => return Err(io_error(path, "read meta page")(e)),
            }
        }
        let (meta_slot, meta) = match slots {
            [Some(a), Some(b)] => {
                if a.generation >= b.generation {
                    (0, a)
                } else {
                    (1, b)
                }
            }
            [Some(a), None] => (0, a),
            [None, Some(b)] => (1, b),
            [None, None] => {
                return Err(corrupt(
                    None,
                    format!("no valid meta page ({})", reasons.join("; ")),
                ));
            }
        };
        if meta.index_kind == index_kind && usize::from(meta.entry_width) != width {
            return Err(IndexError::Width {
                path: path.to_path_buf(),
                found: usize::from(meta.entry_width),
                expected: width,
            });
        }
        if usize::from(meta.entry_width) != width || meta.index_kind != index_kind {
            return Err(corrupt(
                Some(META_SLOTS[meta_slot]),
                format!(
                    "meta page describes index kind {} with {}-byte entries, expected kind {index_kind} with {width}",
                    meta.index_kind, meta.entry_width
                ),
            ));
        }
        let mut tree = BTree {
            path: path.to_path_buf(),
            file,
            map: None,
            map_step: MAP_STEP,
            width,
            meta_slot,
            meta,
            root: meta.root.map(NodeRef::Page),
            mem: Vec::new(),
            spare: Vec::new(),
            packed_bytes: 0,
            free: Vec::new(),
            pending_free: Vec::new(),
            free_list_pages: Vec::new(),
            entry_count: meta.entry_count,
            level: Level::new(width),
            level_delta: 0,
            runs: Vec::new(),
            stale_runs: Vec::new(),
            verified: VerifiedPages::default(),
            meta_unsettled: AtomicBool::new(false),
        };
        tree.verified.reset(meta.page_count, &[]);
        tree.remap()?;
        let mut next = meta.free_list_head;
        while let Some(pid) = next {
            if tree.free_list_pages.len() as u64 > meta.page_count {
                return Err(corrupt(Some(pid), "free list loops".to_string()));
            }
            let (ids, following) = decode_free_list_page(tree.raw_page(pid)?, pid)
                .map_err(|r| corrupt(Some(pid), r))?;
            tree.free.extend(ids);
            tree.free_list_pages.push(pid);
            next = following;
        }
        if tree.free.len() as u64 != meta.free_page_count {
            return Err(corrupt(
                None,
                format!(
                    "free list holds {} pages, meta page says {}",
                    tree.free.len(),
                    meta.free_page_count
                ),
            ));
        }
        if let Some(bad) = tree.free.iter().find(|p| p.0 < 2 || p.0 >= meta.page_count) {
            return Err(corrupt(
                None,
                format!("free list names page {} outside the file", bad.0),
            ));
        }
        Ok(tree)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entry_count(&self) -> u64 {
        self.entry_count.saturating_add_signed(self.level_delta)
    }

    /// Entries staged in the in-memory level (see [`BTree::stage`]).
    pub fn level_len(&self) -> usize {
        self.level.len()
    }

    /// Stages adding (`add`) or removing `entry` in the in-memory level: the
    /// tree is not touched until [`BTree::merge_level`]. Reads see it at once.
    pub fn stage(&mut self, entry: &[u8], add: bool) {
        debug_assert_eq!(entry.len(), self.width);
        self.level_delta += self.level.stage(entry, add);
    }

    /// Entries staged in memory, not yet spilled to a run file.
    pub fn memory_len(&self) -> usize {
        self.level.memory_len()
    }

    /// Entries of the tree itself, without the level.
    pub fn tree_entry_count(&self) -> u64 {
        self.entry_count
    }

    /// The files of the level's spilled runs, oldest first.
    pub fn runs(&self) -> &[RunFile] {
        &self.runs
    }

    /// Where the chain of runs ends: the log position replay starts after
    /// for this tree (its checkpoint when there are no runs).
    pub fn runs_end(&self) -> (Lsn, Location) {
        self.runs.last().map_or(
            (self.meta.checkpoint_lsn, self.meta.checkpoint_position),
            |run| run.covered,
        )
    }

    /// Whether the spilled runs are the files' runs, whole: no merge into
    /// the tree is under way and no entry was dropped from them.
    fn runs_intact(&self) -> bool {
        let lens = self.level.spilled_lens();
        lens.len() == self.runs.len()
            && lens
                .iter()
                .zip(&self.runs)
                .all(|(&len, run)| len == run.entries)
    }

    /// The memory runs as a run file that covers the log through `covered`
    /// (synced by the caller), chained after the last run; `None` when
    /// nothing is staged in memory, or when the file's stamp would not
    /// name the tree the entries sit on (changes not yet checkpointed, or a
    /// merge under way).
    pub fn spill_job(&self, kind: &str, covered: (Lsn, Location)) -> Option<RunJob> {
        let memory = self.level.memory_runs();
        let from = self.runs_end();
        if memory.is_empty() || !self.mem.is_empty() || !self.runs_intact() || covered.0 <= from.0 {
            return None;
        }
        Some(self.run_job(kind, memory, from, covered))
    }

    /// The runs in `runs` as one run file covering the records after
    /// `from` through `covered`, named after where it starts (a merge of
    /// runs takes the older one's name: the file replaces it).
    fn run_job(
        &self,
        kind: &str,
        runs: std::ops::Range<usize>,
        from: (Lsn, Location),
        covered: (Lsn, Location),
    ) -> RunJob {
        let (keys, flags) = self.level.flatten(runs.clone());
        RunJob {
            name: levelfile::run_file_name(kind, from.0),
            runs,
            bytes: levelfile::encode(&self.meta, from, covered, &keys, &flags),
            from,
            covered,
            entries: flags.len(),
        }
    }

    /// Two neighbouring runs to merge into one file, the newest first: the
    /// older is at most [`RUN_GROWTH`] times the newer, or there are more
    /// than [`MOST_SPILLED_RUNS`] (so the runs' sizes grow geometrically
    /// from the newest, and a read merges few of them).
    pub fn run_merge_job(&self, kind: &str) -> Option<RunJob> {
        if !self.mem.is_empty() || !self.runs_intact() {
            return None;
        }
        let n = self.runs.len();
        for end in (2..=n).rev() {
            let (older, newer) = (&self.runs[end - 2], &self.runs[end - 1]);
            if older.entries <= RUN_GROWTH * newer.entries || n > MOST_SPILLED_RUNS {
                return Some(self.run_job(kind, end - 2..end, older.from, newer.covered));
            }
        }
        None
    }

    /// Takes the file `job` wrote (read back as `bytes`) in place of the
    /// runs it holds; returns the files it replaced, to be removed (the
    /// one it was renamed over is not among them).
    pub fn adopt_run(&mut self, job: &RunJob, bytes: Arc<RunBytes>) -> Vec<RunFile> {
        let (keys_at, flags_at) = levelfile::layout(job.entries, self.width);
        self.level
            .replace_with_spilled(job.runs.clone(), bytes, keys_at, flags_at, job.entries);
        let file = RunFile {
            name: job.name.clone(),
            from: job.from,
            covered: job.covered,
            entries: job.entries,
        };
        // The memory runs come after every file's, so a spill's range
        // reaches no file.
        let files = job.runs.start.min(self.runs.len())..job.runs.end.min(self.runs.len());
        let replaced: Vec<RunFile> = self.runs.splice(files, [file]).collect();
        replaced
            .into_iter()
            .filter(|old| old.name != job.name)
            .collect()
    }

    /// Takes a run file (checked by `levelfile::decode`, the next link of
    /// the chain) as the tree's newest spilled run.
    pub fn load_run(&mut self, name: String, header: &RunHeader, bytes: Arc<RunBytes>) {
        debug_assert_eq!(header.from, self.runs_end());
        let end = self.level.memory_runs().start;
        self.level.replace_with_spilled(
            end..end,
            bytes,
            header.keys_at,
            header.flags_at,
            header.entries,
        );
        self.level_delta += header.change;
        self.runs.push(RunFile {
            name,
            from: header.from,
            covered: header.covered,
            entries: header.entries,
        });
    }

    /// The run files a finished merge made stale, once a checkpoint has
    /// made the tree durable without needing them.
    pub fn take_stale_runs(&mut self) -> Vec<RunFile> {
        std::mem::take(&mut self.stale_runs)
    }

    /// Stages a change replay found in the log (a record after the tree's
    /// checkpoint). A tree whose meta says it may hold entries past its
    /// checkpoint (see `Meta::past_floor`) is asked first, so a change it
    /// already holds is not staged again and the entry count stays exact.
    pub fn stage_replayed(&mut self, entry: &[u8], add: bool) -> Result<(), IndexError> {
        if self.meta.past_floor && self.level.get(entry).is_none() {
            let mut cursor = self.seek_tree(entry)?;
            let present = cursor.next()?.is_some_and(|found| found == entry);
            if present == add {
                return Ok(());
            }
        }
        self.stage(entry, add);
        Ok(())
    }

    /// Applies up to `most` staged entries (the lowest keys first) to the
    /// tree, in key order; returns how many are left in the level. Between
    /// calls the tree and the level together hold the same entries.
    pub fn merge_level(&mut self, most: usize) -> Result<usize, IndexError> {
        let (mut keys, mut adds) = (Vec::new(), Vec::new());
        // Re-stated exactly by the tree as the entries go in.
        let undone = self.level.take_lowest(most, &mut keys, &mut adds);
        let entries: Vec<(&[u8], bool)> = keys.chunks_exact(self.width).zip(adds).collect();
        self.apply_batch(&entries)?;
        self.level_delta -= undone;
        if self.level.is_empty() {
            self.level_delta = 0;
            // Their entries are in the tree: the files go after its next
            // checkpoint (until then they are the durable level of the
            // durable tree).
            self.stale_runs.append(&mut self.runs);
        }
        Ok(self.level.len())
    }

    /// Drops `entry` from the level (a direct change of the tree follows,
    /// and is newer than what was staged).
    fn unstage(&mut self, entry: &[u8]) {
        self.level_delta -= self.level.unstage(entry);
    }

    /// The durable meta page's state.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Nodes held in memory (changed since the last checkpoint).
    pub fn dirty_nodes(&self) -> usize {
        self.mem.len()
    }

    #[cfg(test)]
    pub fn root(&self) -> Option<NodeRef> {
        self.root
    }

    #[cfg(test)]
    pub fn free_pages(&self) -> &[PageId] {
        &self.free
    }

    #[cfg(test)]
    pub fn free_list_pages(&self) -> &[PageId] {
        &self.free_list_pages
    }

    fn remap(&mut self) -> Result<(), IndexError> {
        // The `Mapping` contract holds: pages reachable from the in-memory
        // tree are never rewritten while mapped, because checkpoints write
        // only pages that no reachable node uses (see the module comment).
        let size = self.file.size().map_err(io_error(&self.path, "stat"))?;
        self.map = self
            .file
            .map(map_reserve(size, self.map_step))
            .map_err(io_error(&self.path, "mmap"))?;
        Ok(())
    }

    /// Covers the first `len` bytes of the file (which a checkpoint has
    /// just written) with the map: within its address range the map stays,
    /// and so do the pages already mapped; past it the file is mapped anew.
    fn map_to(&mut self, len: u64) -> Result<(), IndexError> {
        match &mut self.map {
            Some(map) if len <= map.reserved() as u64 => {
                map.set_visible(len as usize);
                Ok(())
            }
            _ => self.remap(),
        }
    }

    /// Maps the pages of the file that the page cache already holds
    /// ([`Mapping::map_resident`]); returns the bytes mapped.
    pub fn map_resident(&self) -> std::io::Result<u64> {
        self.map
            .as_ref()
            .map_or(Ok(0), |map| map.map_resident(map.len()))
    }

    fn raw_page(&self, id: PageId) -> Result<&[u8], IndexError> {
        let start =
            id.0.checked_mul(PAGE_SIZE as u64)
                .and_then(|s| usize::try_from(s).ok());
        start
            .and_then(|s| self.map.as_deref()?.get(s..s + PAGE_SIZE))
            .ok_or_else(|| IndexError::Corrupt {
                path: self.path.clone(),
                page: Some(id),
                reason: "page lies beyond the end of the file".to_string(),
            })
    }

    /// Reads a node. A clean page's checksum is verified the first time it is read.
    pub fn node(&self, node: NodeRef) -> Result<Node<'_>, IndexError> {
        match node {
            NodeRef::Mem(i) => Ok(Node::Mem(&self.mem[i as usize], self.width)),
            NodeRef::Page(id) => {
                let page = self.raw_page(id)?;
                let verify = !self.verified.is_set(id);
                let view = PageView::parse(page, id, self.width, verify).map_err(|reason| {
                    IndexError::Corrupt {
                        path: self.path.clone(),
                        page: Some(id),
                        reason,
                    }
                })?;
                if verify {
                    self.verified.set(id);
                }
                Ok(Node::Page(view))
            }
        }
    }

    /// A cursor at the first entry >= `key` (a full-width key, or a
    /// prefix), over the tree and the in-memory level.
    pub fn seek(&self, key: &[u8]) -> Result<Cursor<'_>, IndexError> {
        let tree = self.seek_tree(key)?;
        Ok(Cursor {
            level: (!self.level.is_empty()).then(|| self.level_from(key)),
            tree,
            tree_next: None,
            entry: Vec::with_capacity(self.width),
        })
    }

    fn level_from(&self, key: &[u8]) -> LevelCursor<'_> {
        self.level.cursor(key)
    }

    /// A cursor over the tree alone.
    fn seek_tree(&self, key: &[u8]) -> Result<TreeCursor<'_>, IndexError> {
        let mut cursor = TreeCursor {
            tree: self,
            stack: Vec::with_capacity(6),
            entry: Vec::with_capacity(self.width),
        };
        let Some(mut at) = self.root else {
            return Ok(cursor);
        };
        loop {
            let node = self.node(at)?;
            if node.is_leaf() {
                cursor.stack.push((node, node.lower_bound(key)));
                return Ok(cursor);
            }
            let child = node.child_index(key);
            cursor.stack.push((node, child));
            at = node.child(child);
        }
    }

    /// Bytes per entry.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Adds `entry` to the tree now (replay and repairs; the write path
    /// stages instead); false if it was already there.
    pub fn insert(&mut self, entry: &[u8]) -> Result<bool, IndexError> {
        self.unstage(entry);
        self.insert_tree(entry)
    }

    /// Removes `entry` from the tree now; false if it was not there.
    pub fn remove(&mut self, entry: &[u8]) -> Result<bool, IndexError> {
        self.unstage(entry);
        self.remove_tree(entry)
    }

    fn insert_tree(&mut self, entry: &[u8]) -> Result<bool, IndexError> {
        debug_assert_eq!(entry.len(), self.width);
        let Some(root) = self.root else {
            self.mem.push(MemNode::Leaf {
                entries: entry.to_vec(),
            });
            self.root = Some(NodeRef::Mem(self.mem.len() as u32 - 1));
            self.entry_count += 1;
            return Ok(true);
        };
        // No look-up first: the write path and replay only add new entries
        // (replay skips what a tree's checkpoint holds), so a path copied
        // into memory for an entry already there is a rare, harmless waste.
        let root = self.make_mut(root)?;
        let (added, siblings) = self.insert_into(root, entry)?;
        self.grow_root(NodeRef::Mem(root), siblings);
        if added {
            self.entry_count += 1;
        }
        Ok(added)
    }

    /// Installs `root` as the root, with a new root above it when it split
    /// (itself split again, and a level added, for as long as it does not
    /// fit a page).
    fn grow_root(&mut self, mut root: NodeRef, mut siblings: Vec<Sibling>) {
        while !siblings.is_empty() {
            let mut separators = Vec::with_capacity(siblings.len() * self.width);
            let mut children = vec![root];
            for (separator, sibling) in siblings {
                separators.extend_from_slice(&separator);
                children.push(sibling);
            }
            let (first, rest) = split_to_fit(
                MemNode::Branch {
                    separators,
                    children,
                },
                self.width,
                None,
            );
            root = self.push_mem(first);
            siblings = rest
                .into_iter()
                .map(|(separator, piece)| (separator, self.push_mem(piece)))
                .collect();
        }
        self.root = Some(root);
    }

    fn remove_tree(&mut self, entry: &[u8]) -> Result<bool, IndexError> {
        let Some(root) = self.root else {
            return Ok(false);
        };
        let root = self.make_mut(root)?;
        let (removed, emptied) = self.remove_from(root, entry)?;
        self.root = if emptied {
            None
        } else {
            Some(NodeRef::Mem(root))
        };
        self.shrink_root();
        if removed {
            self.entry_count -= 1;
        }
        Ok(removed)
    }

    /// A branch root left with one child hands the root down.
    fn shrink_root(&mut self) {
        while let Some(NodeRef::Mem(i)) = self.root {
            match &self.mem[i as usize] {
                MemNode::Branch { children, .. } if children.len() == 1 => {
                    self.root = Some(children[0])
                }
                _ => break,
            }
        }
    }

    /// Applies `batch` (sorted, no entry twice; `true` adds the entry,
    /// `false` removes it; adding a present entry or removing an absent one
    /// does nothing) in one walk down the tree: every leaf the batch reaches
    /// is copied once, changed by every entry that falls in it, and cut
    /// into as few pages as its entries fit, of about equal size. Entry by
    /// entry, a leaf that overflows splits in half and the halves stay half
    /// full; cut after the whole batch, the pages a batch of neighbouring
    /// entries (a group's newest events at the front of a time-ordered
    /// index, a merge of the in-memory level) leaves behind are full.
    /// A direct change: whatever the level staged for these entries is
    /// dropped first.
    pub fn apply_sorted(&mut self, batch: &[(&[u8], bool)]) -> Result<(), IndexError> {
        debug_assert!(batch.windows(2).all(|w| w[0].0 < w[1].0));
        debug_assert!(batch.iter().all(|(e, _)| e.len() == self.width));
        if !self.level.is_empty() {
            for (entry, _) in batch {
                self.unstage(entry);
            }
        }
        self.apply_batch(batch)
    }

    /// [`BTree::apply_sorted`] without looking at the level (a merge of the
    /// level: its batch has left the map already).
    fn apply_batch(&mut self, batch: &[(&[u8], bool)]) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        let root = match self.root {
            Some(root) => self.make_mut(root)?,
            None => {
                let mut entries = self.spare.pop().unwrap_or_default();
                entries.clear();
                self.mem.push(MemNode::Leaf { entries });
                self.mem.len() as u32 - 1
            }
        };
        let (emptied, siblings) = self.apply_into(root, batch)?;
        if emptied {
            self.root = None;
        } else {
            self.grow_root(NodeRef::Mem(root), siblings);
            self.shrink_root();
        }
        Ok(())
    }

    /// [`BTree::apply_sorted`] below the in-memory `node`, whose key range
    /// holds every entry of `batch`; returns whether `node` is now empty,
    /// and the new right siblings (with the separator before each) if it
    /// had to split.
    fn apply_into(
        &mut self,
        node: u32,
        batch: &[(&[u8], bool)],
    ) -> Result<(bool, Vec<Sibling>), IndexError> {
        let width = self.width;
        let taken = std::mem::replace(
            &mut self.mem[node as usize],
            MemNode::Leaf {
                entries: Vec::new(),
            },
        );
        let (separators, children) = match taken {
            MemNode::Leaf { entries: old } => {
                let mut merged = self.spare.pop().unwrap_or_default();
                merged.clear();
                merged.reserve(old.len() + batch.len() * width);
                let count = old.len() / width;
                let (mut at, mut delta) = (0, 0i64);
                for &(entry, add) in batch {
                    let from = at;
                    while at < count
                        && compare_keys(&old[at * width..(at + 1) * width], entry).is_lt()
                    {
                        at += 1;
                    }
                    merged.extend_from_slice(&old[from * width..at * width]);
                    let present = at < count && &old[at * width..(at + 1) * width] == entry;
                    match (present, add) {
                        // Copied with the entries after it.
                        (true, true) | (false, false) => {}
                        (true, false) => {
                            at += 1;
                            delta -= 1;
                        }
                        (false, true) => {
                            merged.extend_from_slice(entry);
                            delta += 1;
                        }
                    }
                }
                merged.extend_from_slice(&old[at * width..]);
                self.spare.push(old);
                self.entry_count = self.entry_count.saturating_add_signed(delta);
                if merged.is_empty() {
                    self.spare.push(merged);
                    return Ok((true, Vec::new()));
                }
                let cuts = leaf_cuts(&merged, width);
                let siblings = self.cut_leaf(node, merged, &cuts);
                return Ok((false, siblings));
            }
            MemNode::Branch {
                separators,
                children,
            } => (separators, children),
        };
        // Which child each run of the batch falls under.
        let bounds = separators.len() / width;
        let separator = |i: usize| &separators[i * width..(i + 1) * width];
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        let mut from = 0;
        while from < batch.len() {
            let entry = batch[from].0;
            let child = partition_point(bounds, |i| compare_keys(separator(i), entry).is_le());
            let to = if child < bounds {
                let bound = separator(child);
                from + batch[from..].partition_point(|(e, _)| compare_keys(e, bound).is_lt())
            } else {
                batch.len()
            };
            runs.push((child, from, to));
            from = to;
        }
        let mut changed: Vec<(u32, bool, Vec<Sibling>)> = Vec::with_capacity(runs.len());
        for &(child, from, to) in &runs {
            let at = self.make_mut(children[child])?;
            let (emptied, siblings) = self.apply_into(at, &batch[from..to])?;
            changed.push((at, emptied, siblings));
        }
        // The branch again: changed children in place, their new siblings
        // after them, emptied ones gone with the separator before them (the
        // next child's separator still bounds it from the left).
        let mut new_separators = Vec::with_capacity(separators.len() + runs.len() * width);
        let mut new_children: Vec<NodeRef> = Vec::with_capacity(children.len() + runs.len());
        // Which of the new children this batch changed.
        let mut touched: Vec<bool> = Vec::with_capacity(children.len() + runs.len());
        let mut push = |separator: Option<&[u8]>, child: NodeRef, changed: bool| {
            if !new_children.is_empty() {
                new_separators
                    .extend_from_slice(separator.expect("only the first child has no separator"));
            }
            new_children.push(child);
            touched.push(changed);
        };
        let mut changes = runs.iter().zip(changed).peekable();
        for (i, &child) in children.iter().enumerate() {
            let before = (i > 0).then(|| separator(i - 1));
            match changes.next_if(|((c, _, _), _)| *c == i) {
                Some((_, (at, emptied, siblings))) => {
                    if !emptied {
                        push(before, NodeRef::Mem(at), true);
                        for (sibling_separator, sibling) in &siblings {
                            push(Some(sibling_separator), *sibling, true);
                        }
                    }
                }
                None => push(before, child, false),
            }
        }
        if new_children.is_empty() {
            return Ok((true, Vec::new()));
        }
        self.pack_leaves(&mut new_children, &mut new_separators, &touched);
        self.mem[node as usize] = MemNode::Branch {
            separators: new_separators,
            children: new_children,
        };
        if fits(&self.mem[node as usize], width) {
            return Ok((false, Vec::new()));
        }
        Ok((false, self.split_in_place(node, None)))
    }

    /// Makes `node` writable: returns its in-memory index, copying a clean page
    /// into memory (and marking the page pending free) if needed.
    fn make_mut(&mut self, node: NodeRef) -> Result<u32, IndexError> {
        match node {
            NodeRef::Mem(i) => Ok(i),
            NodeRef::Page(id) => {
                let buffer = self.spare.pop().unwrap_or_default();
                let owned = self.node(node)?.to_mem_in(self.width, buffer);
                self.pending_free.push(id);
                self.mem.push(owned);
                Ok(self.mem.len() as u32 - 1)
            }
        }
    }

    /// Inserts below `node`; returns whether the entry was new, and the new
    /// right siblings (with the separator before each) if `node` had to split.
    fn insert_into(&mut self, node: u32, entry: &[u8]) -> Result<(bool, Vec<Sibling>), IndexError> {
        let width = self.width;
        let (index, child_ref) = match &mut self.mem[node as usize] {
            MemNode::Leaf { entries } => {
                let count = entries.len() / width;
                let pos = partition_point(count, |i| {
                    compare_keys(&entries[i * width..(i + 1) * width], entry).is_lt()
                });
                if entries.get(pos * width..(pos + 1) * width) == Some(entry) {
                    return Ok((false, Vec::new()));
                }
                entries.splice(pos * width..pos * width, entry.iter().copied());
                if fits(&self.mem[node as usize], width) {
                    return Ok((true, Vec::new()));
                }
                // Sequential inserts at either end split unevenly, so runs of
                // ascending or descending keys leave full pages behind.
                let count = count + 1;
                let at = if pos == 0 {
                    1
                } else if pos == count - 1 {
                    count - 1
                } else {
                    count / 2
                };
                return Ok((true, self.split_in_place(node, Some(at))));
            }
            MemNode::Branch {
                separators,
                children,
            } => {
                let count = separators.len() / width;
                let index = partition_point(count, |i| {
                    compare_keys(&separators[i * width..(i + 1) * width], entry).is_le()
                });
                (index, children[index])
            }
        };
        let child = self.make_mut(child_ref)?;
        let (added, siblings) = self.insert_into(child, entry)?;
        let MemNode::Branch {
            separators,
            children,
        } = &mut self.mem[node as usize]
        else {
            unreachable!("index came from a branch")
        };
        children[index] = NodeRef::Mem(child);
        if siblings.is_empty() {
            return Ok((added, Vec::new()));
        }
        let at = index + 1;
        let new_separators: Vec<u8> = siblings
            .iter()
            .flat_map(|(s, _)| s.iter().copied())
            .collect();
        separators.splice(index * width..index * width, new_separators);
        children.splice(at..at, siblings.into_iter().map(|(_, sibling)| sibling));
        if fits(&self.mem[node as usize], width) {
            return Ok((added, Vec::new()));
        }
        // A branch whose keys shared a long prefix can lose it to one new
        // separator: then it may take several pages, not two.
        Ok((added, self.split_in_place(node, None)))
    }

    fn push_mem(&mut self, node: MemNode) -> NodeRef {
        self.mem.push(node);
        NodeRef::Mem(self.mem.len() as u32 - 1)
    }

    /// Splits the overfull in-memory `node` into pieces that fit: the first
    /// stays at `node`, the rest are returned in key order.
    fn split_in_place(&mut self, node: u32, first_split: Option<usize>) -> Vec<Sibling> {
        let taken = std::mem::replace(
            &mut self.mem[node as usize],
            MemNode::Leaf {
                entries: Vec::new(),
            },
        );
        let (first, rest) = split_to_fit(taken, self.width, first_split);
        self.mem[node as usize] = first;
        rest.into_iter()
            .map(|(separator, piece)| (separator, self.push_mem(piece)))
            .collect()
    }

    /// Removes below `node`; returns whether the entry was there, and whether
    /// `node` is now empty.
    fn remove_from(&mut self, node: u32, entry: &[u8]) -> Result<(bool, bool), IndexError> {
        let width = self.width;
        let (index, child_ref) = match &mut self.mem[node as usize] {
            MemNode::Leaf { entries } => {
                let count = entries.len() / width;
                let pos = partition_point(count, |i| {
                    compare_keys(&entries[i * width..(i + 1) * width], entry).is_lt()
                });
                let found = entries.get(pos * width..(pos + 1) * width) == Some(entry);
                if found {
                    entries.drain(pos * width..(pos + 1) * width);
                }
                return Ok((found, entries.is_empty()));
            }
            MemNode::Branch {
                separators,
                children,
            } => {
                let count = separators.len() / width;
                let index = partition_point(count, |i| {
                    compare_keys(&separators[i * width..(i + 1) * width], entry).is_le()
                });
                (index, children[index])
            }
        };
        let child = self.make_mut(child_ref)?;
        let (removed, child_emptied) = self.remove_from(child, entry)?;
        let MemNode::Branch {
            separators,
            children,
        } = &mut self.mem[node as usize]
        else {
            unreachable!()
        };
        children[index] = NodeRef::Mem(child);
        if child_emptied {
            children.remove(index);
            // Dropping the separator on the emptied child's left (or the first
            // one) keeps every remaining separator a valid bound.
            let s = index.saturating_sub(1);
            if separators.len() >= (s + 1) * width {
                separators.drain(s * width..(s + 1) * width);
            }
        }
        Ok((removed, children.is_empty()))
    }

    /// Writes every in-memory node and a new meta page recording that the tree
    /// holds the log through `lsn` (ending at `position`). Does not change the
    /// in-memory tree: call [`BTree::install`] with the result.
    pub fn prepare_checkpoint(
        &self,
        lsn: Lsn,
        position: Location,
    ) -> Result<Option<PreparedCheckpoint>, IndexError> {
        if self.meta_unsettled.load(Ordering::Acquire) {
            return Err(IndexError::Unsettled {
                path: self.path.clone(),
            });
        }
        if self.mem.is_empty() && lsn == self.meta.checkpoint_lsn {
            return Ok(None);
        }
        let mut allocator = Allocator {
            free: self.free.clone(),
            next: self.meta.page_count,
        };
        // Tree pages are written as they are encoded, through one buffer:
        // a checkpoint of 65,536 nodes would otherwise ask the system for
        // 256 MiB of fresh (zeroed) memory first.
        let mut written: Vec<PageId> = Vec::with_capacity(self.mem.len() + 1);
        let mut scratch = vec![0u8; PAGE_SIZE];
        let root = match self.root {
            None => None,
            Some(root) => {
                Some(self.write_node(root, &mut allocator, &mut written, &mut scratch)?)
            }
        };
        let mut writes: Vec<(PageId, Vec<u8>)> = Vec::new();
        // The new meta's free list: pages left unallocated, pages the durable
        // tree uses but the new one does not, and the old free list's own pages.
        let mut listed: Vec<PageId> = allocator.free.clone();
        listed.extend_from_slice(&self.pending_free);
        listed.extend_from_slice(&self.free_list_pages);
        listed.sort_unstable();
        listed.dedup();
        let list_pages_needed = listed.len().div_ceil(FREE_IDS_PER_PAGE);
        let mut free_list_pages = Vec::with_capacity(list_pages_needed);
        for _ in 0..list_pages_needed {
            // Take list pages from the usable free pages first, then the file's end.
            let page = match allocator.free.pop() {
                Some(p) => {
                    listed.retain(|&q| q != p);
                    p
                }
                None => allocator.take(),
            };
            free_list_pages.push(page);
        }
        let chunks: Vec<&[PageId]> = listed.chunks(FREE_IDS_PER_PAGE).collect();
        for (i, &page) in free_list_pages.iter().enumerate() {
            let next = free_list_pages.get(i + 1).copied();
            writes.push((
                page,
                encode_free_list_page(page, next, chunks.get(i).copied().unwrap_or(&[])),
            ));
        }
        writes.sort_by_key(|(id, _)| *id);
        written.extend(writes.iter().map(|(id, _)| *id));
        for (id, page) in &writes {
            self.file
                .write_all_at(page, id.0 * PAGE_SIZE as u64)
                .map_err(io_error(&self.path, "write"))?;
        }
        // The pages must be durable before a meta page points at them.
        self.file.sync().map_err(io_error(&self.path, "sync"))?;
        let meta = Meta {
            index_kind: self.meta.index_kind,
            entry_width: self.meta.entry_width,
            generation: self.meta.generation + 1,
            root,
            entry_count: self.entry_count,
            page_count: allocator.next,
            checkpoint_lsn: lsn,
            checkpoint_position: position,
            free_list_head: free_list_pages.first().copied(),
            free_page_count: listed.len() as u64,
            // Changes written at the LSN the tree already held are of
            // records after it (a merge of the level written part-way, or
            // a tree whose level is still staged); a checkpoint at a newer
            // LSN holds every record through it and none after.
            past_floor: lsn == self.meta.checkpoint_lsn
                && (self.meta.past_floor || !self.mem.is_empty()),
        };
        // From here the other meta slot may become durable: until `install`,
        // memory no longer knows which free pages are really free.
        self.meta_unsettled.store(true, Ordering::Release);
        let slot = 1 - self.meta_slot;
        self.file
            .write_all_at(
                &encode_meta(&meta, META_SLOTS[slot]),
                META_SLOTS[slot].0 * PAGE_SIZE as u64,
            )
            .map_err(io_error(&self.path, "write meta"))?;
        self.file.sync().map_err(io_error(&self.path, "sync"))?;
        Ok(Some(PreparedCheckpoint {
            meta,
            slot,
            free: listed,
            free_list_pages,
            written,
        }))
    }

    /// Switches the in-memory tree to the checkpoint just written.
    pub fn install(&mut self, prepared: PreparedCheckpoint) -> Result<(), IndexError> {
        // Map the grown file first: if that fails, the tree in memory must
        // still be the one the old map covers (readers go on after a failed
        // checkpoint; the writer is poisoned and reopens from disk).
        let mapped = self.map.as_ref().map_or(0, |m| m.len() as u64);
        let len = prepared.meta.page_count * PAGE_SIZE as u64;
        if len > mapped {
            self.map_to(len)?;
        }
        self.meta = prepared.meta;
        self.meta_slot = prepared.slot;
        self.meta_unsettled.store(false, Ordering::Release);
        self.root = prepared.meta.root.map(NodeRef::Page);
        self.spare.truncate(self.mem.len());
        let room = self.mem.len() - self.spare.len();
        self.spare
            .extend(self.mem.drain(..).take(room).map(|node| match node {
                MemNode::Leaf { entries } => entries,
                MemNode::Branch { separators, .. } => separators,
            }));
        self.mem.clear();
        self.free = prepared.free;
        self.pending_free.clear();
        self.free_list_pages = prepared.free_list_pages;
        self.verified
            .reset(prepared.meta.page_count, &prepared.written);
        Ok(())
    }

    /// Cuts the in-memory leaves a batch changed again, together with
    /// their in-memory neighbours, into the fewest pages that hold them,
    /// and puts the separators in step. Cut leaf by leaf, a leaf that takes
    /// one entry too many splits into two half-full ones, and random-order
    /// indexes settle near two thirds full; re-cut with a neighbour, the
    /// pages stay nearly full. Only leaves already in memory (copied since
    /// the last checkpoint) take part, so packing costs no page write.
    ///
    /// A window is a run of `touched` leaves (changed by this batch) with
    /// one in-memory neighbour on each side; windows whose neighbours touch
    /// are one. Leaves no batch reached since they were last packed are
    /// left alone: a merge of the level sends a branch one slice after
    /// another, and re-cutting every in-memory leaf of the branch at each
    /// slice copied the whole branch again and again (measured: a fifth of
    /// a 100,000-event import into a 3M-event store).
    fn pack_leaves(
        &mut self,
        children: &mut Vec<NodeRef>,
        separators: &mut Vec<u8>,
        touched: &[bool],
    ) {
        let is_mem_leaf = |tree: &BTree, child: NodeRef| match child {
            NodeRef::Mem(i) => matches!(tree.mem[i as usize], MemNode::Leaf { .. }),
            NodeRef::Page(_) => false,
        };
        // `touched` is indexed by the children's positions before any
        // window was re-cut; `shift` is how many children re-cuts removed
        // before the current position.
        let mut shift = 0;
        let mut at = 0;
        // Where the last window ended: the next one starts no earlier.
        let mut done = 0;
        while at < children.len() {
            if !(touched[at + shift] && is_mem_leaf(self, children[at])) {
                at += 1;
                continue;
            }
            let start = if at > done && is_mem_leaf(self, children[at - 1]) {
                at - 1
            } else {
                at
            };
            let mut end = at;
            loop {
                while end < children.len()
                    && touched[end + shift]
                    && is_mem_leaf(self, children[end])
                {
                    end += 1;
                }
                // One untouched in-memory neighbour on the right, and on
                // past it if the leaf after it was touched too.
                if end < children.len() && is_mem_leaf(self, children[end]) {
                    end += 1;
                    if end < children.len()
                        && touched[end + shift]
                        && is_mem_leaf(self, children[end])
                    {
                        continue;
                    }
                }
                break;
            }
            let count = self.recut(children, separators, start, end);
            shift += (end - start) - count;
            at = start + count;
            done = at;
        }
    }

    /// Re-cuts the in-memory leaves `children[start..end]` together into
    /// the fewest pages that hold them, if that is fewer than now; returns
    /// how many children they are afterwards.
    fn recut(
        &mut self,
        children: &mut Vec<NodeRef>,
        separators: &mut Vec<u8>,
        start: usize,
        end: usize,
    ) -> usize {
        let width = self.width;
        if end - start < 2 {
            return end - start;
        }
        let mut all = self.spare.pop().unwrap_or_default();
        all.clear();
        for child in &children[start..end] {
            if let NodeRef::Mem(i) = child
                && let MemNode::Leaf { entries } = &self.mem[*i as usize]
            {
                all.extend_from_slice(entries);
            }
        }
        self.packed_bytes += all.len() as u64;
        let cuts = leaf_cuts(&all, width);
        if cuts.len() + 1 >= end - start {
            self.spare.push(all);
            return end - start;
        }
        // The first leaf of the window keeps its slot (and the separator
        // before it); the others' nodes are dropped from the tree.
        let NodeRef::Mem(head) = children[start] else {
            unreachable!("the window holds in-memory leaves")
        };
        let pieces = self.cut_leaf(head, all, &cuts);
        let count = pieces.len();
        // Separator k comes before child k + 1: the window's inner ones
        // are start..end - 1.
        let new_separators: Vec<u8> = pieces.iter().flat_map(|(s, _)| s.iter().copied()).collect();
        separators.splice(start * width..(end - 1) * width, new_separators);
        children.splice(start + 1..end, pieces.into_iter().map(|(_, piece)| piece));
        1 + count
    }

    /// Cuts sorted `entries` at `cuts` (from [`leaf_cuts`]): the first
    /// piece becomes the in-memory leaf `node`, the others new leaves,
    /// returned with the separator (first entry) before each.
    fn cut_leaf(&mut self, node: u32, mut entries: Vec<u8>, cuts: &[usize]) -> Vec<Sibling> {
        let width = self.width;
        let mut siblings = Vec::with_capacity(cuts.len());
        for (i, &cut) in cuts.iter().enumerate() {
            let end = cuts.get(i + 1).map_or(entries.len(), |&next| next * width);
            let mut piece = self.spare.pop().unwrap_or_default();
            piece.clear();
            piece.extend_from_slice(&entries[cut * width..end]);
            let separator = piece[..width].to_vec();
            siblings.push((separator, self.push_mem(MemNode::Leaf { entries: piece })));
        }
        if let Some(&first) = cuts.first() {
            entries.truncate(first * width);
        }
        self.mem[node as usize] = MemNode::Leaf { entries };
        siblings
    }

    /// Gives the blocks of the free pages back to the file system (holes in
    /// the file; its length stays). Copy-on-write leaves a tree's file
    /// about twice the tree after a checkpoint that rewrote most of it (the
    /// old copies are free until the next checkpoint reuses them): the
    /// store does this at close. Nothing reads a free page before a
    /// checkpoint writes it again. Returns the bytes released.
    pub fn release_free_pages(&self) -> Result<u64, IndexError> {
        if self.meta_unsettled.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut pages: Vec<u64> = self.free.iter().map(|p| p.0).collect();
        pages.sort_unstable();
        let mut released = 0;
        let mut i = 0;
        while i < pages.len() {
            let start = pages[i];
            let mut end = start + 1;
            i += 1;
            while i < pages.len() && pages[i] == end {
                end += 1;
                i += 1;
            }
            let len = (end - start) * PAGE_SIZE as u64;
            self.file
                .discard(start * PAGE_SIZE as u64, len)
                .map_err(io_error(&self.path, "release free pages"))?;
            released += len;
        }
        Ok(released)
    }

    /// Assigns pages to in-memory nodes below `node`, children first, and
    /// writes them (encoded in `scratch`), noting each page in `written`.
    fn write_node(
        &self,
        node: NodeRef,
        allocator: &mut Allocator,
        written: &mut Vec<PageId>,
        scratch: &mut [u8],
    ) -> Result<PageId, IndexError> {
        let index = match node {
            NodeRef::Page(id) => return Ok(id),
            NodeRef::Mem(i) => i as usize,
        };
        let encoded = match &self.mem[index] {
            MemNode::Leaf { .. } => None,
            MemNode::Branch {
                separators,
                children,
            } => {
                let mut pages = Vec::with_capacity(children.len());
                for &child in children {
                    pages.push(NodeRef::Page(
                        self.write_node(child, allocator, written, scratch)?,
                    ));
                }
                Some(MemNode::Branch {
                    separators: separators.clone(),
                    children: pages,
                })
            }
        };
        let id = allocator.take();
        encode_node_into(
            encoded.as_ref().unwrap_or(&self.mem[index]),
            self.width,
            id,
            scratch,
        );
        self.file
            .write_all_at(scratch, id.0 * PAGE_SIZE as u64)
            .map_err(io_error(&self.path, "write"))?;
        written.push(id);
        Ok(id)
    }
}

/// A new right sibling of a node that split, with the separator before it.
type Sibling = (Vec<u8>, NodeRef);

/// Splits `node` until every piece fits a page. Returns the first piece and
/// every later one with the separator before it. `first_split` (a position)
/// chooses where the first cut goes; later cuts halve. A single entry or
/// child always fits, so this ends.
fn split_to_fit(
    node: MemNode,
    width: usize,
    first_split: Option<usize>,
) -> (MemNode, Vec<(Vec<u8>, MemNode)>) {
    if fits(&node, width) {
        return (node, Vec::new());
    }
    let (left, separator, right) = match node {
        MemNode::Leaf { mut entries } => {
            let count = entries.len() / width;
            let at = first_split.unwrap_or(count / 2).clamp(1, count - 1);
            let right = entries.split_off(at * width);
            let separator = right[..width].to_vec();
            (
                MemNode::Leaf { entries },
                separator,
                MemNode::Leaf { entries: right },
            )
        }
        MemNode::Branch {
            mut separators,
            mut children,
        } => {
            let mid = first_split
                .unwrap_or(children.len() / 2)
                .clamp(1, children.len() - 1);
            let right_children = children.split_off(mid);
            let right_separators = separators.split_off(mid * width);
            let separator = separators.split_off((mid - 1) * width);
            (
                MemNode::Branch {
                    separators,
                    children,
                },
                separator,
                MemNode::Branch {
                    separators: right_separators,
                    children: right_children,
                },
            )
        }
    };
    let (first, mut pieces) = split_to_fit(left, width, None);
    let (right_first, right_rest) = split_to_fit(right, width, None);
    pieces.push((separator, right_first));
    pieces.extend(right_rest);
    (first, pieces)
}

/// Where to cut sorted `entries` into leaf pages: as few pages as they fit
/// in, with about the same number of entries each. Returns the entry
/// indexes where the second and later pages start (none when one page
/// holds them all).
fn leaf_cuts(entries: &[u8], width: usize) -> Vec<usize> {
    let count = entries.len() / width;
    let fits = |from: usize, to: usize| leaf_fits(&entries[from * width..to * width], width);
    if fits(0, count) {
        return Vec::new();
    }
    // The fewest pages: each as full as it can be, from the left (a longer
    // run of entries shares no more prefix than a shorter one, so whether a
    // run fits is monotone in its length, and greedy is optimal).
    let mut greedy = Vec::new();
    let mut from = 0;
    while from < count {
        let (mut lo, mut hi) = (from + 1, count);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(from, mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo < count {
            greedy.push(lo);
        }
        from = lo;
    }
    // As many pages, evenly filled, where that fits: an even cut leaves
    // room in each page for later inserts. Where the entries' shared
    // prefixes differ (a page of one tag value holds three times the
    // entries of a mixed one), an even cut may not fit: the greedy one
    // stands.
    let pages = greedy.len() + 1;
    let even: Vec<usize> = (1..pages).map(|k| k * count / pages).collect();
    let mut from = 0;
    let fits_evenly = even.iter().chain([&count]).all(|&to| {
        let ok = fits(from, to);
        from = to;
        ok
    });
    if fits_evenly { even } else { greedy }
}

#[derive(Debug)]
struct Allocator {
    free: Vec<PageId>,
    next: u64,
}

impl Allocator {
    fn take(&mut self) -> PageId {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            PageId(self.next - 1)
        })
    }
}

/// Index files are mapped in address ranges of whole multiples of this.
const MAP_STEP: u64 = 64 << 20;

/// The address range to map an index file of `size` bytes in: room to
/// grow to twice its size (at least one `step`), so the map survives many
/// checkpoints that grow the file. Address space only: nothing past the
/// file's end is read or kept in memory.
fn map_reserve(size: u64, step: u64) -> u64 {
    size.saturating_mul(2).max(step).div_ceil(step) * step
}

fn partition_point(len: usize, mut pred: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}

/// Walks entries in order from a seek position: the tree's, merged with the
/// in-memory level's (a staged addition shows, a staged removal hides the
/// tree's entry).
#[derive(Debug)]
pub(crate) struct Cursor<'t> {
    tree: TreeCursor<'t>,
    /// The level from the seek key on; `None` when it was empty (the tree's
    /// cursor is then used as it is).
    level: Option<LevelCursor<'t>>,
    /// The tree's next entry, read ahead while merging (`None`: not read).
    tree_next: Option<Option<Vec<u8>>>,
    entry: Vec<u8>,
}

impl Cursor<'_> {
    /// Moves to the first entry >= `key`, which must not be below the last
    /// entry returned (see [`TreeCursor::seek_forward`]).
    pub fn seek_forward(&mut self, key: &[u8]) -> Result<(), IndexError> {
        self.tree.seek_forward(key)?;
        if let Some(level) = &mut self.level {
            level.seek_forward(key);
            self.tree_next = None;
        }
        Ok(())
    }

    /// The next entry, or `None` at the end.
    pub fn next(&mut self) -> Result<Option<&[u8]>, IndexError> {
        let Some(level) = &mut self.level else {
            return self.tree.next();
        };
        loop {
            if self.tree_next.is_none() {
                self.tree_next = Some(self.tree.next()?.map(<[u8]>::to_vec));
            }
            let tree_next = self.tree_next.as_ref().and_then(Option::as_deref);
            let staged = level.peek().map(|(entry, _)| entry);
            let order = match (tree_next, staged) {
                (None, None) => return Ok(None),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(t), Some(l)) => compare_keys(t, l),
            };
            if order.is_eq() {
                // The staged state wins over the tree's.
                self.tree_next = None;
            }
            if order.is_lt() {
                let Some(Some(entry)) = self.tree_next.take() else {
                    unreachable!("the tree's entry was read ahead")
                };
                self.entry = entry;
                return Ok(Some(&self.entry));
            }
            let Some((entry, add)) = level.next() else {
                unreachable!("the level's entry was peeked")
            };
            if add {
                self.entry.clear();
                self.entry.extend_from_slice(entry);
                return Ok(Some(&self.entry));
            }
        }
    }
}

/// Walks the tree's entries in order from a seek position.
#[derive(Debug)]
struct TreeCursor<'t> {
    tree: &'t BTree,
    /// Nodes from the root down, each with the position being visited.
    stack: Vec<(Node<'t>, usize)>,
    entry: Vec<u8>,
}

impl TreeCursor<'_> {
    /// Moves to the first entry >= `key`, which must not be below the last
    /// entry returned (or, before any, the key of the seek): within the
    /// current leaf when the key falls in it (the common case when a scan
    /// skips ahead a little), otherwise by a new descent from the root.
    pub fn seek_forward(&mut self, key: &[u8]) -> Result<(), IndexError> {
        if let Some((node, position)) = self.stack.last_mut()
            && node.is_leaf()
            && node.len() > 0
        {
            node.entry_into(node.len() - 1, &mut self.entry);
            if self.entry.as_slice() >= key {
                *position = node.lower_bound(key);
                return Ok(());
            }
        }
        *self = self.tree.seek_tree(key)?;
        Ok(())
    }

    /// The next entry, or `None` at the end of the tree.
    pub fn next(&mut self) -> Result<Option<&[u8]>, IndexError> {
        loop {
            let Some((node, position)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if node.is_leaf() && *position < node.len() {
                node.entry_into(*position, &mut self.entry);
                *position += 1;
                return Ok(Some(&self.entry));
            }
            // This node is done: climb to the first ancestor with a next child.
            self.stack.pop();
            let Some((parent, position)) = self.stack.last_mut() else {
                return Ok(None);
            };
            *position += 1;
            if *position < parent.len() {
                let mut at = parent.child(*position);
                loop {
                    let node = self.tree.node(at)?;
                    self.stack.push((node, 0));
                    if node.is_leaf() {
                        break;
                    }
                    at = node.child(0);
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeSet;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::storage::FileStorage;

    fn entry(n: u64) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&(n % 97).to_be_bytes());
        e[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        e
    }

    /// Checkpoints `tree` through `lsn` and installs the result.
    pub(in crate::index) fn checkpoint(tree: &mut BTree, lsn: u64) {
        let position = Location {
            segment: SegmentId(1),
            offset: lsn as u32,
        };
        let prepared = tree
            .prepare_checkpoint(Lsn(lsn), position)
            .unwrap()
            .unwrap();
        tree.install(prepared).unwrap();
    }

    fn collect(tree: &BTree) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cursor = tree.seek(&[0u8; 16]).unwrap();
        while let Some(e) = cursor.next().unwrap() {
            out.push(e.to_vec());
        }
        out
    }

    #[test]
    fn matches_a_btreeset_through_inserts_removes_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        let mut model = BTreeSet::new();
        let mut lsn = 0;
        for round in 0..6u64 {
            for n in 0..3000u64 {
                let x = (n * 7919 + round * 31) % 5000;
                let e = entry(x);
                if (n + round) % 3 == 0 {
                    assert_eq!(tree.remove(&e).unwrap(), model.remove(e.as_slice()));
                } else {
                    assert_eq!(tree.insert(&e).unwrap(), model.insert(e.to_vec()));
                }
            }
            assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
            lsn += 1;
            checkpoint(&mut tree, lsn);
            assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
            drop(tree);
            tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
            assert_eq!(tree.meta().checkpoint_lsn, Lsn(lsn));
            assert_eq!(tree.entry_count(), model.len() as u64);
            assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
        }
        // Seeks land on the first entry >= the key.
        for probe in [0u64, 17, 250, 4999] {
            let key = entry(probe);
            let mut cursor = tree.seek(&key).unwrap();
            let expected = model.range(key.to_vec()..).next().cloned();
            assert_eq!(cursor.next().unwrap().map(|e| e.to_vec()), expected);
        }
        // Skipping forward lands where a fresh seek would, in the leaf or not.
        let mut probes: Vec<[u8; 16]> = (0..5000u64)
            .filter(|n| n % 7 == 0 || n % 311 < 3)
            .map(entry)
            .collect();
        probes.sort_unstable();
        let mut cursor = tree.seek(&probes[0]).unwrap();
        let mut last: Option<Vec<u8>> = None;
        let mut checked = 0;
        for probe in probes {
            if last.as_deref().is_some_and(|l| probe.as_slice() <= l) {
                continue;
            }
            cursor.seek_forward(&probe).unwrap();
            let expected = model.range(probe.to_vec()..).next().cloned();
            last = cursor.next().unwrap().map(|e| e.to_vec());
            assert_eq!(last, expected, "skipping to {probe:?}");
            checked += 1;
        }
        assert!(checked > 300, "{checked}");
        // Every page is either reachable or on the free list: the file does not leak.
        let pages = tree.meta().page_count;
        let mut reachable =
            2 + tree.free_pages().len() as u64 + tree.free_list_pages().len() as u64;
        let mut stack: Vec<NodeRef> = tree.root().into_iter().collect();
        while let Some(node) = stack.pop() {
            reachable += 1;
            let node = tree.node(node).unwrap();
            if !node.is_leaf() {
                stack.extend((0..node.len()).map(|i| node.child(i)));
            }
        }
        assert_eq!(reachable, pages);
    }

    /// Reads through the level: a full scan, seeks (whole keys and
    /// prefixes) and forward skips, all against the model.
    fn assert_reads_match(tree: &BTree, model: &BTreeSet<Vec<u8>>, rng: &mut u64) {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        assert_eq!(collect(tree), model.iter().cloned().collect::<Vec<_>>());
        assert_eq!(tree.entry_count(), model.len() as u64);
        for _ in 0..40 {
            let probe = entry(next() % 5000);
            let cut = 1 + (next() % 16) as usize;
            let key = &probe[..cut];
            let mut cursor = tree.seek(key).unwrap();
            let mut expected = model.range(key.to_vec()..);
            for _ in 0..5 {
                assert_eq!(
                    cursor.next().unwrap().map(<[u8]>::to_vec),
                    expected.next().cloned(),
                    "after a seek to {key:?}"
                );
            }
            let mut last = cursor.next().unwrap().map(<[u8]>::to_vec);
            expected.next();
            for _ in 0..5 {
                let Some(at) = last.clone() else { break };
                let mut target = at.clone();
                // A little further on: the next key with a bumped byte.
                let byte = 8 + (next() % 8) as usize;
                target[byte] = target[byte].saturating_add(1 + (next() % 40) as u8);
                if target <= at {
                    continue;
                }
                cursor.seek_forward(&target).unwrap();
                last = cursor.next().unwrap().map(<[u8]>::to_vec);
                assert_eq!(
                    last,
                    model.range(target.clone()..).next().cloned(),
                    "skip to {target:?}"
                );
            }
        }
    }

    #[test]
    fn the_in_memory_level_reads_and_merges_like_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        let mut model = BTreeSet::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut lsn = 0;
        for round in 0..8u64 {
            for n in 0..2500u64 {
                let x = (n * 7919 + round * 131) % 5000;
                let e = entry(x);
                // Staged changes follow the write path's rule (add only what
                // is absent, remove only what is present); direct ones
                // (replay's) may do either, and take over what was staged.
                match (n + round) % 7 {
                    0 | 1 => {
                        let present = model.contains(e.as_slice());
                        tree.stage(&e, !present);
                        if present {
                            model.remove(e.as_slice());
                        } else {
                            model.insert(e.to_vec());
                        }
                    }
                    2 => {
                        tree.insert(&e).unwrap();
                        model.insert(e.to_vec());
                    }
                    3 => {
                        tree.remove(&e).unwrap();
                        model.remove(e.as_slice());
                    }
                    _ => {
                        if !model.contains(e.as_slice()) {
                            tree.stage(&e, true);
                            model.insert(e.to_vec());
                        }
                    }
                }
            }
            assert!(tree.level_len() > 0);
            assert_reads_match(&tree, &model, &mut rng);
            // Part of the level, then a checkpoint written part-way (the
            // writer's merge under its node bound), then the rest.
            let left = tree.merge_level(tree.level_len() / 3).unwrap();
            assert!(left > 0);
            assert_reads_match(&tree, &model, &mut rng);
            let (held, position) = (tree.meta().checkpoint_lsn, tree.meta().checkpoint_position);
            let prepared = tree.prepare_checkpoint(held, position).unwrap().unwrap();
            tree.install(prepared).unwrap();
            assert_reads_match(&tree, &model, &mut rng);
            assert_eq!(tree.merge_level(usize::MAX).unwrap(), 0);
            assert_eq!(tree.level_len(), 0);
            assert_reads_match(&tree, &model, &mut rng);
            lsn += 1;
            checkpoint(&mut tree, lsn);
            drop(tree);
            tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
            assert_eq!(tree.entry_count(), model.len() as u64);
            assert_reads_match(&tree, &model, &mut rng);
        }
    }

    /// Groups of a time-ordered index as the writer applies them: each
    /// group's newest events (jittered times, so they land among the
    /// newest entries, not only before them), sorted, in one batch, and a
    /// few removals; against a set, through checkpoints and reopens, and
    /// the file checked page by page at the end.
    #[test]
    fn sorted_batches_match_a_btreeset_and_leave_full_pages() {
        use crate::index::check::check_index;
        use crate::index::keys::IndexKind;
        let kind = IndexKind::Time;
        let width = kind.width();
        let entry = |time: u64, n: u64| {
            let mut e = vec![0u8; width];
            e[..8].copy_from_slice(&(u64::MAX - time).to_be_bytes());
            e[8..16].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            e[width - 8..].copy_from_slice(&n.to_be_bytes());
            e
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, kind.id(), width).unwrap();
        let mut model = BTreeSet::new();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut n, mut clock) = (0u64, 1_000_000u64);
        for round in 1..=80u64 {
            let mut adds = Vec::new();
            for _ in 0..(100 + next() % 400) {
                clock += next() % 3;
                n += 1;
                adds.push(entry(clock - next() % 200, n));
            }
            // A replay of part of the last group: present entries, no change.
            adds.extend(model.iter().take(5).cloned());
            adds.sort_unstable();
            adds.dedup();
            let batch: Vec<(&[u8], bool)> = adds.iter().map(|e| (e.as_slice(), true)).collect();
            tree.apply_sorted(&batch).unwrap();
            model.extend(adds.iter().cloned());
            let mut removes: Vec<Vec<u8>> = model
                .iter()
                .filter(|_| next() % 500 == 0)
                .cloned()
                .collect();
            removes.push(entry(5, u64::MAX)); // absent: no change
            removes.sort_unstable();
            let batch: Vec<(&[u8], bool)> = removes.iter().map(|e| (e.as_slice(), false)).collect();
            tree.apply_sorted(&batch).unwrap();
            for e in &removes {
                model.remove(e);
            }
            assert_eq!(tree.entry_count(), model.len() as u64);
            if round % 7 == 0 {
                checkpoint(&mut tree, round);
            }
            if round % 20 == 0 {
                assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
                checkpoint(&mut tree, round);
                drop(tree);
                tree = BTree::open(&FileStorage, &path, kind.id(), width).unwrap();
            }
        }
        checkpoint(&mut tree, 100);
        let check = |model: &BTreeSet<Vec<u8>>| {
            let bytes = std::fs::read(&path).unwrap();
            let mut found = Vec::new();
            let report = check_index(&bytes, kind, |e| found.push(e.to_vec()));
            assert!(report.problems.is_empty(), "{:?}", report.problems);
            assert_eq!(found, model.iter().cloned().collect::<Vec<_>>());
            // Bytes of full-width entries per byte of tree page.
            (model.len() * width) as f64 / (report.stats.tree_pages as f64 * PAGE_SIZE as f64)
        };
        // Entry by entry, the same groups leave the tree about 0.76 full.
        let fill = check(&model);
        assert!(fill > 0.9, "entries fill {fill:.2} of the pages");
        // Everything removed from one stretch: emptied leaves leave the tree.
        let gone: Vec<Vec<u8>> = model.iter().skip(1000).take(3000).cloned().collect();
        let batch: Vec<(&[u8], bool)> = gone.iter().map(|e| (e.as_slice(), false)).collect();
        tree.apply_sorted(&batch).unwrap();
        for e in &gone {
            model.remove(e);
        }
        checkpoint(&mut tree, 101);
        assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
        assert!(check(&model) > 0.8);
        // And every entry, then some again.
        let all: Vec<Vec<u8>> = model.iter().cloned().collect();
        let batch: Vec<(&[u8], bool)> = all.iter().map(|e| (e.as_slice(), false)).collect();
        tree.apply_sorted(&batch).unwrap();
        assert_eq!(tree.entry_count(), 0);
        assert!(tree.root.is_none());
        let batch: Vec<(&[u8], bool)> =
            all.iter().take(700).map(|e| (e.as_slice(), true)).collect();
        tree.apply_sorted(&batch).unwrap();
        model = all.into_iter().take(700).collect();
        checkpoint(&mut tree, 102);
        assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
        check(&model);
    }

    /// A merge of the level written part-way at the tree's old LSN marks
    /// the meta; replay of the records after that LSN then stages only what
    /// the tree does not hold, and the entry count stays exact.
    #[test]
    fn replay_over_a_merge_written_part_way_keeps_the_count_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        let mut old: Vec<[u8; 16]> = (0..400u64).map(|n| entry(n * 2)).collect();
        old.sort_unstable();
        let ops: Vec<(&[u8], bool)> = old.iter().map(|e| (&e[..], true)).collect();
        tree.apply_sorted(&ops).unwrap();
        checkpoint(&mut tree, 1);
        assert!(!tree.meta().past_floor);
        // The records after LSN 1: 300 new entries, 40 old ones removed.
        let mut changes: Vec<([u8; 16], bool)> =
            (0..300u64).map(|n| (entry(n * 2 + 1), true)).collect();
        changes.extend(old.iter().step_by(10).map(|e| (*e, false)));
        for (e, add) in &changes {
            tree.stage(e, *add);
        }
        tree.merge_level(150).unwrap();
        checkpoint(&mut tree, 1);
        assert!(
            tree.meta().past_floor,
            "written at its old LSN with changes"
        );
        drop(tree);

        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        assert!(tree.meta().past_floor);
        for (e, add) in &changes {
            tree.stage_replayed(e, *add).unwrap();
        }
        let expected = 400 + 300 - 40;
        assert_eq!(tree.entry_count(), expected);
        tree.merge_level(usize::MAX).unwrap();
        assert_eq!(tree.entry_count(), expected);
        checkpoint(&mut tree, 2);
        assert!(!tree.meta().past_floor, "a newer LSN holds nothing past it");
        let mut model: BTreeSet<Vec<u8>> = old.iter().map(|e| e.to_vec()).collect();
        for (e, add) in &changes {
            if *add {
                model.insert(e.to_vec());
            } else {
                model.remove(&e[..]);
            }
        }
        assert_eq!(collect(&tree), model.into_iter().collect::<Vec<_>>());
    }

    /// Batches of random keys (a level merge's slices): the leaves a batch
    /// reaches are packed together, so the tree stays nearly full where
    /// leaf-by-leaf cuts settle near two thirds.
    #[test]
    fn random_batches_leave_packed_leaves() {
        use crate::index::check::check_index;
        use crate::index::keys::IndexKind;
        let kind = IndexKind::Primary;
        let width = kind.width();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, kind.id(), width).unwrap();
        let mut model = BTreeSet::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for round in 1..=30u64 {
            let mut batch: Vec<Vec<u8>> = (0..2_000)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let mut e = vec![0u8; width];
                    e[..8].copy_from_slice(&rng.to_be_bytes());
                    e[width - 8..].copy_from_slice(&round.to_be_bytes());
                    e
                })
                .collect();
            // Some removals of present entries in the same batch.
            batch.extend(model.iter().step_by(97).take(20).cloned());
            batch.sort_unstable();
            batch.dedup();
            let ops: Vec<(&[u8], bool)> = batch
                .iter()
                .map(|e| (e.as_slice(), !model.contains(e)))
                .collect();
            for (e, add) in &ops {
                if *add {
                    model.insert(e.to_vec());
                } else {
                    model.remove(*e);
                }
            }
            tree.apply_sorted(&ops).unwrap();
            assert_eq!(tree.entry_count(), model.len() as u64);
            if round % 4 == 0 {
                checkpoint(&mut tree, round);
            }
        }
        checkpoint(&mut tree, 31);
        assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
        let bytes = std::fs::read(&path).unwrap();
        let mut found = Vec::new();
        let report = check_index(&bytes, kind, |e| found.push(e.to_vec()));
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(found, model.iter().cloned().collect::<Vec<_>>());
        let fill =
            (model.len() * width) as f64 / (report.stats.tree_pages as f64 * PAGE_SIZE as f64);
        assert!(fill > 0.85, "entries fill {fill:.2} of the pages");
    }

    /// A batch that reaches one leaf packs that leaf with its neighbours,
    /// not every in-memory leaf of its branch: a merge of the level sends
    /// a branch slice after slice, and re-cutting the whole branch at each
    /// one made a small import into a big store a fifth slower.
    #[test]
    fn packing_a_small_batch_copies_only_its_leaves_and_their_neighbours() {
        let width = 32;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, width).unwrap();
        let entry = |n: u64| {
            let mut e = vec![0u8; width];
            e[..8].copy_from_slice(&n.to_be_bytes());
            e
        };
        // Every leaf in memory: one batch of 20,000 entries, no checkpoint.
        let first: Vec<Vec<u8>> = (0..20_000u64).map(|n| entry(n * 1_000)).collect();
        let ops: Vec<(&[u8], bool)> = first.iter().map(|e| (e.as_slice(), true)).collect();
        tree.apply_sorted(&ops).unwrap();
        assert!(tree.dirty_nodes() > 100, "{} nodes", tree.dirty_nodes());
        for n in [7_777_001u64, 123_456, 19_999_999] {
            let before = tree.packed_bytes;
            let one = entry(n);
            tree.apply_sorted(&[(one.as_slice(), true)]).unwrap();
            let copied = tree.packed_bytes - before;
            assert!(
                copied <= 4 * PAGE_SIZE as u64,
                "packing one entry copied {copied} bytes"
            );
        }
        assert_eq!(tree.entry_count(), 20_003);
        checkpoint(&mut tree, 1);
        let mut model: Vec<Vec<u8>> = first;
        model.extend([7_777_001u64, 123_456, 19_999_999].map(entry));
        model.sort();
        assert_eq!(collect(&tree), model);
    }

    /// Where the map starts and how far its address range reaches.
    fn map_range(tree: &BTree) -> (usize, usize) {
        let map = tree.map.as_ref().unwrap();
        (map.as_ptr() as usize, map.reserved())
    }

    /// Checkpoints that grow the file keep the map (its pages stay mapped)
    /// while the file fits its address range, and map it anew, larger, when
    /// it outgrows it; every entry reads back either way.
    #[test]
    fn the_map_survives_checkpoints_that_grow_the_file_within_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        tree.map_step = 16 * PAGE_SIZE as u64;
        tree.remap().unwrap();
        let mut model = BTreeSet::new();
        let mut ranges = Vec::new();
        for round in 0..40u64 {
            for n in 0..200u64 {
                let e = entry(round * 1_000 + n);
                tree.insert(&e).unwrap();
                model.insert(e.to_vec());
            }
            checkpoint(&mut tree, round + 1);
            ranges.push((map_range(&tree), tree.meta().page_count));
            assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
        }
        let mut kept = 0;
        for pair in ranges.windows(2) {
            let ((before, pages_before), (after, pages_after)) = (pair[0], pair[1]);
            assert!(after.1 as u64 >= pages_after * PAGE_SIZE as u64);
            if pages_after * (PAGE_SIZE as u64) <= before.1 as u64 {
                assert_eq!(
                    after, before,
                    "grew from {pages_before} to {pages_after} pages"
                );
                if pages_after > pages_before {
                    kept += 1;
                }
            }
        }
        let remaps = ranges.windows(2).filter(|p| p[0].0 != p[1].0).count();
        assert!(kept >= 5, "{kept} growths kept the map");
        assert!(remaps >= 1, "the file never outgrew its first range");
        drop(tree);
        let tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
    }

    /// Free pages given back (holes), then the tree reopened, written
    /// into those pages again and read back: a free page's bytes are
    /// never read.
    #[test]
    fn released_free_pages_become_holes_and_are_written_again() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        let mut model = BTreeSet::new();
        // 3,000 new entries offset by `base`, as one sorted batch.
        let add = |tree: &mut BTree, model: &mut BTreeSet<Vec<u8>>, base: u64| {
            let mut batch: Vec<[u8; 16]> = (0..3000).map(|n| entry(n * 4 + base)).collect();
            batch.sort_unstable();
            let ops: Vec<(&[u8], bool)> = batch.iter().map(|e| (e.as_slice(), true)).collect();
            tree.apply_sorted(&ops).unwrap();
            model.extend(batch.iter().map(|e| e.to_vec()));
        };
        for round in 0..4u64 {
            add(&mut tree, &mut model, round);
            checkpoint(&mut tree, round + 1);
        }
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        let released = tree.release_free_pages().unwrap();
        assert!(
            released >= PAGE_SIZE as u64 * 10,
            "{released} bytes released"
        );
        assert!(std::fs::metadata(&path).unwrap().blocks() < blocks);
        drop(tree);
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        add(&mut tree, &mut model, 100_000);
        checkpoint(&mut tree, 10);
        drop(tree);
        let tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        assert_eq!(collect(&tree), model.iter().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn unsynced_changes_vanish_and_the_older_meta_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        for n in 0..500 {
            tree.insert(&entry(n)).unwrap();
        }
        checkpoint(&mut tree, 1);
        for n in 500..1000 {
            tree.insert(&entry(n)).unwrap();
        }
        drop(tree); // no checkpoint: like a crash
        let tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        assert_eq!(tree.entry_count(), 500);
        assert_eq!(collect(&tree).len(), 500);
    }

    #[test]
    fn a_torn_meta_write_falls_back_to_the_other_meta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        for round in 1..=3u64 {
            for n in 0..200 {
                tree.insert(&entry(round * 1000 + n)).unwrap();
            }
            checkpoint(&mut tree, round);
        }
        let newest_slot = tree.meta_slot;
        drop(tree);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAB; 100], (newest_slot * PAGE_SIZE) as u64 + 200)
            .unwrap();
        drop(file);
        let tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        assert_eq!(tree.meta().checkpoint_lsn, Lsn(2));
        assert_eq!(collect(&tree).len(), 400);
    }

    #[test]
    fn a_damaged_tree_page_is_reported_on_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        for n in 0..2000 {
            tree.insert(&entry(n)).unwrap();
        }
        checkpoint(&mut tree, 1);
        assert_eq!(
            collect(&tree).len(),
            2000,
            "every page read (and verified) once"
        );
        let Some(NodeRef::Page(root)) = tree.root() else {
            panic!("a checkpointed root is a page")
        };
        drop(tree);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xEE], root.0 * PAGE_SIZE as u64 + 100)
            .unwrap();
        drop(file);
        let tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        let error = tree.seek(&entry(5)).unwrap_err().to_string();
        assert!(
            error.contains("checksum") && error.contains(&format!("page {}", root.0)),
            "{error}"
        );
    }

    #[test]
    fn a_branch_that_loses_its_shared_prefix_splits_into_pages_that_fit() {
        // Entries sharing a 67-byte prefix pack hundreds of separators per
        // branch; one entry sharing nothing takes the prefix away, and the
        // branch then needs several pages, not two.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let width = 75;
        let mut tree = BTree::open(&FileStorage, &path, 9, width).unwrap();
        let mut model = BTreeSet::new();
        for n in 0..150_000u64 {
            let mut e = vec![0u8; width];
            e[67..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            tree.insert(&e).unwrap();
            model.insert(e);
        }
        checkpoint(&mut tree, 1);
        for byte in [1u8, 0xFF] {
            tree.insert(&vec![byte; width]).unwrap();
            model.insert(vec![byte; width]);
        }
        for node in &tree.mem {
            assert!(fits(node, width), "an in-memory node does not fit a page");
        }
        checkpoint(&mut tree, 2);
        drop(tree);
        let tree = BTree::open(&FileStorage, &path, 9, width).unwrap();
        let mut cursor = tree.seek(&vec![0u8; width]).unwrap();
        let mut got = Vec::new();
        while let Some(e) = cursor.next().unwrap() {
            got.push(e.to_vec());
        }
        assert_eq!(got, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_checkpoint_written_but_not_installed_blocks_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        let mut tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        for n in 0..2000 {
            tree.insert(&entry(n)).unwrap();
        }
        checkpoint(&mut tree, 1);
        for n in 2000..3000 {
            tree.insert(&entry(n)).unwrap();
        }
        let expected = collect(&tree);
        let position = Location {
            segment: SegmentId(1),
            offset: 2,
        };
        // Its meta page is durable, but it is never installed (say a sibling
        // index failed): a retry would reuse pages that meta page reaches.
        drop(tree.prepare_checkpoint(Lsn(2), position).unwrap().unwrap());
        for n in 3000..6000 {
            tree.insert(&entry(n)).unwrap();
        }
        let error = tree.prepare_checkpoint(Lsn(3), position).unwrap_err();
        assert!(matches!(error, IndexError::Unsettled { .. }), "{error}");
        drop(tree);
        let tree = BTree::open(&FileStorage, &path, 9, 16).unwrap();
        assert_eq!(tree.meta().checkpoint_lsn, Lsn(2));
        assert_eq!(collect(&tree), expected);
    }

    #[test]
    fn a_file_of_another_kind_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        drop(BTree::open(&FileStorage, &path, 9, 16).unwrap());
        assert!(BTree::open(&FileStorage, &path, 8, 16).is_err());
        std::fs::write(&path, vec![0x5Au8; 3 * PAGE_SIZE]).unwrap();
        let error = BTree::open(&FileStorage, &path, 9, 16).unwrap_err();
        assert!(error.to_string().contains("no valid meta page"), "{error}");
    }
}
