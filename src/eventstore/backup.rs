//! A consistent copy of a store, made while a process serves it or with
//! none ([`backup_store`]): what `megalith backup` runs.
//!
//! The copy is the store as of one point per shard: the log up to where
//! the running writer had synced it (its synced mark, `log/SYNCED`), and
//! each index as of its newest durable checkpoint. Order matters:
//!
//! 1. Each index file is copied first, up to the pages its durable meta
//!    counts. A checkpoint never writes over a page the durable meta
//!    reaches (copy-on-write; that is what makes a crash safe), so a copy
//!    made while the durable meta stayed the same generation is that
//!    checkpoint whole. The metas are read before and after; a checkpoint
//!    in between makes the copy start again.
//! 2. Then the synced mark is read and the log copied up to it: sealed
//!    segments whole (or hard-linked), the last one up to the mark. Every
//!    index checkpoint copied in step 1 lies at or before the mark (the
//!    log is synced before a checkpoint names it), so the copy opens with
//!    replay only from those checkpoints to the mark, and no index is ahead
//!    of its log.
//! 3. The analytics checkpoint (copied first of all, so it covers no more
//!    than the copied logs) and the saved id filters go along (each is
//!    checked against the copy at its first open and rebuilt if it does
//!    not fit), the manifest last: a copy cut short is not a store.
//!
//! With no process beside, the lock is held shared for the whole copy and
//! the files are copied as they are (the copy's first open cuts a torn tail
//! as the original's would). Everything copied is synced.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::change_reader::no_synced_mark;
use super::lock::hold_segments;
use super::lock::{Holder, probe_holder};
use super::{ChangePosition, manifest};
use crate::error::{Error, io_error};
use crate::ids::{Location, SegmentId, ShardId};
use crate::index::{PAGE_SIZE, decode_meta};
use crate::storage::FileStorage;
use crate::wal::{
    LogFollower, LogView, SEGMENT_HEADER_LEN, decode_segment_header, parse_segment_file_name,
    read_synced_mark,
};

/// What [`backup_store`] copied.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupReport {
    /// The copy's log ends, per shard: the store as of this change feed
    /// position (`ChangeReader`, `megalith changes --after`).
    pub position: ChangePosition,
    /// Whether a process had the store open (the copy then follows its
    /// synced marks).
    pub live: bool,
    /// Bytes written into the copy (hard links count nothing).
    pub bytes_copied: u64,
    /// Sealed segments hard-linked instead of copied.
    pub segments_linked: usize,
    /// Index copies started again because a checkpoint ran during them.
    pub index_retries: u32,
    pub seconds: f64,
}

/// How many times an index copy starts again before giving up.
const INDEX_TRIES: u32 = 20;

/// Copies the store in `from` to `to` (which must not exist, or be an empty
/// directory). With `link`, sealed log segments are hard-linked instead of
/// copied (same file system only; a later `megalith repair` of the
/// original, which rewrites damaged bytes in place, then changes the copy
/// too).
pub fn backup_store(from: &Path, to: &Path, link: bool) -> Result<BackupReport, Error> {
    let started = Instant::now();
    let (_, manifest) = manifest::read_existing(from)?;
    let shards = manifest.shards;
    match fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Options(format!(
                    "{} is not empty: a backup goes into a new directory",
                    to.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(to).map_err(io_error(to, "create directory"))?;
        }
        Err(e) => return Err(io_error(to, "list")(e)),
    }
    // Held to the end when nobody has the store open: nobody can then.
    let holder = probe_holder(from)?;
    let live = matches!(holder, Holder::Running);
    // A running store's compaction puts no segment in place while the copy
    // is made (it would not fit index checkpoints copied before it).
    let segments_lock = if live {
        hold_segments(from, true)?
    } else {
        None
    };
    let mut report = BackupReport {
        position: ChangePosition::start(shards as usize),
        live,
        bytes_copied: 0,
        segments_linked: 0,
        index_retries: 0,
        seconds: 0.0,
    };
    // The analytics checkpoint before any log: the positions it covers
    // are then at or before the copied logs' ends (one ahead of a log
    // would be dropped and rebuilt at the copy's first open).
    let analytics = from.join(crate::analytics::ANALYTICS_DIR).join("state");
    if analytics.exists() {
        let dir = to.join(crate::analytics::ANALYTICS_DIR);
        fs::create_dir_all(&dir).map_err(io_error(&dir, "create directory"))?;
        report.bytes_copied += copy_prefix(&analytics, &dir.join("state"), None)?;
        sync_dir(&dir)?;
    }
    for n in 0..shards {
        let name = format!("shard-{n:04}");
        let (src, dst) = (from.join(&name), to.join(&name));
        let end = copy_shard(&src, &dst, ShardId(n), live, link, &mut report)?;
        report.position.0[n as usize] = end;
    }
    // The manifest read again now: a purge that began during the copy set
    // its feature bit before its first record, which the copied log may
    // hold (feature bits are only ever set while the store runs, and the
    // shard count never changes).
    let (manifest_bytes, _) = manifest::read_existing(from)?;
    let path = to.join(manifest::MANIFEST_FILE);
    let mut file = File::create(&path).map_err(io_error(&path, "create"))?;
    file.write_all(&manifest_bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path, "write"))?;
    report.bytes_copied += manifest_bytes.len() as u64;
    sync_dir(to)?;
    drop(segments_lock);
    drop(holder);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Copies one shard's indexes, then its log; returns where its copied log ends.
