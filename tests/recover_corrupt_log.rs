//! Corruption sweep over a small log segment: every byte flipped, and the
//! file truncated at every length. Opening the store and reading everything
//! must either fail with an error that names the segment file, or give back
//! exactly the events of a prefix of the inserts; it must never panic and
//! never return an event that differs from what was stored.
//!
//! Each damaged copy is opened twice: as closed (the indexes point into the
//! log, so damage shows when a record is read) and without its indexes (the
//! whole log is scanned and replayed at open, so damage cuts the log there).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use megalith::inspect::log::{SegmentWalk, WalkItem, decode_record};
use megalith::{Durability, Event, EventStore, Filter, SegmentId};

mod common;

const SEGMENT: &str = "shard-0000/log/00000000000000000001.seg";

fn builder(dir: &Path) -> megalith::EventStoreBuilder {
    EventStore::builder(dir)
        .shards(1) // one shard: the test works on shard 0's files
        .durability(Durability::Never)
        .segment_size(64 << 10)
}

/// Every event of the store, in a canonical order.
fn all_events(store: &EventStore) -> Result<Vec<Event>, megalith::Error> {
    let mut events = store.query(&[Filter::new()])?;
    events.sort_by_key(|e| e.id);
    Ok(events)
}

/// A pristine store: its files (path relative to the store, bytes) and the
/// store's contents after each insert (`states[k]`: after the first `k`).
struct Pristine {
    files: BTreeMap<PathBuf, Vec<u8>>,
    states: Vec<Vec<Event>>,
}

fn pristine(scratch: &Path) -> Pristine {
    let dir = scratch.join("pristine");
    let store = builder(&dir).open().unwrap();
    // A few dozen small real events, one insert (one batch) each; among
    // them three versions of one profile, so the log holds remove records.
    let all: Vec<Event> = common::real_events().into_iter().map(|(_, e)| e).collect();
    let mut profiles = all
        .iter()
        .filter(|e| e.kind == 0 && e.pubkey.to_hex().starts_with("1c5546e4"))
        .cloned();
    let mut events: Vec<Event> = all
        .iter()
        .filter(|e| e.content.len() < 100 && e.tags.len() < 4 && e.kind != 0)
        .take(22)
        .cloned()
        .collect();
    for at in [4, 11, 19] {
        events.insert(at, profiles.next().expect("three profile versions"));
    }
    let mut states = vec![Vec::new()];
    for event in &events {
        store.insert(std::slice::from_ref(event)).unwrap();
        let now = all_events(&store).unwrap();
        if now != *states.last().unwrap() {
            states.push(now);
        }
    }
    store.close().unwrap();
    assert!(states.len() > 16, "only {} stored states", states.len());
    let mut files = BTreeMap::new();
    for sub in ["", "shard-0000/log", "shard-0000/index"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let relative = path.strip_prefix(&dir).unwrap().to_path_buf();
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    assert!(files.keys().any(|p| p.ends_with("primary.idx")));
    Pristine { files, states }
}

/// Where the sweep writes its damaged copies: tmpfs when there is one (the
/// store syncs at every open and close), the temp directory otherwise.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// What opening a damaged copy gave.
enum Outcome {
    /// The store opened and held the first `k` inserts.
    Prefix(usize),
    /// Opening or reading failed (with a message naming the segment file).
    Refused,
}

struct Sweep {
    pristine: Pristine,
    dir: PathBuf,
}

impl Sweep {
    /// Lays the store out again, with `segment` as its log and, if
    /// `with_indexes`, its index files; then opens it, reads every event and
    /// closes it, catching panics.
    fn run(&self, segment: &[u8], with_indexes: bool, what: &str) -> Outcome {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(self.dir.join("shard-0000/log")).unwrap();
        std::fs::create_dir_all(self.dir.join("shard-0000/index")).unwrap();
        for (path, bytes) in &self.pristine.files {
            let is_index = path.starts_with("shard-0000/index");
            if path == Path::new(SEGMENT) || (is_index && !with_indexes) {
                continue;
            }
            std::fs::write(self.dir.join(path), bytes).unwrap();
        }
        std::fs::write(self.dir.join(SEGMENT), segment).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Event>, String> {
            let store = builder(&self.dir).open().map_err(|e| e.to_string())?;
            let events = all_events(&store).map_err(|e| e.to_string());
            store.close().map_err(|e| e.to_string())?;
            events
        }));
        match result {
            Err(_) => panic!("{what}: opening or reading the store panicked"),
            Ok(Ok(events)) => match self.pristine.states.iter().position(|s| *s == events) {
                Some(k) => Outcome::Prefix(k),
                None => panic!(
                    "{what}: the store holds {} events that are no prefix of the inserts",
                    events.len()
                ),
            },
            Ok(Err(message)) => {
                let file = self.dir.join(SEGMENT);
                assert!(
                    message.contains(&file.display().to_string()),
                    "{what}: the error does not name the segment file: {message}"
                );
                Outcome::Refused
            }
        }
    }
}

