//! The operator's delete (`EventStore::purge`, `megalith delete`,
//! retention rules): every stored event a filter matches leaves every
//! answer, a dry run changes nothing and counts the same, replay repeats
//! a purge, compaction takes the purged bytes out, the same events may be
//! stored again, and a power loss at any step of a purge keeps every
//! acknowledged removal and every event it did not name.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::crash::assert_doctor_clean;
use common::{Generator, Model, outcome_kind};
use megalith::storage::{Damage, SimStorage};
use megalith::{
    CompactOptions, Durability, Event, EventId, EventStore, Filter, Keys, KindRange, PurgeReport,
    Retention, RetentionRule,
};

fn open_store(dir: &Path) -> EventStore {
    EventStore::builder(dir)
        .shards(2)
        .segment_size(64 << 10)
        .durability(Durability::Always)
        // Small levels: purges cross staged entries and the trees.
        .level_entries(512)
        .open()
        .unwrap()
}

fn insert_both(store: &EventStore, model: &mut Model, events: &[Event]) {
    for event in events {
        let outcome = store.insert(std::slice::from_ref(event)).unwrap();
        let expected = model.insert(event, common::now());
        assert_eq!(
            outcome_kind(&outcome[0]),
            expected,
            "insert of {} (kind {})",
            event.id,
            event.kind
        );
    }
}

fn assert_answers(store: &EventStore, model: &Model, generator: &mut Generator, what: &str) {
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        model.query(&[Filter::new()]),
        "{what}: everything"
    );
    for _ in 0..60 {
        let filter = generator.filter();
        assert_eq!(
            store.query(std::slice::from_ref(&filter)).unwrap(),
            model.query(std::slice::from_ref(&filter)),
            "{what}: {filter:?}"
        );
    }
}

/// Random filters (without `limit`) purged from a store and from the
/// brute-force model: the dry run counts what the model says and changes
/// nothing; the purge removes exactly that; every answer stays the
/// model's; events sent again after (purged ones among them, and
/// deletions whose requests were purged) get the model's outcome; a
/// reopen and a rebuild of every index from the log repeat the purges.
#[test]
fn purged_events_leave_every_answer_and_replay_repeats_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = Generator::new(41, 12);
    let mut model = Model::default();
    let store = open_store(dir.path());
    let first: Vec<Event> = (0..2500).map(|_| generator.next_event()).collect();
    insert_both(&store, &mut model, &first);

    let manifest = || std::fs::read(dir.path().join("MANIFEST")).unwrap()[16];
    let mut total_removed = 0;
    for round in 0..12 {
        let mut filter = generator.filter();
        filter.limit = None;
        let expected: Vec<EventId> = model
            .query(std::slice::from_ref(&filter))
            .iter()
            .map(|e| e.id)
            .collect();
        let dry = store
            .purge(std::slice::from_ref(&filter), |_| false, true)
            .unwrap();
        assert_eq!(
            dry,
            PurgeReport {
                matched: expected.len() as u64,
                removed: 0
            },
            "round {round}, dry run: {filter:?}"
        );
        if total_removed == 0 {
            assert_eq!(manifest() & 8, 0, "a dry run leaves the manifest alone");
        }
        assert_answers(&store, &model, &mut generator, "after a dry run");

        let report = store
            .purge(std::slice::from_ref(&filter), |_| false, false)
            .unwrap();
        assert_eq!(
            report,
            PurgeReport {
                matched: expected.len() as u64,
                removed: expected.len() as u64
            },
            "round {round}: {filter:?}"
        );
        for id in &expected {
            model.purge(id);
        }
        total_removed += expected.len();
        assert!(
            store
                .query(std::slice::from_ref(&filter))
                .unwrap()
                .is_empty()
        );
        assert_answers(&store, &model, &mut generator, &format!("round {round}"));
        // More events, with earlier ones (purged among them) sent again.
        let more: Vec<Event> = (0..150).map(|_| generator.next_event()).collect();
        insert_both(&store, &mut model, &more);
    }
    assert!(total_removed > 500, "the rounds purged {total_removed}");
    // The manifest says the logs hold purge records (feature bit 3), so a
    // build without purges refuses the store.
    assert_eq!(manifest() & 8, 8);

    // What a spare keeps stays: everything but profiles and contact lists.
    let report = store
        .purge(&[Filter::new()], |e| matches!(e.kind(), 0 | 3), false)
        .unwrap();
    let doomed: Vec<EventId> = model
        .live
        .values()
        .filter(|e| !matches!(e.kind, 0 | 3))
        .map(|e| e.id)
        .collect();
    assert_eq!(report.removed, doomed.len() as u64);
    for id in &doomed {
        model.purge(id);
    }
    assert!(!model.live.is_empty());
    assert_answers(&store, &model, &mut generator, "after a purge with a spare");
    let more: Vec<Event> = (0..300).map(|_| generator.next_event()).collect();
    insert_both(&store, &mut model, &more);
    store.close().unwrap();

    let store = open_store(dir.path());
    assert_answers(&store, &model, &mut generator, "reopened");
    store.close().unwrap();
    assert_doctor_clean(dir.path(), "after purges");

    // Every index rebuilt from the log: replay repeats the purges.
    for shard in ["shard-0000", "shard-0001"] {
        let index = dir.path().join(shard).join("index");
        for entry in std::fs::read_dir(&index).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    let store = open_store(dir.path());
    assert!(store.recovery_report().replayed_records > 0);
    assert_answers(
        &store,
        &model,
        &mut generator,
        "indexes rebuilt from the log",
    );

    // Compaction takes the purged records out.
    let report = store.compact(&CompactOptions::default()).unwrap();
    let purged = (total_removed + doomed.len()) as u64;
    assert!(
        report.records_compacted >= purged,
        "{purged} purged: {report:?}"
    );
    assert_answers(&store, &model, &mut generator, "after compaction");
    store.close().unwrap();
    assert_doctor_clean(dir.path(), "after compaction");
}

