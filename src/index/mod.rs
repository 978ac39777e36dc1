//! Persistent B+Tree indexes: page formats, the tree, key encodings and the
//! set of indexes a shard keeps.

mod btree;
mod error;
mod format;
mod keys;
mod node;
mod set;

pub(crate) use btree::Cursor;
pub use error::IndexError;
pub use keys::IndexKind;
pub(crate) use keys::{
    ID_PREFIX_LEN, TagSlot, address_prefix, author_kind_prefix, location_at_end, primary_lower,
    tag_prefix, time_range,
};
pub(crate) use set::{Apply, IndexSet};
