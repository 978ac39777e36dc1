//! Simulated power loss at every I/O operation of a workload (open, inserts,
//! checkpoints, rotations, close), with each kind of damage to the writes
//! that were not synced: every crash point reopens, loses no acknowledged
//! insert and holds exactly a prefix of what was sent.

mod common;

use common::crash::{
    assert_doctor_clean, assert_prefix, open, recover_and_finish, run, set_level_entries,
    workload_events,
};
use megalith::storage::{Damage, SimStorage};

const EVENTS: usize = 30;

/// Power lost at every operation `n` of the workload of `events` (which
/// takes `total_ops` operations when nothing fails), with each kind of
/// damage: what the crash left passes index-doctor, the recovered store
/// takes the rest of the workload and closes cleanly, holding exactly
/// `events` and losing no acknowledged insert. Returns the crash points,
/// the acknowledged inserts checked, and the points that crashed mid-workload.
fn sweep(events: &[megalith::Event], total_ops: u64) -> (usize, usize, usize) {
    let (mut points, mut acknowledged_total, mut mid_workload) = (0, 0, 0);
    for n in 0..=total_ops {
        for (d, damage) in Damage::ALL.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let sim = SimStorage::new(dir.path()).unwrap();
            sim.power_off_at(n);
            let crashed = run(&sim, dir.path(), events);
            sim.crash(damage, n * 4 + d as u64).unwrap();

            let what = format!("power lost at operation {n} of {total_ops}, {damage:?}");
            if crashed
                .error
                .as_deref()
                .is_none_or(|e| !e.starts_with("open"))
            {
                // What the crash left: every index agrees with the log as of its checkpoint.
                assert_doctor_clean(dir.path(), &what);
            }
            // The recovered store takes the rest of the workload and closes cleanly.
            recover_and_finish(&sim, dir.path(), events, crashed.acknowledged, &what);
            let store = open(&sim, dir.path()).unwrap();
            assert_prefix(&store, events, events.len(), &what);
            assert!(!store.recovery_report().unclean_shutdown, "{what}");
            drop(store);
            assert_doctor_clean(dir.path(), &what);

            points += 1;
            acknowledged_total += crashed.acknowledged;
            if crashed.acknowledged > 0 && crashed.acknowledged < events.len() {
                mid_workload += 1;
            }
        }
    }
    (points, acknowledged_total, mid_workload)
}

#[test]
fn every_crash_point_reopens_without_losing_acknowledged_events() {
    let events = workload_events(11, EVENTS);

    // A clean run tells how many operations the workload takes.
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let clean = run(&sim, dir.path(), &events);
    assert_eq!(clean.error, None);
    assert_eq!(clean.acknowledged, EVENTS);
    let total_ops = sim.ops();
    let store = open(&sim, dir.path()).unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.log_segments > 1, "the workload rotates the log");
    drop(store);

    let (points, acknowledged_total, mid_workload) = sweep(&events, total_ops);
    println!(
        "{points} crash points ({total_ops} operations x {} damage kinds), \
         {acknowledged_total} acknowledged inserts checked, 0 lost",
        Damage::ALL.len()
    );
    assert!(mid_workload > 0);
}

/// The same sweep over a workload whose in-memory level (16 entries) fills
/// again and again over trees many times its size: it is spilled to run
/// files, neighbouring runs are merged into one file, and the runs are
/// merged into the trees once they are a quarter of them. Power lost at
/// every operation of that, with each kind of damage: every crash point
/// reopens with every acknowledged insert, exactly a prefix of what was
/// sent, and an index-doctor that finds nothing wrong.
#[test]
fn every_crash_point_of_spilled_runs_reopens_without_losing_acknowledged_events() {
    const SPILLED_EVENTS: usize = 30;
    set_level_entries(16);
    let events = workload_events(13, SPILLED_EVENTS);

    // A clean run, one insert at a time, watching the run files come and
    // go: spilled, merged with each other, merged into the trees.
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let store = open(&sim, dir.path()).unwrap();
    let (mut most_runs, mut fewer_after_more) = (0, false);
    for event in &events {
        store.insert(std::slice::from_ref(event)).unwrap();
        let runs = store.stats().unwrap().index_runs;
        fewer_after_more |= runs < most_runs;
        most_runs = most_runs.max(runs);
    }
    drop(store);
    assert!(
        most_runs >= 2,
        "the workload spills runs ({most_runs} at most)"
    );
    assert!(fewer_after_more, "runs are merged away");
    let total_ops = sim.ops();
    assert_prefix(
        &open(&sim, dir.path()).unwrap(),
        &events,
        SPILLED_EVENTS,
        "clean",
    );

    let (points, _, _) = sweep(&events, total_ops);
    println!("{points} crash points over spilled runs ({total_ops} operations), 0 lost");
}

/// Background checkpoints (here after every group) write the time-ordered
/// trees and leave an in-memory level below its budget staged: merging a
/// small level into a big tree rewrites nearly every leaf it reaches for
/// few entries. After a power loss, replay stages the level again from the
/// log: every record since the open, none of it lost; a clean close
/// merges it, and the next open replays nothing.
#[test]
fn background_checkpoints_leave_a_small_level_staged_and_replay_stages_it_again() {
    use megalith::{Durability, EventStore, Filter};
    let events = workload_events(12, 40);
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let open_store = || {
        EventStore::builder(dir.path())
            .shards(1)
            .storage(std::sync::Arc::new(sim.clone()))
            .durability(Durability::Always)
            .segment_size(64 << 10)
            .checkpoint_dirty_nodes(1)
            .level_entries(1 << 20)
            .open()
            .unwrap()
    };
    let store = open_store();
    for event in &events {
        store.insert(std::slice::from_ref(event)).unwrap();
    }
    let held = store.query(&[Filter::new()]).unwrap();
    sim.power_off_at(sim.ops());
    drop(store);
    sim.crash(Damage::DropUnsynced, 1).unwrap();

    let store = open_store();
    let report = store.recovery_report().clone();
    assert!(report.unclean_shutdown);
    // Every record since the open (the events, and the removals their
    // replacements made): the level was never merged.
    assert!(
        report.replayed_records >= events.len() as u64,
        "replayed {} of {} records",
        report.replayed_records,
        events.len()
    );
    assert_eq!(store.query(&[Filter::new()]).unwrap(), held);
    assert_eq!(store.stats().unwrap().events, held.len() as u64);
    store.close().unwrap();
    let store = open_store();
    assert_eq!(store.recovery_report().replayed_records, 0);
    assert_eq!(store.query(&[Filter::new()]).unwrap(), held);
    drop(store);
    assert_doctor_clean(dir.path(), "after the merge at close");
}
