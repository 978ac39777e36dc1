//! Errors of the index layer.

use std::path::PathBuf;

use crate::ids::PageId;

#[derive(Debug)]
#[non_exhaustive]
pub enum IndexError {
    /// An I/O call on an index file failed.
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A page or meta page failed its checks; says which file and page.
    Corrupt {
        path: PathBuf,
        page: Option<PageId>,
        reason: String,
    },
    /// A whole index file of another entry width: written by a build of an
    /// older store format (kind_time and time entries gained an author
    /// hash in format 3). The index is rebuilt from the log.
    Width {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    /// An earlier checkpoint wrote a meta page that was never installed
    /// (it failed, or was abandoned): the durable state is unknown until reopen.
    Unsettled { path: PathBuf },
}

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexError::Io { path, op, source } => write!(f, "{op} {}: {source}", path.display()),
            IndexError::Corrupt {
                path,
                page: Some(page),
                reason,
            } => write!(
                f,
                "corrupt index file {} at page {} (offset {}): {reason}",
                path.display(),
                page.0,
                page.0 * super::format::PAGE_SIZE as u64
            ),
            IndexError::Corrupt {
                path,
                page: None,
                reason,
            } => {
                write!(f, "corrupt index file {}: {reason}", path.display())
            }
            IndexError::Width {
                path,
                found,
                expected,
            } => write!(
                f,
                "index file {} holds {found}-byte entries, not the {expected}-byte entries of this store format",
                path.display()
            ),
            IndexError::Unsettled { path } => write!(
                f,
                "an earlier checkpoint of {} did not finish; reopen the store to recover",
                path.display()
            ),
        }
    }
}

impl std::error::Error for IndexError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IndexError::Io { source, .. } => Some(source),
            IndexError::Corrupt { .. }
            | IndexError::Width { .. }
            | IndexError::Unsettled { .. } => None,
        }
    }
}

pub(crate) fn io_error<'a>(
    path: &'a std::path::Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}
