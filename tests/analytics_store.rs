//! The store's analytics (`EventStore::analytics`, issue 16) against the
//! brute-force counting rules, over random video streams inserted into a
//! real store with two shards: every figure, every list and its pages,
//! hashtags, creators and active authors agree with the brute force during
//! the stream, after a close and reopen (the checkpoint), after the
//! checkpoint is lost or damaged (built from the logs), after a crash that
//! left the checkpoint behind the logs (caught up from its positions) and
//! after one that left it ahead of them (built again).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::video_stream::Stream;
use megalith::analytics::{ANALYTICS_DIR, Place, Sort, VideoKey, video_key};
use megalith::reference::analytics::Analytics;
use megalith::reference::{RefOutcome, Reference};
use megalith::storage::{Damage, SimStorage};
use megalith::{Durability, Event, EventStore};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What was sent so far and what the brute force says about it.
struct World {
    stream: Stream,
    reference: Reference,
    history: Vec<Event>,
    now: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let now = unix_now();
        let mut stream = Stream::starting(seed, now);
        // Expiring acts outlive the test's run, and leave when it asks at
        // a later time.
        stream.expire_after = 200;
        World {
            stream,
            reference: Reference::new(),
            history: Vec::new(),
            now,
        }
    }

    /// Sends `count` events in batches of 1 to 12.
    fn send(&mut self, store: &EventStore, count: usize) {
        let mut left = count;
        while left > 0 {
            let size = 1 + (self.stream.now as usize + left) % 12;
            let batch: Vec<Event> = (0..size.min(left)).map(|_| self.stream.next()).collect();
            left -= batch.len();
            for event in &batch {
                let outcome = self.reference.insert(event, self.now);
                let stored = matches!(outcome, RefOutcome::Stored | RefOutcome::Replaced);
                if stored && video_key(event).is_some() {
                    self.history.push(event.clone());
                }
            }
            for outcome in store.insert(&batch).expect("insert") {
                assert!(
                    !matches!(outcome, megalith::InsertOutcome::Invalid(_)),
                    "{outcome:?}"
                );
            }
        }
    }

    fn brute(&self, now: u64) -> Analytics {
        Analytics::compute(&self.reference, &self.history, now)
    }
}

/// Every page of a list, read through cursors: `read` gives a page and the
/// place to go on from (none: the list ended).
fn pages(
    mut read: impl FnMut(Option<&Place>) -> (Vec<(Place, VideoKey)>, Option<Place>),
) -> Vec<VideoKey> {
    let mut out = Vec::new();
    let mut after: Option<Place> = None;
    loop {
        let (page, next) = read(after.as_ref());
        out.extend(page.into_iter().map(|(_, key)| key));
        match next {
            Some(place) => after = Some(place),
            None => return out,
        }
        assert!(out.len() < 100_000, "paging does not end");
    }
}

fn owned(
    page: (Vec<(Place, &VideoKey)>, Option<Place>),
) -> (Vec<(Place, VideoKey)>, Option<Place>) {
    (
        page.0.into_iter().map(|(p, k)| (p, k.clone())).collect(),
        page.1,
    )
}

/// A list read in full pages of `limit`, as the API pages one.
fn full(page: Vec<(Place, &VideoKey)>, limit: usize) -> (Vec<(Place, VideoKey)>, Option<Place>) {
    let next = (page.len() == limit)
        .then(|| page.last().map(|(p, _)| p.clone()))
        .flatten();
    (
        page.into_iter().map(|(p, k)| (p, k.clone())).collect(),
        next,
    )
}

