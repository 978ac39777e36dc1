//! B+Tree nodes: a zero-copy view of a clean, prefix-compressed page in the
//! file map, and the owned form a node takes once a writer changes it. Both
//! hide behind [`Node`], so search and cursors do not care which they read.

use std::cmp::Ordering;

use super::format::{PAGE_HEADER_LEN, PAGE_SIZE, PageType, read_header, read_u64, seal_page};
use crate::ids::PageId;

/// A child pointer of an in-memory tree: a clean page, or a changed node that
/// lives in memory until the next checkpoint writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeRef {
    Page(PageId),
    Mem(u32),
}

/// A node changed since the last checkpoint. Entries and separators are full
/// width, back to back, sorted.
#[derive(Debug, Clone)]
pub(crate) enum MemNode {
    Leaf {
        entries: Vec<u8>,
    },
    Branch {
        separators: Vec<u8>,
        children: Vec<NodeRef>,
    },
}

/// A clean leaf or branch page, read in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageView<'a> {
    page: &'a [u8],
    leaf: bool,
    count: usize,
    prefix: &'a [u8],
    suffix_len: usize,
    /// Where the suffixes (leaf entries or branch separators) start.
    suffixes_at: usize,
}

impl<'a> PageView<'a> {
    /// Checks the page (checksum when `verify`, and that every count and length
    /// fits the page) so that the accessors below cannot go out of bounds.
    pub fn parse(
        page: &'a [u8],
        id: PageId,
        width: usize,
        verify: bool,
    ) -> Result<PageView<'a>, String> {
        let header = read_header(page, id, verify)?;
        let leaf = match header.page_type {
            PageType::Leaf => true,
            PageType::Branch => false,
            other => return Err(format!("expected a tree page, found a {other:?} page")),
        };
        if header.prefix_len > width {
            return Err(format!(
                "prefix of {} bytes is longer than the {width}-byte entry",
                header.prefix_len
            ));
        }
        if header.count == 0 {
            return Err("tree page with no entries".to_string());
        }
        let suffix_len = width - header.prefix_len;
        let prefix_end = PAGE_HEADER_LEN + header.prefix_len;
        let (suffixes_at, suffix_count) = if leaf {
            (prefix_end, header.count)
        } else {
            (prefix_end + header.count * 8, header.count - 1)
        };
        let end = suffixes_at + suffix_count * suffix_len;
        if end > PAGE_SIZE {
            return Err(format!(
                "{} entries of {suffix_len} bytes overflow the page",
                header.count
            ));
        }
        Ok(PageView {
            page,
            leaf,
            count: header.count,
            prefix: &page[PAGE_HEADER_LEN..prefix_end],
            suffix_len,
            suffixes_at,
        })
    }

    fn suffix(&self, i: usize) -> &'a [u8] {
        let at = self.suffixes_at + i * self.suffix_len;
        &self.page[at..at + self.suffix_len]
    }

    /// Compares entry `i` (prefix ++ suffix) with `key` lexicographically;
    /// `key` may be shorter than an entry (a seek by key prefix).
    fn compare(&self, i: usize, key: &[u8]) -> Ordering {
        match key.split_at_checked(self.prefix.len()) {
            Some((key_prefix, key_suffix)) => self
                .prefix
                .cmp(key_prefix)
                .then_with(|| self.suffix(i).cmp(key_suffix)),
            // The entry starts with all of `key` (and is longer) or differs inside it.
            None => self.prefix[..key.len()].cmp(key).then(Ordering::Greater),
        }
    }

    /// How many of the first `n` entries satisfy `pred(compare(i, key))`,
    /// for a `pred` that holds on a leading run (a binary search). The
    /// shared prefix is compared once, not at every probe: when it differs
    /// from the key's, every entry compares the same.
    fn partition(&self, n: usize, key: &[u8], pred: impl Fn(Ordering) -> bool) -> usize {
        let whole = match key.split_at_checked(self.prefix.len()) {
            Some((key_prefix, key_suffix)) => match self.prefix.cmp(key_prefix) {
                Ordering::Equal => {
                    return partition_point(n, |i| pred(compare_keys(self.suffix(i), key_suffix)));
                }
                other => other,
            },
            None => self.prefix[..key.len()].cmp(key).then(Ordering::Greater),
        };
        if pred(whole) { n } else { 0 }
    }

    fn child(&self, i: usize) -> PageId {
        PageId(read_u64(
            self.page,
            PAGE_HEADER_LEN + self.prefix.len() + i * 8,
        ))
    }
}

