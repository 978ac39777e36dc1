//! I/O error sweep (after SQLite's): fail operation N once, or operation N
//! and every one after it, for every N of a workload. The error must reach
//! the caller (open, insert or close fails), a failed write poisons the
//! store (later writes refused, reads go on), nothing unsynced is
//! acknowledged, and once the fault is gone the store reopens with every
//! acknowledged insert.

mod common;

use common::crash::{recover_and_finish, run, set_level_entries, workload_events};
use megalith::storage::{Damage, SimStorage};

const EVENTS: usize = 24;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Once,
    Always,
}

/// Fails every operation of the workload of `events` once, and from it
/// on, then crashes with and without the unsynced writes: the failure
/// reaches the caller, saying what failed, and the store recovers with
/// every acknowledged insert. Returns the fault points and how many of
/// them failed an insert.
fn sweep(events: &[megalith::Event]) -> (usize, usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let clean = run(&sim, dir.path(), events);
    assert_eq!((clean.acknowledged, clean.error), (events.len(), None));
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
                let faulty = run(&sim, dir.path(), events);
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

                recover_and_finish(&sim, dir.path(), events, faulty.acknowledged, &what);
                points += 1;
            }
        }
    }
    (points, failed_inserts, total_ops)
}

#[test]
fn every_failed_operation_reaches_the_caller_and_the_store_recovers() {
    let events = workload_events(23, EVENTS);
    let (points, failed_inserts, total_ops) = sweep(&events);
    println!(
        "{points} fault points ({total_ops} operations x once/always x drop/keep), \
         {failed_inserts} of them failed an insert"
    );
    assert!(failed_inserts > 0);
}

/// The same sweep over a workload whose in-memory level (16 entries) is
/// spilled to run files, merged with other runs and into the trees (see
/// recover_power_loss): a write, sync, rename or removal of a run file
/// that fails (a full disk) reaches the caller, and the store recovers.
#[test]
fn every_failed_operation_of_spilled_runs_reaches_the_caller_and_the_store_recovers() {
    set_level_entries(16);
    let events = workload_events(13, 30);
    let (points, failed_inserts, total_ops) = sweep(&events);
    println!(
        "{points} fault points over spilled runs ({total_ops} operations), \
         {failed_inserts} of them failed an insert"
    );
    assert!(failed_inserts > 0);
}