fn compare(store: &EventStore, world: &World, now: u64, what: &str) {
    let brute = world.brute(now);
    let analytics = store.analytics().expect("analytics are on");
    let view = analytics.read(now);

    let mut keys: Vec<VideoKey> = view.videos().map(|(k, _)| k.clone()).collect();
    let mut want: Vec<VideoKey> = brute.videos.keys().cloned().collect();
    keys.sort();
    want.sort();
    assert_eq!(keys, want, "{what}: the live videos");
    assert_eq!(view.video_count(), want.len(), "{what}");
    for key in &want {
        assert_eq!(
            view.figures(key),
            Some(brute.figures_of(key)),
            "{what}: figures of {}",
            key.text()
        );
        assert_eq!(
            view.video(key).map(|e| e.id),
            Some(brute.videos[key].id),
            "{what}: the current version of {}",
            key.text()
        );
    }
    for event in &world.history {
        let by_id = view
            .resolve(&event.id.to_hex())
            .filter(|k| view.video(k).is_some());
        assert_eq!(
            by_id,
            brute.video_by_id(&event.id).map(|(k, _)| k.clone()),
            "{what}: the video of id {}",
            event.id
        );
    }

    let trending: Vec<VideoKey> = brute.trending(now).into_iter().map(|(k, _)| k).collect();
    let got = pages(|after| owned(view.page(Sort::Trending, None, after, 6, now)));
    assert_eq!(got, trending, "{what}: trending, page by page");
    let got = pages(|after| owned(view.page(Sort::Recent, None, after, 7, now)));
    assert_eq!(got, brute.recent(), "{what}: recent, page by page");
    let got = pages(|after| owned(view.page(Sort::Popular, None, after, 5, now)));
    assert_eq!(got, brute.popular(), "{what}: popular, page by page");
    for kind in [21u16, 22, 34_235, 34_236] {
        let want: Vec<VideoKey> = brute
            .recent()
            .into_iter()
            .filter(|k| brute.videos[k].kind == kind)
            .collect();
        let got = pages(|after| owned(view.page(Sort::Recent, Some(kind), after, 4, now)));
        assert_eq!(got, want, "{what}: recent of kind {kind}");
    }

    let authors: BTreeSet<_> = brute.videos.values().map(|v| v.pubkey).collect();
    for author in &authors {
        let want: Vec<VideoKey> = brute
            .recent()
            .into_iter()
            .filter(|k| brute.videos[k].pubkey == *author)
            .collect();
        let got = pages(|after| full(view.by_author(author, after, 3), 3));
        assert_eq!(got, want, "{what}: videos of {author}");
    }

    let tags = brute.hashtags();
    assert!(!tags.is_empty() || brute.videos.is_empty(), "{what}");
    for (tag, _, _, _) in &tags {
        let got = pages(|after| full(view.by_tag(&tag.to_uppercase(), after, 3), 3));
        assert_eq!(got, brute.with_tag(tag), "{what}: videos tagged {tag}");
    }
    let got: Vec<(String, u64, u64, u64)> = view
        .top_tags(1_000)
        .into_iter()
        .map(|(tag, f)| (tag, f.videos, f.creators, f.last_used))
        .collect();
    assert_eq!(got, tags, "{what}: hashtags");
    assert_eq!(view.tag_count(), tags.len(), "{what}");

    let creators = brute.creators();
    let got: Vec<_> = view
        .top_creators(1_000)
        .into_iter()
        .map(|(p, c)| (p, c.normal, c.short, c.first, c.last, c.engagement))
        .collect();
    assert_eq!(got, creators, "{what}: creators");
    assert_eq!(view.creator_count(), creators.len(), "{what}");

    let today = now / 86_400;
    for days in [1, 7, 30] {
        let series = view.active_series(today, 15, days);
        for (i, day) in (today - 14..=today).enumerate() {
            assert_eq!(
                view.active_authors(day, days) as usize,
                brute.active_authors(day, days),
                "{what}: active authors over {days} days to day {day}"
            );
            assert_eq!(
                series[i] as usize,
                brute.active_authors(day, days),
                "{what}: the series over {days} days, day {day}"
            );
        }
    }
}

fn open(dir: &Path) -> EventStore {
    EventStore::builder(dir)
        .shards(2)
        .analytics(true)
        .durability(Durability::Never)
        .open()
        .expect("open")
}

fn state_file(dir: &Path) -> std::path::PathBuf {
    dir.join(ANALYTICS_DIR).join("state")
}

#[test]
fn store_analytics_agree_with_the_counting_rules_across_reopens() {
    for seed in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let mut world = World::new(seed);
        let store = open(dir.path());
        for step in 0..3 {
            world.send(&store, 500);
            compare(
                &store,
                &world,
                world.now,
                &format!("seed {seed}, part {step}"),
            );
        }
        let counted: u64 = world
            .brute(world.now)
            .figures
            .values()
            .map(|f| f.engagement())
            .sum();
        assert!(counted > 100, "seed {seed}: the stream counts ({counted})");
        assert!(
            world.stream.vanished > 0,
            "seed {seed}: someone asked to vanish"
        );
        store.close().unwrap();

        // From the checkpoint written at close.
        let store = open(dir.path());
        assert!(
            !store
                .recovery_report()
                .rebuilt_indexes
                .iter()
                .any(|r| r.contains("analytics")),
            "seed {seed}: {:?}",
            store.recovery_report()
        );
        compare(&store, &world, world.now, &format!("seed {seed}, reopened"));
        world.send(&store, 200);
        compare(&store, &world, world.now, &format!("seed {seed}, more"));
        store.close().unwrap();

        // The checkpoint gone: built from the logs.
        std::fs::remove_file(state_file(dir.path())).unwrap();
        let store = open(dir.path());
        assert!(
            store
                .recovery_report()
                .rebuilt_indexes
                .iter()
                .any(|r| r.contains("analytics")),
            "seed {seed}"
        );
        compare(&store, &world, world.now, &format!("seed {seed}, rebuilt"));
        store.close().unwrap();

        // The checkpoint agrees with the logs (index-doctor check).
        let report = megalith::inspect::index::check_store(dir.path()).unwrap();
        assert!(report.is_clean(), "seed {seed}: {:?}", report.problems);

        // A damaged checkpoint: the check names it, the next open does not
        // use it.
        let path = state_file(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let report = megalith::inspect::index::check_store(dir.path()).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.reason.contains("checksum") && p.file == path),
            "seed {seed}: {:?}",
            report.problems
        );
        let store = open(dir.path());
        let report = &store.recovery_report().rebuilt_indexes;
        assert!(
            report
                .iter()
                .any(|r| r.contains("analytics") && r.contains("checksum")),
            "seed {seed}: {report:?}"
        );
        compare(
            &store,
            &world,
            world.now,
            &format!("seed {seed}, after damage"),
        );

        // Later, the expiring acts have left.
        let later = world.now + 600;
        compare(&store, &world, later, &format!("seed {seed}, later"));
        store.close().unwrap();
        let store = open(dir.path());
        compare(
            &store,
            &world,
            later,
            &format!("seed {seed}, later, reopened"),
        );
        store.close().unwrap();

        // index-doctor rebuild: indexes and analytics from the logs.
        megalith::inspect::index::rebuild(dir.path()).unwrap();
        let report = megalith::inspect::index::check_store(dir.path()).unwrap();
        assert!(report.is_clean(), "seed {seed}: {:?}", report.problems);
        let store = open(dir.path());
        compare(
            &store,
            &world,
            later,
            &format!("seed {seed}, after a rebuild"),
        );
    }
}

