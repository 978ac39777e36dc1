//! `megalith mirror` as a process, from a `megalith serve` on loopback:
//! the copy is exact, a second run asks for nothing, Ctrl-C stops cleanly
//! with a summary, and bad flags are named.
#![cfg(unix)]

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use megalith::{EventId, EventStore, Filter};

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/serve.rs"]
mod serve;

fn megalith() -> Command {
    Command::new(env!("CARGO_BIN_EXE_megalith"))
}

fn ids(dir: &std::path::Path) -> HashSet<EventId> {
    let store = EventStore::open(dir).unwrap();
    let ids = store
        .query(&[Filter::new()])
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    store.close().unwrap();
    ids
}

#[test]
fn mirror_copies_a_served_store_exactly_and_resumes_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let copy = dir.path().join("copy");
    {
        let store = EventStore::open(&source).unwrap();
        let mut generator = common::Generator::new(5, 200);
        let events: Vec<_> = (0..3_000).map(|_| generator.next_event()).collect();
        store.insert(&events).unwrap();
        store.close().unwrap();
    }
    let want = ids(&source);
    let mut serving = serve::spawn([std::ffi::OsStr::new("--data"), source.as_os_str()]);
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = serving.stderr.read_to_end(&mut sink);
    });
    let url = format!("ws://{}", serving.addr);

    let run = |extra: &[&str]| {
        megalith()
            .args([
                "mirror",
                "--once",
                "--json",
                "--page-size",
                "100",
                "--relay",
                &url,
            ])
            .arg("--data")
            .arg(&copy)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    let summary: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let relay = &summary["relays"][0];
    assert_eq!(relay["phase"], "done", "{summary}");
    assert_eq!(
        relay["stored"].as_u64().unwrap() as usize,
        want.len(),
        "{summary}"
    );
    assert!(relay["pages"].as_u64().unwrap() >= (want.len() / 100) as u64);

    let second = run(&[]);
    assert!(second.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(summary["relays"][0]["received"], 0, "{summary}");

    // Live, then Ctrl-C: a clean stop, the summary, status 0.
    let mut live = megalith()
        .args(["mirror", "--relay", &url, "--data"])
        .arg(&copy)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    // SAFETY: kill(2) on a child we spawned and have not waited for.
    unsafe { libc::kill(live.id() as i32, libc::SIGINT) };
    let status = live.wait().unwrap();
    let mut log = String::new();
    live.stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("mirror: 1 relays"), "{log}");

    // SAFETY: as above.
    unsafe { libc::kill(serving.child.id() as i32, libc::SIGTERM) };
    serving.child.wait().unwrap();
    assert_eq!(ids(&copy), want);
}

#[test]
fn bad_flags_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let cases: [(&[&str], &str); 3] = [
        (&["--relay", "http://example.com"], "scheme"),
        (
            &[
                "--relay",
                "ws://127.0.0.1:9",
                "--filter",
                "{\"kinds\":\"x\"}",
            ],
            "--filter",
        ),
        (
            &["--relay", "ws://127.0.0.1:9", "--page-size", "0"],
            "--page-size",
        ),
    ];
    for (args, says) in cases {
        let output = megalith()
            .arg("mirror")
            .arg("--data")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
