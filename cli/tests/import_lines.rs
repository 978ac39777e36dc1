//! `megalith import` reads its input line by line: every bad line (invalid
//! UTF-8, binary, truncated JSON, `null`, any JSON that is not an event, an
//! over-long line) is named `file:line: reason` and skipped, every valid line
//! around it is stored, and the summary is always printed: also when the run
//! stops (a store that cannot be opened, an input that cannot be read),
//! with the line to resume from and the `--skip-lines` that does it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn megalith(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_megalith"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        // A command that stops early (a refused flag) closes its input.
        let _ = input.write_all(bytes);
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `count` kind 1 notes from `megalith generate`, as JSONL lines with their
/// ids. Notes are never replaced, and no deletion is among them, so every
/// one of them must end up in the store.
fn notes(count: usize, seed: u64) -> Vec<(String, String)> {
    let out = megalith(
        &[
            "generate",
            "--count",
            "400",
            "--seed",
            &seed.to_string(),
            "--authors",
            "50",
            "--quiet",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let notes: Vec<(String, String)> = text(&out.stdout)
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (value["kind"] == 1 && line.len() < 4000)
                .then(|| (line.to_string(), value["id"].as_str().unwrap().to_string()))
        })
        .take(count)
        .collect();
    assert_eq!(notes.len(), count, "too few notes generated");
    notes
}

