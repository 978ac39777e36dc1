//! Online compaction (docs/compaction.md): the bytes of replaced, deleted
//! and vanished events leave the store's files; every answer stays what
//! the brute-force model says, after a reopen, after the indexes are
//! rebuilt from the compacted log, beside a writer and readers, and after
//! a power loss at any step of a compaction.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Model;
use common::crash::assert_doctor_clean;
use megalith::storage::{Damage, SimStorage};
use megalith::{
    ChangeOp, ChangePosition, CompactOptions, Durability, Event, EventId, EventStore, Filter, Keys,
};

/// A marker that names one event's content, found by a byte search.
fn marker(what: &str, author: usize, n: usize) -> String {
    format!("<{what}-{author}-{n}-c0mpact>")
}

/// Content of `len` bytes that starts with `mark`.
fn content(mark: &str, len: usize) -> String {
    let mut text = mark.to_string();
    while text.len() < len {
        text.push_str(" filler text of a long event");
    }
    text
}

/// The workload: per author, notes (a third of them deleted by a kind 5),
/// a profile replaced three times, an article replaced once. Big contents
/// (9 KiB) so that the removed ones span whole file blocks. Returns the
/// events in order and the markers of what is removed and what stays.
fn workload(authors: usize, seed: u64) -> (Vec<Event>, Vec<String>, Vec<String>) {
    let mut events = Vec::new();
    let (mut gone, mut kept) = (Vec::new(), Vec::new());
    let t0 = 1_700_000_000;
    for a in 0..authors {
        let keys = Keys::from_seed(seed * 1000 + a as u64);
        let mut notes = Vec::new();
        for n in 0..9 {
            let deleted = n % 3 == 1;
            let mark = marker(if deleted { "gone-note" } else { "kept-note" }, a, n);
            let len = if n % 2 == 0 { 9000 } else { 300 };
            let note = keys.sign(t0 + n as u64, 1, vec![], content(&mark, len));
            if deleted {
                gone.push(mark);
                notes.push(note.id);
            } else {
                kept.push(mark);
            }
            events.push(note);
            if n % 4 == 3 {
                let version = n / 4;
                let mark = marker("profile", a, version);
                events.push(keys.sign(t0 + 100 + version as u64, 0, vec![], content(&mark, 9000)));
                if version < 1 {
                    gone.push(mark);
                } else {
                    kept.push(mark);
                }
            }
        }
        for version in 0..2 {
            let mark = marker("article", a, version);
            let tags = vec![vec!["d".to_string(), "post".to_string()]];
            events.push(keys.sign(t0 + 200 + version as u64, 30023, tags, content(&mark, 9000)));
            if version == 0 {
                gone.push(mark);
            } else {
                kept.push(mark);
            }
        }
        let tags = notes
            .iter()
            .map(|id| vec!["e".to_string(), id.to_hex()])
            .collect();
        events.push(keys.sign(t0 + 300, 5, tags, String::new()));
    }
    (events, gone, kept)
}

fn filters(events: &[Event]) -> Vec<Vec<Filter>> {
    let mut authors: Vec<_> = events.iter().map(|e| e.pubkey).collect();
    authors.dedup();
    let mut out = vec![
        vec![Filter::new()],
        vec![Filter::new().kinds([1])],
        vec![Filter::new().kinds([0, 30023])],
        vec![Filter::new().kinds([5])],
        vec![Filter::new().limit(7)],
    ];
    for author in authors.iter().take(3) {
        out.push(vec![Filter::new().authors([*author])]);
        out.push(vec![Filter::new().authors([*author]).kinds([1]).limit(2)]);
    }
    out
}

fn model_of(events: &[Event]) -> Model {
    let mut model = Model::default();
    for event in events {
        model.insert(event, common::now());
    }
    model
}

fn assert_answers(store: &EventStore, model: &Model, events: &[Event], what: &str) {
    for filter in filters(events) {
        assert_eq!(
            store.query(&filter).unwrap(),
            model.query(&filter),
            "{what}: {filter:?}"
        );
    }
}

/// Which of `markers` some file under `dir` holds.
fn found_in_files(dir: &Path, markers: &[String]) -> Vec<String> {
    let mut bytes = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    markers
        .iter()
        .filter(|m| bytes.windows(m.len()).any(|w| w == m.as_bytes()))
        .cloned()
        .collect()
}

fn open_file_store(dir: &Path) -> EventStore {
    open_file_store_with(dir, 2, 64 << 10)
}

