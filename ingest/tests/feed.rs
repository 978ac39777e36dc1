//! Feed jobs against relays on loopback: three Megalith relays and a
//! misbehaving one, seeded with generated data whose relay lists name
//! them (each author's posts only on their own write relays), plus a relay
//! that refuses every connection. A job must end with exactly the follows'
//! posts the relays hold (the brute-force answer over what each holds),
//! none twice, and a status that says each relay's fate.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/fake_relay.rs"]
mod fake_relay;
#[path = "../../tests/service/placement.rs"]
mod placement;
#[path = "../../tests/service/relay.rs"]
mod relay;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fake_relay::{Behaviour, FakeRelay, answer};
use megalith::datagen::{GenConfig, Generator};
use megalith::{Event, EventId, EventStore, Filter, Pubkey};
use megalith_ingest::pool::{self, PoolConfig};
use megalith_ingest::{FeedConfig, FeedJobs, JobPhase, JobStatus, RelayUrl, Sink};
use megalith_relay::RelayLimits;
use relay::TestRelay;

fn url(text: &str) -> RelayUrl {
    RelayUrl::parse(text).unwrap()
}

struct Network {
    relays: Vec<TestRelay>,
    /// Relays shut down by the test (their data is no longer held).
    down: HashSet<usize>,
    fake: FakeRelay,
    dead: String,
    generator: Generator,
}

impl Network {
    fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self
            .relays
            .iter()
            .map(|r| url(&r.url()).to_string())
            .collect();
        urls.push(self.fake.url());
        urls.push(self.dead.clone());
        urls
    }

    /// Everything the live relays hold for `filter`, by id.
    fn held(&self, filter: &Filter) -> HashSet<EventId> {
        let mut ids: HashSet<EventId> = HashSet::new();
        for (i, relay) in self.relays.iter().enumerate() {
            if self.down.contains(&i) {
                continue;
            }
            for e in relay.store.query(std::slice::from_ref(filter)).unwrap() {
                ids.insert(e.id);
            }
        }
        for e in answer(&self.fake.events.lock(), std::slice::from_ref(filter)) {
            ids.insert(e.id);
        }
        ids
    }
}

/// Starts the relays, then generates data naming them and places each
/// author's events on their own write relays (the first relay, the
/// "indexer" jobs start from, also gets every profile, contact list and
/// relay list).
async fn network(behaviour: Behaviour) -> Network {
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(TestRelay::start(RelayLimits::default()).await);
    }
    let fake = FakeRelay::start(Vec::new(), behaviour).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ws://{}", listener.local_addr().unwrap())
    };
    let mut net = Network {
        relays,
        down: HashSet::new(),
        fake,
        dead,
        generator: Generator::new(GenConfig::default()),
    };
    let mut generator = Generator::new(GenConfig {
        seed: 11,
        authors: 300,
        relays: Some(net.urls()),
        ..GenConfig::default()
    });
    let events = generator.batch(15_000, 2);
    let placed = placement::place(&events, &net.urls());
    for (i, relay) in net.relays.iter().enumerate() {
        for chunk in placed[i].chunks(1_000) {
            relay.store.insert(chunk).unwrap();
        }
    }
    *net.fake.events.lock() = placed[3].clone();
    // placed[4] (the dead relay) is never served.
    net.generator = generator;
    net
}

fn config(net: &Network, state: &std::path::Path) -> FeedConfig {
    let mut config = FeedConfig::new(vec![url(&net.relays[0].url())], state.join("jobs"));
    config.wall_time = None; // end with the backfill
    config.allow_private_relays = true;
    config.max_pages = 1_000; // read everything
    config.first_page = 50;
    config.page_size = 200;
    config.phase_timeout = Duration::from_secs(5);
    config.page_timeout = Duration::from_secs(2);
    config
}

struct Ingester {
    store: Arc<EventStore>,
    jobs: FeedJobs,
    dir: tempfile::TempDir,
}

fn ingester(net: &Network, tweak: impl FnOnce(&mut FeedConfig)) -> Ingester {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EventStore::open(dir.path().join("store")).unwrap());
    let (pool, _task) = pool::start(PoolConfig {
        reconnect_scale: 0.01,
        connect_timeout: Duration::from_secs(2),
        ..PoolConfig::default()
    });
    let (sink, _sink_task) = Sink::start(store.clone(), pool.stats().clone());
    let mut config = config(net, dir.path());
    tweak(&mut config);
    let jobs = FeedJobs::new(config, store.clone(), pool, sink);
    Ingester { store, jobs, dir }
}

