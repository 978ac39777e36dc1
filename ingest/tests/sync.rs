//! `megalith sync`'s engine (megalith_ingest::sync) against relays on
//! loopback: a store and a Megalith relay that each hold events the other
//! lacks end with the same events (down, up, both; the relay's rate limit
//! met by sending again), a dry run moves nothing, and a relay that
//! refuses the sync or does not speak NIP-77 is named with its reason.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/fake_relay.rs"]
mod fake_relay;
#[path = "../../tests/service/relay.rs"]
mod relay;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{now, stored_ids};
use fake_relay::{Behaviour, FakeRelay};
use megalith::{Event, EventId, EventStore, Filter, Keys};
use megalith_ingest::RelayUrl;
use megalith_ingest::sync::{self, Direction, SyncOptions};
use megalith_relay::{RelayConfig, RelayLimits};
use relay::TestRelay;

/// `n` kind-1 and kind-7 notes by 7 authors, three to a second.
fn notes(seed: u64, n: usize) -> Vec<Event> {
    let base = now() - 50_000;
    (0..n)
        .map(|i| {
            let keys = Keys::from_seed(seed * 100 + (i % 7) as u64);
            let kind = if i % 5 == 4 { 7 } else { 1 };
            keys.sign(base + (i / 3) as u64, kind, vec![], format!("{seed}/{i}"))
        })
        .collect()
}

fn store() -> (tempfile::TempDir, Arc<EventStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path()).shards(2).open().unwrap();
    (dir, Arc::new(store))
}

fn ids(events: &[Event]) -> BTreeSet<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn url(relay: &TestRelay) -> RelayUrl {
    RelayUrl::parse(&relay.url()).unwrap()
}

/// A relay that publishes at most 100 events a second per connection
/// after a burst of 20: the up direction's 300 events meet it.
async fn slow_relay() -> TestRelay {
    TestRelay::start_with(RelayConfig {
        limits: RelayLimits {
            events_per_second: 100.0,
            events_burst: 20.0,
            ..RelayLimits::default()
        },
        ..RelayConfig::default()
    })
    .await
}

/// Both sides hold 1,200 common events; the store 300 of its own, the
/// relay 250 of its own. Each direction moves exactly its share, and both
/// ways leaves the two with the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_direction_moves_exactly_what_the_other_side_lacks() {
    let all = notes(1, 1_750);
    let (common_part, rest) = all.split_at(1_200);
    let (only_here, only_there) = rest.split_at(300);
    for direction in [Direction::Down, Direction::Up, Direction::Both] {
        let relay = slow_relay().await;
        relay.store.insert(common_part).unwrap();
        relay.store.insert(only_there).unwrap();
        let (_dir, store) = store();
        store.insert(common_part).unwrap();
        store.insert(only_here).unwrap();
        let options = SyncOptions {
            direction,
            frame_bytes: 4_096,
            ..SyncOptions::default()
        };
        let report = sync::sync(Arc::clone(&store), &url(&relay), Filter::new(), &options)
            .await
            .unwrap();
        assert_eq!(report.local, 1_500, "{direction:?}");
        assert_eq!(report.only_here, 300, "{direction:?}");
        assert_eq!(report.only_there, 250, "{direction:?}");
        assert!(
            report.rounds >= 2,
            "{direction:?}: {} rounds",
            report.rounds
        );
        let here: BTreeSet<_> = stored_ids(&store).into_iter().collect();
        let there: BTreeSet<_> = stored_ids(&relay.store).into_iter().collect();
        let mut want_here = ids(common_part);
        want_here.extend(ids(only_here));
        let mut want_there = ids(common_part);
        want_there.extend(ids(only_there));
        if matches!(direction, Direction::Down | Direction::Both) {
            assert_eq!((report.fetched, report.stored), (250, 250), "{direction:?}");
            want_here.extend(ids(only_there));
        }
        if matches!(direction, Direction::Up | Direction::Both) {
            assert_eq!((report.sent, report.accepted), (300, 300), "{report:?}");
            assert_eq!(report.refused, 0, "{:?}", report.refusals);
            want_there.extend(ids(only_here));
        }
        assert_eq!(here, want_here, "{direction:?}: the store");
        assert_eq!(there, want_there, "{direction:?}: the relay");
        assert!(report.bytes_sent > 0 && report.bytes_received > 0);
    }
}

