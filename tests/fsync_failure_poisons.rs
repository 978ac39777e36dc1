//! A failed fsync is fatal (the fsyncgate lesson: after a failed fsync the
//! kernel may have dropped the dirty pages, so a retry proves nothing). The
//! batch is not acknowledged, later writes are refused with a clear error,
//! reads go on, and reopening recovers.

mod common;

use common::crash::{model_after, open, workload_events};
use megalith::Filter;
use megalith::storage::{Damage, SimStorage};

#[test]
fn a_failed_fsync_refuses_the_batch_and_later_writes_but_not_reads() {
    let events = workload_events(5, 8);
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let store = open(&sim, dir.path()).unwrap();
    store.insert(&events[..4]).unwrap();
    let before = store.query(&[Filter::new()]).unwrap();
    assert_eq!(before, model_after(&events, 4));

    // The next group writes its records (operation 0), then syncs them (1).
    sim.reset_faults();
    sim.fail_once_at(1);
    let error = store.insert(&events[4..6]).unwrap_err().to_string();
    assert!(
        error.contains("sync") && error.contains("injected"),
        "{error}"
    );

    // The fault is gone, but the store stays poisoned until reopened.
    let refused = store.insert(&events[6..]).unwrap_err().to_string();
    assert!(
        refused.contains("refuses writes") && refused.contains("reopen"),
        "{refused}"
    );
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        before,
        "reads go on, unchanged"
    );
    assert!(
        store.close().is_err(),
        "close cannot checkpoint a poisoned store"
    );

    // Power loss: the unacknowledged batch may or may not be on disk; here it is not.
    sim.crash(Damage::DropUnsynced, 0).unwrap();
    let store = open(&sim, dir.path()).unwrap();
    assert!(store.recovery_report().unclean_shutdown);
    assert_eq!(store.query(&[Filter::new()]).unwrap(), before);
    store.insert(&events[4..]).unwrap();
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        model_after(&events, events.len())
    );
    store.close().unwrap();
}
