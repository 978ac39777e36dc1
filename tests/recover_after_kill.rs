//! The kill test (after sled's and RocksDB's): a child process inserts signed
//! events from several writer threads with `Durability::Always` and prints
//! each acknowledgement; the parent kills it with SIGKILL at a random moment
//! (sometimes while it is still opening and replaying), reopens the store
//! and checks that every acknowledged event is there, that what survived
//! from each writer is a prefix of what it sent (no holes), that nothing
//! from earlier rounds went missing, and that the indexes agree with the log.
//!
//! `MEGALITH_KILL_ITERATIONS` sets the number of rounds (default 100);
//! `scripts/kill-test.sh` runs 1,000 or more in release mode, on a fresh
//! store every 100 rounds.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Rng;
use common::crash::assert_doctor_clean;
use megalith::{Durability, EventStore, Filter, Keys};

const DIR_ENV: &str = "MEGALITH_KILL_DIR";
const ROUND_ENV: &str = "MEGALITH_KILL_ROUND";
const WRITERS: u64 = 3;
/// Rounds that share one store before the test starts a new one.
const STORE_ROUNDS: u64 = 100;

fn open(dir: &Path) -> Result<EventStore, megalith::Error> {
    EventStore::builder(dir)
        .durability(Durability::Always)
        // Checkpoints and rotations happen now and then, so kills land in
        // them too, and opening has some log to replay.
        .checkpoint_dirty_nodes(512)
        .level_entries(256)
        .checkpoint_interval(Duration::from_millis(300))
        .segment_size(256 << 10)
        .open()
}

fn topic(round: u64, writer: u64) -> String {
    format!("r{round}w{writer}")
}

/// The child: writes until it is killed.
#[test]
#[ignore = "the child process of kill_at_random_moments_loses_nothing_acknowledged"]
fn kill_child() {
    let (Ok(dir), Ok(round)) = (std::env::var(DIR_ENV), std::env::var(ROUND_ENV)) else {
        return;
    };
    let round: u64 = round.parse().unwrap();
    let store = open(Path::new(&dir)).unwrap();
    println!("opened");
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let store = &store;
            scope.spawn(move || {
                let keys = Keys::from_seed(1000 + writer);
                let mut rng = Rng::new(round * 100 + writer);
                let mut seq = 0u64;
                loop {
                    let batch: Vec<_> = (0..1 + rng.below(8))
                        .map(|_| {
                            seq += 1;
                            keys.sign(
                                1_700_000_000 + round,
                                1,
                                vec![vec!["t".into(), topic(round, writer)]],
                                format!("{seq} {}", "x".repeat(rng.below(600) as usize)),
                            )
                        })
                        .collect();
                    store.insert(&batch).unwrap();
                    // One write per line: lines of different threads never mix.
                    println!("ack {writer} {seq}");
                }
            });
        }
    });
}

/// Sequence numbers stored for one writer of one round, in order.
fn stored_sequence(store: &EventStore, round: u64, writer: u64) -> Vec<u64> {
    let filter = Filter::from_json(&format!(r##"{{"#t":["{}"]}}"##, topic(round, writer))).unwrap();
    let mut seqs: Vec<u64> = store
        .query(&[filter])
        .unwrap()
        .iter()
        .map(|e| e.content.split(' ').next().unwrap().parse().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs
}

#[test]
fn kill_at_random_moments_loses_nothing_acknowledged() {
    let rounds: u64 = std::env::var("MEGALITH_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(7);
    let mut survivors: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let (mut acknowledged, mut kept, mut killed_while_opening) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        // A fresh store every STORE_ROUNDS rounds: each round copies and
        // checks the whole store, so one store for 1,000 rounds would make
        // the run quadratic without testing anything new.
        if round > 0 && round % STORE_ROUNDS == 0 {
            dir = tempfile::tempdir().unwrap();
            survivors.clear();
        }
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "kill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Mostly mid-write; one round in five during start-up, open and replay.
        let delay = if rng.chance(20) {
            rng.below(40)
        } else {
            50 + rng.below(400)
        };
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut output = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut output)
            .unwrap();
        if !output.lines().any(|l| l.ends_with("opened")) {
            killed_while_opening += 1;
        }
        let mut acked = [0u64; WRITERS as usize];
        for line in output.lines().filter_map(|l| l.strip_prefix("ack ")) {
            let (writer, seq) = line.split_once(' ').unwrap();
            let writer: usize = writer.parse().unwrap();
            acked[writer] = acked[writer].max(seq.trim().parse().unwrap());
        }

        // Every other round is checked on a copy, so the next child finds the
        // store as the kill left it and has to replay it while opening.
        let copy = tempfile::tempdir().unwrap();
        let check_dir = if round % 2 == 0 {
            let status = Command::new("cp")
                .args(["-r", "--sparse=always"])
                .arg(dir.path().join("."))
                .arg(copy.path())
                .status()
                .unwrap();
            assert!(status.success());
            copy.path()
        } else {
            dir.path()
        };
        // What the kill left: every index agrees with the log as of its checkpoint.
        let opened = output.lines().any(|l| l.ends_with("opened"));
        if opened {
            assert_doctor_clean(check_dir, &format!("round {round}, as the kill left it"));
        }
        let store = open(check_dir)
            .unwrap_or_else(|e| panic!("round {round}: reopening after the kill failed: {e}"));
        // A child killed before it opened the store may leave it as the
        // last clean close did; one that opened it always leaves it unclean.
        if opened {
            assert!(store.recovery_report().unclean_shutdown, "round {round}");
        }
        for writer in 0..WRITERS {
            let seqs = stored_sequence(&store, round, writer);
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, expected, "round {round} writer {writer}: a hole");
            assert!(
                seqs.len() as u64 >= acked[writer as usize],
                "round {round} writer {writer}: {} acknowledged, {} stored",
                acked[writer as usize],
                seqs.len()
            );
            acknowledged += acked[writer as usize];
            kept += seqs.len() as u64;
            survivors.insert((round, writer), seqs.len() as u64);
        }
        // Every earlier round is still whole.
        if round % 10 == 9 || round + 1 == rounds {
            for (&(r, w), &count) in &survivors {
                assert_eq!(
                    stored_sequence(&store, r, w).len() as u64,
                    count,
                    "round {r} writer {w} changed after later kills"
                );
            }
        }
        let total: u64 = survivors.values().sum();
        assert_eq!(store.count(&[Filter::new()]).unwrap(), total);
        store.close().unwrap();
        if round % 10 == 0 {
            assert_doctor_clean(check_dir, &format!("round {round}, after reopening"));
        }
    }
    println!(
        "{rounds} kills ({killed_while_opening} before the store had opened): \
         {acknowledged} inserts acknowledged, {kept} events kept, 0 lost"
    );
    assert!(acknowledged > 0);
}
