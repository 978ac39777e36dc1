//! The deletion targets (docs/engine-at-scale.md, "Deletion targets"): a
//! shard's set of what its stored deletion requests and requests to vanish
//! name lets a new event skip the index seeks of its deletion checks. It
//! must never let through an event that a stored request deletes: events
//! deleted before they arrive (by id, by address, by a request to vanish)
//! are refused in the session that stored the requests, after a clean close
//! (the set saved with the store), after the saved set was lost or damaged
//! (the set filled by a scan, over more than one slice of stored requests),
//! and the same as with the set turned off.

mod common;

use std::path::Path;

use megalith::event::Keys;
use megalith::{Durability, Event, EventStore, Filter, InsertOutcome};

/// More deletion requests than one slice of the scan (4,096).
const DELETIONS: usize = 4_500;

fn open(dir: &Path, targets: bool) -> EventStore {
    EventStore::builder(dir)
        .shards(1)
        .durability(Durability::Never)
        .deletion_targets(targets)
        .open()
        .unwrap()
}

struct Case {
    /// Stored first: deletion requests and a request to vanish.
    requests: Vec<Event>,
    /// Sent after them: every one is deleted by a request.
    deleted: Vec<Event>,
    /// Sent after them too: no request names these.
    kept: Vec<Event>,
}

fn case() -> Case {
    let author = Keys::from_seed(1);
    let gone = Keys::from_seed(2);
    let other = Keys::from_seed(3);
    let base = 1_700_000_000;
    let mut requests = Vec::new();
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    for i in 0..DELETIONS as u64 {
        let note = author.sign(base + i, 1, vec![], format!("note {i}"));
        requests.push(author.sign(
            base + 10_000 + i,
            5,
            vec![vec!["e".into(), note.id.to_hex()]],
            String::new(),
        ));
        deleted.push(note);
    }
    // Addressable and replaceable events deleted by address.
    for i in 0..20u64 {
        let article = author.sign(
            base + i,
            30023,
            vec![vec!["d".into(), format!("article-{i}")]],
            "text".into(),
        );
        requests.push(author.sign(
            base + 20_000 + i,
            5,
            vec![vec![
                "a".into(),
                format!("30023:{}:article-{i}", author.pubkey().to_hex()),
            ]],
            String::new(),
        ));
        deleted.push(article);
    }
    let profile = author.sign(base, 0, vec![], "{}".into());
    requests.push(author.sign(
        base + 30_000,
        5,
        vec![vec!["a".into(), format!("0:{}:", author.pubkey().to_hex())]],
        String::new(),
    ));
    deleted.push(profile);
    // A request to vanish, and what its author wrote before it.
    requests.push(gone.sign(
        base + 40_000,
        62,
        vec![vec!["relay".into(), "ALL_RELAYS".into()]],
        String::new(),
    ));
    for i in 0..10u64 {
        deleted.push(gone.sign(base + i, 1, vec![], format!("before {i}")));
    }
    // A deletion request by someone else names nothing of the author's.
    let note = author.sign(base + 50_000, 1, vec![], "kept".into());
    requests.push(other.sign(
        base + 50_001,
        5,
        vec![vec!["e".into(), note.id.to_hex()]],
        String::new(),
    ));
    kept.push(note);
    kept.push(author.sign(
        base + 50_002,
        30023,
        vec![vec!["d".into(), "article-kept".into()]],
        "text".into(),
    ));
    kept.push(gone.sign(base + 50_003, 1, vec![], "after".into()));
    Case {
        requests,
        deleted,
        kept,
    }
}

