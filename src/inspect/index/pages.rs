//! The index page codecs in owned, public types: what a fuzzer or a
//! hex-dump tool needs to decode, re-encode and re-seal single pages, and to
//! run the file checker on bytes it made up. Every function refuses bad
//! input with an error; none panics.

use crate::ids::{Location, Lsn, PageId};
pub use crate::index::check::IndexStats;
use crate::index::check::{self, CheckReport};
use crate::index::{self as idx, IndexKind, MemNode, Node, NodeRef, PageView};

/// Bytes per index page.
pub const PAGE_SIZE: usize = idx::PAGE_SIZE;
/// Page ids one free-list page holds.
pub const FREE_IDS_PER_PAGE: usize = idx::FREE_IDS_PER_PAGE;

/// What a meta page (page 0 or 1 of an index file) records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaInfo {
    /// `IndexKind::id` of the index the file holds.
    pub index_kind: u8,
    pub entry_width: u16,
    /// +1 per checkpoint; the valid meta page with the higher one is in use.
    pub generation: u64,
    /// Page id of the root, `None` for an empty tree.
    pub root: Option<u64>,
    pub entry_count: u64,
    /// Pages of the file this meta accounts for, meta pages included.
    pub page_count: u64,
    /// The index holds every log record up to this LSN.
    pub checkpoint_lsn: Lsn,
    /// Log position just past that record: replay starts here.
    pub checkpoint_position: Location,
    pub free_list_head: Option<u64>,
    pub free_page_count: u64,
    /// The index may also hold entries of records after `checkpoint_lsn`
    /// (a merge of the in-memory level written part-way).
    pub past_floor: bool,
}

impl From<idx::Meta> for MetaInfo {
    fn from(m: idx::Meta) -> MetaInfo {
        MetaInfo {
            index_kind: m.index_kind,
            entry_width: m.entry_width,
            generation: m.generation,
            root: m.root.map(|p| p.0),
            entry_count: m.entry_count,
            page_count: m.page_count,
            checkpoint_lsn: m.checkpoint_lsn,
            checkpoint_position: m.checkpoint_position,
            free_list_head: m.free_list_head.map(|p| p.0),
            free_page_count: m.free_page_count,
            past_floor: m.past_floor,
        }
    }
}

impl From<MetaInfo> for idx::Meta {
    fn from(m: MetaInfo) -> idx::Meta {
        // Page id 0 stands for "none" on disk.
        let page = |p: Option<u64>| p.filter(|&p| p != 0).map(PageId);
        idx::Meta {
            index_kind: m.index_kind,
            entry_width: m.entry_width,
            generation: m.generation,
            root: page(m.root),
            entry_count: m.entry_count,
            page_count: m.page_count,
            checkpoint_lsn: m.checkpoint_lsn,
            checkpoint_position: m.checkpoint_position,
            free_list_head: page(m.free_list_head),
            free_page_count: m.free_page_count,
            past_floor: m.past_floor,
        }
    }
}

/// Decodes meta page `slot` (0 or 1); `Err` says why it is not a valid one.
pub fn decode_meta_page(page: &[u8], slot: u64) -> Result<MetaInfo, String> {
    idx::decode_meta(page, PageId(slot)).map(MetaInfo::from)
}

/// Encodes a sealed meta page for `slot`.
pub fn encode_meta_page(meta: &MetaInfo, slot: u64) -> Vec<u8> {
    idx::encode_meta(&idx::Meta::from(*meta), PageId(slot))
}

/// One page of the free list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeListPage {
    /// The next page of the list, `None` at its end.
    pub next: Option<u64>,
    /// Free page ids this page lists.
    pub ids: Vec<u64>,
}

/// Decodes free-list page `id`.
pub fn decode_free_list_page(page: &[u8], id: u64) -> Result<FreeListPage, String> {
    let (ids, next) = idx::decode_free_list_page(page, PageId(id))?;
    Ok(FreeListPage {
        next: next.map(|p| p.0),
        ids: ids.into_iter().map(|p| p.0).collect(),
    })
}

/// Encodes a sealed free-list page `id`; refuses more ids than fit.
pub fn encode_free_list_page(id: u64, list: &FreeListPage) -> Result<Vec<u8>, String> {
    if list.ids.len() > FREE_IDS_PER_PAGE {
        return Err(format!(
            "{} ids do not fit a free-list page (at most {FREE_IDS_PER_PAGE})",
            list.ids.len()
        ));
    }
    let ids: Vec<PageId> = list.ids.iter().map(|&p| PageId(p)).collect();
    let next = list.next.filter(|&p| p != 0).map(PageId);
    Ok(idx::encode_free_list_page(PageId(id), next, &ids))
}

