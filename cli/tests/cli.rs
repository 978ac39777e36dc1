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

/// `megalith changes`: the feed as JSONL in pages through --after and
/// --limit, every stored event once, a deletion's target as removed, the
/// last position on stderr; a bad position is refused with a message.
#[test]
fn changes_prints_the_feed_and_resumes_from_a_position() {
    use megalith::event::Keys;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let keys = Keys::from_seed(5);
    let notes: Vec<megalith::Event> = (0..6)
        .map(|i| keys.sign(1_700_000_000 + i, 1, vec![], format!("note {i}")))
        .collect();
    let deletion = keys.sign(
        1_700_000_100,
        5,
        vec![vec!["e".into(), notes[2].id.to_hex()]],
        String::new(),
    );
    let mut input: String = notes.iter().map(|e| e.to_json() + "\n").collect();
    input.push_str(&(deletion.to_json() + "\n"));
    let out = megalith(
        &["import", "--data", data, "--shards", "2", "-"],
        Some(&input),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let first = megalith(&["changes", "--data", data, "--limit", "3"], None);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let lines: Vec<serde_json::Value> = text(&first.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let stderr = text(&first.stderr);
    let position = stderr
        .split("stopped at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{stderr}"))
        .to_string();
    assert_eq!(lines[2]["position"], position.as_str());

    let rest = megalith(&["changes", "--data", data, "--after", &position], None);
    assert!(rest.status.success(), "{}", text(&rest.stderr));
    assert!(text(&rest.stderr).contains("up to date at c1:"));
    let all: Vec<serde_json::Value> = lines
        .into_iter()
        .chain(
            text(&rest.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap()),
        )
        .collect();
    let stored: Vec<&str> = all
        .iter()
        .filter(|c| c["op"] == "stored")
        .map(|c| c["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(stored.len(), 7, "six notes and the deletion, once each");
    let removed: Vec<&str> = all
        .iter()
        .filter(|c| c["op"] == "removed")
        .map(|c| c["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, vec![notes[2].id.to_hex().as_str()]);

    let bad = megalith(&["changes", "--data", data, "--after", "yesterday"], None);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("--after: \"yesterday\" is not a change feed position"),
        "{}",
        text(&bad.stderr)
    );
}

/// `--version` names the commit the binary was built from (the tests run
/// from a git checkout, or with MEGALITH_COMMIT set at build time).
#[test]
fn version_names_the_commit() {
    let out = megalith(&["--version"], None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let commit = text
        .trim()
        .strip_prefix(&format!("megalith {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text}"));
    let hex = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        hex.len() >= 7 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{text}"
    );
}

/// `megalith search on|off` and `megalith analytics on|off`: the index is
/// built from the log when turned on, dropped when turned off, and the
/// store remembers; a word that is not on or off is refused.
#[test]
fn search_and_analytics_switch_on_and_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let input: String = common::real_events()
        .iter()
        .map(|(json, _)| format!("{json}\n"))
        .collect();
    assert!(
        megalith(&["import", "--data", data, "-"], Some(&input))
            .status
            .success()
    );
    let stats = |data: &str| text(&megalith(&["stats", "--data", data, "--json"], None).stdout);
    assert!(
        stats(data).contains("\"search_index\":false"),
        "{}",
        stats(data)
    );
    let search = r#"{"search":"the","limit":5}"#;
    let before = megalith(&["query", "--data", data, search], None);

    let on = megalith(&["search", "on", "--data", data], None);
    assert!(on.status.success(), "{}", text(&on.stderr));
    assert!(text(&on.stderr).contains("search index: on"));
    assert!(
        stats(data).contains("\"search_index\":true"),
        "{}",
        stats(data)
    );
    let after = megalith(&["query", "--data", data, search], None);
    assert!(after.status.success(), "{}", text(&after.stderr));
    let found = text(&after.stdout).lines().count();
    assert!(found > 0);
    // Without the index a search scans; with it, the same answer.
    assert_eq!(text(&before.stdout), text(&after.stdout));

    let off = megalith(&["search", "off", "--data", data], None);
    assert!(off.status.success(), "{}", text(&off.stderr));
    assert!(
        stats(data).contains("\"search_index\":false"),
        "{}",
        stats(data)
    );

    let on = megalith(&["analytics", "on", "--data", data], None);
    assert!(on.status.success(), "{}", text(&on.stderr));
    assert!(text(&on.stderr).contains("video analytics: on"));
    assert!(dir.path().join("store/analytics").exists());

    let bad = megalith(&["search", "maybe", "--data", data], None);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("expected `on` or `off`"));
    let missing = megalith(&["search", "on", "--data", "/nonexistent/store"], None);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no store in /nonexistent/store"));
}

/// `megalith compact`: a store with replaced and deleted events compacts
/// them (the JSON report counts them and the query answers stay), a second
/// run finds nothing, a bad share is refused, and a store another process
/// holds is refused, saying compaction needs the store to itself.
#[test]
fn compact_takes_removed_events_out_and_says_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let events = megalith(
        &["generate", "--count", "3000", "--seed", "5", "--quiet"],
        None,
    );
    assert!(events.status.success(), "{}", text(&events.stderr));
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let jsonl = text(&events.stdout);
    let out = megalith(&["import", "--data", data, "--json", "-"], Some(&jsonl));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = summary["stored"].as_u64().unwrap();
    let before = megalith(&["query", "--data", data, "{}"], None);
    let held = text(&before.stdout).lines().count() as u64;
    assert!(
        held < stored,
        "the generated stream replaces and deletes events"
    );

    let out = megalith(&["compact", "--data", data, "--json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records_compacted"], stored - held, "{report}");
    assert_eq!(report["records_left"], 0, "{report}");
    let after = megalith(&["query", "--data", data, "{}"], None);
    assert_eq!(after.stdout, before.stdout);

    let again = megalith(&["compact", "--data", data], None);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains(": 0 removed event(s)"),
        "{}",
        text(&again.stdout)
    );

    let bad = megalith(&["compact", "--data", data, "--min-garbage", "2"], None);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("--min-garbage 2"),
        "{}",
        text(&bad.stderr)
    );

    // Another process holds the store (its lock file, as `serve` would).
    let lock = std::fs::File::options()
        .write(true)
        .open(dir.path().join("store").join("LOCK"))
        .unwrap();
    lock.lock().unwrap();
    let held = megalith(&["compact", "--data", data], None);
    assert_eq!(held.status.code(), Some(1));
    assert!(
        text(&held.stderr).contains("needs the store to itself"),
        "{}",
        text(&held.stderr)
    );
}

