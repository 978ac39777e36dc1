//! The relay over real WebSockets: every NIP-01 message type, live
//! delivery, NIP-11, /health and /metrics, each limit's refusal, and a
//! clean shutdown.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/relay.rs"]
mod relay;

use std::time::Duration;

use megalith::{Event, EventStore, Keys};
use megalith_relay::RelayLimits;
use relay::{TestRelay, WAIT};
use serde_json::{Value, json};

fn note(keys: &Keys, created_at: u64, kind: u16, content: &str) -> Event {
    keys.sign(created_at, kind, Vec::new(), content.to_string())
}

fn tagged(keys: &Keys, created_at: u64, kind: u16, tags: &[(&str, &str)]) -> Event {
    let tags = tags
        .iter()
        .map(|(k, v)| vec![k.to_string(), v.to_string()])
        .collect();
    keys.sign(created_at, kind, tags, String::new())
}

fn as_value(event: &Event) -> Value {
    serde_json::from_str(&event.to_json()).unwrap()
}

/// A short wait for something that must not arrive.
const QUIET: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_720_real_events_come_back_identical() {
    let relay = TestRelay::start(RelayLimits {
        events_burst: 10_000.0,
        ..RelayLimits::default()
    })
    .await;
    let events = common::real_events();
    assert_eq!(events.len(), 720);
    let mut client = relay.connect().await;
    let mut accepted = 0;
    for (json, event) in &events {
        let (ok, message) = client.publish_json(json, &event.id.to_hex()).await;
        if ok {
            accepted += 1;
        } else {
            // Older versions of replaceable events arriving after newer ones.
            assert!(message.starts_with("duplicate:"), "{message} for {json}");
        }
    }
    assert!(accepted >= 717, "{accepted}");
    // Every stored one comes back as the same JSON value, by id.
    let mut served = 0;
    for chunk in events.chunks(100) {
        let ids: Vec<String> = chunk.iter().map(|(_, e)| e.id.to_hex()).collect();
        let back = client.req("ids", &[json!({ "ids": ids })]).await;
        for value in &back {
            let original = chunk
                .iter()
                .find(|(_, e)| value["id"] == e.id.to_hex())
                .map(|(json, _)| serde_json::from_str::<Value>(json).unwrap())
                .expect("an event that was not asked for");
            assert_eq!(*value, original);
        }
        served += back.len();
    }
    assert_eq!(served, 717);
    // And in NIP-01 order through a plain REQ.
    let all = client.req("all", &[json!({ "limit": 500 })]).await;
    assert_eq!(all.len(), 500);
    for pair in all.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (ta, tb) = (a["created_at"].as_u64(), b["created_at"].as_u64());
        assert!(
            ta > tb || (ta == tb && a["id"].as_str() < b["id"].as_str()),
            "{a} before {b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ok_duplicate_invalid_and_notice() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let mut client = relay.connect().await;
    let keys = Keys::from_seed(1);
    let now = common::now();
    let event = note(&keys, now - 10, 1, "hello");
    assert_eq!(client.publish(&event).await, (true, String::new()));
    let (ok, message) = client.publish(&event).await;
    assert!(ok);
    assert!(message.starts_with("duplicate:"), "{message}");

    // A bad signature: OK false with invalid:, naming the event.
    let mut forged = note(&keys, now - 5, 1, "forged");
    forged.sig.0[10] ^= 1;
    let (ok, message) = client.publish(&forged).await;
    assert!(!ok);
    assert!(message.starts_with("invalid:"), "{message}");

    // An event whose fields are wrong but whose id can be read: OK false.
    let id = "ab".repeat(32);
    let (ok, message) = client
        .publish_json(&format!(r#"{{"id":"{id}","kind":"one"}}"#), &id)
        .await;
    assert!(!ok);
    assert!(message.starts_with("invalid:"), "{message}");

    // No readable id, not JSON, unknown verbs, binary frames: NOTICE.
    for bad in [
        r#"["EVENT",{"kind":1}]"#,
        "not json",
        r#"{"REQ":1}"#,
        r#"["SUBSCRIBE","x"]"#,
        r#"["REQ"]"#,
    ] {
        client.send(bad).await;
        let reply = client.recv().await;
        assert_eq!(reply[0], "NOTICE", "{bad}: {reply}");
        assert!(
            reply[1].as_str().unwrap().starts_with("invalid:"),
            "{reply}"
        );
    }
    // The connection still works, and the event is stored.
    let back = client
        .req("s", &[json!({ "ids": [event.id.to_hex()] })])
        .await;
    assert_eq!(back, vec![as_value(&event)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn req_streams_stored_then_eose_then_live_and_close_stops_it() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let keys = Keys::from_seed(2);
    let now = common::now();
    let mut publisher = relay.connect().await;
    let old: Vec<Event> = (0..5)
        .map(|i| note(&keys, now - 100 + i, 1, "old"))
        .collect();
    for event in &old {
        assert!(publisher.publish(event).await.0);
    }
    let mut a = relay.connect().await;
    let mut b = relay.connect().await;
    let author = keys.pubkey().to_hex();
    let stored = a
        .req("feed", &[json!({ "authors": [author], "limit": 3 })])
        .await;
    let expected: Vec<Value> = old.iter().rev().take(3).map(as_value).collect();
    assert_eq!(stored, expected);
    assert_eq!(
        b.req("kind1", &[json!({ "kinds": [1], "limit": 0 })]).await,
        Vec::<Value>::new()
    );

    // A new note reaches both subscribers once.
    let fresh = note(&keys, now, 1, "fresh");
    assert!(publisher.publish(&fresh).await.0);
    assert_eq!(a.live("feed", WAIT).await, Some(as_value(&fresh)));
    assert_eq!(b.live("kind1", WAIT).await, Some(as_value(&fresh)));
    assert_eq!(a.recv_within(QUIET).await, None);
    assert_eq!(b.recv_within(QUIET).await, None);

    // An event neither filter matches reaches nobody.
    let other = note(&Keys::from_seed(3), now, 7, "+");
    assert!(publisher.publish(&other).await.0);
    assert_eq!(a.recv_within(QUIET).await, None);
    assert_eq!(b.recv_within(QUIET).await, None);

    // After CLOSE, nothing more.
    a.send(r#"["CLOSE","feed"]"#).await;
    let later = note(&keys, now + 1, 1, "later");
    assert!(publisher.publish(&later).await.0);
    assert_eq!(b.live("kind1", WAIT).await, Some(as_value(&later)));
    assert_eq!(a.recv_within(QUIET).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_req_with_an_open_id_replaces_the_subscription() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let keys = Keys::from_seed(4);
    let now = common::now();
    let mut client = relay.connect().await;
    let mut publisher = relay.connect().await;
    client
        .req("x", &[json!({ "kinds": [1], "limit": 0 })])
        .await;
    client
        .req("x", &[json!({ "kinds": [7], "limit": 0 })])
        .await;
    let kind1 = note(&keys, now, 1, "one");
    let kind7 = note(&keys, now, 7, "+");
    assert!(publisher.publish(&kind1).await.0);
    assert!(publisher.publish(&kind7).await.0);
    // Only the kind 7 filter is live, and it delivers once.
    assert_eq!(client.live("x", WAIT).await, Some(as_value(&kind7)));
    assert_eq!(client.recv_within(QUIET).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_match_live_events() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let keys = Keys::from_seed(5);
    let now = common::now();
    let target = "e1".repeat(32);
    let mut client = relay.connect().await;
    let mut publisher = relay.connect().await;
    client
        .req(
            "reactions",
            &[json!({ "#e": [target], "kinds": [7], "limit": 0 })],
        )
        .await;
    let wrong_kind = tagged(&keys, now, 1, &[("e", &target)]);
    let wrong_target = tagged(&keys, now, 7, &[("e", &"f0".repeat(32))]);
    let reaction = tagged(&keys, now, 7, &[("p", &"aa".repeat(32)), ("e", &target)]);
    for event in [&wrong_kind, &wrong_target, &reaction] {
        assert!(publisher.publish(event).await.0);
    }
    assert_eq!(
        client.live("reactions", WAIT).await,
        Some(as_value(&reaction))
    );
    assert_eq!(client.recv_within(QUIET).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_events_are_delivered_live_and_not_stored() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let keys = Keys::from_seed(6);
    let mut subscriber = relay.connect().await;
    let mut publisher = relay.connect().await;
    subscriber
        .req("eph", &[json!({ "kinds": [20001], "limit": 10 })])
        .await;
    let event = note(&keys, common::now(), 20001, "typing");
    assert_eq!(publisher.publish(&event).await, (true, String::new()));
    assert_eq!(subscriber.live("eph", WAIT).await, Some(as_value(&event)));
    assert_eq!(
        publisher.req("again", &[json!({ "kinds": [20001] })]).await,
        Vec::<Value>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_is_seen_live_and_hides_the_event() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let keys = Keys::from_seed(7);
    let now = common::now();
    let mut publisher = relay.connect().await;
    let mut watcher = relay.connect().await;
    let doomed = note(&keys, now - 10, 1, "oops");
    assert!(publisher.publish(&doomed).await.0);
    let author = keys.pubkey().to_hex();
    let stored = watcher.req("mine", &[json!({ "authors": [author] })]).await;
    assert_eq!(stored, vec![as_value(&doomed)]);
    let deletion = tagged(&keys, now, 5, &[("e", &doomed.id.to_hex())]);
    assert!(publisher.publish(&deletion).await.0);
    assert_eq!(watcher.live("mine", WAIT).await, Some(as_value(&deletion)));
    let after = watcher
        .req("after", &[json!({ "kinds": [1], "authors": [author] })])
        .await;
    assert!(after.is_empty(), "{after:?}");
    // Publishing the deleted event again is refused.
    let (ok, message) = publisher.publish(&doomed).await;
    assert!(!ok);
    assert!(message.starts_with("blocked:"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_answers_nip45() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let now = common::now();
    let mut client = relay.connect().await;
    let target = "c0".repeat(32);
    for seed in 10..17 {
        let reaction = tagged(&Keys::from_seed(seed), now, 7, &[("e", &target)]);
        assert!(client.publish(&reaction).await.0);
    }
    client
        .send(&json!(["COUNT", "n", { "#e": [target], "kinds": [7] }]).to_string())
        .await;
    assert_eq!(client.recv().await, json!(["COUNT", "n", { "count": 7 }]));
    // Limits do not cap a count, and two filters count an event once.
    client
        .send(&json!(["COUNT", "m", { "kinds": [7], "limit": 2 }, { "#e": [target] }]).to_string())
        .await;
    assert_eq!(client.recv().await, json!(["COUNT", "m", { "count": 7 }]));
    let refused = client.req_refused(r#"["COUNT","bad",{"kinds":"x"}]"#).await;
    assert!(refused.starts_with("invalid:"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn req_limits_are_enforced_with_closed() {
    let limits = RelayLimits {
        max_subscriptions: 3,
        max_filters: 2,
        max_subid_length: 8,
        max_limit: 4,
        default_limit: 2,
        ..RelayLimits::default()
    };
    let relay = TestRelay::start(limits).await;
    let keys = Keys::from_seed(8);
    let now = common::now();
    let mut client = relay.connect().await;
    for i in 0..6 {
        assert!(client.publish(&note(&keys, now - i, 1, "n")).await.0);
    }
    // limit clamped to max_limit; no limit means default_limit.
    assert_eq!(client.req("a", &[json!({ "limit": 100 })]).await.len(), 4);
    assert_eq!(client.req("b", &[json!({})]).await.len(), 2);
    assert_eq!(client.req("c", &[json!({ "limit": 1 })]).await.len(), 1);
    // A fourth subscription is refused; replacing an open one is not.
    let reason = client.req_refused(r#"["REQ","d",{}]"#).await;
    assert!(reason.starts_with("rate-limited:"), "{reason}");
    assert_eq!(client.req("c", &[json!({ "limit": 3 })]).await.len(), 3);
    // After a CLOSE there is room again.
    client.send(r#"["CLOSE","c"]"#).await;
    assert_eq!(client.req("d", &[json!({ "limit": 1 })]).await.len(), 1);
    client.send(r#"["CLOSE","d"]"#).await;
    for (message, prefix) in [
        (r#"["REQ","e",{},{},{}]"#, "invalid:"),
        (r#"["REQ","123456789",{}]"#, "invalid:"),
        (r#"["REQ","",{}]"#, "invalid:"),
        (r#"["REQ","e"]"#, "invalid:"),
        (r#"["REQ","e",{"authors":["xyz"]}]"#, "invalid:"),
        (r#"["REQ","e",{"since":"yesterday"}]"#, "invalid:"),
    ] {
        let reason = client.req_refused(message).await;
        assert!(reason.starts_with(prefix), "{message}: {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_rate_limits_refuse_with_reasons() {
    let limits = RelayLimits {
        max_message_bytes: 8_192,
        max_event_bytes: 4_096,
        max_event_tags: 5,
        events_per_second: 1.0,
        events_burst: 4.0,
        ..RelayLimits::default()
    };
    let relay = TestRelay::start(limits).await;
    let keys = Keys::from_seed(9);
    let now = common::now();
    let mut client = relay.connect().await;
    // A message over the size limit: NOTICE, and the connection stays.
    let huge = json!(["REQ", "big", { "#t": ["x".repeat(10_000)] }]).to_string();
    client.send(&huge).await;
    let reply = client.recv().await;
    assert_eq!(reply[0], "NOTICE");
    assert!(
        reply[1].as_str().unwrap().starts_with("invalid:"),
        "{reply}"
    );
    // An event over the event limit (but inside the message limit).
    let big = note(&keys, now, 1, &"y".repeat(5_000));
    let (ok, message) = client.publish(&big).await;
    assert!(!ok);
    assert!(message.starts_with("invalid:"), "{message}");
    // An event with more tags than allowed.
    let tags: Vec<(&str, &str)> = (0..6).map(|_| ("t", "x")).collect();
    let (ok, message) = client.publish(&tagged(&keys, now, 1, &tags)).await;
    assert!(!ok);
    assert!(message.starts_with("invalid:"), "{message}");
    assert!(message.contains("tags"), "{message}");
    // The rest of the burst, then rate-limited.
    let mut refused = None;
    for i in 0..5 {
        let (ok, message) = client.publish(&note(&keys, now - i, 1, "r")).await;
        if !ok {
            refused = Some(message);
            break;
        }
    }
    let message = refused.expect("the burst limit never refused");
    assert!(message.starts_with("rate-limited:"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_at_accept() {
    let relay = TestRelay::start(RelayLimits {
        max_connections_per_ip: 2,
        ..RelayLimits::default()
    })
    .await;
    let mut first = relay.connect().await;
    let _second = relay.connect().await;
    // The third is refused at accept, before the upgrade: HTTP 503. (A
    // client behind a trusted proxy gets a NOTICE instead: see
    // tests/relay_hostile.rs.)
    match tokio_tungstenite::connect_async(relay.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    // The others still work; once one leaves, a new one gets in.
    assert_eq!(
        first.req("ok", &[json!({ "limit": 1 })]).await,
        Vec::<Value>::new()
    );
    first.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = relay.connect().await;
    assert_eq!(
        fourth.req("ok", &[json!({ "limit": 1 })]).await,
        Vec::<Value>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_with_a_notice() {
    let relay = TestRelay::start(RelayLimits {
        idle_timeout_secs: 1,
        ..RelayLimits::default()
    })
    .await;
    let mut client = relay.connect().await;
    let (closed, seen) = client.closed_within(Duration::from_secs(10)).await;
    assert!(closed);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0][0], "NOTICE");
    assert!(seen[0][1].as_str().unwrap().starts_with("error:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_time_budget_is_closed_with_error() {
    // 30,000 notes, then a search the store has no index for: every
    // record is read, far more than 1 ms of work.
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path()).shards(2).open().unwrap();
    let now = common::now();
    let events: Vec<Event> = (0..30_000u64)
        .map(|i| {
            note(
                &Keys::from_seed(100 + i % 50),
                now - 1_000 - i,
                1,
                "plain words",
            )
        })
        .collect();
    for chunk in events.chunks(5_000) {
        store.insert_trusted(chunk).unwrap();
    }
    let relay = TestRelay::serve(
        store,
        dir,
        RelayLimits {
            query_time_budget_ms: 1,
            ..RelayLimits::default()
        },
    )
    .await;
    let mut client = relay.connect().await;
    let reason = client
        .req_refused(r#"["REQ","slow",{"search":"absent"}]"#)
        .await;
    assert!(reason.starts_with("error:"), "{reason}");
    assert!(reason.contains("time budget"), "{reason}");
    // The connection and the subscription table are fine afterwards.
    assert_eq!(client.req("fast", &[json!({ "limit": 2 })]).await.len(), 2);
    let (_, _, metrics) = relay.http_get("/metrics", None).await;
    assert!(
        metrics.contains("megalith_query_timeouts_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_others_are_not() {
    let limits = RelayLimits {
        max_outbound_bytes: 1 << 20,
        events_burst: 100_000.0,
        events_per_second: 100_000.0,
        ..RelayLimits::default()
    };
    let relay = TestRelay::start(limits).await;
    let keys = Keys::from_seed(11);
    let now = common::now();
    let mut slow = relay.connect().await;
    let mut reader = relay.connect().await;
    slow.req("all", &[json!({ "kinds": [1], "limit": 0 })])
        .await;
    reader
        .req("all", &[json!({ "kinds": [1], "limit": 0 })])
        .await;
    // What the reading client has received so far: the publisher stays
    // within a few notes of it, so it is never more than its 1 MiB behind,
    // however slowly a loaded machine schedules it.
    let (progress, mut received) = tokio::sync::watch::channel(0u64);
    let reading = tokio::spawn(async move {
        let mut got = 0;
        while got < 600 {
            match reader.live("all", WAIT).await {
                Some(_) => {
                    got += 1;
                    let _ = progress.send(got);
                }
                None => break,
            }
        }
        got
    });
    // 600 notes of 50 KB: 30 MB, far past what the slow client's socket
    // buffers (a few MB on loopback) and its 1 MiB outbox hold; the reading
    // client keeps well inside the bound.
    let mut publisher = relay.connect().await;
    let content = "z".repeat(50_000);
    for i in 0..600u64 {
        let behind = i.saturating_sub(4);
        tokio::time::timeout(WAIT, received.wait_for(|&got| got >= behind))
            .await
            .expect("the reading client falls behind")
            .expect("the reading client stopped");
        let event = note(&keys, now - 600 + i, 1, &content);
        assert!(publisher.publish(&event).await.0);
    }
    assert_eq!(reading.await.unwrap(), 600);
    // The slow client, reading at last, finds itself cut off short.
    let mut delivered = 0;
    while let Some(reply) = slow.recv_within(Duration::from_secs(5)).await {
        assert_eq!(reply[0], "EVENT");
        delivered += 1;
    }
    assert!(delivered < 600, "the slow client got all {delivered}");
    let (_, _, metrics) = relay.http_get("/metrics", None).await;
    assert!(
        metrics.contains("megalith_slow_clients_disconnected_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nip11_health_and_metrics_over_http() {
    let relay = TestRelay::start(RelayLimits {
        max_limit: 321,
        ..RelayLimits::default()
    })
    .await;
    let (status, headers, body) = relay.http_get("/", Some("application/nostr+json")).await;
    assert!(status.contains("200"), "{status}");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("access-control-allow-origin").as_deref(), Some("*"));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/nostr+json")
    );
    let doc: Value = serde_json::from_str(&body).unwrap();
    let nips: Vec<u64> = doc["supported_nips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    for nip in [1, 9, 11, 40, 45, 62] {
        assert!(nips.contains(&nip), "{nips:?}");
    }
    assert_eq!(doc["limitation"]["max_limit"], 321);
    assert_eq!(doc["limitation"]["max_subscriptions"], 200);
    assert_eq!(doc["limitation"]["max_message_length"], 131_072);

    let (status, _, body) = relay.http_get("/health", None).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), "ok");

    let mut client = relay.connect().await;
    let event = note(&Keys::from_seed(12), common::now(), 1, "metered");
    assert!(client.publish(&event).await.0);
    client.req("m", &[json!({ "kinds": [1] })]).await;
    let (status, _, body) = relay.http_get("/metrics", None).await;
    assert!(status.contains("200"), "{status}");
    for line in [
        "nostr_client_messages_total{verb=\"EVENT\"} 1",
        "nostr_client_messages_total{verb=\"REQ\"} 1",
        "nostr_relay_messages_total{verb=\"OK\"} 1",
        "nostr_relay_messages_total{verb=\"EOSE\"} 1",
        "nostr_events_total{kind=\"1\"} 1",
        "megalith_events_stored 1",
        "megalith_connections 1",
        "megalith_subscriptions 1",
        "megalith_insert_batches_total 1",
    ] {
        assert!(body.contains(line), "missing {line} in\n{body}");
    }
    assert!(body.contains("megalith_query_seconds_bucket"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_subscriptions_and_the_store_reopens_clean() {
    let mut relay = TestRelay::start(RelayLimits::default()).await;
    let keys = Keys::from_seed(13);
    let mut client = relay.connect().await;
    let event = note(&keys, common::now(), 1, "kept");
    assert!(client.publish(&event).await.0);
    client
        .req("open", &[json!({ "kinds": [1], "limit": 0 })])
        .await;
    relay.shutdown().await;
    let (closed, seen) = client.closed_within(WAIT).await;
    assert!(closed);
    assert_eq!(
        seen,
        vec![json!([
            "CLOSED",
            "open",
            "error: the relay is shutting down"
        ])]
    );
    // The last connection task lets go of the store just after the relay
    // returns.
    let mut shared = relay.store;
    let mut tries = 0;
    let store = loop {
        match std::sync::Arc::try_unwrap(shared) {
            Ok(store) => break store,
            Err(again) => {
                tries += 1;
                assert!(tries < 100, "the relay kept the store");
                shared = again;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    store.close().unwrap();
    let store = EventStore::open(relay.dir.path()).unwrap();
    assert!(!store.recovery_report().unclean_shutdown);
    assert!(store.get(&event.id).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_mid_answer_is_dropped() {
    // 500 stored notes of 50 KB: a 25 MB answer, cut at 4x the 4 MiB
    // outbound bound (16 MiB), still far past the socket buffers and the
    // outbox.
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::builder(dir.path()).shards(2).open().unwrap();
    let now = common::now();
    let content = "q".repeat(50_000);
    let events: Vec<Event> = (0..500u64)
        .map(|i| note(&Keys::from_seed(300 + i % 7), now - 1_000 - i, 1, &content))
        .collect();
    store.insert_trusted(&events).unwrap();
    let relay = TestRelay::serve(
        store,
        dir,
        RelayLimits {
            max_outbound_bytes: 4 << 20,
            idle_timeout_secs: 2,
            ..RelayLimits::default()
        },
    )
    .await;
    let mut stalled = relay.connect().await;
    stalled
        .send(r#"["REQ","big",{"kinds":[1],"limit":500}]"#)
        .await;
    // Not reading for longer than the idle timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut events_seen = 0;
    let mut eose = false;
    while let Some(reply) = stalled.recv_within(Duration::from_secs(5)).await {
        match reply[0].as_str() {
            Some("EVENT") => events_seen += 1,
            Some("EOSE") => eose = true,
            _ => {}
        }
    }
    assert!(!eose, "the stalled client got the whole answer");
    assert!(events_seen < 500, "{events_seen}");
    // A client that reads gets the answer, cut at 16 MiB with the newest
    // kept (every event here has the same JSON length).
    let mut reader = relay.connect().await;
    let answer = reader
        .req("big", &[json!({ "kinds": [1], "limit": 500 })])
        .await;
    let each = events[0].to_json().len();
    assert_eq!(answer.len(), (16usize << 20).div_ceil(each).min(500));
    assert_eq!(answer[0], as_value(&events[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_before_a_req_are_never_delivered_live() {
    // Events published just before a REQ may still be on their way through
    // the live broadcaster when the subscription opens; those its limit
    // leaves out must not arrive afterwards as live events.
    let relay = TestRelay::start(RelayLimits {
        events_burst: 10_000.0,
        ..RelayLimits::default()
    })
    .await;
    let keys = Keys::from_seed(14);
    let now = common::now();
    let mut publisher = relay.connect().await;
    let mut reader = relay.connect().await;
    for round in 0..40u64 {
        let mut batch = String::new();
        let events: Vec<Event> = (0..10)
            .map(|i| note(&keys, now - 1_000 + round * 10 + i, 1, "burst"))
            .collect();
        for event in &events {
            batch = format!("[\"EVENT\",{}]", event.to_json());
            publisher.send(&batch).await;
        }
        drop(batch);
        for _ in &events {
            assert_eq!(publisher.recv().await[0], "OK");
        }
        let sub = format!("r{round}");
        let stored = reader
            .req(
                &sub,
                &[json!({ "authors": [keys.pubkey().to_hex()], "limit": 1 })],
            )
            .await;
        assert_eq!(stored, vec![as_value(&events[9])]);
        reader.send(&json!(["CLOSE", sub]).to_string()).await;
    }
    assert_eq!(reader.recv_within(QUIET).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_events_get_their_oks_in_order() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let keys = Keys::from_seed(15);
    let now = common::now();
    let mut client = relay.connect().await;
    let mut expected = Vec::new();
    let mut messages = Vec::new();
    for i in 0..120u64 {
        let mut event = note(&keys, now - 500 + i, 1, &format!("pipelined {i}"));
        let valid = i % 7 != 3;
        if !valid {
            event.sig.0[0] ^= 1;
        }
        messages.push(format!("[\"EVENT\",{}]", event.to_json()));
        expected.push((event.id.to_hex(), valid));
        if i % 30 == 29 {
            // Other verbs in the stream keep their place.
            messages.push(r#"["COUNT","c",{"kinds":[1]}]"#.to_string());
            expected.push((String::from("COUNT"), true));
        }
    }
    for message in &messages {
        client.send(message).await;
    }
    let mut stored_so_far = 0;
    for (what, valid) in &expected {
        let reply = client.recv().await;
        if what == "COUNT" {
            assert_eq!(reply[0], "COUNT", "{reply}");
            assert_eq!(reply[2]["count"], stored_so_far, "{reply}");
            continue;
        }
        assert_eq!(reply[0], "OK", "{reply}");
        assert_eq!(reply[1], what.as_str(), "{reply}");
        assert_eq!(reply[2], *valid, "{reply}");
        if *valid {
            stored_so_far += 1;
        } else {
            assert!(
                reply[3].as_str().unwrap().starts_with("invalid:"),
                "{reply}"
            );
        }
    }
    let stored = client.req("all", &[json!({ "kinds": [1] })]).await;
    assert_eq!(stored.len(), stored_so_far as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_the_transport_bound_gets_a_notice_before_the_close() {
    // The limit is 8 KiB; the WebSocket layer takes up to 1 MiB. Past that
    // the connection cannot continue, but the client is told why.
    let relay = TestRelay::start(RelayLimits {
        max_message_bytes: 8_192,
        max_event_bytes: 4_096,
        ..RelayLimits::default()
    })
    .await;
    let mut client = relay.connect().await;
    let huge = json!(["REQ", "big", { "#t": ["x".repeat(1_200_000)] }]).to_string();
    client.send(&huge).await;
    let (closed, seen) = client.closed_within(WAIT).await;
    assert!(closed);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0][0], "NOTICE");
    assert!(
        seen[0][1].as_str().unwrap().starts_with("error:"),
        "{seen:?}"
    );
    // The relay goes on serving others.
    let mut other = relay.connect().await;
    assert_eq!(other.req("ok", &[json!({ "limit": 1 })]).await.len(), 0);
}
