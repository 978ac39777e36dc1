//! Damage inside a log is not a torn tail: a flipped byte with acknowledged
//! records after it must never make opening the store, or rebuilding its
//! indexes, cut those records away.

use std::path::{Path, PathBuf};

use megalith::inspect::log::{SegmentWalk, WalkItem};
use megalith::{Durability, EventId, EventStore, Filter, Keys, SegmentId};

mod common;

/// A one-shard store that syncs every acknowledged insert.
fn builder(dir: &Path, segment_size: u64) -> megalith::EventStoreBuilder {
    EventStore::builder(dir)
        .shards(1)
        .durability(Durability::Always)
        .segment_size(segment_size)
}

/// Inserts `count` distinct notes one at a time (one acknowledged batch
/// each) and returns their ids.
fn fill(store: &EventStore, count: usize) -> Vec<EventId> {
    let keys = Keys::from_seed(7);
    (0..count)
        .map(|i| {
            let note = keys.sign(
                1_700_000_000 + i as u64,
                1,
                vec![vec!["t".into(), "damage".into()]],
                format!("acknowledged note number {i}, with some words to give it body"),
            );
            let outcome = store.insert(std::slice::from_ref(&note)).unwrap();
            assert!(
                matches!(outcome[0], megalith::InsertOutcome::Stored),
                "{outcome:?}"
            );
            note.id
        })
        .collect()
}

/// Copies the store's files as they are on disk now (every acknowledged
/// write was synced): what a kill leaves.
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

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("shard-0000/log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    paths.sort();
    paths
}

/// Offsets and lengths of the valid frames of a segment file.
fn frames(path: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(path).unwrap();
    let id: u32 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    SegmentWalk::new(&bytes, Some(SegmentId(id)))
        .filter_map(|item| match item {
            WalkItem::Record { offset, record } => Some((offset, record.frame_len())),
            WalkItem::Damage {
                offset, problem, ..
            } => panic!("{}: {problem} at {offset}", path.display()),
            WalkItem::End { .. } => None,
        })
        .collect()
}

/// Flips one byte in the payload of the frame at `frame`; returns the offset.
fn flip_inside(path: &Path, frame: (usize, usize)) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let at = frame.0 + frame.1 / 2;
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
    at
}

fn ids(store: &EventStore) -> Vec<EventId> {
    let mut ids: Vec<EventId> = store
        .query(&[Filter::new()])
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.sort();
    ids
}

/// Finding 1: one flipped byte mid-log in the active segment of a killed
/// store, with thousands of acknowledged records after it. Opening must
/// refuse, name the file and offset and say how many valid records follow,
/// and change nothing.
#[test]
fn damage_inside_the_active_segment_is_refused_not_cut() {
    let scratch = tempfile::tempdir().unwrap();
    let live = scratch.path().join("live");
    let store = builder(&live, 1 << 30).open().unwrap();
    let acknowledged = fill(&store, 1200);
    let killed = scratch.path().join("killed");
    copy_dir(&live, &killed);
    store.close().unwrap();

    let segment = segments(&killed).pop().unwrap();
    let frames = frames(&segment);
    assert!(frames.len() >= 1200, "{} frames", frames.len());
    let victim = frames[frames.len() / 3];
    let at = flip_inside(&segment, victim);
    let before = std::fs::read(&segment).unwrap();

    let error = builder(&killed, 1 << 30)
        .open()
        .map(|s| format!("opened with {} events", ids(&s).len()))
        .expect_err("a store damaged mid-log must not open as if its tail were torn");
    let message = error.to_string();
    let after = frames.len() - frames.len() / 3 - 1;
    assert!(
        message.contains(&segment.display().to_string())
            && message.contains(&victim.0.to_string())
            && message.contains(&format!("{after} valid records follow")),
        "byte {at} flipped; the error must name the file, the frame's offset {} and the {after} records after it: {message}",
        victim.0
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        before,
        "the refused open changed the segment"
    );
    assert_eq!(acknowledged.len(), 1200);
}

/// Finding 2: `index-doctor rebuild` on a store with a flipped byte in the
/// middle of its only segment must not cut the acknowledged events after it.
#[test]
fn rebuild_never_cuts_records_after_damage() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    let store = builder(&dir, 1 << 30).open().unwrap();
    let mut acknowledged = fill(&store, 900);
    store.close().unwrap();

    let segment = segments(&dir).pop().unwrap();
    let frames = frames(&segment);
    let victim_index = frames.len() / 2;
    flip_inside(&segment, frames[victim_index]);
    let length_before = std::fs::metadata(&segment).unwrap().len();

    let rebuilt = megalith::inspect::index::rebuild(&dir);
    let store = builder(&dir, 1 << 30).open();
    let held = store.as_ref().map(ids).unwrap_or_default();
    acknowledged.sort();
    let missing = acknowledged.iter().filter(|id| !held.contains(id)).count();
    assert!(
        rebuilt.is_err() || missing <= 1,
        "rebuild reported success ({rebuilt:?}) but {missing} acknowledged events are gone \
         (segment {length_before} -> {} bytes)",
        std::fs::metadata(&segment).unwrap().len()
    );
    assert!(
        std::fs::metadata(&segment).unwrap().len() >= length_before,
        "the segment was cut"
    );
}