fn open_file_store_with(dir: &Path, shards: u32, segment_size: u64) -> EventStore {
    EventStore::builder(dir)
        .shards(shards)
        .segment_size(segment_size)
        .durability(Durability::Always)
        .open()
        .unwrap()
}

fn insert_all(store: &EventStore, events: &[Event]) {
    for chunk in events.chunks(5) {
        store.insert(chunk).unwrap();
    }
}

#[test]
fn removed_events_leave_the_files_and_every_answer_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (events, gone, kept) = workload(6, 1);
    let model = model_of(&events);
    let store = open_file_store(dir.path());
    insert_all(&store, &events);
    assert_answers(&store, &model, &events, "before compaction");
    // The test sees what it looks for: every marker is in the files now.
    store.checkpoint().unwrap();
    assert_eq!(found_in_files(dir.path(), &gone), gone);
    assert_eq!(found_in_files(dir.path(), &kept), kept);

    let report = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(report.records_compacted, gone.len() as u64, "{report:?}");
    assert_eq!(report.records_left, 0, "{report:?}");
    assert!(report.segments_rewritten > 0, "{report:?}");
    // The removed bytes are holes now: at least half of them went back to
    // the file system (the rest are the partial blocks at their edges).
    assert!(
        report.disk_bytes_after + report.bytes_compacted / 2 <= report.disk_bytes_before,
        "{report:?}"
    );
    assert_answers(&store, &model, &events, "after compaction");
    assert_eq!(found_in_files(dir.path(), &gone), Vec::<String>::new());
    assert_eq!(found_in_files(dir.path(), &kept), kept);
    // The manifest says the logs hold compacted records (feature bit 2),
    // so a build without compaction refuses the store.
    let manifest = std::fs::read(dir.path().join("MANIFEST")).unwrap();
    assert_eq!(manifest[16] & 4, 4);

    // Nothing more to do: a second run writes nothing.
    let again = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(
        (again.records_compacted, again.segments_rewritten),
        (0, 0),
        "{again:?}"
    );

    // New events after the compaction, removed again, compact again.
    let keys = Keys::from_seed(99);
    let mark = marker("gone-later", 0, 0);
    let later = keys.sign(1_700_100_000, 1, vec![], content(&mark, 9000));
    let deletion = keys.sign(
        1_700_100_001,
        5,
        vec![vec!["e".to_string(), later.id.to_hex()]],
        String::new(),
    );
    store.insert(std::slice::from_ref(&later)).unwrap();
    store.insert(std::slice::from_ref(&deletion)).unwrap();
    let third = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(third.records_compacted, 1, "{third:?}");
    assert_eq!(
        found_in_files(dir.path(), std::slice::from_ref(&mark)),
        Vec::<String>::new()
    );
    let mut all = events.clone();
    all.extend([later, deletion]);
    let model = model_of(&all);
    assert_answers(&store, &model, &all, "after a second compaction");
    store.close().unwrap();

    // Reopened: the same answers.
    let store = open_file_store(dir.path());
    assert_answers(&store, &model, &all, "reopened");
    // The change feed reads the compacted logs: no removed event shows up
    // (neither stored nor removed), every event that stays is stored.
    let mut position = ChangePosition::start(2);
    let mut stored = std::collections::HashSet::new();
    loop {
        let changes = store.changes(&position, 1000).unwrap();
        let Some(last) = changes.last() else { break };
        position = last.position.clone();
        for change in changes {
            assert!(
                model.live.contains_key(&change.event.id) || change.op == ChangeOp::Removed,
                "a compacted event was read back: {}",
                change.event.id
            );
            if change.op == ChangeOp::Stored {
                stored.insert(change.event.id);
            }
        }
    }
    assert!(model.live.keys().all(|id| stored.contains(id)));
    store.close().unwrap();
    assert_doctor_clean(dir.path(), "after compaction");

    // Every index rebuilt from the compacted log (replay skips the
    // compacted records and the remove records naming them).
    for shard in ["shard-0000", "shard-0001"] {
        let index = dir.path().join(shard).join("index");
        for entry in std::fs::read_dir(&index).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    let store = open_file_store(dir.path());
    assert!(store.recovery_report().replayed_records > 0);
    assert_answers(
        &store,
        &model,
        &all,
        "indexes rebuilt from the compacted log",
    );
    store.close().unwrap();
    assert_doctor_clean(dir.path(), "indexes rebuilt");
}

