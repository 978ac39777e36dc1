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
use std::path::{Path, PathBuf};

pub use file::FileStorage;
pub use sim::{Damage, SimStorage};

/// Replaces the file at `path` with `bytes`, durably: written to `temp`
/// (a leftover from a crash is removed first), synced, renamed over
/// `path`, and the directory synced. On failure: the file and the step
/// that failed, for the caller's error.
pub(crate) fn replace_file(
    storage: &dyn Storage,
    temp: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<(), (PathBuf, &'static str, io::Error)> {
    fn at(
        path: &Path,
        what: &'static str,
    ) -> impl FnOnce(io::Error) -> (PathBuf, &'static str, io::Error) {
        let path = path.to_path_buf();
        move |e| (path, what, e)
    }
    if storage.exists(temp).map_err(at(temp, "stat"))? {
        storage.remove_file(temp).map_err(at(temp, "remove"))?;
    }
    let file = storage
        .open(temp, OpenMode::CreateNew)
        .map_err(at(temp, "create"))?;
    file.write_all_at(bytes, 0).map_err(at(temp, "write"))?;
    file.sync().map_err(at(temp, "sync"))?;
    drop(file);
    storage.rename(temp, path).map_err(at(path, "rename"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    storage.sync_dir(dir).map_err(at(dir, "sync directory"))
}

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
    /// file grown ahead of its writes stop here. The default, the file's size, is right for
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
    /// A read-only map of the whole file (`None` when it is empty), with
    /// address space for at least `reserve` bytes: a file that grows within
    /// it stays covered by the same map ([`Mapping::set_visible`]), so its
    /// pages stay mapped. Writes made later through this file are visible
    /// through the map; the engine never reads mapped bytes that a write may
    /// be changing.
    fn map(&self, reserve: u64) -> io::Result<Option<Mapping>>;
}

/// Read-only mapped bytes of a file: the first [`Mapping::visible`] bytes
/// of an address range that may reach past the file's end (never read
/// there: a page past the end raises SIGBUS).
pub struct Mapping {
    map: memmap2::Mmap,
    visible: usize,
}

impl Mapping {
    /// Maps `file` read-only: its `len` bytes, visible, in an address range
    /// of at least `reserve` bytes.
    ///
    /// # Safety
    /// Nobody may change the mapped bytes that the holder reads while the map
    /// lives: the engine only appends past what readers can reach and writes
    /// index pages no reachable node uses, and the store's lock file keeps
    /// other processes out (see the `wal/` and `index/` module comments).
    /// `len` is at most the file's length.
    pub unsafe fn of(file: &std::fs::File, len: u64, reserve: u64) -> io::Result<Mapping> {
        let too_large = || io::Error::new(io::ErrorKind::FileTooLarge, "file too large to map");
        let visible = usize::try_from(len).map_err(|_| too_large())?;
        let range = usize::try_from(len.max(reserve)).map_err(|_| too_large())?;
        // SAFETY: the caller upholds the contract above; bytes past the
        // file's end are in the range but never read (`visible`).
        let map = unsafe { memmap2::MmapOptions::new().len(range).map(file) }?;
        Ok(Mapping { map, visible })
    }

    /// The length of the mapped address range.
    pub fn reserved(&self) -> usize {
        self.map.len()
    }

    /// The first `len` bytes of the mapped range (at most
    /// [`Mapping::reserved`]), also past the visible ones: for a file that
    /// grew after it was mapped. The caller reads only bytes the file has
    /// now (a page past its end raises SIGBUS).
    pub fn prefix(&self, len: usize) -> &[u8] {
        &self.map[..len.min(self.map.len())]
    }

    /// Makes the first `len` bytes readable (at most [`Mapping::reserved`]).
    /// The caller has made the file at least that long.
    pub fn set_visible(&mut self, len: usize) {
        self.visible = len.min(self.map.len());
    }

    /// Maps the pages of the first `len` visible bytes that the page cache
    /// already holds, so their first reads take no page fault; reads
    /// nothing from disk. Returns how many bytes it mapped. Linux only (the
    /// map is left as it is elsewhere).
    pub fn map_resident(&self, len: usize) -> io::Result<u64> {
        map_resident(&self.map, len.min(self.visible))
    }
}

#[cfg(target_os = "linux")]
fn map_resident(map: &memmap2::Mmap, len: usize) -> io::Result<u64> {
    // SAFETY: `sysconf` has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096);
    let pages = len.div_ceil(page);
    if pages == 0 {
        return Ok(0);
    }
    let mut resident = vec![0u8; pages];
    // SAFETY: the range lies inside the map (page-aligned start, `len` at
    // most its length) and `resident` holds one byte per page of it.
    let done = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            len,
            resident.as_mut_ptr(),
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut mapped = 0u64;
    let mut page_no = 0;
    while page_no < pages {
        if resident[page_no] & 1 == 0 {
            page_no += 1;
            continue;
        }
        let start = page_no;
        while page_no < pages && resident[page_no] & 1 != 0 {
            page_no += 1;
        }
        let offset = start * page;
        let run = (page_no * page).min(len) - offset;
        match map.advise_range(memmap2::Advice::PopulateRead, offset, run) {
            Ok(()) => {}
            // Kernels before 5.14: touch one byte a page instead.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                for at in (offset..offset + run).step_by(page) {
                    // SAFETY: `at` lies inside the visible part of the map.
                    let _ = unsafe { std::ptr::read_volatile(map.as_ptr().add(at)) };
                }
            }
            Err(error) => return Err(error),
        }
        mapped += run as u64;
    }
    Ok(mapped)
}

