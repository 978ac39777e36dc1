//! The store's lock file (`LOCK`): an exclusive `flock` held while a process
//! has the store open; held shared by readers of its files that no writer
//! may start under (`index-doctor check`, and a `ChangeReader` or a backup
//! when no process has the store open).

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, io_error};

pub(crate) const LOCK_FILE: &str = "LOCK";

/// Held shared by a live backup while it copies, exclusively by a
/// compaction while it puts a rewritten segment in place: a copy never
/// mixes index checkpoints older than a compaction with segments it wrote
/// (docs/compaction.md).
pub(crate) const SEGMENTS_LOCK: &str = "SEGMENTS.lock";

/// Holds the store's [`SEGMENTS_LOCK`], `shared` (a backup) or exclusively
/// (a compaction), waiting for the other side to let go. A backup opens it
/// read-only when it is there and makes it when it is not, unless the
/// store's directory cannot be written (a read-only file system, another
/// user: no compaction runs there then): `None`. A compaction opens it for
/// writing (an exclusive lock emulated over NFS needs that), made if
/// missing; `None` only when the directory is not a real one (simulated
/// storage in tests).
pub(crate) fn hold_segments(store: &Path, shared: bool) -> Result<Option<File>, Error> {
    let path = store.join(SEGMENTS_LOCK);
    let file = if shared {
        match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create_lock_file(&path) {
                Ok(file) => file,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(io_error(&path, "create")(e)),
            },
            Err(e) => return Err(io_error(&path, "open")(e)),
        }
    } else {
        match create_lock_file(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, "open")(e)),
        }
    };
    if shared {
        file.lock_shared()
    } else {
        file.lock()
    }
    .map_err(io_error(&path, "lock"))?;
    Ok(Some(file))
}

/// How long taking the lock waits for a holder to let go before it says
/// `Error::Locked`. A lock just released can still be held for a moment:
/// when a process forks (any program that starts a child), the child
/// shares its open files until its exec closes them, and an `flock`
/// belongs to the open file, not to the process. A store closed and opened
/// again at once, in a program that also starts children, met that.
pub(crate) const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// Takes the lock of the store in `dir` (which must exist); `Error::Locked`
/// when another process holds it for longer than [`LOCK_PATIENCE`]. The
/// lock lasts as long as the `File`.
pub(crate) fn lock_store_dir(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let lock = create_lock_file(&path).map_err(io_error(&path, "open"))?;
    wait_for(dir, &path, lock, File::try_lock)
}

/// Opens the lock file for writing, creating it if missing (as an open
/// of the store does).
fn create_lock_file(path: &Path) -> std::io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Takes `lock` by `try_lock`, waiting up to [`LOCK_PATIENCE`] for a
/// holder to let go.
fn wait_for(
    dir: &Path,
    path: &Path,
    lock: File,
    try_lock: fn(&File) -> Result<(), fs::TryLockError>,
) -> Result<File, Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match try_lock(&lock) {
            Ok(()) => return Ok(lock),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(path, "lock")(e)),
        }
    }
}

/// Whether a process has the store in `dir` open, as a reader beside it
/// must know.
#[derive(Debug)]
pub(crate) enum Holder {
    /// None has: the lock is held shared by this value (no process can
    /// open the store until it is dropped), or there is no lock file to
    /// hold (a store copied without it, on a read-only file system).
    Nobody { _lock: Option<File> },
    /// A process holds the lock.
    Running,
}

/// Finds out whether a process has the store in `dir` open, taking the
/// lock shared when none has. Opens the lock file read-only, so it works
/// on a read-only file system too.
pub(crate) fn probe_holder(dir: &Path) -> Result<Holder, Error> {
    let path = dir.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Holder::Nobody { _lock: None });
        }
        Err(e) => return Err(io_error(&path, "open")(e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Holder::Nobody { _lock: Some(file) }),
        Err(fs::TryLockError::WouldBlock) => Ok(Holder::Running),
        Err(fs::TryLockError::Error(e)) => Err(io_error(&path, "lock")(e)),
    }
}

/// Takes the lock of the store in `dir` shared, for a reader that must not
/// see the files change (`index-doctor check`): opened read-only, so it
/// works on a read-only file system; other shared holders may read beside
/// it; `Error::Locked` when a process has the store open for longer than
/// [`LOCK_PATIENCE`].
pub(crate) fn lock_store_dir_shared(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let lock = match File::open(&path) {
        Ok(lock) => lock,
        // A store no process has opened yet (a fresh backup copy): made
        // as an open makes it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_lock_file(&path).map_err(io_error(&path, "create"))?
        }
        Err(e) => return Err(io_error(&path, "open")(e)),
    };
    wait_for(dir, &path, lock, File::try_lock_shared)
}
