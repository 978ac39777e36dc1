//! The damage sweep (issue 12): a store of realistic events with several
//! log segments; one byte is flipped at every 97th offset of a middle
//! (sealed) segment, one flip per trial, on a fresh copy each time. Every
//! trial must be refused by an open that checks the whole log, naming the
//! segment file and the damaged frame's offset; then a repair (what
//! `megalith repair` runs) and, on another copy, `index-doctor rebuild` must
//! each quarantine exactly the damaged frame and leave exactly the events
//! the brute-force reference holds, less the event whose own record was
//! hit: never fewer, never more, never a panic. The repaired store must
//! pass `index-doctor check` and a second repair must find nothing.
//!
//! A second test does two damages that are not one flip: 512 zero bytes
//! over a sector of the same segment (the events whose records the zeros
//! changed are lost, nothing else; what their lost remove records had
//! removed is back unless a surviving event removes it, see
//! `expected_after`), and the checksum of the segment's last
//! frame (the damaged range runs to the segment's end).
//!
//! The size is set by environment variables. CI runs the defaults, which
//! keep this file to about two minutes in the test profile on two busy
//! cores (the trials are ~830 flips of a 64 KiB-ish segment of a
//! 1,000-event store); `scripts/damage-sweep.sh` runs the 20,000
//! events in release mode.
//!
//! - `MEGALITH_SWEEP_EVENTS`: events generated (default 1,000)
//! - `MEGALITH_SWEEP_SEGMENT`: segment size in bytes, `K`/`M` suffixes
//!   allowed (default 64K, the smallest a store accepts); the store must
//!   end up with at least 5 segments
//! - `MEGALITH_SWEEP_THREADS`: trials run at once (default: the cores)
//! - `MEGALITH_SWEEP_SEED`: the generator's seed (default 12)
//! - `MEGALITH_SWEEP_OFFSETS`: the trials to run instead of the sweep, to
//!   reproduce a failure: a comma-separated list of offsets to flip (any
//!   offset, not only multiples of 97), `sector` and `last` (the other two
//!   damages)
//! - `MEGALITH_SWEEP_KEEP`: a directory to copy the undamaged store to
//!   (`DIR/<test>`), for `wal-hexdump` and the like

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use megalith::datagen::{GenConfig, Generator};
use megalith::inspect::log::{
    FRAME_HEADER_LEN, FRAME_OVERHEAD, QuarantinePayload, RecordType, RemovePayload,
    SEGMENT_HEADER_LEN, SegmentWalk, WalkItem, decode_record, segment_file_name,
};
use megalith::reference::{RefOutcome, Reference};
use megalith::{Durability, Event, EventId, EventStore, EventStoreBuilder, Filter, Lsn, SegmentId};

/// One flip at every 97th offset, as the issue asks.
const STRIDE: usize = 97;
/// Sizes CI runs (see the module documentation for why they are small).
const DEFAULT_EVENTS: usize = 1_000;
const DEFAULT_SEGMENT: u64 = 64 << 10;
const DEFAULT_SEED: u64 = 12;
const MIN_SEGMENTS: usize = 5;
/// Where the checksum sits in a frame: its last 8 bytes.
const CRC_LEN: usize = 8;

#[derive(Debug, Clone)]
struct Settings {
    events: usize,
    segment_size: u64,
    threads: usize,
    seed: u64,
    /// The trials to run instead of the whole sweep.
    only: Option<Vec<Trial>>,
}

/// A trial, as `MEGALITH_SWEEP_OFFSETS` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trial {
    /// One byte flipped at this offset of the swept segment.
    Flip(usize),
    /// 512 zero bytes over a sector.
    Sector,
    /// The checksum of the segment's last frame.
    LastFrame,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let events = var("MEGALITH_SWEEP_EVENTS").map_or(DEFAULT_EVENTS, |v| {
            v.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|e| panic!("MEGALITH_SWEEP_EVENTS={v}: {e}"))
        });
        let segment_size =
            var("MEGALITH_SWEEP_SEGMENT").map_or(DEFAULT_SEGMENT, |v| parse_size(&v));
        let threads = var("MEGALITH_SWEEP_THREADS").map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("MEGALITH_SWEEP_THREADS={v}: {e}"))
            },
        );
        let seed = var("MEGALITH_SWEEP_SEED").map_or(DEFAULT_SEED, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("MEGALITH_SWEEP_SEED={v}: {e}"))
        });
        let only = var("MEGALITH_SWEEP_OFFSETS").map(|v| {
            v.split(',')
                .map(|o| match o.trim() {
                    "sector" => Trial::Sector,
                    "last" => Trial::LastFrame,
                    o => Trial::Flip(
                        o.parse()
                            .unwrap_or_else(|e| panic!("MEGALITH_SWEEP_OFFSETS={v}: {o}: {e}")),
                    ),
                })
                .collect()
        });
        Settings {
            events,
            segment_size,
            threads: threads.max(1),
            seed,
            only,
        }
    }
}

