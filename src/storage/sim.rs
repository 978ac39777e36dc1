//! A file system that can lose power: the test backend of [`Storage`].
//!
//! Files live in a real directory (so memory maps behave as they do in
//! production), and the simulator keeps, for each file, a *durable image*
//! (what survives a power loss: everything up to its last `sync`) and the
//! list of writes and length changes made since. Creations, removals and
//! renames likewise become durable at `sync_dir` of their directory.
//! [`SimStorage::crash`] rewrites the directory as the media would hold it
//! after a power loss, with the unsynced operations dropped, torn or
//! reordered ([`Damage`]). Faults can be injected by operation number: fail
//! one operation, fail every operation from some point on, or lose power.
//!
//! Directories themselves are treated as always durable.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Mapping, OpenMode, Storage, StorageFile};

/// What happens to the operations that were not synced when power is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// None of them reached the media.
    DropUnsynced,
    /// They reached the media in order up to a random point, and the write
    /// at that point only in part: cut at a 512-byte or 4 KiB boundary.
    TearUnsynced,
    /// A random subset of their 512-byte sectors (or 4 KiB pages) and
    /// length changes reached the media, later ones without earlier ones.
    ReorderUnsynced,
    /// All of them reached the media (the process died, the machine did not).
    KeepAll,
}

impl Damage {
    pub const ALL: [Damage; 4] = [
        Damage::DropUnsynced,
        Damage::TearUnsynced,
        Damage::ReorderUnsynced,
        Damage::KeepAll,
    ];
}