/// A writer inserting (and deleting) and readers querying while compaction
/// rewrites the segments: every acknowledged event is there afterwards,
/// every answer is the model's, and readers never fail.
#[test]
fn compaction_runs_beside_a_writer_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _, _) = workload(12, 2);
    let (first, second) = events.split_at(events.len() / 2);
    let store = Arc::new(open_file_store(dir.path()));
    insert_all(&store, first);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut queries = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store
                        .query(&[Filter::new()])
                        .expect("a query beside compaction");
                    store
                        .query(&[Filter::new().kinds([0, 1, 30023]).limit(20)])
                        .expect("a query beside compaction");
                    queries += 1;
                }
                queries
            })
        })
        .collect();
    let writer = {
        let (store, second) = (Arc::clone(&store), second.to_vec());
        std::thread::spawn(move || {
            for chunk in second.chunks(3) {
                store.insert(chunk).expect("an insert beside compaction");
            }
        })
    };
    let mut compacted = 0;
    for _ in 0..4 {
        let report = store.compact(&CompactOptions::default()).unwrap();
        compacted += report.records_compacted;
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.join().unwrap();
    let report = store.compact(&CompactOptions::default()).unwrap();
    compacted += report.records_compacted;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    let model = model_of(&events);
    let removed = events.len() - model.live.len();
    assert_eq!(compacted, removed as u64);
    assert_answers(&store, &model, &events, "beside a writer and readers");
    Arc::try_unwrap(store).ok().unwrap().close().unwrap();
    assert_doctor_clean(dir.path(), "compaction beside a writer");
}

fn open_sim(sim: &SimStorage, dir: &Path) -> Result<EventStore, megalith::Error> {
    EventStore::builder(dir)
        .shards(1) // one shard: I/O operations come in a fixed order
        .storage(Arc::new(sim.clone()))
        .durability(Durability::Always)
        .segment_size(64 << 10)
        .checkpoint_interval(Duration::from_secs(24 * 3600))
        // The analytics replay from a checkpoint of their own, which
        // index-doctor checks against the logs after every crash point (it
        // once took a torn tail at the checkpoint's position for damage).
        .analytics(true)
        .open()
}

/// Builds the store a sweep starts from on `sim`: `events` inserted,
/// closed cleanly.
fn prepare(sim: &SimStorage, dir: &Path, events: &[Event]) {
    let store = open_sim(sim, dir).unwrap();
    for chunk in events.chunks(4) {
        store.insert(chunk).unwrap();
    }
    store.close().unwrap();
}

/// What a sweep does after `prepare`: opens the store, inserts `more`
/// (removals among them, after the last checkpoint), compacts without a
/// checkpoint first (only what the checkpoints reflect may go), compacts
/// with one, closes. Returns the inserts of `more` acknowledged.
fn compaction_workload(sim: &SimStorage, dir: &Path, more: &[Event]) -> usize {
    let Ok(store) = open_sim(sim, dir) else {
        return 0;
    };
    let mut acknowledged = 0;
    for (n, event) in more.iter().enumerate() {
        // Before the last insert (a deletion), a checkpoint: what was
        // removed before it may go, what the deletion removes may not.
        if n + 1 == more.len() && store.checkpoint().is_err() {
            return acknowledged;
        }
        if store.insert(std::slice::from_ref(event)).is_err() {
            return acknowledged;
        }
        acknowledged += 1;
    }
    let lazy = CompactOptions {
        checkpoint_first: false,
        ..CompactOptions::default()
    };
    if let Ok(report) = store.compact(&lazy) {
        // The deletion's notes stay: it came after the checkpoint.
        assert!(report.records_left >= 3, "{report:?}");
        assert!(report.records_compacted > 0, "{report:?}");
    }
    let _ = store.compact(&CompactOptions::default());
    let _ = store.close();
    acknowledged
}

/// The store holds what the model holds after `prepared` plus at least
/// `acknowledged` of the inserts after it.
fn assert_holds_prefix(
    store: &EventStore,
    events: &[Event],
    prepared: usize,
    acknowledged: usize,
    what: &str,
) {
    let held = store.query(&[Filter::new()]).unwrap();
    let found = (prepared + acknowledged..=events.len())
        .any(|n| model_of(&events[..n]).query(&[Filter::new()]) == held);
    assert!(
        found,
        "{what}: {} events held, no prefix of at least {} inserts",
        held.len(),
        prepared + acknowledged
    );
}