/// Sends the deleted and the kept events to `store` and checks each
/// outcome and what the store then holds.
fn check(store: &EventStore, case: &Case, what: &str) {
    let outcomes = store.insert(&case.deleted).unwrap();
    let wrong: Vec<_> = case
        .deleted
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| **outcome != InsertOutcome::Deleted)
        .map(|(event, outcome)| (event.kind, outcome.clone()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} deleted events not refused as deleted, first {:?}",
        wrong.len(),
        case.deleted.len(),
        wrong.first()
    );
    let outcomes = store.insert(&case.kept).unwrap();
    assert!(
        outcomes.iter().all(|o| *o == InsertOutcome::Stored),
        "{what}: events no request names are stored: {outcomes:?}"
    );
    let held = store.query(&[Filter::new()]).unwrap();
    assert_eq!(
        held.len(),
        case.requests.len() + case.kept.len(),
        "{what}: the store holds the requests and the kept events only"
    );
}

fn store_requests(dir: &Path, case: &Case) {
    let store = open(dir, true);
    let outcomes = store.insert(&case.requests).unwrap();
    assert!(outcomes.iter().all(|o| *o == InsertOutcome::Stored));
    store.close().unwrap();
}

fn saved_file(dir: &Path) -> std::path::PathBuf {
    dir.join("shard-0000/index/deletions.keys")
}

#[test]
fn requests_stored_in_the_same_session_delete_what_comes_after() {
    let case = case();
    for targets in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), targets);
        store.insert(&case.requests).unwrap();
        check(&store, &case, &format!("same session, targets {targets}"));
        store.close().unwrap();
    }
}

#[test]
fn the_set_a_clean_close_saved_is_taken_at_the_next_open() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    store_requests(dir.path(), &case);
    assert!(
        saved_file(dir.path()).exists(),
        "a clean close saves the set"
    );
    let store = open(dir.path(), true);
    assert!(
        !saved_file(dir.path()).exists(),
        "the open takes the saved set and removes its file"
    );
    check(&store, &case, "saved set");
    store.close().unwrap();
    // Saved again, with what this session stored; taken again.
    assert!(saved_file(dir.path()).exists());
    let store = open(dir.path(), true);
    let outcomes = store.insert(&case.deleted[..1]).unwrap();
    assert_eq!(outcomes, vec![InsertOutcome::Deleted]);
    store.close().unwrap();
}

#[test]
fn without_the_saved_set_a_scan_fills_it() {
    let case = case();
    for damage in ["removed", "a byte flipped", "cut short"] {
        let dir = tempfile::tempdir().unwrap();
        store_requests(dir.path(), &case);
        let path = saved_file(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        match damage {
            "removed" => bytes.clear(),
            "a byte flipped" => {
                let at = bytes.len() / 2;
                bytes[at] ^= 0x10;
            }
            _ => bytes.truncate(bytes.len() - 9),
        }
        if bytes.is_empty() {
            std::fs::remove_file(&path).unwrap();
        } else {
            std::fs::write(&path, &bytes).unwrap();
        }
        let store = open(dir.path(), true);
        check(&store, &case, &format!("saved set {damage}"));
        store.close().unwrap();
    }
}

#[test]
fn turned_off_the_checks_seek_and_answer_the_same() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    store_requests(dir.path(), &case);
    let store = open(dir.path(), false);
    assert!(
        !saved_file(dir.path()).exists(),
        "a saved set is removed when the set is off (it would be stale)"
    );
    check(&store, &case, "targets off");
    store.close().unwrap();
    assert!(!saved_file(dir.path()).exists(), "nothing saved when off");
}

#[test]
fn a_set_saved_for_another_log_is_not_taken() {
    let case = case();
    let (first, later) = case.requests.split_at(DELETIONS / 2);
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true);
    store.insert(first).unwrap();
    store.close().unwrap();
    let path = saved_file(dir.path());
    let old = std::fs::read(&path).unwrap();
    // The later requests go into the log after that save; the set saved
    // then lacks what they name, so the open must not take it.
    let store = open(dir.path(), true);
    store.insert(later).unwrap();
    store.close().unwrap();
    std::fs::write(&path, &old).unwrap();
    let store = open(dir.path(), true);
    check(&store, &case, "a set saved before the later requests");
    store.close().unwrap();
}