/// The simulated file system; see the module documentation.
#[derive(Debug, Clone)]
pub struct SimStorage {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Operations performed (or refused) since the last crash or reset.
    ops: u64,
    fault: Fault,
    inodes: Vec<Inode>,
    /// What the running process sees.
    live: BTreeMap<PathBuf, usize>,
    /// What survives a power loss.
    durable: BTreeMap<PathBuf, usize>,
    pending_names: Vec<NameOp>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Fault {
    #[default]
    None,
    /// Operation number `n` fails, once.
    FailOnce(u64),
    /// Every operation from number `n` on fails.
    FailFrom(u64),
    /// Power is lost just before operation number `n`: it and every later
    /// operation fail without effect.
    PowerOffAt(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    durable: Image,
    pending: Vec<DataOp>,
}

/// File contents: `len` bytes, of which those past `data` are zeros.
#[derive(Debug, Clone, Default)]
struct Image {
    len: u64,
    data: Vec<u8>,
}

#[derive(Debug, Clone)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone)]
enum NameOp {
    Link { path: PathBuf, inode: usize },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl SimStorage {
    /// A simulated file system over the real directory `root` (created if
    /// missing). Files already in it are taken as durable.
    pub fn new(root: &Path) -> io::Result<SimStorage> {
        fs::create_dir_all(root)?;
        let mut state = State::default();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else if entry.file_type()?.is_file() {
                    let data = fs::read(&path)?;
                    let inode = state.inodes.len();
                    state.inodes.push(Inode {
                        durable: Image {
                            len: data.len() as u64,
                            data,
                        },
                        pending: Vec::new(),
                    });
                    state.live.insert(path.clone(), inode);
                    state.durable.insert(path, inode);
                }
            }
        }
        Ok(SimStorage {
            root: root.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Operations performed since the last crash or [`SimStorage::reset_faults`].
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Counts operations from zero again and removes any injected fault.
    pub fn reset_faults(&self) {
        let mut state = self.state.lock();
        state.ops = 0;
        state.fault = Fault::None;
    }

    /// Operation number `n` (counted from the last reset) fails, once.
    pub fn fail_once_at(&self, n: u64) {
        self.state.lock().fault = Fault::FailOnce(n);
    }

    /// Operation number `n` and every later one fail.
    pub fn fail_from(&self, n: u64) {
        self.state.lock().fault = Fault::FailFrom(n);
    }

    /// Power is lost just before operation number `n`.
    pub fn power_off_at(&self, n: u64) {
        self.state.lock().fault = Fault::PowerOffAt(n);
    }

    /// Whether power has been lost (operations are being refused).
    pub fn is_powered_off(&self) -> bool {
        let state = self.state.lock();
        matches!(state.fault, Fault::PowerOffAt(n) if state.ops > n)
    }

    /// Whether anything written has not been synced yet.
    pub fn has_unsynced(&self) -> bool {
        let state = self.state.lock();
        !state.pending_names.is_empty()
            || state
                .live
                .values()
                .any(|&i| !state.inodes[i].pending.is_empty())
    }

    /// Loses power: rewrites the directory as the media would hold it, with
    /// the unsynced operations damaged as `damage` says (random choices from
    /// `seed`), and powers on again with no fault armed. Drop every store
    /// using this storage first.
    pub fn crash(&self, damage: Damage, seed: u64) -> io::Result<()> {
        let mut rng = SplitMix(seed ^ 0x5157_0a9e_c3f1_d2b7);
        let mut state = self.state.lock();
        let mut names = state.durable.clone();
        let keep_names = match damage {
            Damage::DropUnsynced => 0,
            Damage::KeepAll => state.pending_names.len(),
            Damage::TearUnsynced | Damage::ReorderUnsynced => {
                rng.below(state.pending_names.len() as u64 + 1) as usize
            }
        };
        for op in &state.pending_names[..keep_names] {
            apply_name_op(&mut names, op);
        }
        let mut images = BTreeMap::new();
        for (path, &inode) in &names {
            let inode = &state.inodes[inode];
            let mut image = inode.durable.clone();
            damage_into(&mut image, &inode.pending, damage, &mut rng);
            images.insert(path.clone(), image);
        }
        for path in state.live.keys() {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut fresh = State::default();
        for (path, image) in images {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let file = File::create(&path)?;
            file.write_all_at(&image.data, 0)?;
            file.set_len(image.len)?;
            let inode = fresh.inodes.len();
            fresh.inodes.push(Inode {
                durable: image,
                pending: Vec::new(),
            });
            fresh.live.insert(path.clone(), inode);
            fresh.durable.insert(path, inode);
        }
        *state = fresh;
        Ok(())
    }

    fn file(&self, inode: usize, file: File) -> Box<dyn StorageFile> {
        Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode,
            file,
        })
    }
}

impl State {
    /// Counts one operation and says whether it may go ahead.
    fn tick(&mut self) -> io::Result<()> {
        let n = self.ops;
        self.ops += 1;
        let fail = match self.fault {
            Fault::None => None,
            Fault::FailOnce(at) => (n == at).then_some("injected I/O error"),
            Fault::FailFrom(at) => (n >= at).then_some("injected I/O error"),
            Fault::PowerOffAt(at) => (n >= at).then_some("simulated power loss"),
        };
        match fail {
            Some(what) => Err(io::Error::other(format!("{what} (operation {n})"))),
            None => Ok(()),
        }
    }

    fn name_op(&mut self, op: NameOp) {
        apply_name_op(&mut self.live, &op);
        self.pending_names.push(op);
    }
}

fn missing(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} does not exist", path.display()),
    )
}

fn apply_name_op(names: &mut BTreeMap<PathBuf, usize>, op: &NameOp) {
    match op {
        NameOp::Link { path, inode } => {
            names.insert(path.clone(), *inode);
        }
        NameOp::Unlink { path } => {
            names.remove(path);
        }
        NameOp::Rename { from, to } => {
            if let Some(inode) = names.remove(from) {
                names.insert(to.clone(), inode);
            }
        }
    }
}

fn touches_dir(op: &NameOp, dir: &Path) -> bool {
    let in_dir = |p: &Path| p.parent() == Some(dir);
    match op {
        NameOp::Link { path, .. } | NameOp::Unlink { path } => in_dir(path),
        NameOp::Rename { from, to } => in_dir(from) || in_dir(to),
    }
}

/// Applies `pending` to `image` the way `damage` lets them survive.
fn damage_into(image: &mut Image, pending: &[DataOp], damage: Damage, rng: &mut SplitMix) {
    match damage {
        Damage::DropUnsynced => {}
        Damage::KeepAll => pending.iter().for_each(|op| image.apply(op)),
        Damage::TearUnsynced => {
            let cut = rng.below(pending.len() as u64 + 1) as usize;
            pending[..cut].iter().for_each(|op| image.apply(op));
            if let Some(DataOp::Write { offset, bytes }) = pending.get(cut) {
                let unit = if rng.below(2) == 0 { 512 } else { 4096 };
                // Keep whole units from the write's start: the cut lies on a
                // unit boundary of the file.
                let first_boundary = (offset / unit + 1) * unit - offset;
                let units = rng.below(bytes.len() as u64 / unit + 2);
                let keep = match units {
                    0 => 0,
                    k => (first_boundary + (k - 1) * unit).min(bytes.len() as u64),
                };
                image.write(*offset, &bytes[..keep as usize]);
            }
        }
        Damage::ReorderUnsynced => {
            let unit = if rng.below(2) == 0 { 512 } else { 4096 };
            for op in pending {
                match op {
                    DataOp::SetLen(_) => {
                        if rng.below(2) == 0 {
                            image.apply(op);
                        }
                    }
                    DataOp::Write { offset, bytes } => {
                        let mut at = 0u64;
                        while at < bytes.len() as u64 {
                            let abs = offset + at;
                            let end = ((abs / unit + 1) * unit - offset).min(bytes.len() as u64);
                            if rng.below(2) == 0 {
                                image.write(abs, &bytes[at as usize..end as usize]);
                            }
                            at = end;
                        }
                    }
                }
            }
        }
    }
}

impl Image {
    fn apply(&mut self, op: &DataOp) {
        match op {
            DataOp::Write { offset, bytes } => self.write(*offset, bytes),
            DataOp::SetLen(len) => {
                self.len = *len;
                if (self.data.len() as u64) > *len {
                    self.data.truncate(*len as usize);
                }
            }
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = offset as usize + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset as usize..end].copy_from_slice(bytes);
        self.len = self.len.max(end as u64);
    }
}

impl Storage for SimStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.state.lock();
        state.tick()?;
        let existing = state.live.get(path).copied();
        let inode = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ));
            }
            (Some(inode), _) => inode,
            (None, OpenMode::Read | OpenMode::ReadWrite) => return Err(missing(path)),
            (None, OpenMode::ReadWriteCreate | OpenMode::CreateNew) => {
                let inode = state.inodes.len();
                state.inodes.push(Inode::default());
                File::create(path)?;
                state.name_op(NameOp::Link {
                    path: path.to_path_buf(),
                    inode,
                });
                inode
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(mode != OpenMode::Read)
            .open(path)?;
        Ok(self.file(inode, file))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.state.lock().tick()?;
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let state = &mut *self.state.lock();
        state.tick()?;
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(state
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(OsString::from))
            .collect())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let mut state = self.state.lock();
        state.tick()?;
        Ok(state.live.contains_key(path) || path.is_dir())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.tick()?;
        if !state.live.contains_key(path) {
            return Err(missing(path));
        }
        fs::remove_file(path)?;
        state.name_op(NameOp::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.tick()?;
        if !state.live.contains_key(from) {
            return Err(missing(from));
        }
        fs::rename(from, to)?;
        state.name_op(NameOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let state = &mut *self.state.lock();
        state.tick()?;
        let (now, later): (Vec<_>, Vec<_>) = state
            .pending_names
            .drain(..)
            .partition(|op| touches_dir(op, dir));
        for op in &now {
            apply_name_op(&mut state.durable, op);
        }
        state.pending_names = later;
        Ok(())
    }

    fn size_on_disk(&self, path: &Path) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        self.state.lock().tick()?;
        Ok(fs::metadata(path)?.blocks() * 512)
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    inode: usize,
    file: File,
}