/// Power lost at every I/O operation of an open, inserts that remove
/// events, a compaction without and one with a checkpoint first, and a
/// close, with each kind of damage to what was not synced: the store
/// reopens holding a prefix of the inserts with every acknowledged one
/// (nothing the compaction took was still owed to a replay), and
/// index-doctor finds nothing wrong.
#[test]
fn power_loss_at_every_step_of_a_compaction_loses_nothing() {
    let (events, _, _) = workload(3, 3);
    // The last author's events (its deletion last) come after the store
    // was closed: their removals are newer than every checkpoint.
    let prepared = events
        .iter()
        .rposition(|e| e.kind == 5 && e.pubkey != events.last().unwrap().pubkey)
        .unwrap()
        + 1;
    let (first, more) = events.split_at(prepared);

    // A clean run counts the operations, and compacts everything removed.
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    prepare(&sim, dir.path(), first);
    let before = sim.ops();
    assert_eq!(compaction_workload(&sim, dir.path(), more), more.len());
    let total = sim.ops() - before;
    let model = model_of(&events);
    let store = open_sim(&sim, dir.path()).unwrap();
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        model.query(&[Filter::new()])
    );
    let again = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(
        again.records_compacted, 0,
        "the clean run compacted everything"
    );
    drop(store);

    let mut points = 0;
    for n in 0..=total {
        for (d, damage) in Damage::ALL.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let sim = SimStorage::new(dir.path()).unwrap();
            prepare(&sim, dir.path(), first);
            sim.power_off_at(sim.ops() + n);
            let acknowledged = compaction_workload(&sim, dir.path(), more);
            sim.crash(damage, n * 4 + d as u64).unwrap();
            let what = format!("power lost at operation {n} of {total}, {damage:?}");
            assert_doctor_clean(dir.path(), &what);
            let store =
                open_sim(&sim, dir.path()).unwrap_or_else(|e| panic!("{what}: reopening: {e}"));
            assert_holds_prefix(&store, &events, prepared, acknowledged, &what);
            // The rest of the inserts and a compaction after the crash.
            let held = store.query(&[Filter::new()]).unwrap().len();
            for event in more {
                store.insert(std::slice::from_ref(event)).unwrap();
            }
            store.compact(&CompactOptions::default()).unwrap();
            assert_eq!(
                store.query(&[Filter::new()]).unwrap(),
                model.query(&[Filter::new()]),
                "{what}: after the rest (held {held} at reopening)"
            );
            store.close().unwrap();
            assert_doctor_clean(dir.path(), &what);
            points += 1;
        }
    }
    println!("{points} crash points over {total} operations, nothing acknowledged lost");
}

/// The analytics replay the log from a checkpoint of their own at an open:
/// compaction keeps every record that replay still reads, even when the
/// indexes' checkpoints are newer.
#[test]
fn the_analytics_checkpoint_holds_back_what_its_replay_reads() {
    let (events, _, _) = workload(3, 4);
    let model = model_of(&events);
    let removed = (events.len() - model.live.len()) as u64;
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let open = || {
        EventStore::builder(dir.path())
            .shards(1)
            .storage(Arc::new(sim.clone()))
            .durability(Durability::Always)
            .segment_size(64 << 10)
            // No analytics checkpoint but at close.
            .checkpoint_interval(Duration::from_secs(24 * 3600))
            .analytics(true)
            .open()
            .unwrap()
    };
    let store = open();
    for chunk in events.chunks(4) {
        store.insert(chunk).unwrap();
    }
    // The indexes are durable; the analytics have no checkpoint yet.
    store.checkpoint().unwrap();
    let lazy = CompactOptions {
        checkpoint_first: false,
        ..CompactOptions::default()
    };
    let report = store.compact(&lazy).unwrap();
    assert_eq!(
        (report.records_compacted, report.records_left),
        (0, removed)
    );
    // Power lost here: the next open builds the analytics from the whole log.
    sim.power_off_at(sim.ops());
    drop(store);
    sim.crash(Damage::KeepAll, 7).unwrap();
    let store = open();
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        model.query(&[Filter::new()])
    );
    // With both checkpoints made first, everything removed goes.
    let report = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(
        (report.records_compacted, report.records_left),
        (removed, 0)
    );
    store.close().unwrap();
    assert_doctor_clean(dir.path(), "analytics after compaction");
}