#[cfg(not(target_os = "linux"))]
fn map_resident(_map: &memmap2::Mmap, _len: usize) -> io::Result<u64> {
    Ok(0)
}

impl Deref for Mapping {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[..self.visible]
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapping({} of {} bytes)", self.visible, self.map.len())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    const PAGE: usize = 4096;

    /// Whether each page of `bytes` is mapped in this process
    /// (`/proc/self/pagemap`, bit 63: present).
    fn present(bytes: &[u8]) -> Vec<bool> {
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let first = bytes.as_ptr() as usize / PAGE;
        (0..bytes.len().div_ceil(PAGE))
            .map(|page| {
                let mut word = [0u8; 8];
                pagemap
                    .read_exact_at(&mut word, ((first + page) * 8) as u64)
                    .unwrap();
                u64::from_le_bytes(word) >> 63 == 1
            })
            .collect()
    }

    /// Pages the page cache holds are mapped, holes are not, and nothing
    /// past the file's end is touched (that would raise SIGBUS) though the
    /// map's address range reaches far past it.
    #[test]
    fn map_resident_maps_the_cached_pages_and_nothing_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let storage = FileStorage;
        let file = storage.open(&path, OpenMode::ReadWriteCreate).unwrap();
        let pages = 64;
        file.write_all_at(&vec![7u8; pages * PAGE], 0).unwrap();
        file.sync().unwrap();
        // Pages 10..20 become a hole: no longer in the page cache.
        file.discard((10 * PAGE) as u64, (10 * PAGE) as u64)
            .unwrap();
        let map = file.map(64 << 20).unwrap().unwrap();
        assert_eq!(map.len(), pages * PAGE);
        assert!(map.reserved() >= 64 << 20);
        assert!(
            present(&map).iter().all(|&p| !p),
            "a fresh map has no page mapped"
        );
        let mapped = map.map_resident(usize::MAX).unwrap();
        assert_eq!(mapped, ((pages - 10) * PAGE) as u64);
        let after = present(&map);
        for (page, &is) in after.iter().enumerate() {
            assert_eq!(is, !(10..20).contains(&page), "page {page}");
        }
        // The mapped pages read what was written.
        assert!(map[..10 * PAGE].iter().all(|&b| b == 7));
    }
}
