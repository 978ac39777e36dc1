//! Queries: NIP-01 filters, the planner that picks one index per filter, and
//! the merge that runs a plan over a shard's indexes and log.

mod error;
mod exec;
mod filter;
mod plan;

pub use error::QueryError;
pub(crate) use exec::{Deadline, Hit, IndexAccess, execute};
pub use filter::{Filter, FilterError};
pub(crate) use plan::plan;