/// `65536`, `64K`, `1M`.
fn parse_size(text: &str) -> u64 {
    let t = text.trim().replace('_', "");
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 1 << 20),
        _ => (&t[..], 1),
    };
    digits
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("MEGALITH_SWEEP_SEGMENT={text}: {e}"))
        * unit
}

/// SplitMix64, for the batch sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn between(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }
}

/// One valid frame of the swept segment.
#[derive(Debug, Clone)]
struct Frame {
    offset: usize,
    len: usize,
    lsn: Lsn,
    kind: RecordType,
    batch_end: bool,
    /// The event's id, for an event record.
    event: Option<EventId>,
    /// The id of the event a remove record removed.
    removes: Option<EventId>,
}

impl Frame {
    fn end(&self) -> usize {
        self.offset + self.len
    }
}

/// The undamaged store every trial starts from.
struct Pristine {
    settings: Settings,
    _scratch: tempfile::TempDir,
    dir: PathBuf,
    /// Every segment file of the log, relative to the store, with its bytes.
    segments: Vec<(PathBuf, Vec<u8>)>,
    /// Which of `segments` is swept.
    middle: usize,
    frames: Vec<Frame>,
    /// What the store holds, which the reference holds too.
    contents: BTreeMap<EventId, Event>,
    /// Every event offered to the store, in order, and the time it was
    /// offered at (for the reference of a trial that loses a removal).
    events: Vec<Event>,
    now: u64,
    batches: usize,
    remove_records: usize,
}

impl Pristine {
    fn segment_rel(&self) -> &Path {
        &self.segments[self.middle].0
    }

    fn segment_bytes(&self) -> &[u8] {
        &self.segments[self.middle].1
    }

    fn segment_id(&self) -> SegmentId {
        segment_id_of(self.segment_rel())
    }

    /// The frame covering `offset` (`None` inside the segment header).
    fn frame_at(&self, offset: usize) -> Option<&Frame> {
        let i = self.frames.partition_point(|f| f.offset <= offset);
        let frame = self.frames.get(i.checked_sub(1)?)?;
        assert!(
            offset < frame.end(),
            "offset {offset} is past the last frame"
        );
        Some(frame)
    }
}

fn segment_id_of(path: &Path) -> SegmentId {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap();
    SegmentId(stem.parse().unwrap())
}

fn builder(dir: &Path, settings: &Settings) -> EventStoreBuilder {
    EventStore::builder(dir)
        .shards(1)
        .durability(Durability::Always)
        .segment_size(settings.segment_size)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Segment files of the store's only shard, relative to the store, in order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let log = Path::new("shard-0000").join("log");
    let mut names: Vec<String> = std::fs::read_dir(dir.join(&log))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names.into_iter().map(|n| log.join(n)).collect()
}

/// Everything the store in `dir` holds, read through a normal open (or,
/// with `scan_whole_log`, one that first checks every record of the log).
fn contents(
    dir: &Path,
    settings: &Settings,
    scan_whole_log: bool,
) -> Result<BTreeMap<EventId, Event>, String> {
    let store = builder(dir, settings)
        .create_if_missing(false)
        .scan_whole_log(scan_whole_log)
        .open()
        .map_err(|e| format!("open: {e}"))?;
    let events = store
        .query(&[Filter::new()])
        .map_err(|e| format!("query: {e}"))?;
    store.close().map_err(|e| format!("close: {e}"))?;
    let count = events.len();
    let map: BTreeMap<EventId, Event> = events.into_iter().map(|e| (e.id, e)).collect();
    if map.len() != count {
        return Err(format!(
            "the query returned {count} events, {} distinct",
            map.len()
        ));
    }
    Ok(map)
}

