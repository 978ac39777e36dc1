//! Every command of every tool stops quietly when its standard output is a
//! pipe nobody reads any more (`megalith query ... | head -1`): no panic
//! ("failed printing to stdout: Broken pipe"), the status it would have had
//! otherwise, and the store closed cleanly. A pipe whose read end is closed
//! before the command starts fails the very first write, so none of this
//! depends on timing.
#![cfg(unix)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use megalith::{Durability, EventStore};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `program` with standard output on a pipe whose read end is already
/// closed, and `stdin` on standard input.
fn closed_stdout(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The child may stop reading early; a refused write is fine here.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

fn assert_quiet_stop(out: &Output, expected: i32, what: &str) {
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{what}: {stderr}");
    assert_eq!(out.status.code(), Some(expected), "{what}: {stderr}");
}

/// The store was closed cleanly by the command that used it.
fn assert_closed_cleanly(data: &Path, what: &str) {
    let store = EventStore::open(data).unwrap();
    assert!(
        !store.recovery_report().unclean_shutdown,
        "{what} left the store unclean"
    );
    store.close().unwrap();
}

/// The ids a store in `data` holds.
fn ids_in(data: &Path) -> Vec<megalith::EventId> {
    let store = EventStore::open(data).unwrap();
    let mut ids: Vec<_> = store
        .query(&[megalith::Filter::new()])
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    store.close().unwrap();
    ids.sort();
    ids
}

/// The ids a new store holds after inserting `events` in one batch.
fn expected_ids(dir: &Path, events: &[megalith::Event]) -> Vec<megalith::EventId> {
    let data = dir.join("reference");
    let store = EventStore::open(&data).unwrap();
    store.insert(events).unwrap();
    store.close().unwrap();
    ids_in(&data)
}

/// A closed store holding real events.
fn make_store(data: &Path) {
    let store = EventStore::builder(data)
        .shards(2)
        .durability(Durability::Never)
        .open()
        .unwrap();
    let events: Vec<_> = common::real_events().into_iter().map(|(_, e)| e).collect();
    store.insert(&events).unwrap();
    store.close().unwrap();
}

#[test]
fn megalith_commands_stop_quietly_on_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    make_store(&data);
    let data = data.to_str().unwrap();
    let megalith = env!("CARGO_BIN_EXE_megalith");
    for args in [
        vec!["count", "--data", data, "{}"],
        vec!["count", "--data", data, "--json", "{\"kinds\":[1]}"],
        vec!["query", "--data", data, "{}"],
        vec!["stats", "--data", data],
        vec!["stats", "--data", data, "--json"],
        vec!["export", "--data", data],
        vec!["changes", "--data", data],
    ] {
        let what = args.join(" ");
        let out = closed_stdout(megalith, &args, b"");
        assert_quiet_stop(&out, 0, &what);
        assert_closed_cleanly(Path::new(data), &what);
    }
    for args in [
        vec!["generate", "--count", "3000", "--quiet"],
        vec!["generate", "--count", "10"],
        vec!["--help"],
        vec!["import", "--help"],
    ] {
        let out = closed_stdout(megalith, &args, b"");
        assert_quiet_stop(&out, 0, &args.join(" "));
    }
}

#[test]
fn import_stores_everything_when_nobody_reads_its_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data_str = data.to_str().unwrap();
    let events = common::real_events();
    let mut input = String::new();
    for (json, _) in &events[..50] {
        input.push_str(json);
        input.push('\n');
    }
    input.push_str("null\n");
    let megalith = env!("CARGO_BIN_EXE_megalith");
    let out = closed_stdout(
        megalith,
        &["import", "--data", data_str, "--json", "-"],
        input.as_bytes(),
    );
    assert_quiet_stop(&out, 0, "import --json");
    assert!(
        text(&out.stderr).contains("-:51: "),
        "{}",
        text(&out.stderr)
    );
    assert_closed_cleanly(&data, "import --json");
    let imported: Vec<_> = events[..50].iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(ids_in(&data), expected_ids(dir.path(), &imported));
}

#[test]
fn import_keeps_going_when_nobody_reads_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data_str = data.to_str().unwrap();
    let events = common::real_events();
    let mut input = String::new();
    for (json, _) in &events[..30] {
        input.push_str(json);
        input.push_str("\n{\"id\":\"nope\"}\n");
    }
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(["import", "--data", data_str, "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(writer)
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["invalid"], 30, "{summary}");
    assert_closed_cleanly(&data, "import with a closed stderr");
    let imported: Vec<_> = events[..30].iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(ids_in(&data), expected_ids(dir.path(), &imported));
}

#[test]
fn reading_one_line_then_closing_the_pipe_is_a_clean_stop() {
    // `megalith query ... | head -1`: the reader goes away after one line,
    // at whatever point the command has reached.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    make_store(&data);
    let data = data.to_str().unwrap();
    for args in [
        vec!["query", "--data", data, "{}"],
        vec!["generate", "--count", "20000", "--quiet"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_megalith"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.starts_with('{'), "{first}");
        let out = child.wait_with_output().unwrap();
        assert_quiet_stop(&out, 0, &args.join(" "));
    }
    assert_closed_cleanly(Path::new(data), "query | head -1");
}

#[test]
fn index_doctor_stops_quietly_on_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    make_store(&data);
    let data = data.to_str().unwrap();
    let doctor = env!("CARGO_BIN_EXE_index-doctor");
    for args in [
        vec!["check", "--data", data],
        vec!["check", "--data", data, "--json"],
        vec!["rebuild", "--data", data],
        vec!["--help"],
    ] {
        let what = args.join(" ");
        let out = closed_stdout(doctor, &args, b"");
        assert_quiet_stop(&out, 0, &what);
    }
    assert_closed_cleanly(Path::new(data), "index-doctor rebuild");
    let out = Command::new(doctor)
        .args(["check", "--data", data])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn wal_hexdump_stops_quietly_on_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    make_store(&data);
    let data = data.to_str().unwrap();
    let hexdump = env!("CARGO_BIN_EXE_wal-hexdump");
    for args in [
        vec!["--data", data],
        vec!["--data", data, "--json"],
        vec!["--data", data, "--hex"],
    ] {
        let out = closed_stdout(hexdump, &args, b"");
        assert_quiet_stop(&out, 0, &args.join(" "));
    }
}

#[test]
fn batchtest_stops_quietly_on_a_closed_stdout() {
    let batchtest = env!("CARGO_BIN_EXE_batchtest");
    for json in [false, true] {
        let mut args = vec![
            "--count",
            "300",
            "--batch",
            "100",
            "--verify",
            "26",
            "--threads",
            "1",
            "--shards",
            "1",
            "--authors",
            "30",
            "--durability",
            "never",
        ];
        if json {
            args.push("--json");
        }
        let out = closed_stdout(batchtest, &args, b"");
        assert_quiet_stop(&out, 0, &args.join(" "));
    }
}