/// Several filters at once: an event two of them match is counted once
/// by a dry run and removed once; a filter with `limit` is refused.
#[test]
fn overlapping_filters_count_each_event_once_and_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = Generator::new(7, 6);
    let mut model = Model::default();
    let store = open_store(dir.path());
    let events: Vec<Event> = (0..800).map(|_| generator.next_event()).collect();
    insert_both(&store, &mut model, &events);
    let filters = vec![
        Filter::new().kinds([1, 7]),
        Filter::new()
            .kinds([1])
            .authors(generator.pubkeys()[..3].to_vec()),
        Filter::new().authors(generator.pubkeys()[..2].to_vec()),
    ];
    let expected: HashSet<EventId> = model.query(&filters).iter().map(|e| e.id).collect();
    assert!(expected.len() > 50);
    let dry = store.purge(&filters, |_| false, true).unwrap();
    assert_eq!(dry.matched, expected.len() as u64);
    let real = store.purge(&filters, |_| false, false).unwrap();
    assert_eq!(
        (real.matched, real.removed),
        (expected.len() as u64, expected.len() as u64)
    );
    for id in &expected {
        model.purge(id);
    }
    assert_answers(&store, &model, &mut generator, "after an overlapping purge");
    let error = store
        .purge(&[Filter::new().limit(5)], |_| false, false)
        .unwrap_err();
    assert!(error.to_string().contains("limit"), "{error}");
    store.close().unwrap();
}

fn open_sim(sim: &SimStorage, dir: &Path) -> Result<EventStore, megalith::Error> {
    EventStore::builder(dir)
        .shards(1)
        .storage(Arc::new(sim.clone()))
        .durability(Durability::Always)
        .segment_size(64 << 10)
        .checkpoint_interval(Duration::from_secs(24 * 3600))
        .open()
}