async fn finish(jobs: &FeedJobs, person: Pubkey) -> JobStatus {
    let mut status = jobs.ensure_job(person);
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let phase = status.borrow().phase;
            if phase.is_some_and(|p| !p.active()) {
                return status.borrow().clone();
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the job did not end in time")
}

/// A person with many follows.
fn person(net: &Network) -> (Pubkey, Vec<Pubkey>) {
    net.generator.sampler(3).follow_list(40).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ends_with_exactly_the_follows_posts_the_relays_hold() {
    // The misbehaving relay drops its first two connections mid-answer
    // and sends a malformed message before every 7th event.
    let net = network(Behaviour {
        drop_after_events: Some(40),
        drops: 2,
        garbage_every: 7,
        ..Behaviour::default()
    })
    .await;
    let (me, follows) = person(&net);
    let ingester = ingester(&net, |_| {});
    let status = finish(&ingester.jobs, me).await;
    assert_eq!(status.phase, Some(JobPhase::Finished), "{status:#?}");
    assert_eq!(status.follows, follows.len());
    assert!(status.follows_with_relays > 0);

    // The follows' posts, and the person's own.
    let posts = Filter::new()
        .authors(follows.iter().copied().chain([me]))
        .kinds([1, 6]);
    let want = net.held(&posts);
    let got: Vec<Event> = ingester.store.query(std::slice::from_ref(&posts)).unwrap();
    let got_ids: HashSet<EventId> = got.iter().map(|e| e.id).collect();
    let missing = want.difference(&got_ids).count();
    let extra = got_ids.difference(&want).count();
    assert!(
        missing == 0 && extra == 0,
        "{missing} missing, {extra} not held by the relays, of {}",
        want.len()
    );
    assert_eq!(
        status.events_ingested as usize,
        want.len(),
        "each post stored once"
    );
    assert!(status.first_post_ms.is_some());
    assert_eq!(
        status.latest_created_at,
        got.iter().map(|e| e.created_at).max()
    );

    // Each relay's fate: the dead one never answered; the others did.
    for relay in &status.relays {
        if relay.url == net.dead {
            assert!(!relay.eose && relay.attempts >= 1, "{relay:?}");
        } else {
            assert!(relay.eose, "{relay:?}");
        }
    }
    assert!(
        status.relays.iter().any(|r| r.url == net.dead),
        "{status:#?}"
    );
    assert!(net.fake.connections() >= 3, "the drops were survived");

    // The status is kept beside the store, and a fresh job is reused.
    let saved = std::fs::read_to_string(
        ingester
            .dir
            .path()
            .join("jobs")
            .join(format!("{}.json", me.to_hex())),
    )
    .unwrap();
    let saved: JobStatus = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved, status);
    assert_eq!(ingester.jobs.ensure_job(me).borrow().clone(), status);

    // A second person sharing follows: the posts the first job stored
    // count for the second job's feed too, each once.
    let (other, their_follows) = (1..50)
        .filter_map(|seed| net.generator.sampler(seed).follow_list(20))
        .find(|(p, f)| *p != me && f.iter().any(|a| follows.contains(a)))
        .unwrap();
    let theirs = finish(&ingester.jobs, other).await;
    assert_eq!(theirs.phase, Some(JobPhase::Finished), "{theirs:#?}");
    let posts = Filter::new()
        .authors(their_follows.iter().copied().chain([other]))
        .kinds([1, 6]);
    assert_eq!(theirs.events_ingested as usize, net.held(&posts).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authors_of_a_relay_that_fails_are_read_from_another() {
    // One relay per author, and the busiest Megalith relay goes down before
    // the job: the authors given to it must be read from another of their
    // write relays once it has failed.
    let mut net = network(Behaviour::default()).await;
    let (me, follows) = person(&net);
    let (gone, popular) = {
        let ingester = ingester(&net, |c| c.relays_per_author = 1);
        let status = finish(&ingester.jobs, me).await;
        (1..3)
            .filter_map(|i| {
                let u = url(&net.relays[i].url()).to_string();
                let authors = status.relays.iter().find(|r| r.url == u)?.authors;
                Some((authors, i, u))
            })
            .max()
            .map(|(_, i, u)| (i, u))
            .expect("a Megalith relay besides the first serves follows")
    };
    net.relays[gone].shutdown().await;
    net.down.insert(gone);
    let ingester = ingester(&net, |c| c.relays_per_author = 1);
    let status = finish(&ingester.jobs, me).await;
    assert_eq!(status.phase, Some(JobPhase::Finished), "{status:#?}");
    let down = status.relays.iter().find(|r| r.url == popular);
    assert!(
        down.is_some_and(|d| !d.eose && d.authors > 0),
        "{status:#?}"
    );
    let posts = Filter::new().authors(follows.iter().copied()).kinds([1, 6]);
    let want = net.held(&posts);
    let got: HashSet<EventId> = ingester
        .store
        .query(std::slice::from_ref(&posts))
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(want.difference(&got).count(), 0, "missing after failover");
    assert_eq!(got.difference(&want).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_relays_from_relay_lists_are_not_dialed_unless_allowed() {
    let net = network(Behaviour::default()).await;
    let (me, _) = person(&net);
    let ingester = ingester(&net, |c| c.allow_private_relays = false);
    let status = finish(&ingester.jobs, me).await;
    // Every relay in the lists is on loopback: only the configured relay
    // (the operator's choice) is read, for every follow.
    assert_eq!(status.phase, Some(JobPhase::Finished), "{status:#?}");
    assert_eq!(status.relays.len(), 1, "{status:#?}");
    assert_eq!(status.relays[0].url, url(&net.relays[0].url()).to_string());
    assert_eq!(net.fake.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_beyond_the_limit_wait_their_turn_and_unknown_people_fail_saying_why() {
    let net = network(Behaviour {
        event_delay: Duration::from_millis(2),
        ..Behaviour::default()
    })
    .await;
    let ingester = ingester(&net, |c| c.max_running = 1);
    let (first, _) = person(&net);
    let nobody = megalith::Keys::from_seed(999_999).pubkey();
    let mut first_status = ingester.jobs.ensure_job(first);
    while first_status.borrow().phase == Some(JobPhase::Queued) {
        first_status.changed().await.unwrap();
    }
    let second = ingester.jobs.ensure_job(nobody);
    assert_eq!(second.borrow().phase, Some(JobPhase::Queued));
    assert_eq!(second.borrow().queue_position, Some(1));
    drop(first_status);
    let failed = finish(&ingester.jobs, nobody).await;
    assert_eq!(failed.phase, Some(JobPhase::Failed));
    let why = failed.last_error.unwrap();
    assert!(why.contains("no contact list"), "{why}");
    // FIFO: the first job had started before the second could.
    let first_done = finish(&ingester.jobs, first).await;
    assert!(first_done.started_at_ms.unwrap() <= failed.started_at_ms.unwrap());
}

/// A job waiting for a relay that never answers stops when told to, not
/// at the end of its phase's wait (an hour here; `megalith serve` took 8 s
/// to stop while a job waited on such a relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_on_a_silent_relay_stops_when_told() {
    let deaf = FakeRelay::start(
        Vec::new(),
        Behaviour {
            deaf: true,
            ..Behaviour::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EventStore::open(dir.path().join("store")).unwrap());
    let (pool, _task) = pool::start(PoolConfig::default());
    let (sink, _sink_task) = Sink::start(store.clone(), pool.stats().clone());
    let mut config = FeedConfig::new(vec![url(&deaf.url())], dir.path().join("jobs"));
    config.phase_timeout = Duration::from_secs(3_600);
    config.allow_private_relays = true;
    let jobs = FeedJobs::new(config, store, pool, sink);
    let person = Pubkey([7; 32]);
    let mut status = jobs.ensure_job(person);
    // In its first phase, asking the silent relay.
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.phase == Some(JobPhase::Contacts)),
    )
    .await
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(30), jobs.shutdown())
        .await
        .expect("the job kept waiting for the silent relay after it was told to stop");
    assert_eq!(
        jobs.status(&person).unwrap().phase,
        Some(JobPhase::Finished)
    );
}
