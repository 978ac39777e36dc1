//! Queries: NIP-01 filters, the planner that picks one index per filter, and
//! the merge that runs a plan over a shard's indexes and log.

mod exec;
mod filter;
mod plan;

pub(crate) use exec::{Hit, execute, read_event};
pub use filter::{Filter, FilterError};
pub(crate) use plan::plan;