fn copy_shard(
    src: &Path,
    dst: &Path,
    shard: ShardId,
    live: bool,
    link: bool,
    report: &mut BackupReport,
) -> Result<Location, Error> {
    let (src_index, dst_index) = (src.join("index"), dst.join("index"));
    fs::create_dir_all(&dst_index).map_err(io_error(&dst_index, "create directory"))?;
    for name in sorted_names(&src_index)? {
        let from = src_index.join(&name);
        let to = dst_index.join(&name);
        if name.ends_with(".idx") {
            let (bytes, retries) = copy_index(&from, &to)?;
            report.bytes_copied += bytes;
            report.index_retries += retries;
        } else if name == "primary.ids" || name.ends_with(".run") {
            // Stamped: used only if it fits the copied index (a run file
            // also only if it links the chain from the copied checkpoint
            // and the copied log holds what it covers), else replayed from
            // the log. A run file a merge removed while the copy ran is
            // not needed: the copied log holds its records.
            match copy_prefix(&from, &to, None) {
                Ok(bytes) => report.bytes_copied += bytes,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(other) => return Err(other),
            }
        }
    }
    sync_dir(&dst_index)?;

    let (src_log, dst_log) = (src.join("log"), dst.join("log"));
    fs::create_dir_all(&dst_log).map_err(io_error(&dst_log, "create directory"))?;
    // Where the copy's log ends: the synced mark beside a writer; with
    // none, the end the next open would find (a crash's torn tail, and
    // the grown but unwritten rest of the active segment, stay behind).
    let mark = if live {
        read_synced_mark(&src_log)?.ok_or_else(|| no_synced_mark(shard))?
    } else {
        match LogFollower::new(&src_log, shard).view(&FileStorage, false)? {
            LogView::Readable { end, .. } => end,
            // Only a view beside a writer waits for a mark.
            LogView::NoMark => {
                return Err(Error::Options(format!(
                    "{}: no end found for the log",
                    src_log.display()
                )));
            }
        }
    };
    let mut segments: Vec<(SegmentId, String)> = sorted_names(&src_log)?
        .into_iter()
        .filter_map(|name| parse_segment_file_name(&name).map(|id| (id, name)))
        .collect();
    segments.sort();
    segments.retain(|(id, _)| *id <= mark.segment);
    for (id, name) in &segments {
        let (from, to) = (src_log.join(name), dst_log.join(name));
        if *id == mark.segment && !is_packed(&from)? {
            report.bytes_copied += copy_prefix(&from, &to, Some(u64::from(mark.offset)))?;
        } else if link {
            fs::hard_link(&from, &to).map_err(io_error(&to, "hard-link"))?;
            report.segments_linked += 1;
        } else {
            report.bytes_copied += copy_prefix(&from, &to, None)?;
        }
    }
    sync_dir(&dst_log)?;
    sync_dir(dst)?;
    Ok(mark)
}

/// Copies an index file as of its durable checkpoint: the pages its
/// durable meta counts, read while that meta stayed the same generation.
/// Returns the bytes copied and the number of fresh starts.
fn copy_index(from: &Path, to: &Path) -> Result<(u64, u32), Error> {
    let file = File::open(from).map_err(io_error(from, "open"))?;
    for attempt in 0..INDEX_TRIES {
        let Some((generation, pages)) = durable_meta(&file, from)? else {
            // No valid meta: copy nothing; the copy's open rebuilds it.
            return Ok((0, attempt));
        };
        let bytes = copy_prefix(from, to, Some(pages * PAGE_SIZE as u64))?;
        if durable_meta(&file, from)?.map(|(g, _)| g) == Some(generation) {
            return Ok((bytes, attempt));
        }
    }
    Err(Error::Options(format!(
        "{} took {INDEX_TRIES} checkpoints while it was being copied; try again when the \
         store is less busy",
        from.display()
    )))
}

/// The generation and page count of the durable meta of an index file.
fn durable_meta(file: &File, path: &Path) -> Result<Option<(u64, u64)>, Error> {
    let mut slots = [None, None];
    for (slot, meta) in slots.iter_mut().enumerate() {
        let mut page = vec![0u8; PAGE_SIZE];
        match file.read_exact_at(&mut page, (slot * PAGE_SIZE) as u64) {
            Ok(()) => *meta = decode_meta(&page, crate::ids::PageId(slot as u64)).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(io_error(path, "read")(e)),
        }
    }
    Ok(crate::index::choose_meta(slots).map(|(_, meta)| (meta.generation, meta.page_count)))
}

/// Whether the segment file at `path` is packed (written whole by
/// compaction: a synced mark's offset in it is logical, and it is copied
/// whole).
fn is_packed(path: &Path) -> Result<bool, Error> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN);
    File::open(path)
        .and_then(|f| f.take(SEGMENT_HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(io_error(path, "read"))?;
    Ok(decode_segment_header(&header).is_ok_and(|h| h.packed_end.is_some()))
}

/// Copies the first `len` bytes of `from` (all of it with `None`) into a
/// new file `to`, synced. Returns the bytes copied.
fn copy_prefix(from: &Path, to: &Path, len: Option<u64>) -> Result<u64, Error> {
    let source = File::open(from).map_err(io_error(from, "open"))?;
    let mut reader: Box<dyn Read> = match len {
        Some(len) => Box::new(source.take(len)),
        None => Box::new(source),
    };
    let mut target = File::create(to).map_err(io_error(to, "create"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(io_error(from, "read"))?;
        if n == 0 {
            break;
        }
        target.write_all(&buf[..n]).map_err(io_error(to, "write"))?;
        copied += n as u64;
    }
    if let Some(len) = len
        && copied < len
    {
        return Err(Error::corrupt(format!(
            "{} ends at byte {copied}, before the {len} the store says it holds",
            from.display()
        )));
    }
    target.sync_all().map_err(io_error(to, "sync"))?;
    Ok(copied)
}

fn sorted_names(dir: &Path) -> Result<Vec<String>, Error> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_error(dir, "list"))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "sync directory"))
}
