//! `index-doctor`: a healthy store of real events (with replaced and deleted
//! ones) checks clean, also when its indexes lag the log; a flipped byte in
//! a tree page and a deleted index file are reported by file and page; a
//! locked or missing store cannot be checked; `rebuild` makes a damaged store
//! check clean again with the same query results.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use megalith::inspect::index::{MetaInfo, PAGE_SIZE, decode_meta_page, encode_meta_page};
use megalith::{Event, EventStore, Filter, Keys};

fn doctor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_index-doctor"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check(data: &Path) -> Output {
    doctor(&["check", "--data", data.to_str().unwrap()])
}

fn check_json(data: &Path) -> (Option<i32>, serde_json::Value) {
    let out = doctor(&["check", "--json", "--data", data.to_str().unwrap()]);
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), doc)
}

/// Our own events on top of the real ones: a profile replaced twice and a
/// note deleted by its author (NIP-09), so the log has remove records.
fn own_events() -> (Vec<Event>, Vec<Event>) {
    let keys = Keys::from_seed(41);
    let t = 1_700_000_000;
    let note = keys.sign(
        t,
        1,
        vec![vec!["t".into(), "nostr".into()]],
        "doomed".to_string(),
    );
    let first = vec![
        keys.sign(t, 0, vec![], "{\"name\":\"one\"}".to_string()),
        note.clone(),
        keys.sign(t + 1, 1, vec![], "kept".to_string()),
    ];
    let later = vec![
        keys.sign(t + 10, 0, vec![], "{\"name\":\"two\"}".to_string()),
        keys.sign(t + 20, 0, vec![], "{\"name\":\"three\"}".to_string()),
        keys.sign(
            t + 30,
            5,
            vec![vec!["e".into(), note.id.to_hex()]],
            String::new(),
        ),
    ];
    (first, later)
}

fn filters() -> Vec<Vec<Filter>> {
    let keys = Keys::from_seed(41);
    vec![
        vec![Filter::new()],
        vec![Filter::new().kinds([0])],
        vec![Filter::new().kinds([1]).limit(30)],
        vec![Filter::new().authors([keys.pubkey()])],
        vec![Filter::new().tag('t', ["nostr".to_string()])],
        vec![Filter::new().kinds([7]).limit(10)],
    ]
}

