//! Damage inside a log is not a torn tail: a flipped byte with acknowledged
//! records after it must never make opening the store, or rebuilding its
//! indexes, cut those records away.

use std::path::{Path, PathBuf};

use common::stored_ids;
use megalith::inspect::log::{SegmentWalk, WalkItem};
use megalith::{Durability, EventId, EventStore, Filter, Keys, SegmentId};

#[path = "../../tests/common/mod.rs"]
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

/// Finding 1: one flipped byte mid-log in the active segment of a killed
/// store, with thousands of acknowledged records after it. Opening must
/// refuse, name the file and offset and say how many valid records follow,
/// and change nothing.
#[test]
fn damage_inside_the_active_segment_is_refused_not_cut() {
    let scratch = tempfile::tempdir().unwrap();
    let live = scratch.path().join("live");
    let store = builder(&live, 4 << 20).open().unwrap();
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

    let error = builder(&killed, 4 << 20)
        .open()
        .map(|s| format!("opened with {} events", stored_ids(&s).len()))
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
    let store = builder(&dir, 4 << 20).open().unwrap();
    let mut acknowledged = fill(&store, 900);
    store.close().unwrap();

    let segment = segments(&dir).pop().unwrap();
    let frames = frames(&segment);
    let victim_index = frames.len() / 2;
    flip_inside(&segment, frames[victim_index]);
    let length_before = std::fs::metadata(&segment).unwrap().len();

    let rebuilt = megalith::inspect::index::rebuild(&dir);
    let store = builder(&dir, 4 << 20).open();
    let held = store.as_ref().map(stored_ids).unwrap_or_default();
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
    let store = builder(&live, 4 << 20).open().unwrap();
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
    assert!(builder(&killed, 4 << 20).open().is_err());

    let report = builder(&killed, 4 << 20)
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
    let store = builder(&killed, 4 << 20).open().unwrap();
    let held = stored_ids(&store);
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

/// `index-doctor check` says what the next open does, from the open's own
/// code: refuses damage (a problem, with how to repair it), cuts a torn tail
/// (a note). Before, it promised a rebuild and the open refused.
#[test]
fn index_doctor_check_predicts_the_next_open() {
    let scratch = tempfile::tempdir().unwrap();
    let live = scratch.path().join("live");
    let store = builder(&live, 4 << 20).open().unwrap();
    fill(&store, 300);
    let damaged = scratch.path().join("damaged");
    copy_dir(&live, &damaged);
    store.close().unwrap();
    let torn = scratch.path().join("torn");
    copy_dir(&damaged, &torn);

    // Damage: a flip in the middle, many acknowledged records after it.
    let segment = segments(&damaged).pop().unwrap();
    let frames = frames(&segment);
    let victim = frames[frames.len() / 2];
    flip_inside(&segment, victim);
    let report = megalith::inspect::index::check_store(&damaged).unwrap();
    let problem = report
        .problems
        .iter()
        .find(|p| p.offset == Some(victim.0 as u64))
        .unwrap_or_else(|| panic!("no problem at the damaged frame: {:?}", report.problems));
    assert!(
        problem.reason.contains("refuses") && problem.reason.contains("megalith repair"),
        "{}",
        problem.reason
    );
    assert!(builder(&damaged, 4 << 20).open().is_err());

    // A torn tail: the last record's bytes cut short, as a crash leaves them.
    let segment = segments(&torn).pop().unwrap();
    let last = *frames.last().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    for b in &mut bytes[last.0 + last.1 / 2..last.0 + last.1] {
        *b = 0;
    }
    std::fs::write(&segment, &bytes).unwrap();
    let report = megalith::inspect::index::check_store(&torn).unwrap();
    let notes: Vec<&String> = report.logs.iter().flat_map(|l| &l.notes).collect();
    assert!(
        notes.iter().any(|n| n.contains("cuts this torn tail")),
        "{notes:?} {:?}",
        report.problems
    );
    let store = builder(&torn, 4 << 20).open().unwrap();
    assert_eq!(store.recovery_report().tail_repairs.len(), 1);
    assert_eq!(stored_ids(&store).len(), 299);
    store.close().unwrap();
}

/// `megalith repair --json` on a damaged store, then `megalith count`.
#[test]
fn the_repair_command_reports_what_it_did() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    let store = builder(&dir, 64 << 10).open().unwrap();
    fill(&store, 600);
    store.close().unwrap();
    // A sealed middle segment.
    let all = segments(&dir);
    assert!(all.len() >= 3, "{} segments", all.len());
    let middle = &all[all.len() / 2];
    let frames = frames(middle);
    flip_inside(middle, frames[frames.len() / 2]);

    let megalith = env!("CARGO_BIN_EXE_megalith");
    let output = std::process::Command::new(megalith)
        .args(["repair", "--json", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["damaged_ranges"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(report["records_lost"], 1, "{report}");
    let output = std::process::Command::new(megalith)
        .args(["count", "--data"])
        .arg(&dir)
        .arg("{}")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "599");
    // Nothing left to repair.
    let output = std::process::Command::new(megalith)
        .args(["repair", "--json", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["damaged_ranges"].as_array().unwrap().len(),
        0,
        "{report}"
    );
}

/// A sealed segment whose tail became a hole (a file system that lost the
/// end of a file): the hole is never read through the map, and it is damage,
/// not the segment's end.
#[test]
fn a_hole_at_the_end_of_a_sealed_segment_is_damage() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    let store = builder(&dir, 64 << 10).open().unwrap();
    let acknowledged = fill(&store, 600);
    store.close().unwrap();
    let all = segments(&dir);
    let middle = &all[all.len() / 2];
    let frames = frames(middle);
    let len = std::fs::metadata(middle).unwrap().len();
    // The last 4 KiB and more become a hole: cut and extended again.
    let cut = frames[frames.len() - 3].0 as u64;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(middle)
        .unwrap();
    file.set_len(cut).unwrap();
    file.set_len(len).unwrap();
    drop(file);
    let lost = frames.iter().filter(|f| f.0 as u64 >= cut).count();

    let error = builder(&dir, 64 << 10)
        .scan_whole_log(true)
        .open()
        .map(|_| ())
        .expect_err("the hole is refused as damage")
        .to_string();
    assert!(
        error.contains(&middle.display().to_string()) && error.contains(&cut.to_string()),
        "{error}"
    );
    let report = builder(&dir, 64 << 10).repair().unwrap();
    assert_eq!(report.log_repairs.len(), 1, "{report:?}");
    let repair = &report.log_repairs[0];
    assert_eq!((repair.offset, repair.offset + repair.len), (cut, len));
    let store = builder(&dir, 64 << 10).open().unwrap();
    assert_eq!(stored_ids(&store).len(), acknowledged.len() - lost);
    store.close().unwrap();
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
    let held = stored_ids(&store);
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
    let held = stored_ids(&store);
    store.close().unwrap();
    acknowledged.push(second.id);
    acknowledged.sort();
    assert_eq!(held, acknowledged);
}

/// Zeroes the frames `first..=last` of a segment, as a lost sector would.
fn zero_frames(path: &Path, first: (usize, usize), last: (usize, usize)) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[first.0..last.0 + last.1].fill(0);
    std::fs::write(path, bytes).unwrap();
}

/// The record type of each valid frame of a segment.
fn frame_types(path: &Path) -> Vec<megalith::inspect::log::RecordType> {
    let bytes = std::fs::read(path).unwrap();
    let id: u32 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    SegmentWalk::new(&bytes, Some(SegmentId(id)))
        .filter_map(|item| match item {
            WalkItem::Record { record, .. } => Some(record.record_type),
            _ => None,
        })
        .collect()
}

/// A lost sector takes a second version of a relay list together with the
/// remove record that replaced the first; a third version, stored later,
/// had replaced the second. The log that survives says the first is live
/// (nothing removes it), but the third is newer: a repair must leave one
/// version, the third, not two. (Found by the sector trial of
/// tests/damage_sweep.rs.)
#[test]
fn a_repair_that_loses_a_removal_keeps_one_version_per_address() {
    use megalith::inspect::log::RecordType;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    let store = builder(&dir, 1 << 30).open().unwrap();
    let keys = Keys::from_seed(12);
    let list = |at: u64, relay: &str| {
        keys.sign(
            at,
            10002,
            vec![vec!["r".into(), relay.into()]],
            String::new(),
        )
    };
    let (first, second, third) = (
        list(1_700_000_000, "wss://one.example"),
        list(1_700_000_100, "wss://two.example"),
        list(1_700_000_200, "wss://three.example"),
    );
    store.insert(std::slice::from_ref(&first)).unwrap();
    store.insert(std::slice::from_ref(&second)).unwrap();
    let mut acknowledged = fill(&store, 3);
    store.insert(std::slice::from_ref(&third)).unwrap();
    store.close().unwrap();
    let segment = segments(&dir).pop().unwrap();
    let frames = frames(&segment);
    let types = frame_types(&segment);
    // first; second, remove first; 3 notes; third, remove second.
    assert_eq!(
        types[1..3],
        [RecordType::Event, RecordType::Remove],
        "{types:?}"
    );
    zero_frames(&segment, frames[1], frames[2]);

    let report = builder(&dir, 1 << 30).repair().expect("repair");
    assert_eq!(report.log_repairs.len(), 1, "{:?}", report.log_repairs);
    common::crash::assert_doctor_clean(&dir, "after the repair");
    let store = builder(&dir, 1 << 30).open().unwrap();
    let lists: Vec<EventId> = store
        .query(&[Filter::new().kinds([10002])])
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let held = stored_ids(&store);
    store.close().unwrap();
    assert_eq!(
        lists,
        vec![third.id],
        "first {}, third {}",
        first.id,
        third.id
    );
    acknowledged.push(third.id);
    acknowledged.sort();
    assert_eq!(held, acknowledged);
}

/// A lost sector takes a deletion together with its remove record; a second
/// deletion of the same note, stored later, survives (it wrote no remove
/// record: the note was gone by then). A repair must not serve the note.
#[test]
fn a_repair_that_loses_a_deletion_keeps_what_a_later_deletion_names() {
    use megalith::inspect::log::RecordType;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    let store = builder(&dir, 1 << 30).open().unwrap();
    let keys = Keys::from_seed(13);
    let note = keys.sign(1_700_000_000, 1, vec![], "regretted".into());
    let deletion = |at: u64| {
        keys.sign(
            at,
            5,
            vec![vec!["e".into(), note.id.to_hex()]],
            String::new(),
        )
    };
    let (once, again) = (deletion(1_700_000_100), deletion(1_700_000_200));
    store.insert(std::slice::from_ref(&note)).unwrap();
    store.insert(std::slice::from_ref(&once)).unwrap();
    let mut acknowledged = fill(&store, 3);
    store.insert(std::slice::from_ref(&again)).unwrap();
    store.close().unwrap();
    let segment = segments(&dir).pop().unwrap();
    let frames = frames(&segment);
    let types = frame_types(&segment);
    // note; deletion, remove note; 3 notes; deletion.
    assert_eq!(
        types[1..3],
        [RecordType::Event, RecordType::Remove],
        "{types:?}"
    );
    assert_eq!(types.len(), 7, "{types:?}");
    zero_frames(&segment, frames[1], frames[2]);

    let report = builder(&dir, 1 << 30).repair().expect("repair");
    assert_eq!(report.log_repairs.len(), 1, "{:?}", report.log_repairs);
    common::crash::assert_doctor_clean(&dir, "after the repair");
    let store = builder(&dir, 1 << 30).open().unwrap();
    let held = stored_ids(&store);
    store.close().unwrap();
    acknowledged.push(again.id);
    acknowledged.sort();
    assert_eq!(held, acknowledged, "the deleted note is {}", note.id);
}