/// Power lost at every I/O operation of an open, a purge and a close,
/// with each kind of damage to what was not synced: the store reopens
/// with every event the purge did not name, none of those it named if it
/// was acknowledged, index-doctor finds nothing wrong, and the purge run
/// again afterwards leaves the model's store.
#[test]
fn power_loss_at_every_step_of_a_purge_keeps_what_was_acknowledged() {
    let mut generator = Generator::new(5, 4);
    let events: Vec<Event> = (0..300).map(|_| generator.next_event()).collect();
    let mut model = Model::default();
    for event in &events {
        model.insert(event, common::now());
    }
    let filter = Filter::new().kinds([1, 7]);
    let named: HashSet<EventId> = model
        .query(std::slice::from_ref(&filter))
        .iter()
        .map(|e| e.id)
        .collect();
    assert!(named.len() > 30);
    let kept: HashSet<EventId> = model
        .live
        .keys()
        .copied()
        .filter(|id| !named.contains(id))
        .collect();
    let mut after = Model::default();
    for event in &events {
        after.insert(event, common::now());
    }
    for id in &named {
        after.purge(id);
    }

    let prepare = |sim: &SimStorage, dir: &Path| {
        let store = open_sim(sim, dir).unwrap();
        for chunk in events.chunks(10) {
            store.insert(chunk).unwrap();
        }
        store.close().unwrap();
    };
    // Returns whether the purge was acknowledged.
    let workload = |sim: &SimStorage, dir: &Path| -> bool {
        let Ok(store) = open_sim(sim, dir) else {
            return false;
        };
        let done = store
            .purge(std::slice::from_ref(&filter), |_| false, false)
            .is_ok();
        let _ = store.close();
        done
    };

    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    prepare(&sim, dir.path());
    let before = sim.ops();
    assert!(workload(&sim, dir.path()));
    let total = sim.ops() - before;

    let mut points = 0;
    for n in 0..=total {
        for (d, damage) in Damage::ALL.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let sim = SimStorage::new(dir.path()).unwrap();
            prepare(&sim, dir.path());
            sim.power_off_at(sim.ops() + n);
            let acknowledged = workload(&sim, dir.path());
            sim.crash(damage, n * 4 + d as u64).unwrap();
            let what = format!("power lost at operation {n} of {total}, {damage:?}");
            assert_doctor_clean(dir.path(), &what);
            let store =
                open_sim(&sim, dir.path()).unwrap_or_else(|e| panic!("{what}: reopening: {e}"));
            let held: HashSet<EventId> = store
                .query(&[Filter::new()])
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect();
            assert!(
                held.is_superset(&kept),
                "{what}: an event not named was lost"
            );
            assert!(held.difference(&kept).all(|id| named.contains(id)));
            if acknowledged {
                assert!(
                    held.is_disjoint(&named),
                    "{what}: an acknowledged purge came back"
                );
            }
            store
                .purge(std::slice::from_ref(&filter), |_| false, false)
                .unwrap();
            assert_eq!(
                store.query(&[Filter::new()]).unwrap(),
                after.query(&[Filter::new()]),
                "{what}: after the purge again"
            );
            store.close().unwrap();
            assert_doctor_clean(dir.path(), &what);
            points += 1;
        }
    }
    println!("{points} crash points over {total} operations, nothing acknowledged lost");
}