/// A leaf or branch page with its keys expanded to full width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreePage {
    Leaf {
        entries: Vec<Vec<u8>>,
    },
    /// `separators.len() + 1 == children.len()`.
    Branch {
        separators: Vec<Vec<u8>>,
        children: Vec<u64>,
    },
}

/// Decodes tree page `id` of an index with `width`-byte entries; `verify`
/// checks the checksum too. Key order is not checked here (the file checker
/// does that).
pub fn decode_tree_page(
    page: &[u8],
    id: u64,
    width: usize,
    verify: bool,
) -> Result<TreePage, String> {
    let node = Node::Page(PageView::parse(page, PageId(id), width, verify)?);
    let mut key = Vec::with_capacity(width);
    let keys = |n: usize, key: &mut Vec<u8>| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                node.entry_into(i, key);
                key.clone()
            })
            .collect()
    };
    if node.is_leaf() {
        return Ok(TreePage::Leaf {
            entries: keys(node.len(), &mut key),
        });
    }
    let children = (0..node.len())
        .map(|i| match node.child(i) {
            NodeRef::Page(p) => p.0,
            NodeRef::Mem(_) => 0,
        })
        .collect();
    Ok(TreePage::Branch {
        separators: keys(node.len() - 1, &mut key),
        children,
    })
}

/// Encodes a sealed tree page `id`. Refuses what `BTree` never writes: keys
/// of another width or not strictly ascending, an empty node, a branch whose
/// child and separator counts disagree, or a node too large for one page.
pub fn encode_tree_page(node: &TreePage, width: usize, id: u64) -> Result<Vec<u8>, String> {
    let keys = match node {
        TreePage::Leaf { entries } => entries,
        TreePage::Branch { separators, .. } => separators,
    };
    if width == 0 || keys.iter().any(|k| k.len() != width) {
        return Err(format!(
            "every key must be {width} bytes (and width above 0)"
        ));
    }
    if keys.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err("keys are not strictly ascending".to_string());
    }
    let mem = match node {
        TreePage::Leaf { entries } if entries.is_empty() => {
            return Err("a leaf needs at least one entry".to_string());
        }
        TreePage::Leaf { entries } => MemNode::Leaf {
            entries: entries.concat(),
        },
        TreePage::Branch {
            separators,
            children,
        } => {
            if children.is_empty() || children.len() != separators.len() + 1 {
                return Err(format!(
                    "a branch with {} children needs {} separators, not {}",
                    children.len(),
                    children.len().saturating_sub(1),
                    separators.len()
                ));
            }
            MemNode::Branch {
                separators: separators.concat(),
                children: children.iter().map(|&c| NodeRef::Page(PageId(c))).collect(),
            }
        }
    };
    if !idx::fits(&mem, width) {
        return Err("the node does not fit one page".to_string());
    }
    Ok(idx::encode_node(&mem, width, PageId(id)))
}

/// Recomputes the checksum of leaf, branch or free-list page `id` after a
/// deliberate change, keeping its header fields.
pub fn reseal_page(page: &mut [u8], id: u64) -> Result<(), String> {
    if page.len() != PAGE_SIZE {
        return Err(format!("a page is {PAGE_SIZE} bytes, not {}", page.len()));
    }
    check::reseal(page, PageId(id))
}

/// What checking one index file's bytes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    /// The meta slot in use (0 or 1), if either is valid, and what it says.
    pub meta_slot: Option<usize>,
    pub meta: Option<MetaInfo>,
    /// Each problem with the page it concerns (`None`: the file as a whole).
    pub problems: Vec<(Option<u64>, String)>,
    /// Facts that are not damage.
    pub notes: Vec<String>,
    pub stats: IndexStats,
}

impl From<CheckReport> for FileCheck {
    fn from(report: CheckReport) -> FileCheck {
        FileCheck {
            meta_slot: report.chosen,
            meta: report.meta().copied().map(MetaInfo::from),
            stats: report.stats,
            problems: report
                .problems
                .into_iter()
                .map(|p| (p.page.map(|p| p.0), p.reason))
                .collect(),
            notes: report.notes,
        }
    }
}

/// Checks the bytes of one index file of `kind` (see the `index-doctor`
/// documentation for everything verified), calling `on_entry` with every
/// entry found, in tree order.
pub fn check_index_bytes_with(
    bytes: &[u8],
    kind: IndexKind,
    on_entry: impl FnMut(&[u8]),
) -> FileCheck {
    FileCheck::from(check::check_index(bytes, kind, on_entry))
}

/// [`check_index_bytes_with`] without the entries.
pub fn check_index_bytes(bytes: &[u8], kind: IndexKind) -> FileCheck {
    check_index_bytes_with(bytes, kind, |_| {})
}
