//! The `wal-hexdump` tool on a store written by the library: it lists every
//! record (LSN, type, event fields) in order, and on damaged copies (a
//! flipped byte, a truncated file) reports the offset where the segment goes
//! wrong and exits 1; it exits 2 when it cannot run.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use megalith::{Durability, EventStore, InsertOutcome};
use serde_json::Value;

fn hexdump(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wal-hexdump"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A closed store holding real events; returns the ids of the events that
/// reached the log, in insert order.
fn make_store(dir: &Path) -> Vec<String> {
    let store = EventStore::builder(dir)
        .shards(1) // one shard: the test works on shard 0's files
        .durability(Durability::Never)
        .segment_size(64 << 10)
        .open()
        .unwrap();
    let events: Vec<_> = common::real_events()
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.content.len() < 400 && e.tags.len() < 20)
        .take(40)
        .collect();
    let mut logged = Vec::new();
    for chunk in events.chunks(8) {
        let outcomes = store.insert(chunk).unwrap();
        for (event, outcome) in chunk.iter().zip(outcomes) {
            if matches!(
                outcome,
                InsertOutcome::Stored | InsertOutcome::Replaced { .. }
            ) {
                logged.push(event.id.to_hex());
            }
        }
    }
    store.close().unwrap();
    assert!(logged.len() >= 20, "only {} events stored", logged.len());
    logged
}

fn segment_path(data: &Path) -> PathBuf {
    data.join("shard-0000/log/00000000000000000001.seg")
}

/// `(offset, lsn)` of every record line of a JSON listing.
/// The JSON lines that report damage.
fn problems(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l.get("problem").is_some())
        .collect()
}

fn listed_records(lines: &[Value]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .filter(|l| l.get("lsn").is_some())
        .map(|l| (l["offset"].as_u64().unwrap(), l["lsn"].as_u64().unwrap()))
        .collect()
}

#[test]
fn lists_every_record_of_a_store_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let logged = make_store(dir.path());
    let data = dir.path().to_str().unwrap();

    let out = hexdump(&["--data", data, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    let event_ids: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|l| l["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(event_ids, logged);
    for line in lines.iter().filter(|l| l["type"] == "event") {
        assert_eq!(line["checksum"], "ok");
        assert_eq!(line["event"]["pubkey"].as_str().unwrap().len(), 64);
        assert!(line["event"]["created_at"].as_u64().unwrap() > 1_000_000_000);
    }
    // LSNs run 1, 2, 3, ... and offsets increase from the header's end.
    let records = listed_records(&lines);
    for (i, (offset, lsn)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1);
        assert!(*offset >= 32);
    }
    assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
    // Removes name their target and reason.
    for remove in lines.iter().filter(|l| l["type"] == "remove") {
        assert!(["replaced", "deleted"].contains(&remove["remove"]["reason"].as_str().unwrap()));
        assert_eq!(remove["remove"]["target_id"].as_str().unwrap().len(), 64);
    }
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["records"].as_u64().unwrap(), records.len() as u64);
    assert_eq!(summary["events"].as_u64().unwrap(), logged.len() as u64);
    assert_eq!(summary["problems"], 0);
    assert!(summary["batches"].as_u64().unwrap() >= 5);
    assert_eq!(
        summary["file_bytes"].as_u64().unwrap(),
        std::fs::metadata(segment_path(dir.path())).unwrap().len()
    );

    // Text output: one line per record with the event fields, and the summary.
    let out = hexdump(&["--data", data]);
    assert_eq!(out.status.code(), Some(0));
    let listing = text(&out.stdout);
    for id in &logged {
        assert!(
            listing.contains(&format!("id {id}")),
            "{id} missing:\n{listing}"
        );
    }
    assert!(listing.contains(" |end"), "{listing}");
    assert!(listing.contains(" problem(s)") && listing.contains(", 0 problem(s)"));

    // --from-lsn skips earlier records; --hex adds the payload bytes.
    let out = hexdump(&["--data", data, "--json", "--from-lsn", "5"]);
    let listed = listed_records(&json_lines(&out));
    assert_eq!(listed.first().map(|r| r.1), Some(5));
    assert_eq!(listed.len(), records.len() - 4);
    let out = hexdump(&["--data", data, "--hex", "--shard", "0"]);
    let listing = text(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start().starts_with("00000") && l.ends_with('|')),
        "{listing}"
    );
}

