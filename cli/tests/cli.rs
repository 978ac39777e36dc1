//! The `megalith` command: import of every input shape (good and bad lines
//! mixed), query output in NIP-01 order, count, stats, generated data, and clear errors.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn megalith(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn import_query_count_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let events = common::real_events();
    let (json_a, a) = &events[0];
    let (json_b, _) = &events[1];
    let input = format!(
        "{json_a}\n\n[\"EVENT\",{json_a}]\n[\"EVENT\",\"sub\",{json_b}]\n{{\"id\":\"nope\"}}\n[\"NOTICE\",\"x\"]\n{}\n[\"EVENT\",{{\"id\"",
        json_a.replace(&a.sig.to_hex()[..4], "0000"),
    );
    let out = megalith(&["import", "--data", data, "--json", "-"], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["lines"], 8, "{summary}");
    assert_eq!(summary["read"], 7, "{summary}");
    assert_eq!(summary["stored"], 2, "{summary}");
    assert_eq!(summary["outcomes"]["duplicate"], 1, "{summary}");
    assert_eq!(summary["invalid"], 4, "{summary}");
    // Each refusal names its input line (the blank line 2 counts).
    let stderr = text(&out.stderr);
    for needle in [
        "-:5: invalid: id must be 64",
        "-:6: invalid: not an event",
        "-:7: invalid: ",
        "-:8: invalid: truncated JSON",
    ] {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
    // --strict turns refusals into a failing exit status.
    let out = megalith(
        &["import", "--data", data, "--strict", "--quiet", "-"],
        Some("{\"id\":1}\n"),
    );
    assert_eq!(out.status.code(), Some(1));

    let out = megalith(&["query", "--data", data, "{}"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<megalith::Event> = text(&out.stdout)
        .lines()
        .map(|l| megalith::Event::from_json(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(
        (lines[0].created_at, std::cmp::Reverse(lines[0].id))
            >= (lines[1].created_at, std::cmp::Reverse(lines[1].id))
    );
    assert!(lines.iter().any(|e| e == a));

    let out = megalith(
        &[
            "count",
            "--data",
            data,
            "--json",
            &format!("[{{\"ids\":[\"{}\"]}},{{\"kinds\":[{}]}}]", a.id, a.kind),
        ],
        None,
    );
    assert!(out.status.success());
    let count: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(count["count"].as_u64().unwrap() >= 1);

    let out = megalith(&["stats", "--data", data, "--json"], None);
    assert!(out.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["events"], 2, "{stats}");
    assert!(stats["log"]["bytes"].as_u64().unwrap() > 0);
}

#[test]
fn errors_go_to_stderr_with_a_failing_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    // Reading commands never create a store where there is none.
    let out = megalith(&["count", "--data", data, "{}"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no store in"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("store").exists());
    drop(megalith::EventStore::open(data).unwrap());
    for args in [
        vec!["query", "--data", data, "{\"kinds\":[1],\"bogus\":2}"],
        vec!["count", "--data", data, "not json"],
        vec!["import", "--data", data, "/no/such/file.jsonl"],
    ] {
        let out = megalith(&args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            text(&out.stderr).starts_with("megalith: "),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A store held by another process is refused with a clear message.
    let store = megalith::EventStore::open(data).unwrap();
    let out = megalith(&["stats", "--data", data], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("open in another process"),
        "{}",
        text(&out.stderr)
    );
    store.close().unwrap();
}

#[test]
fn generate_is_deterministic_and_imports_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "generate",
        "--count",
        "500",
        "--seed",
        "3",
        "--authors",
        "200",
    ];
    let first = megalith(&args, None);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = megalith(&[&args[..], &["--threads", "3", "--quiet"]].concat(), None);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(first.stdout, second.stdout);
    assert!(second.stderr.is_empty(), "{}", text(&second.stderr));
    assert!(text(&first.stderr).contains("generated 500 event(s)"));
    let other = megalith(
        &["generate", "--count", "500", "--seed", "4", "--quiet"],
        None,
    );
    assert_ne!(first.stdout, other.stdout);
    let jsonl = text(&first.stdout);
    assert_eq!(jsonl.lines().count(), 500);

    // --out writes the same bytes to a file.
    let file = dir.path().join("events.jsonl");
    let file = file.to_str().unwrap();
    let out = megalith(&[&args[..], &["--out", file]].concat(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(file).unwrap(), first.stdout);

    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let out = megalith(
        &["import", "--data", data, "--json", "--strict", file],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["read"], 500, "{summary}");
    assert_eq!(summary["invalid"], 0, "{summary}");
    assert_eq!(summary["stored"], 500, "{summary}");

    for bad in [
        vec!["generate", "--authors", "0"],
        vec!["generate", "--threads", "0"],
        vec!["generate", "--out", "/no/such/dir/x.jsonl"],
    ] {
        let out = megalith(&bad, None);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(out.stdout.is_empty(), "{bad:?}");
        assert!(text(&out.stderr).starts_with("megalith: "), "{bad:?}");
    }
}