/// Retention rules against the model: each rule removes the events of
/// its kinds (a listed set, a wide range, every kind) older than its age,
/// never the `never` kinds; a dry run counts the same and changes nothing;
/// a second run finds nothing more.
#[test]
fn retention_removes_old_events_of_its_kinds_and_spares_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = Generator::new(23, 10);
    let mut model = Model::default();
    let store = open_store(dir.path());
    let events: Vec<Event> = (0..2500).map(|_| generator.next_event()).collect();
    insert_both(&store, &mut model, &events);
    let times: Vec<u64> = events.iter().map(|e| e.created_at).collect();
    let (oldest, newest) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let now = newest + 10;
    let span = now - oldest;
    let range = |text: &str| KindRange::parse(text).unwrap();
    let retention = Retention {
        rules: vec![
            RetentionRule {
                kinds: vec![range("1"), range("7")],
                max_age: span / 2,
            },
            RetentionRule {
                kinds: vec![range("1000-29999")],
                max_age: span / 3,
            },
            RetentionRule {
                kinds: vec![],
                max_age: span * 4 / 5,
            },
        ],
        never: vec![range("0"), range("3"), range("5")],
        max_bytes: None,
    };
    let doomed: HashSet<EventId> = model
        .live
        .values()
        .filter(|e| {
            let age = now - e.created_at;
            let never = matches!(e.kind, 0 | 3 | 5);
            let by_rule = (matches!(e.kind, 1 | 7) && age > span / 2)
                || ((1000..=29999).contains(&e.kind) && age > span / 3)
                || age > span * 4 / 5;
            by_rule && !never
        })
        .map(|e| e.id)
        .collect();
    assert!(doomed.len() > 100, "{}", doomed.len());
    assert!(
        model
            .live
            .values()
            .any(|e| matches!(e.kind, 0 | 3 | 5) && now - e.created_at > span * 4 / 5),
        "some never kinds are old enough to test"
    );
    let dry = store
        .apply_retention(&retention, now, true, &AtomicBool::new(false))
        .unwrap();
    assert_eq!((dry.matched, dry.removed), (doomed.len() as u64, 0));
    assert_answers(
        &store,
        &model,
        &mut generator,
        "after a dry run of the rules",
    );
    let real = store
        .apply_retention(&retention, now, false, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(real.removed, doomed.len() as u64);
    for id in &doomed {
        model.purge(id);
    }
    assert_answers(&store, &model, &mut generator, "after the rules");
    let again = store
        .apply_retention(&retention, now, false, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(again, PurgeReport::default());
    store.close().unwrap();
}

/// Events past their NIP-40 expiration are hidden from queries but still
/// stored: a purge finds and removes them too (a dry run counts them), so
/// compaction can take their bytes out.
#[test]
fn a_purge_removes_expired_events_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let keys = megalith::Keys::from_seed(77);
    let now = common::now();
    let expiring: Vec<Event> = (0..3)
        .map(|n| {
            let tags = vec![vec!["expiration".to_string(), (now + 1).to_string()]];
            keys.sign(now - 10 + n, 1, tags, format!("expiring {n}"))
        })
        .collect();
    let lasting = keys.sign(now - 5, 1, vec![], "lasting".to_string());
    store.insert(&expiring).unwrap();
    store.insert(std::slice::from_ref(&lasting)).unwrap();
    // Wait (bounded) until the expiring events are past their time.
    while common::now() <= now + 1 {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        store.query(&[Filter::new()]).unwrap(),
        vec![lasting.clone()]
    );
    let filter = [Filter::new().kinds([1])];
    let dry = store.purge(&filter, |_| false, true).unwrap();
    assert_eq!(dry.matched, 4, "{dry:?}");
    let real = store.purge(&filter, |_| false, false).unwrap();
    assert_eq!(real.removed, 4, "{real:?}");
    let report = store.compact(&CompactOptions::default()).unwrap();
    assert_eq!(report.records_compacted, 4, "{report:?}");
    store.close().unwrap();
}

/// An I/O error (a full disk, say) at each operation of a purge and the
/// close after it: the error reaches the caller and says what failed,
/// reads go on, the same purge asked again in the same process (once the
/// shard has recovered in place) removes the rest, and after a reopen the
/// store is the model's with index-doctor finding nothing wrong.
#[test]
fn an_io_error_at_any_step_of_a_purge_reaches_the_caller_and_asking_again_finishes_it() {
    let mut generator = Generator::new(6, 4);
    let events: Vec<Event> = (0..300).map(|_| generator.next_event()).collect();
    let filter = Filter::new().kinds([1, 7]);
    let mut before = Model::default();
    for event in &events {
        before.insert(event, common::now());
    }
    let mut after = Model::default();
    for event in &events {
        after.insert(event, common::now());
    }
    for event in before.query(std::slice::from_ref(&filter)) {
        after.purge(&event.id);
    }
    assert!(before.live.len() > after.live.len() + 30);
    let untouched = [Filter::new().kinds([0, 3])];
    let open = |sim: &SimStorage, dir: &Path| {
        EventStore::builder(dir)
            .shards(1)
            .storage(Arc::new(sim.clone()))
            .durability(Durability::Always)
            .segment_size(64 << 10)
            .checkpoint_interval(Duration::from_secs(24 * 3600))
            .recover_after(Duration::from_millis(5))
            .open()
    };
    let prepare = |sim: &SimStorage, dir: &Path| -> EventStore {
        let store = open(sim, dir).unwrap();
        for chunk in events.chunks(10) {
            store.insert(chunk).unwrap();
        }
        store.close().unwrap();
        open(sim, dir).unwrap()
    };
    let purge = |store: &EventStore| store.purge(std::slice::from_ref(&filter), |_| false, false);

    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let store = prepare(&sim, dir.path());
    let start = sim.ops();
    purge(&store).unwrap();
    store.close().unwrap();
    let total = sim.ops() - start;

    let mut failed_purges = 0;
    for n in 0..total {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimStorage::new(dir.path()).unwrap();
        let store = prepare(&sim, dir.path());
        sim.fail_once_at(sim.ops() + n);
        let what = format!("operation {n} of {total} failing");
        match purge(&store) {
            Ok(_) => {}
            Err(e) => {
                failed_purges += 1;
                assert!(
                    e.to_string().contains("injected I/O error"),
                    "{what}: the error does not say what failed: {e}"
                );
                assert_eq!(
                    store.query(&untouched).unwrap(),
                    before.query(&untouched),
                    "{what}: reads after the failure"
                );
                // Asked again once the shard has recovered in place.
                let finished = (0..200).any(|_| {
                    std::thread::sleep(Duration::from_millis(10));
                    purge(&store).is_ok()
                });
                assert!(finished, "{what}: the purge never finished");
            }
        }
        // The failure may hit the close: nothing acknowledged is lost.
        let _ = store.close();
        let store = open(&sim, dir.path()).unwrap_or_else(|e| panic!("{what}: reopening: {e}"));
        purge(&store).unwrap();
        assert_eq!(
            store.query(&[Filter::new()]).unwrap(),
            after.query(&[Filter::new()]),
            "{what}"
        );
        store.close().unwrap();
        assert_doctor_clean(dir.path(), &what);
    }
    assert!(failed_purges > 0, "no failure reached a purge");
    println!("{total} operations, {failed_purges} failed purges, each finished when asked again");
}

