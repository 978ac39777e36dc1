//! Errors of running a query: the index or the log it reads failed.

use crate::index::IndexError;
use crate::wal::WalError;

#[derive(Debug)]
#[non_exhaustive]
pub enum QueryError {
    Index(IndexError),
    Log(WalError),
    /// The query ran past its deadline (see `EventStore::query_with_deadline`).
    TimedOut,
    /// A shard was reopened in place (its writer recovered from a failure)
    /// while the query read it; asking again answers from the new state.
    Interrupted,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Index(e) => e.fmt(f),
            QueryError::Log(e) => e.fmt(f),
            QueryError::TimedOut => f.write_str("the query ran past its time budget"),
            QueryError::Interrupted => {
                f.write_str("a shard was reopened while the query read it; ask again")
            }
        }
    }
}

impl std::error::Error for QueryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueryError::Index(e) => Some(e),
            QueryError::Log(e) => Some(e),
            QueryError::TimedOut | QueryError::Interrupted => None,
        }
    }
}

impl From<IndexError> for QueryError {
    fn from(e: IndexError) -> QueryError {
        QueryError::Index(e)
    }
}

impl From<WalError> for QueryError {
    fn from(e: WalError) -> QueryError {
        QueryError::Log(e)
    }
}