/// A second compaction of segments compacted before keeps their holes
/// (it writes only the earlier compacted frames, not the zeros after
/// them), and a live backup made right after a compaction (which sealed
/// the active segment) opens with the same answers.
#[test]
fn a_segment_compacted_again_keeps_its_runs_and_a_backup_after_compaction_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _, _) = workload(6, 5);
    let store = open_file_store(dir.path());
    insert_all(&store, &events);
    let first = store.compact(&CompactOptions::default()).unwrap();
    assert!(first.records_compacted > 0, "{first:?}");
    // A newer profile replaces one in a segment compacted already.
    let keys = Keys::from_seed(5 * 1000);
    let newer = keys.sign(1_700_000_500, 0, vec![], content("<newest>", 200));
    store.insert(std::slice::from_ref(&newer)).unwrap();
    let second = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(second.records_compacted, 1, "{second:?}");
    // The segment packed by the first run is packed again with its runs:
    // the logs take no more room than before, less the 9 KiB profile.
    assert!(
        second.disk_bytes_after + 4096 <= second.disk_bytes_before,
        "{second:?}"
    );
    let mut all = events.clone();
    all.push(newer);
    let model = model_of(&all);
    assert_answers(&store, &model, &all, "after the second compaction");

    // The store is open: the backup follows the synced marks, which name
    // the segments the compaction's seal started.
    let copy = dir.path().join("copy");
    let report = megalith::backup_store(dir.path(), &copy, false).unwrap();
    assert!(report.live);
    let copied = open_file_store(&copy);
    assert_answers(&copied, &model, &all, "the live backup after compaction");
    copied.close().unwrap();
    store.close().unwrap();
}

/// A change-feed position kept from before a compaction that falls inside
/// the records it took: reading from it goes on after them, with every
/// later change (nothing of the segment skipped).
#[test]
fn a_feed_position_inside_compacted_records_resumes_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_file_store(dir.path());
    let keys = Keys::from_seed(77);
    let notes: Vec<Event> = (0..6)
        .map(|n| {
            keys.sign(
                1_700_000_000 + n,
                1,
                vec![],
                content(&marker("feed", 0, n as usize), 3000),
            )
        })
        .collect();
    for note in &notes {
        store.insert(std::slice::from_ref(note)).unwrap();
    }
    // The position after the second note: inside the run that notes 2
    // and 3 become once deleted and compacted.
    let mut position = ChangePosition::start(2);
    let mut kept = None;
    loop {
        let changes = store.changes(&position, 1).unwrap();
        let Some(change) = changes.last() else { break };
        position = change.position.clone();
        if change.event.id == notes[2].id {
            kept = Some(position.clone());
        }
    }
    let deletion = keys.sign(
        1_700_000_100,
        5,
        vec![
            vec!["e".to_string(), notes[2].id.to_hex()],
            vec!["e".to_string(), notes[3].id.to_hex()],
        ],
        String::new(),
    );
    store.insert(std::slice::from_ref(&deletion)).unwrap();
    let report = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(report.records_compacted, 2, "{report:?}");
    let mut from = kept.expect("the feed had note 2");
    let mut stored = Vec::new();
    loop {
        let changes = store.changes(&from, 100).unwrap();
        let Some(last) = changes.last() else { break };
        from = last.position.clone();
        stored.extend(
            changes
                .iter()
                .filter(|c| c.op == ChangeOp::Stored)
                .map(|c| c.event.id),
        );
    }
    assert_eq!(stored, vec![notes[4].id, notes[5].id, deletion.id]);
    store.close().unwrap();
}

/// The garbage figure (the background compaction's trigger) counts the
/// bytes of each event a writer removes, and equals what a compaction then
/// takes out; after a reopen it counts from the next pass, which makes it
/// exact: what a later compaction takes.
#[test]
fn the_garbage_figure_counts_what_compaction_takes_out() {
    let dir = tempfile::tempdir().unwrap();
    let (events, gone, _) = workload(6, 5);
    let store = open_file_store(dir.path());
    let fresh = store.garbage();
    assert_eq!(
        (fresh.removed_bytes, fresh.counted),
        (0, false),
        "{fresh:?}"
    );
    insert_all(&store, &events);
    let before = store.garbage();
    assert!(
        before.removed_bytes > 0 && before.log_bytes > 0,
        "{before:?}"
    );
    assert!(!before.counted, "no pass has run: {before:?}");
    let report = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(report.records_compacted, gone.len() as u64, "{report:?}");
    assert_eq!(
        before.removed_bytes, report.bytes_compacted,
        "the writers counted what compaction took out"
    );
    let after = store.garbage();
    assert_eq!((after.removed_bytes, after.counted), (0, true), "{after:?}");

    // Removed before the store closes: an open starts counting from
    // nothing, and the first pass counts what the logs hold. A pass that
    // may rewrite nothing (a share of 1) finds what the writers had
    // counted; the next run takes out exactly that.
    let keys = Keys::from_seed(77);
    let notes: Vec<Event> = (0..6)
        .map(|n| {
            keys.sign(
                1_700_200_000 + n,
                1,
                vec![],
                content(&marker("late", 0, n as usize), 5000),
            )
        })
        .collect();
    insert_all(&store, &notes);
    let deletion = keys.sign(
        1_700_200_100,
        5,
        notes
            .iter()
            .take(4)
            .map(|e| vec!["e".to_string(), e.id.to_hex()])
            .collect(),
        String::new(),
    );
    store.insert(&[deletion]).unwrap();
    let counted = store.garbage().removed_bytes;
    assert!(counted > 4 * 5000, "{counted}");
    store.close().unwrap();
    let store = open_file_store(dir.path());
    let reopened = store.garbage();
    assert!(!reopened.counted, "{reopened:?}");
    let only_look = CompactOptions {
        min_garbage: 1.0,
        ..CompactOptions::default()
    };
    let looked = store.compact(&only_look).unwrap();
    assert_eq!(looked.records_compacted, 0, "{looked:?}");
    let known = store.garbage();
    assert!(known.counted, "{known:?}");
    assert_eq!(
        known.removed_bytes, counted,
        "the pass found what the writers had counted"
    );
    let report = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(
        (report.records_compacted, report.bytes_compacted),
        (4, counted),
        "{report:?}"
    );
    assert_eq!(store.garbage().removed_bytes, 0);
    store.close().unwrap();
}