/// A filter limits what is compared and moved; a dry run moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_bounds_the_sync_and_a_dry_run_moves_nothing() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let theirs = notes(2, 400);
    relay.store.insert(&theirs).unwrap();
    let (_dir, store) = store();
    let options = SyncOptions {
        dry_run: true,
        ..SyncOptions::default()
    };
    let filter = Filter::from_json(r#"{"kinds":[7]}"#).unwrap();
    let report = sync::sync(Arc::clone(&store), &url(&relay), filter.clone(), &options)
        .await
        .unwrap();
    let sevens = theirs.iter().filter(|e| e.kind == 7).count();
    assert_eq!(report.only_there, sevens);
    assert_eq!(report.fetched, 0);
    assert!(stored_ids(&store).is_empty());
    let report = sync::sync(
        Arc::clone(&store),
        &url(&relay),
        filter,
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.stored, sevens);
    let got: BTreeSet<_> = stored_ids(&store).into_iter().collect();
    let want: BTreeSet<_> = theirs
        .iter()
        .filter(|e| e.kind == 7)
        .map(|e| e.id)
        .collect();
    assert_eq!(got, want);
}

/// The relay's NEG-ERR reason reaches the caller; so does a relay that
/// answers NEG-OPEN with a NOTICE, or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_or_a_relay_without_nip77_is_named() {
    let relay = TestRelay::start(RelayLimits {
        max_sync_events: 10,
        ..RelayLimits::default()
    })
    .await;
    relay.store.insert(&notes(3, 30)).unwrap();
    let (_dir, store) = store();
    let error = sync::sync(
        Arc::clone(&store),
        &url(&relay),
        Filter::new(),
        &SyncOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(error.contains("refused the sync: blocked:"), "{error}");

    let noticing = FakeRelay::start(
        notes(4, 5),
        Behaviour {
            notice_unknown: true,
            ..Behaviour::default()
        },
    )
    .await;
    let fake_url = RelayUrl::parse(&noticing.url()).unwrap();
    let error = sync::sync(
        Arc::clone(&store),
        &fake_url,
        Filter::new(),
        &SyncOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(error.contains("may not speak NIP-77"), "{error}");
    assert!(error.contains("unknown cmd"), "{error}");

    let silent = FakeRelay::start(notes(5, 5), Behaviour::default()).await;
    let silent_url = RelayUrl::parse(&silent.url()).unwrap();
    let options = SyncOptions {
        timeout: Duration::from_secs(1),
        ..SyncOptions::default()
    };
    let error = sync::sync(Arc::clone(&store), &silent_url, Filter::new(), &options)
        .await
        .unwrap_err();
    assert!(error.contains("does the relay speak NIP-77"), "{error}");
    assert!(stored_ids(&store).is_empty());
}

/// Polls until `store` holds exactly `want` (or fails after 20 s).
async fn wait_for(store: &EventStore, want: &BTreeSet<EventId>, what: &str) {
    for _ in 0..400 {
        let held: BTreeSet<_> = stored_ids(store).into_iter().collect();
        if &held == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held: BTreeSet<_> = stored_ids(store).into_iter().collect();
    panic!(
        "{what}: the replica holds {} events, {} of the {} wanted",
        held.len(),
        held.intersection(want).count(),
        want.len()
    );
}

/// The NEG-OPENs the relay has received, from its /metrics.
async fn neg_opens(relay: &TestRelay) -> u64 {
    let (_, _, body) = relay.http_get("/metrics", None).await;
    body.lines()
        .find_map(|l| l.strip_prefix("nostr_client_messages_total{verb=\"NEG-OPEN\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A replica of `primary` into `store` (its pool, sink and task), syncing
/// every `resync`.
struct Following {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pool: megalith_ingest::PoolHandle,
}

impl Following {
    fn start(store: &Arc<EventStore>, primary: RelayUrl, resync: Duration) -> Following {
        use megalith_ingest::Sink;
        use megalith_ingest::pool::{self, PoolConfig};
        use megalith_ingest::replica::{self, ReplicaOptions};
        let (pool, _pool_task) = pool::start(PoolConfig::default());
        let (sink, _sink_task) = Sink::start(Arc::clone(store), pool.stats().clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut options = ReplicaOptions::new(primary);
        options.resync = resync;
        let task = tokio::spawn(replica::run(
            Arc::clone(store),
            pool.clone(),
            sink,
            options,
            stopped,
        ));
        Following { stop, task, pool }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the replica did not stop")
            .unwrap();
        self.pool.shutdown().await;
    }
}

/// A replica (megalith_ingest::replica) of a Megalith relay, run twice as
/// a restarted server would be. First with syncs far apart: what the
/// primary held before comes by the first sync, new events by the live
/// stream alone. Then with a sync every second: events with old
/// timestamps (which a live REQ's `since` keeps out) published after the
/// restart's first sync come by the next one. After all, the two hold the
/// same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gets_the_past_the_live_stream_and_what_the_stream_cannot_bring() {
    let primary = TestRelay::start(RelayLimits::default()).await;
    let past = notes(6, 120);
    primary.store.insert(&past).unwrap();
    let (_dir, store) = store();

    let running = Following::start(&store, url(&primary), Duration::from_secs(600));
    let mut want = ids(&past);
    wait_for(&store, &want, "the past").await;
    let mut client = primary.connect().await;
    let fresh: Vec<Event> = (0..15)
        .map(|i| Keys::from_seed(700).sign(now() - 5 + i / 5, 1, vec![], format!("fresh {i}")))
        .collect();
    for event in &fresh {
        assert!(client.publish(event).await.0);
    }
    want.extend(ids(&fresh));
    wait_for(&store, &want, "the live stream").await;
    assert_eq!(neg_opens(&primary).await, 1, "a sync ran besides the first");
    running.stop().await;

    let running = Following::start(&store, url(&primary), Duration::from_secs(1));
    while neg_opens(&primary).await < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old: Vec<Event> = (0..10)
        .map(|i| Keys::from_seed(701).sign(now() - 30_000 + i, 1, vec![], format!("old {i}")))
        .collect();
    for event in &old {
        assert!(client.publish(event).await.0);
    }
    want.extend(ids(&old));
    wait_for(&store, &want, "the next sync").await;
    running.stop().await;
    let there: BTreeSet<_> = stored_ids(&primary.store).into_iter().collect();
    assert_eq!(there, want);
}

/// A relay whose `max_limit` (5) is below the fetch batch answers each REQ
/// by ids with 5 events: the rest is asked again until all have come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_answers_fewer_than_asked_is_asked_again() {
    let relay = TestRelay::start(RelayLimits {
        max_limit: 5,
        default_limit: 5,
        ..RelayLimits::default()
    })
    .await;
    let theirs = notes(9, 23);
    relay.store.insert(&theirs).unwrap();
    let (_dir, store) = store();
    let report = sync::sync(
        Arc::clone(&store),
        &url(&relay),
        Filter::new(),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.fetched, report.stored, report.missing),
        (23, 23, 0),
        "{report:?}"
    );
    let got: BTreeSet<_> = stored_ids(&store).into_iter().collect();
    assert_eq!(got, ids(&theirs));
}

/// A replica whose primary goes down and comes back holding more than its
/// answer to the stream's REQ again carries (here 20 events, `max_limit`
/// 5): the sync that runs a moment after the stream reports the cut
/// brings the rest, not the one 600 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_followed_by_a_sync() {
    let mut primary = TestRelay::start_with(RelayConfig {
        limits: RelayLimits {
            max_limit: 5,
            default_limit: 5,
            ..RelayLimits::default()
        },
        ..RelayConfig::default()
    })
    .await;
    let (_dir, store) = store();
    let running = Following::start(&store, url(&primary), Duration::from_secs(600));
    // The stream is live once a new event comes through it.
    let mut client = primary.connect().await;
    let first = Keys::from_seed(800).sign(now() - 1, 1, vec![], "first".into());
    while neg_opens(&primary).await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(client.publish(&first).await.0);
    let mut want = ids(std::slice::from_ref(&first));
    wait_for(&store, &want, "the live stream").await;
    client.close().await;

    primary.shutdown().await;
    let while_down: Vec<Event> = (0..20)
        .map(|i| Keys::from_seed(801).sign(now() - 30 + i, 1, vec![], format!("down {i}")))
        .collect();
    primary.store.insert(&while_down).unwrap();
    want.extend(ids(&while_down));
    primary.resume().await;
    wait_for(&store, &want, "the sync after the cut").await;

    // The stream itself is back: the relay CLOSEd it going down ("error:
    // the relay is shutting down"), and the mirror asked again.
    let syncs = neg_opens(&primary).await;
    let mut client = primary.connect().await;
    let after = Keys::from_seed(802).sign(now(), 1, vec![], "after".into());
    assert!(client.publish(&after).await.0);
    want.extend(ids(std::slice::from_ref(&after)));
    wait_for(&store, &want, "the live stream after the restart").await;
    assert_eq!(
        neg_opens(&primary).await,
        syncs,
        "a sync brought it, not the stream"
    );

    running.stop().await;
}
