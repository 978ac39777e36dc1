//! Persistent B+Tree indexes: page formats, the tree, key encodings and the
//! set of indexes a shard keeps.

mod btree;
pub(crate) mod check;
mod error;
mod format;
mod idfilter;
mod keys;
pub(crate) mod level;
pub(crate) mod levelfile;
mod node;
mod set;

#[cfg(test)]
pub(crate) use btree::BTree;
pub(crate) use btree::Cursor;
pub use error::IndexError;
pub(crate) use idfilter::IdFilter;
pub use keys::IndexKind;
pub(crate) use keys::{
    AUTHOR_HASH_AT, AUTHOR_HASH_LEN, TAG_SLOT_LEN, TIME_SUFFIX_LEN, TagSlot, address_prefix,
    author_hash, author_kind_prefix, for_each_entry, location_at_end, tag_prefix, time_range,
};
pub(crate) use level::LAST_ADD;
pub(crate) use set::{
    Apply, GroupEntries, IndexSet, is_level_file, level_files, read_chain, remove_runs, write_run,
};
// The page codecs, for `inspect::index` (the checker's report and the fuzzer).
pub(crate) use format::{
    FREE_IDS_PER_PAGE, Meta, PAGE_SIZE, choose_meta, decode_free_list_page, decode_meta,
    encode_free_list_page, encode_meta,
};
pub(crate) use node::{MemNode, Node, NodeRef, PageView, encode_node, fits};