fn answers(data: &Path) -> Vec<Vec<Event>> {
    let store = EventStore::builder(data)
        .create_if_missing(false)
        .open()
        .unwrap();
    let out = filters().iter().map(|f| store.query(f).unwrap()).collect();
    store.close().unwrap();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A closed store holding the real events and ours; returns its directory.
fn healthy_store(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("store");
    let store = EventStore::builder(&data)
        .shards(1) // one shard: the tests work on shard 0's files
        .search(true) // every index, term_time included
        .checkpoint_dirty_nodes(64)
        .open()
        .unwrap();
    let real: Vec<Event> = common::real_events().into_iter().map(|(_, e)| e).collect();
    for chunk in real.chunks(100) {
        store.insert(chunk).unwrap();
    }
    // Into the trees; what follows stays in the random-order indexes'
    // levels, which the close saves beside them.
    store.checkpoint().unwrap();
    let (first, later) = own_events();
    store.insert(&first).unwrap();
    store.insert(&later).unwrap();
    store.close().unwrap();
    data
}

/// The newest valid meta page of an index file, with its slot.
fn newest_meta_slot(bytes: &[u8]) -> (u64, MetaInfo) {
    (0..2u64)
        .filter_map(|slot| {
            let start = slot as usize * PAGE_SIZE;
            Some((
                slot,
                decode_meta_page(&bytes[start..start + PAGE_SIZE], slot).ok()?,
            ))
        })
        .max_by_key(|(_, m)| m.generation)
        .unwrap()
}

fn newest_meta(bytes: &[u8]) -> MetaInfo {
    newest_meta_slot(bytes).1
}

/// The page id of the root of `file`'s tree.
fn root_page(file: &Path) -> u64 {
    newest_meta(&fs::read(file).unwrap()).root.unwrap()
}

#[test]
fn a_healthy_store_checks_clean_and_damage_is_reported_then_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let data = healthy_store(dir.path());
    let expected = answers(&data);
    // Ours: the latest profile, the kept note and the deletion; the older
    // profiles were replaced and the doomed note deleted.
    let contents: Vec<&str> = expected[3].iter().map(|e| e.content.as_str()).collect();
    assert_eq!(contents.len(), 3, "{contents:?}");
    assert!(contents.contains(&"{\"name\":\"three\"}") && contents.contains(&"kept"));

    let out = check(&data);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("clean"), "{}", text(&out.stdout));
    let (code, doc) = check_json(&data);
    assert_eq!(code, Some(0));
    assert_eq!(doc["clean"], true, "{doc}");
    assert!(
        doc["logs"][0]["remove_records"].as_u64().unwrap() >= 3,
        "{doc}"
    );
    let indexes = doc["indexes"].as_array().unwrap();
    assert_eq!(indexes.len(), 8);
    let terms = indexes.iter().find(|i| i["index"] == "term_time").unwrap();
    assert!(terms["entries"].as_u64().unwrap() > 0, "{terms}");
    for index in indexes {
        assert_eq!(index["pending_replay"], 0, "{index}");
        // The tree and the level the close saved beside it (if any) hold
        // what the log's live events need.
        let held =
            index["entries"].as_i64().unwrap() + index["saved_level_change"].as_i64().unwrap_or(0);
        assert_eq!(Some(held), index["expected_entries"].as_i64(), "{index}");
    }
    assert!(
        indexes
            .iter()
            .any(|i| i["saved_level_entries"].as_u64() > Some(0)),
        "the close saved levels: {doc}"
    );
    let primary = indexes.iter().find(|i| i["index"] == "primary").unwrap();
    assert_eq!(
        primary["entries"].as_i64().unwrap() + primary["saved_level_change"].as_i64().unwrap(),
        doc["logs"][0]["live_events"].as_i64().unwrap()
    );

    // A flipped byte in the root page of author_time.idx.
    let flipped = dir.path().join("flipped");
    copy_dir(&data, &flipped);
    let file = flipped.join("shard-0000/index/author_time.idx");
    let root = root_page(&file);
    let mut bytes = fs::read(&file).unwrap();
    bytes[root as usize * PAGE_SIZE + 100] ^= 0x20;
    fs::write(&file, &bytes).unwrap();
    let out = check(&flipped);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.contains("author_time.idx")
            && l.contains(&format!("page {root} "))
            && l.contains("checksum")),
        "{stdout}"
    );
    let (code, doc) = check_json(&flipped);
    assert_eq!(code, Some(1));
    assert!(
        doc["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["index"] == "author_time" && p["page"] == root),
        "{doc}"
    );

    // A deleted index file.
    let deleted = dir.path().join("deleted");
    copy_dir(&data, &deleted);
    fs::remove_file(deleted.join("shard-0000/index/kind_time.idx")).unwrap();
    let out = check(&deleted);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("kind_time.idx") && l.contains("missing")),
        "{stdout}"
    );

    // Rebuild both: clean again, same answers.
    for damaged in [&flipped, &deleted] {
        let out = doctor(&["rebuild", "--data", damaged.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("log records"),
            "{}",
            text(&out.stdout)
        );
        let out = check(damaged);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
        assert_eq!(answers(damaged), expected);
        let leftovers: Vec<_> = fs::read_dir(damaged.join("shard-0000"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("index.old"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn indexes_that_lag_the_log_are_compared_as_of_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let keys = Keys::from_seed(7);
    // One shard: the test works on shard 0's files.
    let store = EventStore::builder(&data).shards(1).open().unwrap();
    let notes: Vec<Event> = (0..200)
        .map(|i| keys.sign(1_700_000_000 + i, 1, vec![], format!("note {i}")))
        .collect();
    store.insert(&notes).unwrap();
    store.close().unwrap();
    // Keep the indexes as they are now ...
    let saved = dir.path().join("saved-index");
    copy_dir(&data.join("shard-0000/index"), &saved);
    // ... while the log goes on: a replacement, a deletion, more notes.
    let store = EventStore::open(&data).unwrap();
    store
        .insert(&[
            keys.sign(1_700_001_000, 0, vec![], "{}".to_string()),
            keys.sign(1_700_001_001, 0, vec![], "{\"name\":\"x\"}".to_string()),
            keys.sign(
                1_700_001_002,
                5,
                vec![vec!["e".into(), notes[3].id.to_hex()]],
                String::new(),
            ),
            keys.sign(1_700_001_003, 1, vec![], "late".to_string()),
        ])
        .unwrap();
    store.close().unwrap();
    let expected = {
        let store = EventStore::open(&data).unwrap();
        let all = store.query(&[Filter::new()]).unwrap();
        store.close().unwrap();
        all
    };
    // Put the older indexes back: as after a crash before their checkpoint.
    fs::remove_dir_all(data.join("shard-0000/index")).unwrap();
    copy_dir(&saved, &data.join("shard-0000/index"));
    let (code, doc) = check_json(&data);
    assert_eq!(code, Some(0), "{doc}");
    for index in doc["indexes"].as_array().unwrap() {
        // Four events and two removes (the replaced profile, the note).
        assert_eq!(index["pending_replay"], 6, "{index}");
    }
    let out = check(&data);
    assert!(
        text(&out.stdout).contains("pending"),
        "{}",
        text(&out.stdout)
    );
    // An index whose meta claims the newer checkpoint without holding its
    // changes: the two late notes are missing, the deleted note is still there.
    let file = data.join("shard-0000/index/kind_time.idx");
    let newer_meta = {
        let tmp = dir.path().join("later");
        copy_dir(&data, &tmp);
        let store = EventStore::open(&tmp).unwrap();
        store.close().unwrap();
        let bytes = fs::read(tmp.join("shard-0000/index/kind_time.idx")).unwrap();
        newest_meta(&bytes)
    };
    let mut bytes = fs::read(&file).unwrap();
    let (slot, mut meta) = newest_meta_slot(&bytes);
    meta.checkpoint_lsn = newer_meta.checkpoint_lsn;
    meta.checkpoint_position = newer_meta.checkpoint_position;
    let start = slot as usize * PAGE_SIZE;
    bytes[start..start + PAGE_SIZE].copy_from_slice(&encode_meta_page(&meta, slot));
    let pristine = fs::read(&file).unwrap();
    fs::write(&file, &bytes).unwrap();
    let (code, doc) = check_json(&data);
    assert_eq!(code, Some(1), "{doc}");
    let problems = doc["problems"].as_array().unwrap();
    let about = |id: &megalith::EventId, needle: &str| {
        problems.iter().any(|p| {
            p["index"] == "kind_time"
                && p["event_id"] == id.to_hex()
                && p["reason"].as_str().unwrap().contains(needle)
        })
    };
    assert!(about(&notes[3].id, "removed"), "{doc}");
    assert_eq!(
        problems
            .iter()
            .filter(|p| p["reason"].as_str().unwrap().contains("no entry"))
            .count(),
        3,
        "the late note, the newest profile and the deletion: {doc}"
    );
    fs::write(&file, &pristine).unwrap();

    // Opening replays them; then nothing is pending.
    let store = EventStore::open(&data).unwrap();
    assert_eq!(store.query(&[Filter::new()]).unwrap(), expected);
    store.close().unwrap();
    let (code, doc) = check_json(&data);
    assert_eq!(code, Some(0), "{doc}");
    assert!(
        doc["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["pending_replay"] == 0),
        "{doc}"
    );
}

#[test]
fn a_missing_or_open_store_cannot_be_checked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    for args in [vec!["check"], vec!["check", "--json"], vec!["rebuild"]] {
        let mut args = args.clone();
        args.extend(["--data", missing.to_str().unwrap()]);
        let out = doctor(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains("no store in"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(!missing.exists(), "checking never creates a store");
    let data = dir.path().join("store");
    let store = EventStore::open(&data).unwrap();
    for command in ["check", "rebuild"] {
        let out = doctor(&[command, "--data", data.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(
            text(&out.stderr).contains("open in another process"),
            "{}",
            text(&out.stderr)
        );
    }
    store.close().unwrap();
    let out = check(&data);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn help_explains_every_flag_and_its_default() {
    let out = doctor(&["check", "--help"]);
    let help = text(&out.stdout);
    assert!(out.status.success());
    for needle in ["--data", "./megalith-data", "--json", "default"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let out = doctor(&["--help"]);
    let help = text(&out.stdout);
    for needle in ["check", "rebuild", "Exit status"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

/// On a read-only file system (a tmpfs remounted read-only; skipped where
/// this process may not mount one): `index-doctor check`, `megalith
/// changes` and `megalith export` read a store, writing nothing.
#[test]
fn a_store_on_a_read_only_file_system_can_be_checked_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let store = EventStore::open(&data).unwrap();
    let events: Vec<_> = common::real_events().into_iter().map(|(_, e)| e).collect();
    store.insert(&events).unwrap();
    let feed = store
        .changes(
            &megalith::ChangePosition::start(store.shard_count()),
            usize::MAX,
        )
        .unwrap()
        .len();
    let held = store.query(&[Filter::new()]).unwrap().len();
    store.close().unwrap();
    let mount = dir.path().join("ro");
    std::fs::create_dir(&mount).unwrap();
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap()
    };
    let mnt = mount.to_str().unwrap();
    if !run("mount", &["-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt])
        .status
        .success()
    {
        eprintln!("skipped: this process cannot mount a tmpfs");
        return;
    }
    struct Unmount<'a>(&'a str);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt);
    let copied = run("cp", &["-a", data.to_str().unwrap(), mnt]);
    assert!(copied.status.success());
    assert!(run("mount", &["-o", "remount,ro", mnt]).status.success());
    let ro = mount.join("store");
    let ro = ro.to_str().unwrap();
    assert!(
        std::fs::write(mount.join("probe"), b"x").is_err(),
        "read-only"
    );

    let out = check(std::path::Path::new(ro));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let megalith = env!("CARGO_BIN_EXE_megalith");
    let changes = run(megalith, &["changes", "--data", ro]);
    assert!(changes.status.success(), "{}", text(&changes.stderr));
    assert_eq!(text(&changes.stdout).lines().count(), feed);
    let export = run(megalith, &["export", "--data", ro]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert_eq!(text(&export.stdout).lines().count(), held);
}
