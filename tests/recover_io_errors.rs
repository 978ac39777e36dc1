//! I/O error sweep (after SQLite's): fail operation N once, or operation N
//! and every one after it, for every N of a workload. The error must reach
//! the caller (open, insert or close fails), a failed write poisons the
//! store (later writes refused, reads go on), nothing unsynced is
//! acknowledged, and once the fault is gone the store reopens with every
//! acknowledged insert.

mod common;

use common::crash::{recover_and_finish, run, workload_events};
use megalith::storage::{Damage, SimStorage};

const EVENTS: usize = 24;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Once,
    Always,
}

#[test]
fn every_failed_operation_reaches_the_caller_and_the_store_recovers() {
    let events = workload_events(23, EVENTS);
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let clean = run(&sim, dir.path(), &events);
    assert_eq!((clean.acknowledged, clean.error), (EVENTS, None));
    let total_ops = sim.ops();

    let mut points = 0;
    let mut failed_inserts = 0;
    for n in 0..total_ops {
        for mode in [Mode::Once, Mode::Always] {
            // Dropping the unsynced writes afterwards proves that whatever
            // was acknowledged had been synced.
            for damage in [Damage::DropUnsynced, Damage::KeepAll] {
                let dir = tempfile::tempdir().unwrap();
                let sim = SimStorage::new(dir.path()).unwrap();
                match mode {
                    Mode::Once => sim.fail_once_at(n),
                    Mode::Always => sim.fail_from(n),
                }
                let faulty = run(&sim, dir.path(), &events);
                let what =
                    format!("operation {n} of {total_ops} failing {mode:?}, then {damage:?}");
                let error = faulty
                    .error
                    .as_deref()
                    .unwrap_or_else(|| panic!("{what}: the failure never reached the caller"));
                assert!(
                    error.contains("injected I/O error"),
                    "{what}: the error does not say what failed: {error}"
                );
                if error.starts_with("insert") {
                    failed_inserts += 1;
                }
                sim.crash(damage, n).unwrap();

                recover_and_finish(&sim, dir.path(), &events, faulty.acknowledged, &what);
                points += 1;
            }
        }
    }
    println!(
        "{points} fault points ({total_ops} operations x once/always x drop/keep), \
         {failed_inserts} of them failed an insert"
    );
    assert!(failed_inserts > 0);
}