/// Events past their NIP-40 expiration (hidden from queries, but stored)
/// are found in the sealed segments a compaction reads, removed, and their
/// bytes taken out in the same run; those not expired stay.
#[test]
fn expired_events_leave_the_store_and_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_file_store(dir.path());
    let keys = Keys::from_seed(88);
    let now = common::now();
    let expires = now + 2;
    let expiring: Vec<Event> = (0..8)
        .map(|n| {
            keys.sign(
                now - 100 + n,
                1,
                vec![vec!["expiration".to_string(), expires.to_string()]],
                content(&marker("expiring", 0, n as usize), 3000),
            )
        })
        .collect();
    let later: Vec<Event> = (0..8)
        .map(|n| {
            keys.sign(
                now - 50 + n,
                1,
                vec![vec!["expiration".to_string(), (now + 3600).to_string()]],
                content(&marker("later", 0, n as usize), 3000),
            )
        })
        .collect();
    let kept: Vec<Event> = (0..40)
        .map(|n| {
            keys.sign(
                now - 10 + n,
                1,
                vec![],
                content(&marker("kept", 0, n as usize), 3000),
            )
        })
        .collect();
    // A deletion request that expires too: it stays, and keeps what it
    // deleted out (removing it would let that be stored again).
    let victim = keys.sign(now - 200, 1, vec![], "deleted before".to_string());
    let deletion = keys.sign(
        now - 150,
        5,
        vec![
            vec!["e".to_string(), victim.id.to_hex()],
            vec!["expiration".to_string(), expires.to_string()],
        ],
        String::new(),
    );
    insert_all(&store, &[victim.clone(), deletion]);
    insert_all(&store, &expiring);
    insert_all(&store, &later);
    insert_all(&store, &kept);
    let marks = |what: &str, count: usize| -> Vec<String> {
        (0..count).map(|n| marker(what, 0, n)).collect()
    };
    store.checkpoint().unwrap();
    assert_eq!(found_in_files(dir.path(), &marks("expiring", 8)).len(), 8);
    let stored_before = store.stats().unwrap().events;
    // Past the expiration (queries hide them from now on).
    while common::now() <= expires {
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(report.expired_removed, 8, "{report:?}");
    // The expired notes, and the note the deletion removed.
    assert_eq!(report.records_compacted, 9, "{report:?}");
    assert_eq!(store.stats().unwrap().events, stored_before - 8);
    assert_eq!(
        found_in_files(dir.path(), &marks("expiring", 8)),
        Vec::<String>::new()
    );
    assert_eq!(found_in_files(dir.path(), &marks("later", 8)).len(), 8);
    assert_eq!(found_in_files(dir.path(), &marks("kept", 40)).len(), 40);
    let mut visible: Vec<EventId> = later.iter().chain(&kept).map(|e| e.id).collect();
    visible.sort();
    let mut got: Vec<EventId> = store
        .query(&[Filter::new().kinds([1])])
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    got.sort();
    assert_eq!(got, visible);
    // Nothing more: a second run finds none.
    let again = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(
        (again.expired_removed, again.records_compacted),
        (0, 0),
        "{again:?}"
    );
    assert_eq!(
        store.insert(std::slice::from_ref(&victim)).unwrap(),
        vec![megalith::InsertOutcome::Deleted],
        "the expired deletion request still keeps its event out"
    );
    store.close().unwrap();
    assert_doctor_clean(dir.path(), "after expired events were compacted");
}

