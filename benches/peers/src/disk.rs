//! Bytes a directory takes on disk, like `du` (allocated blocks) and
//! `du --apparent-size` (file lengths).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// 512-byte blocks allocated to every file, in bytes.
    pub allocated: u64,
    /// Sum of the file lengths (sparse files count their holes).
    pub apparent: u64,
    pub files: u64,
}

/// Walks `dir` without following symbolic links.
pub fn measure(dir: &Path) -> io::Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                usage.allocated += meta.blocks() * 512;
                usage.apparent += meta.len();
                usage.files += 1;
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 5000]).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![1u8; 10]).unwrap();
        let usage = measure(dir.path()).unwrap();
        assert_eq!(usage.apparent, 5010);
        assert_eq!(usage.files, 2);
        assert!(usage.allocated >= 5010, "{usage:?}");
    }
}
