//! The store's lock file (`LOCK`): an exclusive `flock` held while a process
//! has the store open, or while a tool reads its files.

use std::fs::{self, File};
use std::path::Path;

use crate::error::{Error, io_error};

pub(crate) const LOCK_FILE: &str = "LOCK";

/// Takes the lock of the store in `dir` (which must exist); `Error::Locked`
/// when another process holds it. The lock lasts as long as the `File`.
pub(crate) fn lock_store_dir(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path, "open"))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(io_error(&path, "lock")(e)),
    }
}