/// Counts of outcomes, for the assertions that the sweep saw what it should.
#[derive(Debug, Default)]
struct Tally {
    refused: usize,
    whole: usize,
    shorter: usize,
}

impl Tally {
    fn add(&mut self, outcome: Outcome, states: usize) {
        match outcome {
            Outcome::Refused => self.refused += 1,
            Outcome::Prefix(k) if k + 1 == states => self.whole += 1,
            Outcome::Prefix(_) => self.shorter += 1,
        }
    }
}

#[test]
fn every_flipped_byte_and_every_truncation_is_refused_or_leaves_a_prefix() {
    let scratch = scratch_dir();
    let sweep = Sweep {
        pristine: pristine(scratch.path()),
        dir: scratch.path().join("damaged"),
    };
    let states = sweep.pristine.states.len();
    let clean = sweep.pristine.files[Path::new(SEGMENT)].clone();
    assert!(matches!(sweep.run(&clean, true, "clean"), Outcome::Prefix(k) if k + 1 == states));

    let mut flips = [Tally::default(), Tally::default()];
    for at in 0..clean.len() {
        let mut damaged = clean.clone();
        // Vary the flipped bits with the position: one bit, the top bit, all.
        damaged[at] ^= [0x01, 0x80, 0xff, 0x10][at % 4];
        for (tally, with_indexes) in flips.iter_mut().zip([true, false]) {
            let what = format!("byte {at} flipped (indexes: {with_indexes})");
            tally.add(sweep.run(&damaged, with_indexes, &what), states);
        }
    }
    // Every length without the indexes (the scan at open decides); with
    // them, every fourth (each cut is then found by the same read path).
    let mut cuts = [Tally::default(), Tally::default()];
    for len in 0..clean.len() {
        for (tally, with_indexes) in cuts.iter_mut().zip([true, false]) {
            if with_indexes && len % 4 != 0 {
                continue;
            }
            let what = format!("truncated to {len} bytes (indexes: {with_indexes})");
            tally.add(sweep.run(&clean[..len], with_indexes, &what), states);
        }
    }
    eprintln!(
        "{} bytes; flips {flips:?}; truncations {cuts:?}",
        clean.len()
    );
    // With the indexes, a damaged event record is refused when it is read;
    // without them, damage cuts the log back to a batch end at open.
    assert!(flips[0].refused > clean.len() / 2, "{flips:?}");
    assert!(flips[1].shorter > clean.len() / 2, "{flips:?}");
    // Remove records are not read back once the indexes hold them.
    assert!(flips[0].whole > 0, "{flips:?}");
    assert!(cuts[1].shorter > clean.len() / 2, "{cuts:?}");
    // The header is refused however it is damaged, except that an empty
    // file that no index checkpoint names is what a crash while the store
    // was being created leaves: it is removed and the store starts empty.
    assert!(
        flips[1].refused >= 32 && cuts[1].refused >= 31,
        "{flips:?} {cuts:?}"
    );
}

/// At the decoder level: flipping any bit of any frame of a real segment
/// makes it fail to decode; no flip yields a valid record with other content.
#[test]
fn every_bit_flip_inside_a_frame_is_detected_by_the_decoder() {
    let scratch = scratch_dir();
    let pristine = pristine(scratch.path());
    let clean = &pristine.files[Path::new(SEGMENT)];
    let frames: Vec<(usize, usize)> = SegmentWalk::new(clean, Some(SegmentId(1)))
        .filter_map(|item| match item {
            WalkItem::Record { offset, record } => Some((offset, record.frame_len())),
            WalkItem::Damage {
                offset, problem, ..
            } => panic!("clean segment: {problem} at {offset}"),
            WalkItem::End { .. } => None,
        })
        .collect();
    assert!(frames.len() > 20);
    let mut checked = 0;
    let mut damaged = clean.clone();
    for &(offset, len) in &frames {
        assert!(decode_record(&clean[offset..], SegmentId(1)).is_ok());
        for at in offset..offset + len {
            for bit in 0..8 {
                damaged[at] ^= 1 << bit;
                if let Ok(record) = decode_record(&damaged[offset..], SegmentId(1)) {
                    panic!(
                        "bit {bit} of byte {at} flipped in the frame at {offset}: decoded as {record:?}"
                    );
                }
                damaged[at] ^= 1 << bit;
                checked += 1;
            }
        }
    }
    assert_eq!(&damaged, clean);
    let frame_bytes: usize = frames.iter().map(|f| f.1).sum();
    assert_eq!(checked, frame_bytes * 8);
}
