//! A process that exits without closing the store (no final checkpoint, the
//! dirty marker left behind) loses nothing it acknowledged: the next open
//! replays the log written since the last checkpoint.
//!
//! The test re-runs its own binary as a child process that does the writing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use megalith::{Durability, EventStore, Filter, InsertOutcome, Keys};

const CHILD_ENV: &str = "MEGALITH_TEST_CHILD_DIR";
const BATCHES: u64 = 30;
const BATCH: u64 = 40;

fn child_writes_and_exits(dir: &Path) -> ! {
    let store = EventStore::builder(dir)
        .durability(Durability::Always)
        // Checkpoints happen now and then, so the exit lands between them.
        .checkpoint_dirty_nodes(200)
        .checkpoint_interval(Duration::from_secs(3600))
        .segment_size(256 << 10)
        .open()
        .unwrap();
    let keys = Keys::from_seed(77);
    for b in 0..BATCHES {
        let mut batch: Vec<_> = (0..BATCH)
            .map(|i| {
                keys.sign(
                    1_700_000_000 + b * BATCH + i,
                    1,
                    vec![vec!["t".into(), format!("b{b}")]],
                    "x".repeat(200),
                )
            })
            .collect();
        // A replaceable event and a deletion in every batch: replay must redo
        // removals too.
        batch.push(keys.sign(
            1_700_000_000 + b,
            0,
            vec![],
            format!("{{\"name\":\"v{b}\"}}"),
        ));
        let victim = batch[0].id.to_hex();
        batch.push(keys.sign(
            1_700_000_000 + b * BATCH + 1,
            5,
            vec![vec!["e".into(), victim]],
            String::new(),
        ));
        let outcomes = store.insert(&batch).unwrap();
        assert!(outcomes.iter().all(InsertOutcome::accepted), "{outcomes:?}");
    }
    // Exit without close: like a crash after the last acknowledgement.
    std::process::exit(0);
}

#[test]
fn acknowledged_events_survive_an_exit_without_close() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_writes_and_exits(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_events_survive_an_exit_without_close",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "child failed: {status}");

    let store = EventStore::open(dir.path()).unwrap();
    let report = store.recovery_report().clone();
    assert!(report.unclean_shutdown, "{report:?}");
    assert!(
        report.replayed_records > 0,
        "the tail after the last checkpoint is replayed: {report:?}"
    );
    assert!(
        report.rebuilt_indexes.is_empty() && report.tail_repairs.is_empty(),
        "{report:?}"
    );
    // Per batch: BATCH notes minus the deleted one, plus the deletion; one kind 0 overall.
    assert_eq!(
        store.count(&[Filter::new().kinds([1])]).unwrap(),
        BATCHES * (BATCH - 1)
    );
    assert_eq!(store.count(&[Filter::new().kinds([5])]).unwrap(), BATCHES);
    let profiles = store.query(&[Filter::new().kinds([0])]).unwrap();
    assert_eq!(profiles.len(), 1);
    assert_eq!(
        profiles[0].content,
        format!("{{\"name\":\"v{}\"}}", BATCHES - 1)
    );
    for b in 0..BATCHES {
        assert_eq!(
            store
                .count(&[Filter::new().tag('t', [format!("b{b}")])])
                .unwrap(),
            BATCH - 1,
            "batch {b}"
        );
    }
    store.close().unwrap();

    // The recovered state was checkpointed at close: nothing to replay now.
    let store = EventStore::open(dir.path()).unwrap();
    assert!(!store.recovery_report().unclean_shutdown);
    assert_eq!(store.recovery_report().replayed_records, 0);
    assert_eq!(
        store.count(&[Filter::new().kinds([1])]).unwrap(),
        BATCHES * (BATCH - 1)
    );
    store.close().unwrap();
}