impl StorageFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        self.state.lock().tick()?;
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.state.lock().tick()?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.tick()?;
        self.file.write_all_at(buf, offset)?;
        state.inodes[self.inode].pending.push(DataOp::Write {
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.tick()?;
        self.file.set_len(len)?;
        state.inodes[self.inode].pending.push(DataOp::SetLen(len));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        state.tick()?;
        let inode = &mut state.inodes[self.inode];
        for op in std::mem::take(&mut inode.pending) {
            inode.durable.apply(&op);
        }
        Ok(())
    }

    fn data_end(&self) -> io::Result<u64> {
        self.state.lock().tick()?;
        super::file::data_end(&self.file)
    }

    /// A hole reads as zeros, and until a sync a crash may bring back the
    /// old bytes, torn or not: an unsynced write of zeros, exactly.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        let end = offset.saturating_add(len).min(size);
        if end <= offset {
            return Ok(());
        }
        let zeros = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
        self.write_all_at(&zeros, offset)
    }

    fn map(&self, reserve: u64) -> io::Result<Option<Mapping>> {
        self.state.lock().tick()?;
        let size = self.file.metadata()?.len();
        if size == 0 {
            return Ok(None);
        }
        // SAFETY: see `Mapping::of`; the engine keeps its contract, and the
        // simulator only rewrites files (as new files) in `crash`, after the
        // store is gone.
        unsafe { Mapping::of(&self.file, size, reserve) }.map(Some)
    }
}