/// Small removed events give their bytes back too: compaction writes the
/// segments densely (packed, with a relocation table), where holes gave
/// back only whole 4 KiB blocks and a lone 600-byte note gave back
/// nothing. Every answer, a reopen and index-doctor stay right.
#[test]
fn small_removed_events_give_back_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_file_store_with(dir.path(), 1, 256 << 10);
    let keys: Vec<Keys> = (0..20).map(|n| Keys::from_seed(9100 + n)).collect();
    let mut events = Vec::new();
    for n in 0..1500u64 {
        let author = &keys[n as usize % keys.len()];
        let text = content(&marker("small", n as usize % 20, n as usize), 560);
        events.push(author.sign(1_700_000_000 + n, 1, vec![], text));
    }
    insert_all(&store, &events);
    // Every third note deleted by its author, one request each: lone
    // records between kept ones.
    let mut all = events.clone();
    let mut gone = Vec::new();
    for (n, note) in events.iter().enumerate().filter(|(n, _)| n % 3 == 1) {
        let author = &keys[n % keys.len()];
        let request = author.sign(
            1_700_100_000 + n as u64,
            5,
            vec![vec!["e".to_string(), note.id.to_hex()]],
            String::new(),
        );
        store.insert(std::slice::from_ref(&request)).unwrap();
        all.push(request);
        gone.push(marker("small", n % 20, n));
    }
    let report = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(report.records_compacted, gone.len() as u64, "{report:?}");
    let given_back = report.disk_bytes_before - report.disk_bytes_after;
    assert!(
        given_back as f64 >= 0.85 * report.bytes_compacted as f64,
        "{given_back} bytes given back of {} compacted: {report:?}",
        report.bytes_compacted
    );
    assert!(found_in_files(dir.path(), &gone).is_empty());
    let model = model_of(&all);
    assert_answers(&store, &model, &all, "after compaction");
    store.close().unwrap();
    let store = EventStore::builder(dir.path()).open().unwrap();
    assert_answers(&store, &model, &all, "reopened");
    store.close().unwrap();
    assert_doctor_clean(dir.path(), "packed segments");
}

