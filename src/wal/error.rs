//! Errors of the log layer.

use std::path::PathBuf;

use super::log::LogDamage;
use crate::ids::Location;

#[derive(Debug)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O call on a log file failed.
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A segment or record failed its checks; says which file and where.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A bad frame in the middle of the log, with valid records after it
    /// that prove it was synced: damage, which is refused, never cut.
    Damaged(LogDamage),
    /// A read named a location that holds no valid record.
    BadLocation { location: Location, reason: String },
    /// A payload larger than a frame can describe.
    RecordTooLarge { len: usize },
    /// An earlier failed sync left the log in an unknown state; it accepts no more writes.
    Poisoned,
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalError::Io { path, op, source } => write!(f, "{op} {}: {source}", path.display()),
            WalError::Corrupt {
                path,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "corrupt log segment {} at offset {offset}: {reason}",
                    path.display()
                )
            }
            WalError::Damaged(damage) => write!(
                f,
                "log segment {} is damaged at offset {}: {}; {} valid records follow it in \
                 that segment, and {}, so this is damage, not a torn tail: nothing was cut. \
                 `megalith repair` (RecoveryMode::Repair) moves the damaged bytes to a \
                 quarantine file beside the log and keeps every valid record",
                damage.path.display(),
                damage.offset,
                damage.reason,
                damage.valid_after,
                damage.evidence
            ),
            WalError::BadLocation { location, reason } => {
                write!(f, "no valid record at {location}: {reason}")
            }
            WalError::RecordTooLarge { len } => {
                write!(f, "record payload of {len} bytes is too large")
            }
            WalError::Poisoned => {
                write!(
                    f,
                    "the log refuses writes after a failed sync; reopen the store to recover"
                )
            }
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub(crate) fn io_error<'a>(
    path: &'a std::path::Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}
