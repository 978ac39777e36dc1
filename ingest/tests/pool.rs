//! The relay pool against real relays on loopback (Megalith relays in this
//! process) and the misbehaving fake: subscriptions, publishing, NIP-42
//! AUTH, resuming after a drop, dead connections, refused dials, garbage,
//! bad signatures, the connection cap.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/fake_relay.rs"]
mod fake_relay;
#[path = "../../tests/service/relay.rs"]
mod relay;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::now;
use fake_relay::{Behaviour, FakeRelay};
use megalith::{Event, Filter, Keys};
use megalith_ingest::pool::{self, PoolConfig, PoolEvent, Subscription};
use megalith_ingest::{RelayUrl, Sink, Tally};
use megalith_relay::RelayLimits;
use relay::{TestRelay, WAIT};

fn url(text: &str) -> RelayUrl {
    RelayUrl::parse(text).unwrap()
}

fn fast() -> PoolConfig {
    PoolConfig {
        reconnect_scale: 0.01,
        connect_timeout: Duration::from_secs(5),
        ..PoolConfig::default()
    }
}

fn notes(seed: u64, n: usize) -> Vec<Event> {
    let keys = Keys::from_seed(seed);
    let base = now() - 10_000;
    (0..n)
        .map(|i| keys.sign(base + i as u64, 1, vec![], format!("note {seed} {i}")))
        .collect()
}

async fn next(sub: &mut Subscription) -> PoolEvent {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("no pool event in time")
        .expect("the pool stopped")
}

