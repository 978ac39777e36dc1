//! `megalith follow` as a process, against two `megalith serve` processes
//! on loopback seeded with generated data whose relay lists name them
//! (each author's posts only on their own write relays): the store ends
//! with exactly the follows' posts the two relays hold, the status lines
//! are JSON, and bad input is named.
#![cfg(unix)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use megalith::datagen::{GenConfig, Generator};
use megalith::event::nip19;
use megalith::{Event, EventId, EventStore, Filter, Pubkey};

fn megalith() -> Command {
    Command::new(env!("CARGO_BIN_EXE_megalith"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `megalith serve` on `port`, once it says it listens.
fn serve(data: &Path, port: u16) -> Child {
    let mut child = megalith()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited:\n{log}"
        );
        log.push_str(&line);
        if line.contains("address=") {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
    });
    child
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on a child we spawned and have not waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

fn write_relays(list: &Event) -> Vec<String> {
    list.tags
        .iter()
        .filter(|t| t[0] == "r" && (t.len() == 2 || t[2] == "write"))
        .map(|t| t[1].clone())
        .collect()
}

#[test]
fn follow_fills_the_store_with_exactly_the_follows_posts() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
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
    let mut newest: HashMap<Pubkey, &Event> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == 10_002) {
        if newest
            .get(&e.pubkey)
            .is_none_or(|n| n.created_at <= e.created_at)
        {
            newest.insert(e.pubkey, e);
        }
    }
    let mut placed = [Vec::new(), Vec::new()];
    for e in &events {
        let mut homes: Vec<usize> = newest
            .get(&e.pubkey)
            .map(|l| write_relays(l))
            .unwrap_or_default()
            .iter()
            .filter_map(|u| urls.iter().position(|x| x == u))
            .collect();
        if homes.is_empty() || matches!(e.kind, 0 | 3 | 10_002) {
            homes.push(0);
        }
        homes.sort();
        homes.dedup();
        for h in homes {
            placed[h].push(e.clone());
        }
    }
    for (i, path) in stores.iter().enumerate() {
        let store = EventStore::open(path).unwrap();
        for chunk in placed[i].chunks(1_000) {
            store.insert(chunk).unwrap();
        }
        store.close().unwrap();
    }
    let relays: Vec<Child> = (0..2).map(|i| serve(&stores[i], ports[i])).collect();

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
        stop(relay);
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

    // Exactly the follows' posts the two relays hold.
    let posts = Filter::new().authors(follows.iter().copied()).kinds([1, 6]);
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
    let port = free_port();
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
