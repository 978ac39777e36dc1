//! The file-system calls the log and the indexes make, behind a small trait.
//!
//! Everything `wal/`, `index/` and the store's own files read, write, sync,
//! create, rename or remove goes through [`Storage`], so a test can plug in
//! [`SimStorage`], which remembers what was written but not yet synced and,
//! at a simulated power loss, drops, tears or reorders exactly those writes.
//! [`FileStorage`] is the real thing and the default.
//!
//! Durability contract (what the engine relies on, and what the simulator
//! enforces):
//! - [`StorageFile::sync`] makes the file's data and length durable.
//! - A file's existence, removal or new name is durable only after
//!   [`Storage::sync_dir`] on its directory.
//! - Until then, after a power loss, any subset of the unsynced writes may
//!   have reached the media, in any order, torn at any 512-byte boundary.

mod file;
mod sim;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::Path;

pub use file::FileStorage;
pub use sim::{Damage, SimStorage};

/// How [`Storage::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write, created empty if missing.
    ReadWriteCreate,
    /// Read and write, created empty; it is an error if it exists.
    CreateNew,
}

/// A directory tree of files: the real file system or a simulation of it.
pub trait Storage: Send + Sync + fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>>;
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the regular files in `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes the file occupies on the media (for statistics).
    fn size_on_disk(&self, path: &Path) -> io::Result<u64>;

    /// Reads a whole (small) file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open(path, OpenMode::Read)?;
        let len = usize::try_from(file.size()?)
            .map_err(|_| io::Error::new(io::ErrorKind::FileTooLarge, "file too large"))?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}

/// An open file.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every write and length change so far durable.
    fn sync(&self) -> io::Result<()>;
    /// Where the file's data ends: no byte at or after this offset was ever
    /// written (it lies in a hole, or past the end). Reading a hole through
    /// a map can fault when the file system is full, so readers of a
    /// pre-sized file stop here. The default, the file's size, is right for
    /// file systems without holes.
    fn data_end(&self) -> io::Result<u64> {
        self.size()
    }
    /// Gives the blocks under `offset..offset + len` back to the file
    /// system (a hole; the length does not change). What the range reads
    /// afterwards is unspecified, zeros or its old bytes, also after a
    /// crash, so it is for bytes nothing will read before writing them
    /// again. The default does nothing, which is right for file systems
    /// without holes.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// A read-only map of the whole file (`None` when it is empty). Writes
    /// made later through this file are visible through the map; the
    /// engine never reads mapped bytes that a write may be changing.
    fn map(&self) -> io::Result<Option<Mapping>>;
}

/// Read-only mapped bytes of a file.
pub struct Mapping(memmap2::Mmap);

impl Mapping {
    /// Maps `file` read-only.
    ///
    /// # Safety
    /// Nobody may change the mapped bytes that the holder reads while the map
    /// lives: the engine only appends past what readers can reach and writes
    /// index pages no reachable node uses, and the store's lock file keeps
    /// other processes out (see the `wal/` and `index/` module comments).
    pub unsafe fn of(file: &std::fs::File) -> io::Result<Mapping> {
        // SAFETY: the caller upholds the contract above.
        unsafe { memmap2::Mmap::map(file) }.map(Mapping)
    }
}

impl Deref for Mapping {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapping({} bytes)", self.0.len())
    }
}