/// A small deterministic generator for the damage choices.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(path: &Path) -> Vec<u8> {
        fs::read(path).unwrap()
    }

    #[test]
    fn only_synced_data_and_synced_names_survive_a_drop() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimStorage::new(dir.path()).unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let file = sim.open(&a, OpenMode::CreateNew).unwrap();
        file.write_all_at(b"synced", 0).unwrap();
        file.sync().unwrap();
        sim.sync_dir(dir.path()).unwrap();
        file.write_all_at(b"SYNCED and more", 0).unwrap();
        let other = sim.open(&b, OpenMode::CreateNew).unwrap();
        other.write_all_at(b"never synced", 0).unwrap();
        other.sync().unwrap(); // data synced, but its name never was
        drop((file, other));
        assert!(sim.has_unsynced());
        sim.crash(Damage::DropUnsynced, 1).unwrap();
        assert_eq!(contents(&a), b"synced");
        assert!(!b.exists());
        assert!(!sim.has_unsynced());
    }

    #[test]
    fn keep_all_keeps_everything_and_tears_cut_on_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimStorage::new(dir.path()).unwrap();
        let a = dir.path().join("a");
        let file = sim.open(&a, OpenMode::CreateNew).unwrap();
        sim.sync_dir(dir.path()).unwrap();
        file.sync().unwrap();
        let new = vec![0xAAu8; 10_000];
        file.write_all_at(&new, 100).unwrap();
        drop(file);
        let mut seen_lengths = std::collections::BTreeSet::new();
        for seed in 0..64 {
            // Each crash starts from the same durable state: rebuild it.
            let dir = tempfile::tempdir().unwrap();
            let sim = SimStorage::new(dir.path()).unwrap();
            let a = dir.path().join("a");
            let file = sim.open(&a, OpenMode::CreateNew).unwrap();
            sim.sync_dir(dir.path()).unwrap();
            file.sync().unwrap();
            file.write_all_at(&new, 100).unwrap();
            drop(file);
            sim.crash(Damage::TearUnsynced, seed).unwrap();
            let bytes = contents(&a);
            // A torn write keeps a prefix of the write ending on a 512-byte boundary.
            let kept = bytes.len().saturating_sub(100);
            assert!(
                bytes.is_empty() || bytes.len().is_multiple_of(512) || kept == new.len(),
                "seed {seed}: {} bytes",
                bytes.len()
            );
            assert!(bytes.iter().skip(100).all(|&b| b == 0xAA));
            seen_lengths.insert(bytes.len());
        }
        assert!(seen_lengths.len() > 3, "tears vary: {seen_lengths:?}");
        sim.crash(Damage::KeepAll, 0).unwrap();
        assert_eq!(contents(&a).len(), 10_100);
    }

    #[test]
    fn faults_fire_at_their_operation() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimStorage::new(dir.path()).unwrap();
        let file = sim
            .open(&dir.path().join("a"), OpenMode::CreateNew)
            .unwrap();
        sim.reset_faults();
        sim.fail_once_at(1);
        assert!(file.write_all_at(b"x", 0).is_ok());
        assert!(file.sync().is_err());
        assert!(file.sync().is_ok());
        sim.reset_faults();
        sim.power_off_at(0);
        assert!(file.write_all_at(b"y", 0).is_err());
        assert!(sim.is_powered_off());
        assert!(file.sync().is_err());
        drop(file);
        sim.crash(Damage::KeepAll, 0).unwrap();
        // The refused write had no effect, so only the synced "x" survives.
        assert_eq!(contents(&dir.path().join("a")), b"x");
    }

    #[test]
    fn renames_and_removals_need_a_directory_sync() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimStorage::new(dir.path()).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let file = sim.open(&a, OpenMode::CreateNew).unwrap();
        file.write_all_at(b"a", 0).unwrap();
        file.sync().unwrap();
        sim.sync_dir(dir.path()).unwrap();
        sim.rename(&a, &b).unwrap();
        drop(file);
        sim.crash(Damage::DropUnsynced, 0).unwrap();
        assert!(a.exists() && !b.exists());
        sim.rename(&a, &b).unwrap();
        sim.sync_dir(dir.path()).unwrap();
        sim.remove_file(&b).unwrap();
        sim.crash(Damage::DropUnsynced, 0).unwrap();
        assert!(!a.exists() && b.exists());
        assert_eq!(sim.list(dir.path()).unwrap(), vec![OsString::from("b")]);
    }
}
