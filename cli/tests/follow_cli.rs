//! `megalith follow` as a process, against two `megalith serve` processes
//! on loopback seeded with generated data whose relay lists name them
//! (each author's posts only on their own write relays): the store ends
//! with exactly the follows' posts the two relays hold, the status lines
//! are JSON, and bad input is named.
#![cfg(unix)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../tests/service/placement.rs"]
mod placement;
#[path = "../../tests/service/process.rs"]
mod process;

use megalith::datagen::{GenConfig, Generator};
use megalith::event::nip19;
use megalith::{EventId, EventStore, Filter};

fn megalith() -> Command {
    Command::new(env!("CARGO_BIN_EXE_megalith"))
}

#[test]
fn follow_fills_the_store_with_exactly_the_follows_posts() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [process::free_port(), process::free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}"))
        .collect();
    let stores: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("relay{i}")))
        .collect();
    let mut generator = Generator::new(GenConfig {
        seed: 21,
        authors: 200,
        relays: Some(urls.clone()),
        ..GenConfig::default()
    });
    let events = generator.batch(8_000, 2);
    let (me, follows) = generator.sampler(5).follow_list(30).unwrap();
    // Each author's events on their own write relays; lists on the first.
    let placed = placement::place(&events, &urls);
    for (i, path) in stores.iter().enumerate() {
        let store = EventStore::open(path).unwrap();
        for chunk in placed[i].chunks(1_000) {
            store.insert(chunk).unwrap();
        }
        store.close().unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_megalith"));
    let relays: Vec<process::KillOnDrop> = (0..2)
        .map(|i| process::serve_at(bin, &stores[i], &format!("127.0.0.1:{}", ports[i])))
        .collect();

    let copy = dir.path().join("feed");
    let npub = nip19::encode_npub(&me);
    let output = megalith()
        .args([
            "follow",
            &npub,
            "--json",
            "--allow-private-relays",
            "--max-pages",
            "1000",
        ])
        .args(["--relay", &urls[0]])
        .arg("--data")
        .arg(&copy)
        .output()
        .unwrap();
    for relay in relays {
        process::stop(relay);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3, "{stdout}");
    let last = lines.last().unwrap();
    assert_eq!(last["phase"], "finished", "{last}");
    let phases: Vec<&str> = lines.iter().filter_map(|l| l["phase"].as_str()).collect();
    for phase in ["contacts", "relays", "posts_backfill"] {
        assert!(phases.contains(&phase), "{phases:?}");
    }

    // Exactly the follows' posts (and the person's own) the two relays hold.
    let posts = Filter::new()
        .authors(follows.iter().copied().chain([me]))
        .kinds([1, 6]);
    let ids = |path: &Path| -> HashSet<EventId> {
        let store = EventStore::open(path).unwrap();
        let ids = store
            .query(std::slice::from_ref(&posts))
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        store.close().unwrap();
        ids
    };
    let mut want = ids(&stores[0]);
    want.extend(ids(&stores[1]));
    let got = ids(&copy);
    assert_eq!(
        (want.difference(&got).count(), got.difference(&want).count()),
        (0, 0),
        "missing, extra of {}",
        want.len()
    );
    assert_eq!(
        last["events_ingested"].as_u64().unwrap() as usize,
        want.len()
    );
    let relays_used: Vec<&str> = last["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].as_str().unwrap())
        .collect();
    assert!(relays_used.contains(&urls[1].as_str()), "{last}");
    // The job's status is kept beside the store.
    assert!(
        copy.join("jobs")
            .join(format!("{}.json", me.to_hex()))
            .exists()
    );
}

#[test]
fn bad_people_and_unreachable_relays_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let output = megalith()
        .args(["follow", "npub1notavalidkey", "--relay", "ws://127.0.0.1:9"])
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("npub"), "{stderr}");

    // A valid key, and a relay that refuses connections: the job fails
    // saying no contact list was found, with the relay's error.
    let someone = nip19::encode_npub(&megalith::Keys::from_seed(4).pubkey());
    let port = process::free_port();
    let output = megalith()
        .args([
            "follow",
            &someone,
            "--relay",
            &format!("ws://127.0.0.1:{port}"),
        ])
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no contact list"), "{stderr}");
    assert!(stderr.contains("connect"), "{stderr}");
}