#[test]
fn the_check_finds_a_checkpoint_that_disagrees_with_the_logs() {
    // Two stores from different streams: one's checkpoint put in the
    // other's place is whole, but counts what the logs do not hold.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, seed) in [(&a, 11), (&b, 12)] {
        let mut world = World::new(seed);
        let store = open(dir.path());
        world.send(&store, 400);
        store.close().unwrap();
    }
    std::fs::copy(state_file(b.path()), state_file(a.path())).unwrap();
    let report = megalith::inspect::index::check_store(a.path()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.reason.contains("video") || p.reason.contains("version")),
        "{:?}",
        report.problems
    );
}

/// A store on simulated storage, for crashes.
fn open_sim(sim: &SimStorage, dir: &Path, durability: Durability, segment: u64) -> EventStore {
    EventStore::builder(dir)
        .shards(2)
        .analytics(true)
        .storage(Arc::new(sim.clone()))
        .durability(durability)
        .segment_size(segment)
        .checkpoint_interval(Duration::from_secs(24 * 3600))
        .open()
        .expect("open")
}

#[test]
fn a_crash_leaves_analytics_that_catch_up_or_are_built_again() {
    // Every acknowledged write durable: the checkpoint written mid-way is
    // behind the logs, and the rest is read from its positions.
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let mut world = World::new(7);
    let store = open_sim(&sim, dir.path(), Durability::Always, 64 << 10);
    world.send(&store, 400);
    store.analytics().unwrap().checkpoint().unwrap();
    world.send(&store, 400);
    sim.power_off_at(sim.ops());
    drop(store);
    sim.crash(Damage::DropUnsynced, 1).unwrap();
    let store = open_sim(&sim, dir.path(), Durability::Always, 64 << 10);
    let report = store.recovery_report();
    assert!(report.unclean_shutdown);
    assert!(
        !report
            .rebuilt_indexes
            .iter()
            .any(|r| r.contains("analytics")),
        "{report:?}"
    );
    compare(&store, &world, world.now, "caught up after a crash");
    drop(store);

    // Nothing synced but the checkpoint: a crash takes the logs' tails,
    // and the checkpoint, ahead of them, is not used. (Segments large
    // enough that none is sealed, and synced, with lost events in it.)
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(dir.path()).unwrap();
    let mut world = World::new(8);
    let store = open_sim(&sim, dir.path(), Durability::Always, 4 << 20);
    world.send(&store, 300);
    store.close().unwrap();
    let store = open_sim(&sim, dir.path(), Durability::Never, 4 << 20);
    let mut lost = World::new(9);
    lost.send(&store, 40);
    store.analytics().unwrap().checkpoint().unwrap();
    sim.power_off_at(sim.ops());
    drop(store);
    sim.crash(Damage::DropUnsynced, 2).unwrap();
    let store = open_sim(&sim, dir.path(), Durability::Always, 4 << 20);
    let report = store.recovery_report();
    assert!(
        report
            .rebuilt_indexes
            .iter()
            .any(|r| r.contains("analytics") && r.contains("past its end")),
        "{report:?}"
    );
    compare(&store, &world, world.now, "built again after a crash");

    // The checkpoint that was not used is gone with that open: another
    // crash now must not find a stale one (once the logs grow past its
    // positions it would look whole).
    sim.power_off_at(sim.ops());
    drop(store);
    sim.crash(Damage::DropUnsynced, 3).unwrap();
    let report = megalith::inspect::index::check_store(dir.path()).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let store = open_sim(&sim, dir.path(), Durability::Always, 4 << 20);
    assert!(
        !store
            .recovery_report()
            .rebuilt_indexes
            .iter()
            .any(|r| r.contains("analytics")),
        "{:?}",
        store.recovery_report()
    );
    compare(&store, &world, world.now, "after a second crash");
}
