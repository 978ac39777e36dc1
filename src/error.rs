//! The one public error type, which every layer's errors convert into.

use std::path::PathBuf;

use crate::event::EventError;
use crate::index::IndexError;
use crate::query::{FilterError, QueryError};
use crate::wal::WalError;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The log failed (I/O, corruption, or a poisoned writer).
    Wal(WalError),
    /// An index file failed (I/O or corruption).
    Index(IndexError),
    /// Stored bytes or derived state are inconsistent.
    Corrupt(String),
    /// A filter was refused.
    Filter(FilterError),
    /// An event could not be parsed or validated (outside `insert`, which
    /// reports per-event outcomes instead).
    Event(EventError),
    /// Options that cannot work together.
    Options(String),
    /// No store in the directory, and `create_if_missing` was off.
    Missing(PathBuf),
    /// Another process has the store open.
    Locked(PathBuf),
    /// The store's files are not a Megalith store this build can open.
    Format { path: PathBuf, reason: String },
    /// Other I/O on the store's directory.
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A write, sync or checkpoint of the event's shard failed (a full disk,
    /// an I/O error): the shard refuses writes, reads go on, and it recovers
    /// in place once the cause clears (see `EventStore::health`). The text
    /// names files: for logs, not for a relay's clients.
    Poisoned(String),
    /// The store was closed.
    Closed,
    /// A query ran past the deadline it was given
    /// ([`EventStore::query_with_deadline`](crate::EventStore::query_with_deadline)).
    TimedOut,
    /// A shard was reopened in place (its writer recovered from a failure)
    /// while a query read it: ask again.
    Interrupted,
}

impl Error {
    pub(crate) fn corrupt(message: impl Into<String>) -> Error {
        Error::Corrupt(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Wal(e) => e.fmt(f),
            Error::Index(e) => e.fmt(f),
            Error::Corrupt(message) => write!(f, "corrupt store: {message}"),
            Error::Filter(e) => e.fmt(f),
            Error::Event(e) => e.fmt(f),
            Error::Options(message) => write!(f, "invalid options: {message}"),
            Error::Missing(path) => write!(f, "no Megalith store in {}", path.display()),
            Error::Locked(path) => write!(
                f,
                "the store at {} is open in another process",
                path.display()
            ),
            Error::Format { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::Io { path, op, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::Poisoned(why) => write!(
                f,
                "the shard refuses writes after a failed write ({why}); it recovers by itself \
                 once the cause clears, or reopen the store"
            ),
            Error::Closed => write!(f, "the store is closed"),
            Error::TimedOut => write!(f, "the query ran past its time budget"),
            Error::Interrupted => {
                write!(f, "a shard was reopened while the query read it; ask again")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Wal(e) => Some(e),
            Error::Index(e) => Some(e),
            Error::Filter(e) => Some(e),
            Error::Event(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<WalError> for Error {
    fn from(e: WalError) -> Error {
        Error::Wal(e)
    }
}

impl From<IndexError> for Error {
    fn from(e: IndexError) -> Error {
        Error::Index(e)
    }
}

impl From<FilterError> for Error {
    fn from(e: FilterError) -> Error {
        Error::Filter(e)
    }
}

impl From<QueryError> for Error {
    fn from(e: QueryError) -> Error {
        match e {
            QueryError::Index(e) => Error::Index(e),
            QueryError::Log(e) => Error::Wal(e),
            QueryError::TimedOut => Error::TimedOut,
            QueryError::Interrupted => Error::Interrupted,
        }
    }
}

impl From<EventError> for Error {
    fn from(e: EventError) -> Error {
        Error::Event(e)
    }
}

pub(crate) fn io_error<'a>(
    path: &'a std::path::Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}