/// `megalith delete`: a dry run counts what `query` shows and changes
/// nothing; the delete removes exactly that, survives a reopen, and a
/// compaction afterwards takes the records out; bad filters, `limit` and a
/// missing store are errors that say so.
#[test]
fn delete_removes_what_the_filter_matches_and_a_dry_run_only_counts() {
    let dir = tempfile::tempdir().unwrap();
    let events = megalith(
        &["generate", "--count", "2000", "--seed", "9", "--quiet"],
        None,
    );
    assert!(events.status.success(), "{}", text(&events.stderr));
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let out = megalith(
        &["import", "--data", data, "-"],
        Some(&text(&events.stdout)),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = |filter: &str| -> Vec<String> {
        let out = megalith(&["query", "--data", data, filter], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).lines().map(str::to_string).collect()
    };
    let all = lines("{}");
    let notes = lines(r#"{"kinds":[1,7]}"#);
    assert!(notes.len() > 100 && notes.len() < all.len());

    let filter = r#"[{"kinds":[1]},{"kinds":[7]}]"#;
    let dry = megalith(
        &[
            "delete",
            "--data",
            data,
            "--filter",
            filter,
            "--dry-run",
            "--json",
        ],
        None,
    );
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(report["matched"], notes.len() as u64, "{report}");
    assert_eq!(report["removed"], 0, "{report}");
    assert_eq!(lines("{}"), all, "a dry run changes nothing");

    let real = megalith(&["delete", "--data", data, "--filter", filter], None);
    assert!(real.status.success(), "{}", text(&real.stderr));
    assert!(
        text(&real.stdout).contains(&format!("removed {} event(s)", notes.len())),
        "{}",
        text(&real.stdout)
    );
    let left = lines("{}");
    let expected: Vec<String> = all.iter().filter(|l| !notes.contains(l)).cloned().collect();
    assert_eq!(left, expected);
    assert!(lines(r#"{"kinds":[1,7]}"#).is_empty());

    let compact = megalith(&["compact", "--data", data, "--json"], None);
    assert!(compact.status.success(), "{}", text(&compact.stderr));
    let report: serde_json::Value = serde_json::from_slice(&compact.stdout).unwrap();
    assert!(
        report["records_compacted"].as_u64().unwrap() >= notes.len() as u64,
        "{report}"
    );
    assert_eq!(lines("{}"), expected, "after compaction");

    for (args, says) in [
        (vec!["--filter", r#"{"kinds":[1],"limit":5}"#], "`limit`"),
        (vec!["--filter", r#"{"kinds":"one"}"#], "--filter"),
    ] {
        let mut all_args = vec!["delete", "--data", data];
        all_args.extend(args);
        let bad = megalith(&all_args, None);
        assert_eq!(bad.status.code(), Some(1));
        assert!(text(&bad.stderr).contains(says), "{}", text(&bad.stderr));
    }
    let missing = dir.path().join("nothing");
    let bad = megalith(
        &[
            "delete",
            "--data",
            missing.to_str().unwrap(),
            "--filter",
            "{}",
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("no store"),
        "{}",
        text(&bad.stderr)
    );
    assert!(!missing.exists(), "a delete creates no store");
}