/// The packed segments of `dir` (their header names where records end).
fn packed_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if path.extension().is_some_and(|e| e == "seg") {
            let bytes = std::fs::read(&path).unwrap();
            if bytes.len() >= 32 && bytes[20..24] != [0, 0, 0, 0] {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Damage in a packed segment: a flipped byte in a record is found and
/// repaired like in any segment (the records after it keep their
/// locations), a damaged header is rewritten with where the records end,
/// and one damaged copy of the relocation table changes nothing.
#[test]
fn damage_in_a_packed_segment_is_repaired_and_the_records_after_it_keep_their_places() {
    let pristine = tempfile::tempdir().unwrap();
    let (mut events, _, _) = workload(8, 11);
    // A long run: 60 neighbouring notes deleted by one request, so the
    // records after it lie far from their file offsets.
    let burst_keys = Keys::from_seed(11 * 1000);
    let burst: Vec<Event> = (0..60)
        .map(|n| burst_keys.sign(1_700_005_000 + n, 1, vec![], content("<burst>", 380)))
        .collect();
    let burst_tags = burst
        .iter()
        .map(|e| vec!["e".to_string(), e.id.to_hex()])
        .collect();
    events.extend(burst);
    events.push(burst_keys.sign(1_700_006_000, 5, burst_tags, String::new()));
    let (more, _, _) = workload(3, 12);
    events.extend(more);
    let store = open_file_store_with(pristine.path(), 1, 64 << 10);
    insert_all(&store, &events);
    let report = store.compact(&CompactOptions::default()).unwrap();
    assert!(report.records_compacted > 0, "{report:?}");
    store.close().unwrap();
    let model = model_of(&events);
    let packed = packed_segments(pristine.path());
    assert!(packed.len() >= 2, "{packed:?}");
    // The packed segment with the burst's run (the largest run).
    let shift = |path: &std::path::PathBuf| -> usize {
        let bytes = std::fs::read(path).unwrap();
        let end = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
        let n = u32::from_le_bytes(bytes[end + 12..end + 16].try_into().unwrap()) as usize;
        (0..n)
            .map(|i| {
                let at = end + 16 + 8 * i + 4;
                u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
            })
            .max()
            .unwrap_or(0)
    };
    let target = packed
        .iter()
        .max_by_key(|path| shift(path))
        .unwrap()
        .strip_prefix(pristine.path())
        .unwrap()
        .to_path_buf();
    let original = std::fs::read(pristine.path().join(&target)).unwrap();
    let records_end = u32::from_le_bytes(original[20..24].try_into().unwrap()) as usize;
    let entries = u32::from_le_bytes(
        original[records_end + 12..records_end + 16]
            .try_into()
            .unwrap(),
    );
    let second_copy = (records_end + 24 + 8 * entries as usize).next_multiple_of(4096);
    // The first event record after the first compacted frame.
    let segment = megalith::inspect::log::SegmentWalk::new(&original, None);
    let mut after_run = None;
    let mut seen_run = false;
    // The compacted frame of the longest run, and the last event record
    // (the farthest from its file offset).
    let mut in_run: Option<(u32, usize)> = None;
    let mut last_event = None;
    for item in segment {
        if let megalith::inspect::log::WalkItem::Record { offset, record } = item {
            match record.record_type {
                megalith::inspect::log::RecordType::Compacted => {
                    seen_run = true;
                    let run = megalith::inspect::log::CompactedPayload::decode(record.payload)
                        .unwrap()
                        .records;
                    if in_run.is_none_or(|(most, _)| run > most) {
                        in_run = Some((run, offset + 30));
                    }
                }
                megalith::inspect::log::RecordType::Event if seen_run => {
                    after_run.get_or_insert(offset + 60);
                    last_event = Some(offset + 60);
                }
                _ => {}
            }
        }
    }
    let in_event = after_run.expect("an event after a compacted run");
    let (longest, in_run) = in_run.expect("a compacted frame");
    assert!(longest >= 60, "the longest run holds {longest} records");
    let last_event = last_event.unwrap();
    // Replayed whole (the index files gone), damage in a packed segment is
    // refused, never read past.
    {
        let scratch = tempfile::tempdir().unwrap();
        copy_tree(pristine.path(), scratch.path());
        let mut bytes = original.clone();
        bytes[last_event] ^= 0x20;
        std::fs::write(scratch.path().join(&target), &bytes).unwrap();
        let index = scratch.path().join("shard-0000").join("index");
        for entry in std::fs::read_dir(&index).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        let refused = EventStore::builder(scratch.path()).open().err();
        assert!(refused.is_some(), "a full replay read past the damage");
    }
    let author_of = |event: &Event| -> Keys {
        (0..8)
            .map(|a| 11 * 1000 + a)
            .chain((0..3).map(|a| 12 * 1000 + a))
            .map(Keys::from_seed)
            .find(|k| k.pubkey() == event.pubkey)
            .unwrap()
    };
    for (what, at, lost) in [
        ("a compacted frame", in_run, 0),
        ("a record", in_event, 1),
        ("the header", 3, 0),
        ("one table copy", records_end + 20, 0),
        ("the other table copy", second_copy + 20, 0),
    ] {
        let scratch = tempfile::tempdir().unwrap();
        copy_tree(pristine.path(), scratch.path());
        let path = scratch.path().join(&target);
        let mut bytes = original.clone();
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        EventStore::builder(scratch.path())
            .repair()
            .unwrap_or_else(|e| panic!("{what}: repair failed: {e}"));
        let store = EventStore::builder(scratch.path()).open().unwrap();
        let all = store.query(&[Filter::default()]).unwrap();
        let expected = model.query(&[Filter::default()]);
        assert_eq!(expected.len() - all.len(), lost, "{what}");
        assert!(all.iter().all(|e| expected.contains(e)), "{what}");
        // The repaired segments compact again: one more note deleted.
        let note = all.iter().find(|e| e.kind == 1).unwrap().clone();
        let request = author_of(&note).sign(
            1_700_009_000,
            5,
            vec![vec!["e".to_string(), note.id.to_hex()]],
            String::new(),
        );
        store.insert(std::slice::from_ref(&request)).unwrap();
        let report = store
            .compact(&CompactOptions::default())
            .unwrap_or_else(|e| panic!("{what}: compaction after the repair: {e}"));
        assert!(report.records_compacted >= 1, "{what}: {report:?}");
        let again = store.query(&[Filter::default()]).unwrap();
        assert_eq!(
            again.len(),
            all.len(),
            "{what}: the note went, its request came"
        );
        assert!(!again.contains(&note), "{what}");
        store.close().unwrap();
        assert_doctor_clean(scratch.path(), what);
    }
}
