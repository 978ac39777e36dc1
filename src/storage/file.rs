//! The real file system.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::{Mapping, OpenMode, Storage, StorageFile};

/// [`Storage`] on the local file system (`pread`/`pwrite`, `fdatasync`, `mmap`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileStorage;

impl Storage for FileStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                options.write(true);
            }
            OpenMode::ReadWriteCreate => {
                options.write(true).create(true).truncate(false);
            }
            OpenMode::CreateNew => {
                options.write(true).create_new(true);
            }
        }
        Ok(Box::new(RealFile(options.open(path)?)))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name());
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn size_on_disk(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.blocks() * 512)
    }
}

#[derive(Debug)]
struct RealFile(File);

impl StorageFile for RealFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        // `fdatasync` also makes a changed length durable.
        self.0.sync_data()
    }

    fn data_end(&self) -> io::Result<u64> {
        data_end(&self.0)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Ok(());
        };
        // SAFETY: `fallocate` on a descriptor this `File` owns and keeps
        // open; punching a hole changes no length and no byte outside the
        // range.
        let done = unsafe {
            libc::fallocate(
                self.0.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if done == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // The file system keeps no holes: the blocks stay, nothing is lost.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
            _ => Err(error),
        }
    }

    fn map(&self, reserve: u64) -> io::Result<Option<Mapping>> {
        let size = self.size()?;
        if size == 0 {
            return Ok(None);
        }
        // SAFETY: see `Mapping::of`; the engine keeps its contract.
        unsafe { Mapping::of(&self.0, size, reserve) }.map(Some)
    }
}

/// Where `file`'s data ends: the start of the hole (or the end of the file)
/// after its last data region, found with `lseek(SEEK_DATA / SEEK_HOLE)`.
/// Where the file system cannot tell holes apart, the whole file is data.
pub(super) fn data_end(file: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let len = file.metadata()?.len();
    let fd = file.as_raw_fd();
    let mut end = 0u64;
    let mut from = 0u64;
    while from < len {
        let Ok(offset) = libc::off_t::try_from(from) else {
            return Ok(len);
        };
        // SAFETY: `lseek` on a file descriptor this `File` owns and keeps
        // open; it moves only the descriptor's offset, which nothing here
        // uses (all reads and writes are positional).
        let data = unsafe { libc::lseek(fd, offset, libc::SEEK_DATA) };
        if data < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                // No data at or after `from`.
                Some(libc::ENXIO) => Ok(end),
                // SEEK_DATA is not supported here.
                Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(len),
                _ => Err(error),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        end = (hole as u64).min(len);
        from = end.max(data as u64 + 1);
    }
    Ok(end.min(len))
}