/// A node of either kind, borrowed for reading.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Node<'a> {
    Page(PageView<'a>),
    Mem(&'a MemNode, usize),
}

/// `a.cmp(b)` for keys: the first 8 bytes as one big-endian integer settle
/// most comparisons (keys start with pubkeys, ids, kinds or times) without a
/// call to `memcmp`.
#[inline]
pub(crate) fn compare_keys(a: &[u8], b: &[u8]) -> Ordering {
    if let (Some(x), Some(y)) = (a.first_chunk::<8>(), b.first_chunk::<8>()) {
        let (x, y) = (u64::from_be_bytes(*x), u64::from_be_bytes(*y));
        if x != y {
            return x.cmp(&y);
        }
    }
    a.cmp(b)
}

impl<'a> Node<'a> {
    pub fn is_leaf(&self) -> bool {
        match self {
            Node::Page(p) => p.leaf,
            Node::Mem(m, _) => matches!(m, MemNode::Leaf { .. }),
        }
    }

    /// Entries of a leaf, children of a branch.
    pub fn len(&self) -> usize {
        match self {
            Node::Page(p) => p.count,
            Node::Mem(MemNode::Leaf { entries }, width) => entries.len() / width,
            Node::Mem(MemNode::Branch { children, .. }, _) => children.len(),
        }
    }

    /// Compares leaf entry (or branch separator) `i` with `key`.
    fn compare(&self, i: usize, key: &[u8]) -> Ordering {
        match self {
            Node::Page(p) => p.compare(i, key),
            Node::Mem(
                MemNode::Leaf { entries: bytes, .. }
                | MemNode::Branch {
                    separators: bytes, ..
                },
                width,
            ) => compare_keys(&bytes[i * width..(i + 1) * width], key),
        }
    }

    /// Leaf: index of the first entry >= `key`.
    pub fn lower_bound(&self, key: &[u8]) -> usize {
        match self {
            Node::Page(p) => p.partition(p.count, key, |o| o == Ordering::Less),
            Node::Mem(..) => {
                partition_point(self.len(), |i| self.compare(i, key) == Ordering::Less)
            }
        }
    }

    /// Branch: the child whose range holds `key` (the number of separators <= key).
    pub fn child_index(&self, key: &[u8]) -> usize {
        let separators = self.len().saturating_sub(1);
        match self {
            Node::Page(p) => p.partition(separators, key, |o| o != Ordering::Greater),
            Node::Mem(..) => {
                partition_point(separators, |i| self.compare(i, key) != Ordering::Greater)
            }
        }
    }

    pub fn child(&self, i: usize) -> NodeRef {
        match self {
            Node::Page(p) => NodeRef::Page(p.child(i)),
            Node::Mem(MemNode::Branch { children, .. }, _) => children[i],
            Node::Mem(MemNode::Leaf { .. }, _) => unreachable!("child() called on a leaf"),
        }
    }

    /// Copies leaf entry `i`, prefix included, into `out` (`width` bytes).
    pub fn entry_into(&self, i: usize, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Node::Page(p) => {
                out.extend_from_slice(p.prefix);
                out.extend_from_slice(p.suffix(i));
            }
            Node::Mem(
                MemNode::Leaf { entries: bytes, .. }
                | MemNode::Branch {
                    separators: bytes, ..
                },
                width,
            ) => {
                out.extend_from_slice(&bytes[i * width..(i + 1) * width]);
            }
        }
    }

    /// The owned form of this node, for a writer about to change it.
    #[cfg(test)]
    pub fn to_mem(self, width: usize) -> MemNode {
        self.to_mem_in(width, Vec::new())
    }

    /// [`Node::to_mem`], its keys written into `buffer` (emptied first; a
    /// spare from an earlier checkpoint, so that copying a page costs no
    /// fresh memory from the system). Room is left for a few more keys:
    /// the writer copies a page to add one, and growing the copy right
    /// away would move it again.
    pub fn to_mem_in(self, width: usize, mut buffer: Vec<u8>) -> MemNode {
        buffer.clear();
        match self {
            Node::Mem(m, _) => m.clone(),
            Node::Page(p) => {
                let suffix_count = if p.leaf { p.count } else { p.count - 1 };
                let mut keys = buffer;
                keys.reserve((suffix_count + SPARE_KEYS) * width);
                for i in 0..suffix_count {
                    keys.extend_from_slice(p.prefix);
                    keys.extend_from_slice(p.suffix(i));
                }
                if p.leaf {
                    MemNode::Leaf { entries: keys }
                } else {
                    let children = (0..p.count).map(|i| NodeRef::Page(p.child(i))).collect();
                    MemNode::Branch {
                        separators: keys,
                        children,
                    }
                }
            }
        }
    }
}

/// Keys of room a copied page gets beyond its own (see [`Node::to_mem_in`]).
const SPARE_KEYS: usize = 8;

fn partition_point(len: usize, mut pred: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}

/// Bytes every key in sorted `keys` shares (the common prefix of the first and last).
pub(crate) fn common_prefix(keys: &[u8], width: usize) -> usize {
    if keys.len() < 2 * width {
        return if keys.is_empty() { 0 } else { width };
    }
    let first = &keys[..width];
    let last = &keys[keys.len() - width..];
    first.iter().zip(last).take_while(|(a, b)| a == b).count()
}

/// Whether the node, prefix-compressed, fits in one page.
pub(crate) fn fits(node: &MemNode, width: usize) -> bool {
    encoded_len(node, width) <= PAGE_SIZE
}

/// Whether a leaf of these `entries` (sorted, full width, back to back)
/// fits in one page.
pub(crate) fn leaf_fits(entries: &[u8], width: usize) -> bool {
    leaf_len(entries, width) <= PAGE_SIZE
}