/// The ids of `wanted` that the store in `data` holds.
fn stored_ids(data: &str, wanted: &[String]) -> BTreeSet<String> {
    let filter = serde_json::json!({ "ids": wanted }).to_string();
    let out = megalith(&["query", "--data", data, &filter], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>], final_newline: bool) {
    let mut bytes = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        bytes.extend_from_slice(line);
        if final_newline || i + 1 < lines.len() {
            bytes.push(b'\n');
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn every_bad_line_is_named_and_skipped_and_every_valid_line_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let notes = notes(11, 21);
    let json = |i: usize| notes[i].0.as_bytes().to_vec();
    let mut truncated = json(3);
    truncated.truncate(truncated.len() / 2);
    let over_long = format!("{{\"content\":\"{}\"}}", "a".repeat(3 << 20)).into_bytes();
    let mut too_large: serde_json::Value = serde_json::from_slice(&json(7)).unwrap();
    too_large["content"] = "x".repeat(100 << 10).into();
    let mut crlf = json(9);
    crlf.extend_from_slice(b"\r");
    // Line numbers, as the file has them.
    let lines: Vec<Vec<u8>> = vec![
        json(0),                                                      // 1
        b"{\"id\":\"\xff\xfe\",\"kind\":1}".to_vec(),                 // 2 invalid UTF-8
        [b"[\"EVENT\",".as_slice(), &json(1), b"]"].concat(),         // 3
        vec![0x00, 0x9f, 0x92, 0x96, 0x01, 0xff, 0x7f, 0x1b, b'{'],   // 4 binary
        [b"[\"EVENT\",\"sub\",".as_slice(), &json(2), b"]"].concat(), // 5
        truncated,                                                    // 6 truncated JSON
        json(4),                                                      // 7
        b"null".to_vec(),                                             // 8
        json(5),                                                      // 9
        over_long,                                                    // 10 longer than the line cap
        json(6),                                                      // 11
        too_large.to_string().into_bytes(),                           // 12 event too large
        json(8),                                                      // 13
        b"[1,2,3]".to_vec(),                                          // 14
        b"\"just a string\"".to_vec(),                                // 15
        b"{}".to_vec(),                                               // 16
        Vec::new(),                                                   // 17 blank: skipped silently
        crlf,                                                         // 18 (CRLF)
        b"42".to_vec(),                                               // 19
        json(10),                                                     // 20, no final newline
    ];
    let input = dir.path().join("mixed.jsonl");
    write_lines(&input, &lines, false);
    let input = input.to_str().unwrap();
    let stored: Vec<String> = [0, 1, 2, 4, 5, 6, 8, 9, 10]
        .iter()
        .map(|&i| notes[i].1.clone())
        .collect();
    let bad_lines = [2, 4, 6, 8, 10, 12, 14, 15, 16, 19];

    // Text summary on stderr.
    let data = dir.path().join("store-text");
    let data = data.to_str().unwrap();
    let out = megalith(&["import", "--data", data, input], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stored_ids(data, &stored),
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        "{stderr}"
    );
    for line in 1..=20 {
        let named = stderr.contains(&format!("{input}:{line}: "));
        assert_eq!(
            named,
            bad_lines.contains(&line),
            "line {line} named: {named}\n{stderr}"
        );
    }
    for (line, reason) in [
        (2, "UTF-8"),
        (4, "binary"),
        (6, "truncated"),
        (8, "null"),
        (10, "longer than"),
        (12, "more than the limit"),
    ] {
        let at = stderr
            .lines()
            .find(|l| l.starts_with(&format!("{input}:{line}: ")))
            .unwrap_or_else(|| panic!("line {line} not named:\n{stderr}"));
        assert!(at.contains(reason), "line {line} lacks {reason:?}: {at}");
        assert!(at.len() < 1000, "the bad line is echoed: {}", at.len());
    }
    assert!(stderr.contains("9 stored"), "{stderr}");
    assert!(stderr.contains("10 invalid"), "{stderr}");

    // The same input as JSON, from standard input; --strict fails the run.
    let data = dir.path().join("store-json");
    let data = data.to_str().unwrap();
    let out = megalith(
        &[
            "import", "--data", data, "--json", "--strict", "--quiet", "-",
        ],
        Some(&std::fs::read(input).unwrap()),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["lines"], 20, "{summary}");
    assert_eq!(summary["read"], 19, "{summary}");
    assert_eq!(summary["stored"], 9, "{summary}");
    assert_eq!(summary["invalid"], 10, "{summary}");
    assert_eq!(summary["stopped"], serde_json::Value::Null, "{summary}");
    let outcomes = &summary["outcomes"];
    assert_eq!(outcomes["stored"], 9, "{summary}");
    for reason in [
        "not-utf8",
        "binary",
        "truncated",
        "line-too-long",
        "too-large",
    ] {
        assert_eq!(outcomes[reason], 1, "{reason}: {summary}");
    }
    assert_eq!(outcomes["not-an-event"], 4, "{summary}");
    assert_eq!(
        stored_ids(data, &stored).len(),
        stored.len(),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_pretty_printed_value_is_refused_line_by_line_and_never_eats_the_next_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let notes = notes(2, 22);
    let value: serde_json::Value = serde_json::from_str(&notes[0].0).unwrap();
    let pretty = serde_json::to_string_pretty(&value).unwrap();
    let pretty_lines = pretty.lines().count();
    let input = format!("{pretty}\n{}\n", notes[1].0);
    let out = megalith(&["import", "--data", data, "-"], Some(input.as_bytes()));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for line in 1..=pretty_lines {
        assert!(
            stderr.contains(&format!("-:{line}: ")),
            "line {line} of the pretty value not named:\n{stderr}"
        );
    }
    assert!(!stderr.contains(&format!("-:{}: ", pretty_lines + 1)));
    assert_eq!(
        stored_ids(data, &[notes[0].1.clone(), notes[1].1.clone()]),
        BTreeSet::from([notes[1].1.clone()])
    );
}

#[test]
fn a_store_that_cannot_be_opened_stops_the_run_with_the_summary_and_the_resume_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data_str = data.to_str().unwrap();
    let notes = notes(5, 23);
    let input = dir.path().join("notes.jsonl");
    let lines: Vec<Vec<u8>> = notes.iter().map(|(j, _)| j.clone().into_bytes()).collect();
    write_lines(&input, &lines, true);
    let input = input.to_str().unwrap();

    // Another process (here: this one) holds the store.
    let holder = megalith::EventStore::open(&data).unwrap();
    let out = megalith(&["import", "--data", data_str, "--json", input], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("open in another process"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stderr}"));
    assert_eq!(summary["stored"], 0, "{summary}");
    let stopped = &summary["stopped"];
    assert_eq!(stopped["file"], input, "{summary}");
    assert_eq!(stopped["resume_line"], 1, "{summary}");
    assert_eq!(stopped["skip_lines"], 0, "{summary}");
    assert!(
        stopped["error"]
            .as_str()
            .is_some_and(|e| e.contains("open in another process")),
        "{summary}"
    );
    assert!(stderr.contains("--skip-lines 0"), "{stderr}");

    // The text summary says the same on stderr, counting lines skipped.
    let out = megalith(
        &["import", "--data", data_str, "--skip-lines", "2", input],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("0 stored"), "{stderr}");
    assert!(stderr.contains(&format!("{input}:3")), "{stderr}");
    assert!(stderr.contains("--skip-lines 2"), "{stderr}");
    holder.close().unwrap();

    // Resuming as told stores the lines from there on.
    let out = megalith(
        &[
            "import",
            "--data",
            data_str,
            "--json",
            "--skip-lines",
            "2",
            input,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["skipped_lines"], 2, "{summary}");
    assert_eq!(summary["stored"], 3, "{summary}");
    let ids: Vec<String> = notes.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(
        stored_ids(data_str, &ids),
        ids[2..].iter().cloned().collect::<BTreeSet<_>>()
    );

    let help = megalith(&["import", "--help"], None);
    let help = text(&help.stdout);
    assert!(help.contains("--skip-lines"), "{help}");
    assert!(help.contains("one event per line"), "{help}");
}

#[test]
fn skipped_lines_are_not_read_and_later_lines_keep_their_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let notes = notes(5, 24);
    let mut lines: Vec<Vec<u8>> = notes.iter().map(|(j, _)| j.clone().into_bytes()).collect();
    lines.insert(1, b"{\"broken".to_vec()); // line 2
    lines.insert(4, b"null".to_vec()); // line 5
    let input = dir.path().join("notes.jsonl");
    write_lines(&input, &lines, true);
    let bytes = std::fs::read(&input).unwrap();
    let out = megalith(
        &["import", "--data", data, "--json", "--skip-lines", "3", "-"],
        Some(&bytes),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("-:2:"), "{stderr}");
    assert!(stderr.contains("-:5: "), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["skipped_lines"], 3, "{summary}");
    assert_eq!(summary["lines"], 4, "{summary}");
    assert_eq!(summary["stored"], 3, "{summary}");
    assert_eq!(summary["invalid"], 1, "{summary}");
    let ids: Vec<String> = notes.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(
        stored_ids(data, &ids),
        ids[2..].iter().cloned().collect::<BTreeSet<_>>()
    );
}

#[test]
fn an_input_that_cannot_be_read_stops_the_run_after_storing_what_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let notes = notes(3, 25);
    let input = dir.path().join("notes.jsonl");
    let lines: Vec<Vec<u8>> = notes.iter().map(|(j, _)| j.clone().into_bytes()).collect();
    write_lines(&input, &lines, true);
    let input = input.to_str().unwrap();
    // A directory opens, but reading it fails.
    let unreadable = dir.path().join("a-directory");
    std::fs::create_dir(&unreadable).unwrap();
    let unreadable = unreadable.to_str().unwrap();
    let out = megalith(
        &["import", "--data", data, "--json", input, unreadable],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stderr}"));
    assert_eq!(summary["stored"], 3, "{summary}");
    assert_eq!(summary["stopped"]["file"], unreadable, "{summary}");
    assert_eq!(summary["stopped"]["resume_line"], 1, "{summary}");
    assert!(stderr.contains("--skip-lines 0"), "{stderr}");
    let ids: Vec<String> = notes.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(stored_ids(data, &ids).len(), 3);
}