/// After the refusal of finding 1, a repair keeps every acknowledged event
/// but the damaged one, moves the damaged bytes to a quarantine file, and
/// says what was lost.
#[test]
fn repair_keeps_every_valid_record_and_quarantines_the_damage() {
    let scratch = tempfile::tempdir().unwrap();
    let live = scratch.path().join("live");
    let store = builder(&live, 1 << 30).open().unwrap();
    let mut acknowledged = fill(&store, 700);
    let killed = scratch.path().join("killed");
    copy_dir(&live, &killed);
    store.close().unwrap();

    let segment = segments(&killed).pop().unwrap();
    let frames = frames(&segment);
    let victim = frames[frames.len() / 2];
    let original = std::fs::read(&segment).unwrap()[victim.0..victim.0 + victim.1].to_vec();
    flip_inside(&segment, victim);
    let damaged = std::fs::read(&segment).unwrap()[victim.0..victim.0 + victim.1].to_vec();
    assert!(builder(&killed, 1 << 30).open().is_err());

    let report = builder(&killed, 1 << 30)
        .repair()
        .expect("repair of a store with one damaged frame");
    assert_eq!(report.log_repairs.len(), 1, "{report:?}");
    let repair = &report.log_repairs[0];
    assert_eq!(
        (repair.offset, repair.len),
        (victim.0 as u64, victim.1 as u64)
    );
    let (first, last) = repair.lost_lsns.expect("lost LSNs are known");
    assert_eq!(first, last, "one record lost: {repair}");
    // The quarantine file holds the damaged bytes, as they were.
    assert_eq!(std::fs::read(&repair.quarantine).unwrap(), damaged);
    assert_ne!(damaged, original);
    // The damaged note's id is still readable in its bytes (the flip is in
    // its content), and it is the one event missing.
    let store = builder(&killed, 1 << 30).open().unwrap();
    let held = ids(&store);
    store.close().unwrap();
    acknowledged.sort();
    let missing: Vec<EventId> = acknowledged
        .iter()
        .filter(|id| !held.contains(id))
        .copied()
        .collect();
    assert_eq!(missing.len(), 1, "exactly the damaged event is gone");
    assert_eq!(repair.lost_event_ids, missing, "{repair}");
    assert_eq!(held.len(), acknowledged.len() - 1);
    common::crash::assert_doctor_clean(&killed, "after the repair");
}

/// A flipped byte in the header of a sealed segment: `index-doctor
/// rebuild` (Repair mode without the whole-log scan) met it as a
/// `Corrupt` error while opening the segment and gave up; it must rewrite
/// the header like `repair()` does and keep every event. (Found by
/// tests/damage_sweep.rs, the flip at offset 0.)
#[test]
fn rebuild_repairs_a_damaged_segment_header() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    let store = builder(&dir, 64 << 10).open().unwrap();
    let mut acknowledged = fill(&store, 900);
    store.close().unwrap();
    let segments = segments(&dir);
    assert!(segments.len() >= 3, "{} segments", segments.len());
    let middle = &segments[segments.len() / 2];
    let pristine = std::fs::read(middle).unwrap();
    let mut damaged = pristine.clone();
    damaged[0] ^= 0x01;
    std::fs::write(middle, &damaged).unwrap();

    let report = megalith::inspect::index::rebuild(&dir).expect("rebuild repairs the header");
    assert_eq!(report.log_repairs.len(), 1, "{:?}", report.log_repairs);
    let repair = &report.log_repairs[0];
    assert_eq!(
        (&repair.segment, repair.offset, repair.len),
        (middle, 0, 32)
    );
    assert_eq!(std::fs::read(&repair.quarantine).unwrap(), damaged[..32]);
    assert_eq!(
        std::fs::read(middle).unwrap(),
        pristine,
        "the header is rewritten"
    );
    let store = builder(&dir, 64 << 10).open().unwrap();
    let held = ids(&store);
    store.close().unwrap();
    acknowledged.sort();
    assert_eq!(held, acknowledged, "no event is lost with a header");
    common::crash::assert_doctor_clean(&dir, "after the rebuild");
}

/// After a repair lost an event that a surviving remove record names (the
/// first version of a profile, replaced by a second), replay skips that
/// remove record; `index-doctor check` must skip it too instead of
/// reporting that opening the store fails there. (Found by
/// tests/damage_sweep.rs.)
#[test]
fn doctor_is_clean_after_a_repair_lost_a_replaced_event() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    let store = builder(&dir, 1 << 30).open().unwrap();
    let keys = Keys::from_seed(11);
    let first = keys.sign(1_700_000_000, 0, vec![], r#"{"name":"first"}"#.into());
    let second = keys.sign(1_700_000_100, 0, vec![], r#"{"name":"second"}"#.into());
    for event in [&first, &second] {
        store.insert(std::slice::from_ref(event)).unwrap();
    }
    let mut acknowledged = fill(&store, 20);
    store.close().unwrap();
    let segment = segments(&dir).pop().unwrap();
    let frames = frames(&segment);
    // The first version, the second, the remove record naming the first.
    flip_inside(&segment, frames[0]);

    let report = builder(&dir, 1 << 30).repair().expect("repair");
    assert_eq!(report.log_repairs.len(), 1, "{:?}", report.log_repairs);
    assert_eq!(report.log_repairs[0].lost_event_ids, vec![first.id]);
    common::crash::assert_doctor_clean(&dir, "after the repair");
    let store = builder(&dir, 1 << 30).open().unwrap();
    let held = ids(&store);
    store.close().unwrap();
    acknowledged.push(second.id);
    acknowledged.sort();
    assert_eq!(held, acknowledged);
}
