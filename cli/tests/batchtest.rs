//! The `batchtest` stress tester: a small run with every query shape (search
//! included) checks
//! clean against the reference, in JSON and in text, and bad arguments or a
//! used data directory are refused with status 2.

use std::process::{Command, Output};

fn batchtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_batchtest"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_small_run_checks_clean_and_reports_every_shape() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let out = batchtest(&[
        "--count",
        "3000",
        "--batch",
        "250",
        "--verify",
        "340",
        "--search",
        "--shards",
        "3",
        "--threads",
        "2",
        "--authors",
        "300",
        "--durability",
        "batch",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["events"], 3000);
    assert_eq!(doc["outcome_mismatches"], 0, "{doc}");
    assert_eq!(doc["query_mismatches"], 0, "{doc}");
    // 340 queries, then 34 after reopening.
    assert_eq!(doc["queries_checked"], 374);
    let shapes = doc["queries"].as_object().unwrap();
    assert_eq!(shapes.len(), 17, "13 shapes and 4 search shapes: {doc}");
    assert!(shapes.contains_key("search_video"), "{doc}");
    for (shape, figures) in shapes {
        assert_eq!(figures["queries"], 20, "{shape}");
        assert!(figures["p50_us"].as_f64().unwrap() <= figures["max_us"].as_f64().unwrap());
    }
    let stored = doc["stored"].as_u64().unwrap();
    assert!(stored > 2_500 && stored < 3_000, "{stored}");
    assert!(doc["disk_bytes"].as_u64().unwrap() > 0);
    // The store is kept when --data names it, and it reopens.
    let store = megalith::EventStore::open(&data).unwrap();
    assert_eq!(store.shard_count(), 3);
    assert_eq!(store.count(&[megalith::Filter::new()]).unwrap(), stored);
    store.close().unwrap();

    // A used directory is refused: the reference starts empty.
    let out = batchtest(&["--count", "10", "--data", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
}

#[test]
fn the_text_report_names_throughput_latency_disk_and_memory() {
    let out = batchtest(&[
        "--count",
        "800",
        "--verify",
        "30",
        "--authors",
        "50",
        "--trusted",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for needle in [
        "events/s",
        "per batch",
        "follow_feed",
        "bytes of JSONL",
        "peak RSS",
        "0 outcome and 0 query mismatches",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from {stdout}");
    }
}

#[test]
fn bad_arguments_are_refused() {
    for args in [
        &["--batch", "0"][..],
        &["--count", "0"],
        &["--durability", "sometimes"],
        &["--shards", "0", "--count", "10"],
    ] {
        let out = batchtest(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}