/// A size limit: past it the oldest events of the kinds not spared go, as
/// many as the excess takes at the store's bytes per event; profiles stay;
/// a store that fits loses nothing.
#[test]
fn a_size_limit_removes_the_oldest_events_and_spares_the_never_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let authors: Vec<Keys> = (0..10).map(|n| Keys::from_seed(7700 + n)).collect();
    let mut events = Vec::new();
    for (a, keys) in authors.iter().enumerate() {
        events.push(keys.sign(1_600_000_000 + a as u64, 0, vec![], format!("profile {a}")));
    }
    for n in 0..4000u64 {
        let keys = &authors[n as usize % authors.len()];
        // Several notes share a second, so the cutoff second matters.
        let at = 1_700_000_000 + n / 3;
        events.push(keys.sign(at, 1, vec![], format!("note {n} {}", "z".repeat(200))));
    }
    for chunk in events.chunks(200) {
        store.insert(chunk).unwrap();
    }
    let gauges = store.gauges();
    let live = gauges.log_bytes + gauges.index_bytes - gauges.garbage_bytes;
    let now = 1_800_000_000;
    let never = vec![KindRange::one(0)];
    let fits = Retention {
        rules: Vec::new(),
        never: never.clone(),
        max_bytes: Some(live),
    };
    let stop = AtomicBool::new(false);
    let report = store.apply_retention(&fits, now, false, &stop).unwrap();
    assert_eq!(report.removed, 0, "{report:?}");
    let max = live * 6 / 10;
    let limited = Retention {
        rules: Vec::new(),
        never,
        max_bytes: Some(max),
    };
    let report = store.apply_retention(&limited, now, false, &stop).unwrap();
    let per_event = live / gauges.events;
    let needed = (live - max).div_ceil(per_event);
    let left: Vec<Event> = store.query(&[Filter::default()]).unwrap();
    let gone: Vec<&Event> = events.iter().filter(|e| !left.contains(e)).collect();
    assert_eq!(gone.len() as u64, report.removed, "{report:?}");
    assert!(
        report.removed >= needed,
        "{} removed, {needed} needed",
        report.removed
    );
    assert!(
        report.removed <= needed + 3,
        "{} removed, {needed} needed",
        report.removed
    );
    assert!(gone.iter().all(|e| e.kind == 1));
    assert_eq!(left.iter().filter(|e| e.kind == 0).count(), authors.len());
    let newest_gone = gone.iter().map(|e| e.created_at).max().unwrap();
    assert!(
        left.iter()
            .filter(|e| e.kind == 1)
            .all(|e| e.created_at > newest_gone),
        "the oldest notes went first"
    );
    store.close().unwrap();
    assert_doctor_clean(dir.path(), "after the size limit");
}