/// Reads until every relay in `relays` sent EOSE; returns the events.
async fn until_eose(sub: &mut Subscription, relays: usize) -> Vec<(RelayUrl, Event)> {
    let mut events = Vec::new();
    let mut eose = 0;
    while eose < relays {
        match next(sub).await {
            PoolEvent::Event { relay, event, .. } => events.push((relay, *event)),
            PoolEvent::Eose { .. } => eose += 1,
            _ => {}
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_over_two_relays_and_a_publish_to_both() {
    let a = TestRelay::start(RelayLimits::default()).await;
    let b = TestRelay::start(RelayLimits::default()).await;
    let (on_a, on_b) = (notes(1, 30), notes(2, 20));
    a.store.insert(&on_a).unwrap();
    b.store.insert(&on_b).unwrap();
    let (pool, task) = pool::start(fast());
    // The same relay spelled three ways is one connection.
    let relays = vec![
        url(&a.url()),
        url(&a.url().to_uppercase().replace("WS://", "ws://")),
        url(&b.url()),
    ];
    let mut sub = pool
        .subscribe(relays.clone(), vec![Filter::new().kinds([1])], 64)
        .await
        .unwrap();
    let got = until_eose(&mut sub, 2).await;
    let ids: HashSet<_> = got.iter().map(|(_, e)| e.id).collect();
    let want: HashSet<_> = on_a.iter().chain(&on_b).map(|e| e.id).collect();
    assert_eq!(ids, want);
    assert_eq!(got.len(), 50, "no event twice");
    assert_eq!(pool.stats().snapshot().len(), 2);

    // Live: a new event on b reaches the open subscription.
    let fresh = Keys::from_seed(3).sign(now(), 1, vec![], "live".into());
    let mut answers = pool
        .publish(vec![url(&a.url()), url(&b.url())], fresh.clone())
        .await
        .unwrap();
    let mut oks = 0;
    while oks < 2 {
        match tokio::time::timeout(WAIT, answers.recv())
            .await
            .unwrap()
            .unwrap()
        {
            PoolEvent::Ok { accepted, id, .. } => {
                assert!(accepted);
                assert_eq!(id, fresh.id);
                oks += 1;
            }
            PoolEvent::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(a.store.get(&fresh.id).unwrap().is_some());
    assert!(b.store.get(&fresh.id).unwrap().is_some());
    let mut live = 0;
    while live < 2 {
        if let PoolEvent::Event { event, .. } = next(&mut sub).await {
            assert_eq!(event.id, fresh.id);
            live += 1;
        }
    }
    pool.shutdown().await;
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_drop_a_live_subscription_resumes_from_the_newest_seen() {
    let fake = FakeRelay::start(notes(4, 10), Behaviour::default()).await;
    let (pool, _task) = pool::start(fast());
    let mut sub = pool
        .subscribe(
            vec![url(&fake.url())],
            vec![Filter::new().kinds([1]).limit(100)],
            64,
        )
        .await
        .unwrap();
    assert_eq!(until_eose(&mut sub, 1).await.len(), 10);
    let newest = Keys::from_seed(4).sign(now(), 1, vec![], "live".into());
    fake.push(newest.clone());
    loop {
        if let PoolEvent::Event { event, .. } = next(&mut sub).await {
            assert_eq!(event.id, newest.id);
            break;
        }
    }
    fake.kick();
    loop {
        if let PoolEvent::Disconnected { .. } = next(&mut sub).await {
            break;
        }
    }
    // Arrived while the connection was down, 30 s older than the newest
    // seen: within the margin, so the resumed subscription gets it.
    let missed = Keys::from_seed(5).sign(newest.created_at - 30, 1, vec![], "missed".into());
    fake.events.lock().push(missed.clone());
    // The resumed subscription brings what is within the margin (the newest
    // again, and the one missed), never the older stored events.
    let mut again = HashSet::new();
    while again.len() < 2 {
        match next(&mut sub).await {
            PoolEvent::Event { event, .. } => {
                assert!(
                    event.id == missed.id || event.id == newest.id,
                    "an event from before the margin came again: {}",
                    event.content
                );
                again.insert(event.id);
            }
            PoolEvent::Connected { .. } | PoolEvent::Eose { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let reqs = fake.reqs.lock().clone();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let resumed = &reqs[1][1];
    assert!(resumed.get("limit").is_none(), "{resumed}");
    let since = resumed["since"].as_u64().unwrap();
    assert!(
        since >= newest.created_at - 60 && since <= now() - 60,
        "since {since}, newest {}",
        newest.created_at
    );
    let stats = pool.stats().get(&url(&fake.url())).unwrap();
    assert_eq!(stats.reconnects, 1);
    assert_eq!(stats.events, 13);
    assert!(stats.errors >= 1 && stats.connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nip42_challenge_is_answered_and_the_refused_req_sent_again() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let (me, friend) = (Keys::from_seed(7), Keys::from_seed(8));
    let dm = friend.sign(
        now() - 5,
        4,
        vec![vec!["p".into(), me.pubkey().to_hex()]],
        "ciphertext?iv=abc".into(),
    );
    relay.store.insert(std::slice::from_ref(&dm)).unwrap();
    let filter = Filter::new().kinds([4]).tag('p', [me.pubkey().to_hex()]);

    // Without a key: the refusal reaches the caller.
    let (anonymous, _t1) = pool::start(fast());
    let mut sub = anonymous
        .subscribe(vec![url(&relay.url())], vec![filter.clone()], 8)
        .await
        .unwrap();
    loop {
        match next(&mut sub).await {
            PoolEvent::Closed { reason, .. } => {
                assert!(reason.starts_with("auth-required:"), "{reason}");
                break;
            }
            PoolEvent::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // With the recipient's key: AUTH, then the REQ again, then the DM.
    let (authed, _t2) = pool::start(PoolConfig {
        auth_keys: Some(me),
        ..fast()
    });
    let mut sub = authed
        .subscribe(vec![url(&relay.url())], vec![filter], 8)
        .await
        .unwrap();
    let got = until_eose(&mut sub, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.id, dm.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bad_signatures_and_forged_ids_are_counted_and_never_stored() {
    let events = notes(9, 40);
    let fake = FakeRelay::start(
        events.clone(),
        Behaviour {
            bad_sig_every: 4,
            forged_every: 5,
            garbage_every: 10,
            ..Behaviour::default()
        },
    )
    .await;
    let (pool, _task) = pool::start(fast());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(megalith::EventStore::open(dir.path()).unwrap());
    let (sink, _sink_task) = Sink::start(store.clone(), pool.stats().clone());
    let tally = Arc::new(Tally::default());
    let mut sub = pool
        .subscribe(vec![url(&fake.url())], vec![Filter::new()], 64)
        .await
        .unwrap();
    let mut errors = 0;
    loop {
        match next(&mut sub).await {
            PoolEvent::Event { relay, event, .. } => sink.send(relay, event, &tally).await,
            PoolEvent::Error { what, .. } => {
                assert!(what.starts_with("not JSON"), "{what}");
                errors += 1;
            }
            PoolEvent::Eose { .. } => break,
            _ => {}
        }
    }
    sink.flush().await.unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(errors, 4, "one malformed message per 10 events");
    let bad = |i: usize| i % 4 == 3 || i % 5 == 4;
    let refused = (0..40).filter(|&i| bad(i)).count() as u64;
    assert_eq!(refused, 16);
    assert_eq!(
        tally.invalid.load(Relaxed),
        refused,
        "every 4th signature is bad, every 5th id forged"
    );
    assert_eq!(tally.stored.load(Relaxed), 40 - refused);
    let stats = pool.stats().get(&url(&fake.url())).unwrap();
    assert_eq!(
        (stats.invalid, stats.stored, stats.events),
        (refused + 4, 40 - refused, 40)
    );
    // Exactly the good ones are stored, and nothing under a forged id.
    for (i, event) in events.iter().rev().enumerate() {
        let held = store.get(&event.id).unwrap().is_some();
        assert_eq!(held, !bad(i), "event {i}");
    }
    assert_eq!(store.count(&[Filter::new()]).unwrap(), 40 - refused);
    // The same events again, all good now: the 24 held are dropped before
    // any signature check, the 16 refused before are stored.
    let again = Arc::new(Tally::default());
    for event in &events {
        sink.send(url(&fake.url()), Box::new(event.clone()), &again)
            .await;
    }
    sink.flush().await.unwrap();
    assert_eq!(again.duplicate.load(Relaxed), 40 - refused);
    assert_eq!(again.stored.load(Relaxed), refused);
    assert_eq!(again.invalid.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_declared_dead_and_a_closed_port_penalized() {
    let deaf = FakeRelay::start(
        Vec::new(),
        Behaviour {
            deaf: true,
            ..Behaviour::default()
        },
    )
    .await;
    let (pool, _task) = pool::start(PoolConfig {
        ping_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(500),
        ..fast()
    });
    let mut sub = pool
        .subscribe(vec![url(&deaf.url())], vec![Filter::new()], 8)
        .await
        .unwrap();
    loop {
        match next(&mut sub).await {
            PoolEvent::Disconnected { why, .. } => {
                assert!(why.contains("dead"), "{why}");
                break;
            }
            PoolEvent::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // A port nobody listens on: each dial fails, named; after five in a
    // row the relay goes to the penalty box (counted before the sixth dial).
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let closed = url(&format!("ws://{closed}"));
    let mut sub = pool
        .subscribe(vec![closed.clone()], vec![Filter::new()], 8)
        .await
        .unwrap();
    for _ in 0..6 {
        match next(&mut sub).await {
            PoolEvent::Error { what, .. } => assert!(what.starts_with("connect:"), "{what}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let stats = pool.stats().get(&closed).unwrap();
    assert!(stats.attempts >= 6 && stats.errors >= 6 && !stats.connected);
    assert_eq!(stats.penalties, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_idle_connections_make_room() {
    let a = FakeRelay::start(notes(10, 3), Behaviour::default()).await;
    let b = FakeRelay::start(notes(11, 3), Behaviour::default()).await;
    let (pool, _task) = pool::start(PoolConfig {
        max_connections: 1,
        idle_close: Duration::from_millis(200),
        ..fast()
    });
    let mut on_a = pool
        .subscribe(vec![url(&a.url())], vec![Filter::new()], 8)
        .await
        .unwrap();
    assert_eq!(until_eose(&mut on_a, 1).await.len(), 3);
    let mut on_b = pool
        .subscribe(vec![url(&b.url())], vec![Filter::new()], 8)
        .await
        .unwrap();
    // b waits for the slot a holds.
    assert!(
        tokio::time::timeout(Duration::from_millis(700), on_b.recv())
            .await
            .is_err()
    );
    assert_eq!(b.connections(), 0);
    drop(on_a); // a goes idle, closes, b gets the slot
    assert_eq!(until_eose(&mut on_b, 1).await.len(), 3);
    assert_eq!(b.connections(), 1);
    let a_stats = pool.stats().get(&url(&a.url())).unwrap();
    assert!(!a_stats.connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_the_relay_in_the_order_they_were_made() {
    // Made before the connection is up, they wait in the pool, and must
    // still go out in order (a deletion after what it deletes).
    let fake = FakeRelay::start(Vec::new(), Behaviour::default()).await;
    let (pool, _task) = pool::start(fast());
    let events = notes(12, 200);
    let mut answers = Vec::new();
    for event in &events {
        answers.push(
            pool.publish(vec![url(&fake.url())], event.clone())
                .await
                .unwrap(),
        );
    }
    for mut answer in answers {
        loop {
            match tokio::time::timeout(WAIT, answer.recv())
                .await
                .unwrap()
                .unwrap()
            {
                PoolEvent::Ok { accepted, .. } => {
                    assert!(accepted);
                    break;
                }
                PoolEvent::Connected { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let received: Vec<_> = fake.events.lock().iter().map(|e| e.id).collect();
    let sent: Vec<_> = events.iter().map(|e| e.id).collect();
    let out_of_place = received.iter().zip(&sent).filter(|(a, b)| a != b).count();
    assert_eq!(received.len(), sent.len());
    assert_eq!(out_of_place, 0, "events out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_s_cap_on_subscriptions_is_learned_and_waited_for() {
    // The relay allows 3 subscriptions per connection; 10 are made at
    // once. Each must get its answer (none refused), the later ones once
    // earlier ones close.
    let fake = FakeRelay::start(
        notes(13, 5),
        Behaviour {
            max_subs: Some(3),
            ..Behaviour::default()
        },
    )
    .await;
    let (pool, _task) = pool::start(fast());
    let mut subs = Vec::new();
    for _ in 0..10 {
        subs.push(
            pool.subscribe(vec![url(&fake.url())], vec![Filter::new()], 16)
                .await
                .unwrap(),
        );
    }
    for mut sub in subs {
        let mut events = 0;
        loop {
            match next(&mut sub).await {
                PoolEvent::Event { .. } => events += 1,
                PoolEvent::Eose { .. } => break,
                PoolEvent::Connected { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(events, 5);
        // Dropping it closes it and frees a slot for the next.
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_make_the_pool_sign_without_end() {
    // 50 challenges on one connection: a few are answered, the rest
    // ignored and counted as errors.
    let fake = FakeRelay::start(
        notes(14, 2),
        Behaviour {
            challenges: 50,
            ..Behaviour::default()
        },
    )
    .await;
    let (pool, _task) = pool::start(PoolConfig {
        auth_keys: Some(Keys::from_seed(15)),
        ..fast()
    });
    let mut sub = pool
        .subscribe(vec![url(&fake.url())], vec![Filter::new()], 64)
        .await
        .unwrap();
    assert_eq!(until_eose(&mut sub, 1).await.len(), 2);
    let auths = || fake.auths.load(std::sync::atomic::Ordering::SeqCst);
    let errors = || pool.stats().get(&url(&fake.url())).map_or(0, |s| s.errors);
    // Every challenge has been read once 46 are counted as ignored.
    for _ in 0..500 {
        if errors() >= 46 && auths() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Whatever answers were sent have had time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        (1..=4).contains(&auths()),
        "{} challenges answered",
        auths()
    );
    assert!(errors() >= 46, "{}", errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_relay_closes_its_side_of_a_subscription() {
    let a = FakeRelay::start(notes(16, 2), Behaviour::default()).await;
    let b = FakeRelay::start(notes(17, 3), Behaviour::default()).await;
    let (pool, _task) = pool::start(fast());
    let mut sub = pool
        .subscribe(vec![url(&a.url()), url(&b.url())], vec![Filter::new()], 64)
        .await
        .unwrap();
    assert_eq!(until_eose(&mut sub, 2).await.len(), 5);
    pool.remove_relay(url(&a.url())).await.unwrap();
    match next(&mut sub).await {
        PoolEvent::Closed { relay, reason, .. } => {
            assert_eq!(relay, url(&a.url()));
            assert!(reason.contains("removed"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // b still serves it: a live event arrives.
    let fresh = Keys::from_seed(18).sign(now(), 1, vec![], "still here".into());
    b.push(fresh.clone());
    loop {
        if let PoolEvent::Event { relay, event, .. } = next(&mut sub).await {
            assert_eq!(relay, url(&b.url()));
            assert_eq!(event.id, fresh.id);
            break;
        }
    }
}

/// A relay that accepts the connection and never answers the WebSocket
/// handshake must not hold up the pool's shutdown, or a relay's removal,
/// for the dial timeout (an hour here; `megalith serve` took the default
/// 10 s to stop while a feed job dialed such a relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_never_answers_holds_up_neither_removal_nor_shutdown() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = url(&format!("ws://{}", silent.local_addr().unwrap()));
    let _held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            kept.push(tcp);
        }
    });
    let (pool, task) = pool::start(PoolConfig {
        connect_timeout: Duration::from_secs(3_600),
        ..fast()
    });
    let mut sub = pool
        .subscribe(vec![silent_url.clone()], vec![Filter::new()], 16)
        .await
        .unwrap();
    // The dial has begun (the relay saw the connection) and hangs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.stats().get(&silent_url).unwrap().attempts, 1);
    tokio::time::timeout(
        Duration::from_secs(30),
        pool.remove_relay(silent_url.clone()),
    )
    .await
    .expect("removing the relay waited for its dial")
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match sub.recv().await {
                None | Some(PoolEvent::Closed { .. }) => return,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the subscription never heard that its relay went"
    );
    // And a shutdown with another such dial in progress.
    let _other = pool
        .subscribe(vec![silent_url], vec![Filter::new()], 16)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        pool.shutdown().await;
        task.await.unwrap();
    })
    .await
    .expect("the pool's shutdown waited for a dial");
}
