//! Damage in the log is reported with file and offset, never silently
//! skipped; only a segment whose header never reached the disk is removed.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use megalith::{Durability, EventStore, Filter, Keys};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("shard-0000/log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// A closed store whose log spans several segments.
fn store_with_segments(dir: &Path) -> u64 {
    let store = EventStore::builder(dir)
        .shards(1) // one shard: the test works on shard 0's files
        .durability(Durability::Never)
        .segment_size(64 << 10)
        .open()
        .unwrap();
    let keys = Keys::from_seed(5);
    let events: Vec<_> = (0..300u64)
        .map(|i| keys.sign(1_700_000_000 + i, 1, vec![], "x".repeat(800)))
        .collect();
    for chunk in events.chunks(20) {
        store.insert(chunk).unwrap();
    }
    store.close().unwrap();
    assert!(segments(dir).len() >= 3);
    events.len() as u64
}

#[test]
fn zeros_inside_a_sealed_segment_are_reported_when_the_log_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    store_with_segments(dir.path());
    let first = &segments(dir.path())[0];
    let file = fs::OpenOptions::new().write(true).open(first).unwrap();
    file.write_all_at(&[0u8; 512], 20_000).unwrap();
    drop(file);
    // Force a full replay: the indexes are rebuilt from the log.
    fs::remove_dir_all(dir.path().join("shard-0000/index")).unwrap();
    let error = EventStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("damaged") && error.contains(&first.display().to_string()),
        "{error}"
    );
}

#[test]
fn a_last_segment_without_a_header_is_removed_but_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let events = store_with_segments(dir.path());
    // A crash right after creating the next segment: an empty file.
    let last = segments(dir.path()).last().unwrap().clone();
    let name = last.file_name().unwrap().to_str().unwrap();
    let next_id: u64 = name.trim_end_matches(".seg").parse::<u64>().unwrap() + 1;
    let orphan = last.with_file_name(format!("{next_id:020}.seg"));
    fs::write(&orphan, b"").unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    assert!(!orphan.exists());
    assert!(
        store
            .recovery_report()
            .tail_repairs
            .iter()
            .any(|r| r.contains("creation never finished"))
    );
    assert_eq!(store.count(&[Filter::new()]).unwrap(), events);
    store.close().unwrap();

    // A header with a flipped byte is damage, not an unfinished rotation:
    // the file stays, and opening says what is wrong.
    let last = segments(dir.path()).last().unwrap().clone();
    let file = fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.write_all_at(&[0x55], 3).unwrap();
    drop(file);
    let error = EventStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("magic") || error.contains("checksum"),
        "{error}"
    );
    assert!(last.exists());
}