fn leaf_len(entries: &[u8], width: usize) -> usize {
    let prefix = common_prefix(entries, width);
    PAGE_HEADER_LEN + prefix + (entries.len() / width) * (width - prefix)
}

fn encoded_len(node: &MemNode, width: usize) -> usize {
    match node {
        MemNode::Leaf { entries } => leaf_len(entries, width),
        MemNode::Branch {
            separators,
            children,
        } => {
            let prefix = common_prefix(separators, width);
            PAGE_HEADER_LEN
                + prefix
                + children.len() * 8
                + (separators.len() / width) * (width - prefix)
        }
    }
}

/// Encodes a node whose children are all clean pages into page `id`.
pub(crate) fn encode_node(node: &MemNode, width: usize, id: PageId) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    encode_node_into(node, width, id, &mut page);
    page
}

/// [`encode_node`] into `page` (`PAGE_SIZE` bytes, overwritten entirely), so
/// a checkpoint can encode every node into one reused buffer.
pub(crate) fn encode_node_into(node: &MemNode, width: usize, id: PageId, page: &mut [u8]) {
    page.fill(0);
    let (keys, page_type, count) = match node {
        MemNode::Leaf { entries } => (entries, PageType::Leaf, entries.len() / width),
        MemNode::Branch {
            separators,
            children,
        } => (separators, PageType::Branch, children.len()),
    };
    let prefix = common_prefix(keys, width);
    let mut at = PAGE_HEADER_LEN;
    if let Some(first) = keys.get(..prefix) {
        page[at..at + prefix].copy_from_slice(first);
    }
    at += prefix;
    if let MemNode::Branch { children, .. } = node {
        for child in children {
            let NodeRef::Page(pid) = child else {
                unreachable!("children are written before their parent")
            };
            page[at..at + 8].copy_from_slice(&pid.0.to_le_bytes());
            at += 8;
        }
    }
    for key in keys.chunks_exact(width) {
        page[at..at + width - prefix].copy_from_slice(&key[prefix..]);
        at += width - prefix;
    }
    seal_page(page, id, page_type, count as u16, prefix as u16);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_pages_read_back_like_the_node() {
        let width = 12;
        let mut entries = Vec::new();
        for i in 0..200u32 {
            entries.extend_from_slice(&[7, 7, 7, 7]);
            entries.extend_from_slice(&[0, 0, 0, 1]);
            entries.extend_from_slice(&i.to_be_bytes());
        }
        let node = MemNode::Leaf {
            entries: entries.clone(),
        };
        assert!(fits(&node, width));
        let page = encode_node(&node, width, PageId(3));
        let view = PageView::parse(&page, PageId(3), width, true).unwrap();
        let node_view = Node::Page(view);
        assert_eq!(node_view.len(), 200);
        let mut out = Vec::new();
        for i in 0..200 {
            node_view.entry_into(i, &mut out);
            assert_eq!(out, entries[i * width..(i + 1) * width]);
        }
        let key = &entries[50 * width..51 * width];
        assert_eq!(node_view.lower_bound(key), 50);
        // Seeks by a key prefix shorter than the page prefix agree with the owned node.
        let owned = Node::Mem(&node, width);
        for probe in [&[7u8, 7][..], &[7, 8], &[7, 6, 9], &[]] {
            assert_eq!(
                node_view.lower_bound(probe),
                owned.lower_bound(probe),
                "{probe:?}"
            );
        }
        assert!(
            PageView::parse(&page, PageId(4), width, true).is_err(),
            "page id is in the checksum"
        );
    }

    #[test]
    fn branch_child_index_follows_separators() {
        let width = 2;
        let node = MemNode::Branch {
            separators: vec![0, 10, 0, 20],
            children: vec![
                NodeRef::Page(PageId(5)),
                NodeRef::Page(PageId(6)),
                NodeRef::Page(PageId(7)),
            ],
        };
        let n = Node::Mem(&node, width);
        assert_eq!(n.child_index(&[0, 5]), 0);
        assert_eq!(n.child_index(&[0, 10]), 1);
        assert_eq!(n.child_index(&[0, 15]), 1);
        assert_eq!(n.child_index(&[0, 20]), 2);
        assert_eq!(n.child_index(&[1, 0]), 2);
        let page = encode_node(&node, width, PageId(9));
        let view = Node::Page(PageView::parse(&page, PageId(9), width, true).unwrap());
        for key in [[0u8, 5], [0, 10], [0, 15], [0, 20], [1, 0]] {
            assert_eq!(view.child_index(&key), n.child_index(&key));
        }
        assert_eq!(view.child(2), NodeRef::Page(PageId(7)));
    }

    #[test]
    fn garbage_pages_are_errors() {
        let mut page = vec![0u8; PAGE_SIZE];
        page[8] = 1; // leaf
        page[10] = 0xFF; // count 255 of 40-byte entries: overflows
        page[11] = 0x00;
        assert!(PageView::parse(&page, PageId(2), 40, false).is_err());
        assert!(PageView::parse(&page[..100], PageId(2), 40, false).is_err());
    }
}