/// `None` when `got` holds exactly the events of `expected`; otherwise what
/// differs.
fn difference(
    expected: &BTreeMap<EventId, Event>,
    got: &BTreeMap<EventId, Event>,
) -> Option<String> {
    let missing: Vec<&EventId> = expected.keys().filter(|id| !got.contains_key(id)).collect();
    let extra: Vec<&Event> = got
        .iter()
        .filter(|(id, _)| !expected.contains_key(id))
        .map(|(_, e)| e)
        .collect();
    let changed: Vec<&EventId> = expected
        .iter()
        .filter(|(id, e)| got.get(id).is_some_and(|g| g != *e))
        .map(|(id, _)| id)
        .collect();
    if missing.is_empty() && extra.is_empty() && changed.is_empty() {
        return None;
    }
    let mut text = format!(
        "expected {} events, the store holds {}: {} missing, {} extra, {} changed",
        expected.len(),
        got.len(),
        missing.len(),
        extra.len(),
        changed.len()
    );
    for id in missing.iter().take(5) {
        let _ = write!(text, "; missing {id} (kind {})", expected[id].kind);
    }
    for event in extra.iter().take(5) {
        let _ = write!(
            text,
            "; extra {} (kind {}, created_at {})",
            event.id, event.kind, event.created_at
        );
    }
    for id in changed.iter().take(5) {
        let _ = write!(text, "; changed {id}");
    }
    Some(text)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Generates the events, inserts them in batches of mixed sizes into a new
/// one-shard store and into the reference, closes the store, and checks
/// that both hold the same events.
fn build_pristine(settings: Settings) -> Pristine {
    let started = Instant::now();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("pristine");
    let mut generator = Generator::new(GenConfig {
        seed: settings.seed,
        // Few enough authors that profiles, contact lists and relay lists
        // get newer versions (remove records) within the stream.
        authors: (settings.events / 20).clamp(50, 2_000),
        ..GenConfig::default()
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let events = generator.batch(settings.events, threads);
    let store = builder(&dir, &settings).open().unwrap();
    let mut reference = Reference::new();
    let mut rng = Rng(settings.seed ^ 0xD15EA5E);
    let (mut at, mut batches) = (0, 0);
    let now = now();
    // A batch starts below the segment size and may run past it, so large
    // groups in small segments make segments (and sweeps) much longer than
    // asked: at most one event per 2 KiB of segment size in a group (32 in
    // a 64 KiB segment, the whole mix up to 400 from 800 KiB).
    let largest = ((settings.segment_size / 2048) as usize).clamp(10, 400);
    while at < events.len() {
        // Mostly single events, as a relay gets them, with groups of every
        // size in between, as an import or a pipelining client makes.
        let size = match rng.next() % 100 {
            0..45 => 1,
            45..75 => rng.between(2, 10),
            75..93 => rng.between(11, 100),
            _ => rng.between(101, 400),
        }
        .min(largest)
        .min(events.len() - at);
        let batch = &events[at..at + size];
        let outcomes = store.insert(batch).unwrap();
        assert_eq!(outcomes.len(), batch.len());
        for (event, outcome) in batch.iter().zip(&outcomes) {
            let expected = reference.insert(event, now);
            assert_eq!(
                RefOutcome::of(outcome),
                expected,
                "event {} (kind {}): the store says {outcome:?}, the reference {expected:?}",
                event.id,
                event.kind
            );
        }
        at += size;
        batches += 1;
    }
    store.close().unwrap();

    let expected: BTreeMap<EventId, Event> =
        reference.events().map(|e| (e.id, e.clone())).collect();
    let held = contents(&dir, &settings, true).unwrap();
    if let Some(diff) = difference(&expected, &held) {
        panic!("the pristine store and the reference differ: {diff}");
    }

    let files = segment_files(&dir);
    assert!(
        files.len() >= MIN_SEGMENTS,
        "{} events make {} segments of {} bytes; at least {MIN_SEGMENTS} are needed: lower \
         MEGALITH_SWEEP_SEGMENT or raise MEGALITH_SWEEP_EVENTS",
        settings.events,
        files.len(),
        settings.segment_size
    );
    let segments: Vec<(PathBuf, Vec<u8>)> = files
        .into_iter()
        .map(|rel| {
            let bytes = std::fs::read(dir.join(&rel)).unwrap();
            (rel, bytes)
        })
        .collect();
    let middle = segments.len() / 2;
    let (rel, bytes) = &segments[middle];
    let id = segment_id_of(rel);
    let mut frames = Vec::new();
    let mut end = None;
    for item in SegmentWalk::new(bytes, Some(id)) {
        match item {
            WalkItem::Record { offset, record } => frames.push(Frame {
                offset,
                len: record.frame_len(),
                lsn: record.lsn,
                kind: record.record_type,
                batch_end: record.batch_end,
                event: (record.record_type == RecordType::Event)
                    .then(|| EventId(record.payload[..32].try_into().unwrap())),
                removes: (record.record_type == RecordType::Remove)
                    .then(|| EventId(RemovePayload::decode(record.payload).unwrap().target_id)),
            }),
            WalkItem::Damage {
                offset, problem, ..
            } => panic!(
                "the pristine segment {} is damaged at {offset}: {problem}",
                rel.display()
            ),
            WalkItem::End { offset, zero_bytes } => end = Some((offset, zero_bytes)),
        }
    }
    assert_eq!(
        end,
        Some((bytes.len(), 0)),
        "a sealed segment ends exactly after its last record"
    );
    assert_eq!(frames.first().map(|f| f.offset), Some(SEGMENT_HEADER_LEN));
    let remove_records = frames
        .iter()
        .filter(|f| f.kind == RecordType::Remove)
        .count();
    let pristine = Pristine {
        settings,
        _scratch: scratch,
        dir,
        segments,
        middle,
        frames,
        contents: expected,
        events,
        now,
        batches,
        remove_records,
    };
    let event_frames = pristine
        .frames
        .iter()
        .filter(|f| f.kind == RecordType::Event)
        .count();
    println!(
        "sweep: store: {} events generated, {} stored, {} insert batches, {} segments of {} bytes; \
         built in {:.1?}",
        pristine.settings.events,
        pristine.contents.len(),
        pristine.batches,
        pristine.segments.len(),
        pristine.settings.segment_size,
        started.elapsed()
    );
    println!(
        "sweep: swept segment {} ({} of {}): {} bytes, {} frames ({} event, {} remove records)",
        pristine.segment_rel().display(),
        pristine.middle + 1,
        pristine.segments.len(),
        pristine.segment_bytes().len(),
        pristine.frames.len(),
        event_frames,
        pristine.remove_records
    );
    pristine
}

/// One trial's damage and what a repair must make of it.
#[derive(Debug, Clone)]
struct Damage {
    what: String,
    /// (offset in the swept segment, bytes written there).
    writes: Vec<(usize, Vec<u8>)>,
    /// The single byte flipped, for a flip trial.
    flipped: Option<usize>,
    /// The damaged range a repair must find: [start, end).
    start: usize,
    end: usize,
    header: bool,
    /// The frames inside the range.
    frames: Vec<Frame>,
}

impl Damage {
    /// Ids of the events whose own records are in the range.
    fn lost_events(&self) -> BTreeSet<EventId> {
        self.frames.iter().filter_map(|f| f.event).collect()
    }

    /// The first and last LSN a repair must say were lost: none for a
    /// header, nor when no record follows in the segment.
    fn lost_lsns(&self, segment_len: usize) -> Option<(Lsn, Lsn)> {
        if self.header || self.end == segment_len {
            return None;
        }
        Some((self.frames.first()?.lsn, self.frames.last()?.lsn))
    }
}

/// One byte flipped at `offset`; the bit flipped changes with the offset.
fn flip(p: &Pristine, offset: usize) -> Damage {
    let bytes = p.segment_bytes();
    assert!(offset < bytes.len(), "offset {offset} is past the segment");
    let mask = 1u8 << ((offset / STRIDE) % 8);
    let writes = vec![(offset, vec![bytes[offset] ^ mask])];
    match p.frame_at(offset) {
        None => Damage {
            what: format!("bit {mask:#04x} of byte {offset} (segment header)"),
            writes,
            flipped: Some(offset),
            start: 0,
            end: SEGMENT_HEADER_LEN,
            header: true,
            frames: Vec::new(),
        },
        Some(frame) => Damage {
            what: format!(
                "bit {mask:#04x} of byte {offset} (+{} in the {:?} frame at {}, LSN {})",
                offset - frame.offset,
                frame.kind,
                frame.offset,
                frame.lsn
            ),
            writes,
            flipped: Some(offset),
            start: frame.offset,
            end: frame.end(),
            header: false,
            frames: vec![frame.clone()],
        },
    }
}

/// `len` bytes written at `offset`: every frame whose bytes that changes
/// is damaged (all of them form one range, since no frame is all zeros).
fn overwrite(p: &Pristine, what: String, offset: usize, new: Vec<u8>) -> Damage {
    let bytes = p.segment_bytes();
    let end = offset + new.len();
    assert!(offset >= SEGMENT_HEADER_LEN && end <= bytes.len());
    let changed: Vec<Frame> = p
        .frames
        .iter()
        .filter(|f| {
            let (from, to) = (f.offset.max(offset), f.end().min(end));
            from < to && bytes[from..to] != new[from - offset..to - offset]
        })
        .cloned()
        .collect();
    let (first, last) = (changed.first().unwrap(), changed.last().unwrap());
    assert_eq!(
        changed.len(),
        p.frames
            .iter()
            .filter(|f| f.offset >= first.offset && f.offset <= last.offset)
            .count(),
        "the changed frames are contiguous"
    );
    let frames: Vec<String> = changed
        .iter()
        .map(|f| {
            format!(
                "{:?} at {} LSN {}{}",
                f.kind,
                f.offset,
                f.lsn,
                if f.batch_end { " (batch end)" } else { "" }
            )
        })
        .collect();
    Damage {
        what: format!("{what}; frames changed: {}", frames.join(", ")),
        writes: vec![(offset, new)],
        flipped: None,
        start: first.offset,
        end: last.end(),
        header: false,
        frames: changed.clone(),
    }
}

/// A fresh copy of the pristine store with `damage` done to it.
fn damaged_copy(p: &Pristine, dir: &Path, damage: &Damage) -> Vec<u8> {
    copy_dir(&p.dir, dir);
    let mut bytes = p.segment_bytes().to_vec();
    for (at, new) in &damage.writes {
        bytes[*at..*at + new.len()].copy_from_slice(new);
    }
    std::fs::write(dir.join(p.segment_rel()), &bytes).unwrap();
    bytes
}

/// What one trial found, for the summary.
#[derive(Debug, Clone, Default)]
struct TrialResult {
    quarantined_bytes: u64,
    /// Events the store held before and not after the repair.
    events_lost: usize,
    removals_reapplied: u64,
}

/// The log of the store in `dir` after a repair of `damage`: the damaged
/// range holds a `Quarantined` record of exactly its length (or the header
/// again), every other byte of every segment is as it was, and records
/// appended by the repair come after the pristine log's end.
fn assert_log_repaired(p: &Pristine, dir: &Path, damage: &Damage, what: &str) {
    let files = segment_files(dir);
    assert!(
        files.len() >= p.segments.len()
            && files[..p.segments.len()]
                .iter()
                .eq(p.segments.iter().map(|(rel, _)| rel)),
        "{what}: the segments are now {files:?}"
    );
    let last = p.segments.len() - 1;
    for (i, (rel, pristine)) in p.segments.iter().enumerate() {
        let now = std::fs::read(dir.join(rel)).unwrap();
        if i == p.middle {
            assert_eq!(
                now.len(),
                pristine.len(),
                "{what}: the repaired segment changed length"
            );
            let (s, e) = (damage.start, damage.end);
            assert!(
                now[..s] == pristine[..s] && now[e..] == pristine[e..],
                "{what}: bytes outside the damaged range [{s}, {e}) changed"
            );
            if damage.header {
                assert_eq!(
                    now[..e],
                    pristine[..e],
                    "{what}: the rewritten segment header differs from the original"
                );
            } else {
                let record = decode_record(&now[s..], p.segment_id())
                    .unwrap_or_else(|e| panic!("{what}: no valid record at {s} after repair: {e}"));
                assert_eq!(
                    (record.record_type, record.frame_len(), record.batch_end),
                    (RecordType::Quarantined, e - s, true),
                    "{what}: the record written over the range"
                );
                // Its payload names the first LSN lost and the next record's
                // (0 when that is in a later segment), when it has room.
                if e - s >= FRAME_OVERHEAD + 16 {
                    let payload = QuarantinePayload::decode(record.payload)
                        .unwrap_or_else(|| panic!("{what}: the quarantined record's payload"));
                    let next = p
                        .frames
                        .iter()
                        .find(|f| f.offset == e)
                        .map_or(Lsn(0), |f| f.lsn);
                    assert_eq!(
                        (payload.first_lost, payload.next),
                        (damage.frames[0].lsn, next),
                        "{what}: the quarantined record's payload"
                    );
                }
            }
        } else if i == last {
            assert!(
                now.len() >= pristine.len() && now[..pristine.len()] == pristine[..],
                "{what}: the last segment's records changed (only appending is allowed)"
            );
        } else {
            assert!(
                now == *pristine,
                "{what}: segment {} changed, though the damage was not in it",
                rel.display()
            );
        }
    }
}

/// What every repair of `damage` must report, with its quarantine file.
fn assert_report(
    p: &Pristine,
    dir: &Path,
    damage: &Damage,
    damaged: &[u8],
    repairs: &[megalith::LogRepair],
    what: &str,
) {
    assert_eq!(
        repairs.len(),
        1,
        "{what}: one damaged range expected, the report lists {}: {:?}",
        repairs.len(),
        repairs.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    let r = &repairs[0];
    let (start, end) = (damage.start, damage.end);
    assert_eq!(r.segment, dir.join(p.segment_rel()), "{what}: {r}");
    assert_eq!(
        (r.offset, r.len),
        (start as u64, (end - start) as u64),
        "{what}: the repaired range, expected [{start}, {end}): {r}"
    );
    let name = format!("{}.{start}-{end}.bin", segment_file_name(p.segment_id()));
    assert_eq!(
        r.quarantine,
        dir.join("shard-0000").join("quarantine").join(name),
        "{what}"
    );
    let aside = std::fs::read(&r.quarantine)
        .unwrap_or_else(|e| panic!("{what}: {}: {e}", r.quarantine.display()));
    assert!(
        aside == damaged[start..end],
        "{what}: the quarantine file does not hold the damaged bytes"
    );
    assert_eq!(
        r.lost_lsns,
        damage.lost_lsns(p.segment_bytes().len()),
        "{what}: {r}"
    );
    // The ids still readable in the damaged bytes (unchecked): never more
    // than the event records in the range, and only those unless the
    // damage is in an id itself; exactly the id when only the frame's
    // header fields or checksum were touched.
    let event_frames = damage.frames.iter().filter(|f| f.event.is_some()).count();
    assert!(
        r.lost_event_ids.len() <= event_frames,
        "{what}: {} ids reported for {event_frames} event records: {r}",
        r.lost_event_ids.len()
    );
    if let (Some(at), [frame]) = (damage.flipped, damage.frames.as_slice())
        && let Some(id) = frame.event
    {
        let inside = at - frame.offset;
        let in_id = (FRAME_HEADER_LEN..FRAME_HEADER_LEN + 32).contains(&inside);
        let in_header_fields = (5..FRAME_HEADER_LEN).contains(&inside);
        let in_crc = inside >= frame.len - CRC_LEN;
        if in_header_fields || in_crc {
            assert_eq!(r.lost_event_ids, vec![id], "{what}: {r}");
        } else if !in_id {
            assert!(r.lost_event_ids.iter().all(|i| *i == id), "{what}: {r}");
        }
    } else if damage.flipped.is_some() {
        assert!(r.lost_event_ids.is_empty(), "{what}: {r}");
    }
}

/// One trial: refusal, repair, rebuild. Panics on the first broken promise;
/// `stage` says how far it got (1 refused as it must, 2 repaired, 3 rebuilt).
/// What a repair of `damage` must leave: the pristine store less the events
/// whose own records were lost. When remove records were lost as well, what
/// they removed is live again unless a surviving event still removes it (a
/// newer version of its address, a deletion that names it): that is, if the
/// reference fed every event but the lost ones holds it.
fn expected_after(p: &Pristine, damage: &Damage) -> BTreeMap<EventId, Event> {
    let lost = damage.lost_events();
    let mut expected: BTreeMap<EventId, Event> = p
        .contents
        .iter()
        .filter(|(id, _)| !lost.contains(id))
        .map(|(id, e)| (*id, e.clone()))
        .collect();
    let unremoved: BTreeSet<EventId> = damage
        .frames
        .iter()
        .filter_map(|f| f.removes)
        .filter(|id| !lost.contains(id))
        .collect();
    if unremoved.is_empty() {
        return expected;
    }
    let mut reference = Reference::new();
    for event in p.events.iter().filter(|e| !lost.contains(&e.id)) {
        reference.insert(event, p.now);
    }
    for id in unremoved {
        if let Some(event) = reference.get(&id) {
            expected.insert(id, event.clone());
        }
    }
    expected
}

fn trial(p: &Pristine, scratch: &Path, damage: &Damage, stage: &Cell<u8>) -> TrialResult {
    let settings = &p.settings;
    let what = &damage.what;
    let expected = expected_after(p, damage);

    // a. Opening with every record checked refuses, names the damage, and
    //    changes nothing.
    let dir = scratch.join("repair");
    let damaged = damaged_copy(p, &dir, damage);
    let segment_path = dir.join(p.segment_rel());
    match builder(&dir, settings).scan_whole_log(true).open() {
        Ok(store) => {
            let held = store.query(&[Filter::new()]).map(|e| e.len());
            let _ = store.close();
            panic!("{what}: the damaged store opened ({held:?} events)");
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains(&segment_path.display().to_string()),
                "{what}: the refusal does not name {}: {message}",
                segment_path.display()
            );
            assert!(
                message.contains(&format!("damaged at offset {}", damage.start)),
                "{what}: the refusal does not name offset {}: {message}",
                damage.start
            );
            if damage.header {
                assert!(
                    message.contains("header"),
                    "{what}: the refusal does not say the header is damaged: {message}"
                );
            }
        }
    }
    assert!(
        std::fs::read(&segment_path).unwrap() == damaged,
        "{what}: the refused open changed the damaged segment"
    );
    assert!(
        !dir.join("shard-0000").join("quarantine").exists(),
        "{what}: the refused open quarantined something"
    );
    stage.set(1);

    // b. A repair quarantines exactly the damaged range and keeps every
    //    other event; a second repair finds nothing.
    let report = builder(&dir, settings)
        .repair()
        .unwrap_or_else(|e| panic!("{what}: repair failed: {e}"));
    let what_b = format!("{what}, repair");
    assert_report(p, &dir, damage, &damaged, &report.log_repairs, &what_b);
    assert_log_repaired(p, &dir, damage, &what_b);
    let check = megalith::inspect::index::check_store(&dir)
        .unwrap_or_else(|e| panic!("{what_b}: index check could not run: {e}"));
    assert!(
        check.is_clean(),
        "{what_b}: the index check found {} problems, first: {:?}",
        check.problems.len(),
        check.problems.iter().take(3).collect::<Vec<_>>()
    );
    let again = builder(&dir, settings)
        .repair()
        .unwrap_or_else(|e| panic!("{what_b}: the second repair failed: {e}"));
    assert!(
        again.log_repairs.is_empty()
            && again.removals_reapplied == 0
            && again.tail_repairs.is_empty()
            && again.rebuilt_indexes.is_empty(),
        "{what_b}: the second repair did something: {again:?}"
    );
    let held = contents(&dir, settings, true)
        .unwrap_or_else(|e| panic!("{what_b}: the repaired store: {e}"));
    if let Some(diff) = difference(&expected, &held) {
        panic!("{what_b}: {diff}");
    }
    let result = TrialResult {
        quarantined_bytes: report.log_repairs[0].len,
        events_lost: p.contents.len() - held.len(),
        removals_reapplied: report.removals_reapplied,
    };
    std::fs::remove_dir_all(&dir).unwrap();
    stage.set(2);

    // c. `index-doctor rebuild` on another copy gives the same store.
    let dir = scratch.join("rebuild");
    let damaged = damaged_copy(p, &dir, damage);
    let what_c = format!("{what}, index rebuild");
    let rebuilt = megalith::inspect::index::rebuild(&dir)
        .unwrap_or_else(|e| panic!("{what_c}: rebuild failed: {e}"));
    assert_report(p, &dir, damage, &damaged, &rebuilt.log_repairs, &what_c);
    assert_log_repaired(p, &dir, damage, &what_c);
    let held = contents(&dir, settings, true)
        .unwrap_or_else(|e| panic!("{what_c}: the rebuilt store: {e}"));
    if let Some(diff) = difference(&expected, &held) {
        panic!("{what_c}: {diff}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    stage.set(3);
    result
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// How far a trial got (see [`trial`]) and what it found or why it failed.
type Outcome = (u8, Result<TrialResult, String>);

/// Runs every trial on `threads` threads; returns each trial's result in
/// order, a failure as its panic message.
fn run_trials(p: &Pristine, damages: &[Damage]) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; damages.len()]);
    let started = Instant::now();
    let report_every = (damages.len() / 20).max(1);
    std::thread::scope(|scope| {
        for worker in 0..p.settings.threads.min(damages.len()).max(1) {
            let (next, results) = (&next, &results);
            std::thread::Builder::new()
                .name(format!("sweep-{worker}"))
                .spawn_scoped(scope, move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(damage) = damages.get(i) else { break };
                        let scratch = tempfile::tempdir().unwrap();
                        let stage = Cell::new(0);
                        let outcome = catch_unwind(AssertUnwindSafe(|| {
                            trial(p, scratch.path(), damage, &stage)
                        }))
                        .map_err(|payload| panic_message(&*payload));
                        drop(scratch);
                        let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
                        results[i] = Some((stage.get(), outcome));
                        let done = results.iter().filter(|r| r.is_some()).count();
                        drop(results);
                        if done % report_every == 0 || done == damages.len() {
                            eprintln!(
                                "sweep: {done}/{} trials, {:.0?}",
                                damages.len(),
                                started.elapsed()
                            );
                        }
                    }
                })
                .unwrap();
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every trial ran"))
        .collect()
}

/// The damage a trial does, worked out on the pristine segment.
fn damage_for(p: &Pristine, trial: Trial) -> Damage {
    let segment_len = p.segment_bytes().len();
    match trial {
        Trial::Flip(offset) => flip(p, offset),
        // 512 zero bytes over a sector: the one that changes the most frames
        // (of those, the one nearest the middle).
        Trial::Sector => {
            let sector = (1..segment_len / 512)
                .map(|i| i * 512)
                .max_by_key(|&at| {
                    let frames = overwrite(p, String::new(), at, vec![0; 512]).frames.len();
                    (frames, std::cmp::Reverse(at.abs_diff(segment_len / 2)))
                })
                .unwrap();
            overwrite(
                p,
                format!("512 zero bytes at {sector} (a lost sector)"),
                sector,
                vec![0; 512],
            )
        }
        // The checksum of the segment's last frame: the damaged range runs
        // to the segment's end.
        Trial::LastFrame => {
            let last = p.frames.last().unwrap();
            let damage = overwrite(
                p,
                format!("the checksum of the last frame, at {}", last.offset),
                last.end() - CRC_LEN,
                vec![0xFF; CRC_LEN],
            );
            assert_eq!(damage.end, segment_len);
            damage
        }
    }
}

/// Builds the pristine store, runs `trials` (those of `MEGALITH_SWEEP_OFFSETS`
/// that `wanted` accepts, when it is set), prints a summary and fails if any
/// trial did.
fn sweep(test: &str, trials: impl Fn(&Pristine) -> Vec<Trial>, wanted: impl Fn(&Trial) -> bool) {
    let started = Instant::now();
    let settings = Settings::from_env();
    if let Some(only) = &settings.only
        && !only.iter().any(&wanted)
    {
        println!("sweep: {test}: no trial of MEGALITH_SWEEP_OFFSETS is for this test");
        return;
    }
    let p = build_pristine(settings.clone());
    if let Ok(keep) = std::env::var("MEGALITH_SWEEP_KEEP") {
        let keep = Path::new(&keep).join(test.replace(' ', "-"));
        copy_dir(&p.dir, &keep);
        println!(
            "sweep: {test}: the undamaged store is copied to {}",
            keep.display()
        );
    }
    let trials: Vec<Trial> = match &settings.only {
        Some(only) => only.iter().copied().filter(&wanted).collect(),
        None => trials(&p),
    };
    let damages: Vec<Damage> = trials.iter().map(|&t| damage_for(&p, t)).collect();
    let flips = damages.iter().filter(|d| d.flipped.is_some()).count();
    println!(
        "sweep: {test}: {flips} single-byte flips, {} other damages, {} trials at a time",
        damages.len() - flips,
        settings.threads
    );
    let swept = Instant::now();
    let results = run_trials(&p, &damages);
    let sweep_time = swept.elapsed();

    let mut failures = Vec::new();
    let (mut quarantined, mut reapplied) = (0u64, 0u64);
    let mut lost_histogram: BTreeMap<usize, usize> = BTreeMap::new();
    let mut hits: BTreeMap<&str, usize> = BTreeMap::new();
    let mut stages = [0usize; 4];
    for ((trial, damage), (stage, result)) in trials.iter().zip(&damages).zip(&results) {
        for reached in &mut stages[..=*stage as usize] {
            *reached += 1;
        }
        let kind = match damage.frames.as_slice() {
            _ if damage.header => "segment header",
            [one] if one.kind == RecordType::Event => "event record",
            [one] if one.kind == RecordType::Remove => "remove record",
            [_] => "other record",
            _ => "several records",
        };
        *hits.entry(kind).or_default() += 1;
        match result {
            Ok(r) => {
                quarantined += r.quarantined_bytes;
                reapplied += r.removals_reapplied;
                *lost_histogram.entry(r.events_lost).or_default() += 1;
                if damage.flipped.is_none() {
                    println!(
                        "sweep: {}: range [{}, {}), {} events lost, {} removals re-applied: ok",
                        damage.what, damage.start, damage.end, r.events_lost, r.removals_reapplied
                    );
                }
            }
            Err(message) => failures.push(format!("trial {trial:?}: {message}")),
        }
    }
    println!(
        "sweep: {test}: trials: {}, refused naming the damage: {}, repaired: {}, rebuilt: {}, \
         failed: {}",
        damages.len(),
        stages[1],
        stages[2],
        stages[3],
        failures.len()
    );
    println!("sweep: {test}: damage hit: {hits:?}");
    println!(
        "sweep: {test}: bytes quarantined: {quarantined} in all trials that passed (one repair \
         each), removals re-applied: {reapplied}"
    );
    println!(
        "sweep: {test}: events lost per trial (lost: trials): {lost_histogram:?}, max {}",
        lost_histogram.keys().last().copied().unwrap_or(0)
    );
    println!(
        "sweep: {test}: trials took {sweep_time:.1?}, the whole test {:.1?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} trials failed:\n{}",
        failures.len(),
        damages.len(),
        failures.join("\n")
    );
    if flips == damages.len() {
        assert!(
            lost_histogram.keys().all(|&lost| lost <= 1),
            "a single flip lost more than one event: {lost_histogram:?}"
        );
    }
}

/// One byte flipped at every 97th offset of a middle segment.
#[test]
fn every_97th_byte_of_a_middle_segment_flipped() {
    sweep(
        "flips",
        |p| {
            (0..p.segment_bytes().len())
                .step_by(STRIDE)
                .map(Trial::Flip)
                .collect()
        },
        |t| matches!(t, Trial::Flip(_)),
    );
}

/// 512 zero bytes over a sector of a middle segment, and its last frame's
/// checksum destroyed.
#[test]
fn a_lost_sector_and_a_damaged_last_frame() {
    sweep(
        "sector and last frame",
        |_| vec![Trial::Sector, Trial::LastFrame],
        |t| !matches!(t, Trial::Flip(_)),
    );
}