#[test]
fn damage_is_reported_at_its_offset_with_exit_status_1() {
    let dir = tempfile::tempdir().unwrap();
    make_store(dir.path());
    let segment = segment_path(dir.path());
    let path = segment.to_str().unwrap();
    let clean = std::fs::read(&segment).unwrap();
    let out = hexdump(&["--json", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let records = listed_records(&json_lines(&out));
    let (victim, victim_lsn) = records[10];
    let (next, _) = records[11];

    // A flipped byte inside record 11's payload: a bad checksum there, and
    // the listing resumes at the next record.
    let mut flipped = clean.clone();
    flipped[victim as usize + 40] ^= 0x20;
    std::fs::write(&segment, &flipped).unwrap();
    let out = hexdump(&["--json", path]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    let damage = problems(&lines);
    assert_eq!(damage.len(), 1, "{lines:?}");
    assert_eq!(damage[0]["offset"].as_u64(), Some(victim));
    assert_eq!(damage[0]["checksum"], "bad");
    assert_eq!(damage[0]["claimed"]["lsn"].as_u64(), Some(victim_lsn));
    assert_eq!(damage[0]["resumes_at"].as_u64(), Some(next));
    let after = listed_records(&lines);
    assert_eq!(after.len(), records.len() - 1);
    assert!(after.contains(&records[11]) && !after.contains(&records[10]));
    assert_eq!(lines.last().unwrap()["summary"]["problems"], 1);
    let out = hexdump(&[path]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains(&format!("DAMAGE at offset {victim}: bad checksum"))
            && listing.contains(&format!("next valid frame at offset {next}"))
            && listing.contains("  BAD  "),
        "{listing}"
    );

    // Truncated in the middle of a record's frame.
    std::fs::write(&segment, &clean[..victim as usize + 30]).unwrap();
    let out = hexdump(&["--json", path]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    let damage = problems(&lines);
    assert_eq!(damage.len(), 1, "{lines:?}");
    assert_eq!(damage[0]["offset"].as_u64(), Some(victim));
    assert!(
        damage[0]["problem"]
            .as_str()
            .unwrap()
            .starts_with("truncated frame"),
        "{damage:?}"
    );
    assert_eq!(damage[0]["resumes_at"], Value::Null);
    assert_eq!(listed_records(&lines), records[..10]);

    // Cut exactly after a record in the middle of a batch: every frame is
    // whole, but the last batch is not.
    let lines = json_lines(&hexdump(&["--json", path]));
    let listed: Vec<&Value> = lines.iter().filter(|l| l.get("lsn").is_some()).collect();
    let batch_start = listed
        .windows(2)
        .find(|w| w[0]["batch_end"] == true && w[1]["batch_end"] == false)
        .map(|w| w[1]["offset"].as_u64().unwrap())
        .unwrap();
    let (cut, _) = records.iter().find(|r| r.0 > batch_start).copied().unwrap();
    let cut = records.iter().map(|r| r.0).find(|&o| o > cut).unwrap();
    std::fs::write(&segment, &clean[..cut as usize]).unwrap();
    let out = hexdump(&["--json", path]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    let damage = problems(&lines);
    assert_eq!(damage.len(), 1, "{lines:?}");
    assert_eq!(damage[0]["offset"].as_u64(), Some(batch_start));
    assert!(
        damage[0]["problem"]
            .as_str()
            .unwrap()
            .starts_with("incomplete batch: 2 record(s)")
    );

    // A damaged header: reported at offset 0, the records are still listed
    // (checked against the segment id of the file name).
    let mut bad_header = clean.clone();
    bad_header[2] ^= 0xff;
    std::fs::write(&segment, &bad_header).unwrap();
    let out = hexdump(&["--json", path]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    assert_eq!(lines[1]["offset"].as_u64(), Some(0));
    assert!(lines[1]["problem"].as_str().unwrap().contains("magic"));
    assert_eq!(listed_records(&lines), records);
}

#[test]
fn cannot_run_without_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.seg");
    let out = hexdump(&[missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nope.seg"),
        "{}",
        text(&out.stderr)
    );
    let out = hexdump(&["--data", dir.path().join("absent").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("absent"));
    // An empty directory is not a store.
    let out = hexdump(&["--data", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = hexdump(&["--help"]);
    let help = text(&out.stdout);
    for flag in [
        "--data",
        "--shard",
        "--from-lsn",
        "--hex",
        "--json",
        "./megalith-data",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
