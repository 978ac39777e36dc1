//! NIP-77 negentropy sync on the relay: a client running the `negentropy`
//! crate's initiator learns exactly what each side lacks (checked against
//! sets computed by brute force), over many rounds when the frame limit
//! is small; every refusal is a `NEG-ERR` whose reason says why; private
//! kinds stay out of an anonymous client's items.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/relay.rs"]
mod relay;

use std::collections::BTreeSet;

use common::{Generator, Rng, now};
use megalith::{Event, Filter, Keys};
use megalith_relay::{RelayConfig, RelayLimits};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use relay::{Client, TestRelay, auth_event};
use serde_json::{Value, json};

/// The first message of a client that holds nothing, as hex.
fn empty_message() -> String {
    let mut storage = NegentropyStorageVector::new();
    storage.seal().unwrap();
    megalith::hex::encode(&Negentropy::owned(storage, 0).unwrap().initiate().unwrap())
}

/// What a client holds: (created_at, id) items.
type Items = BTreeSet<(u64, [u8; 32])>;

fn items_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Items {
    events
        .into_iter()
        .map(|e| (e.created_at, *e.id.as_bytes()))
        .collect()
}

/// The outcome of a whole reconciliation from the client's side.
struct Reconciled {
    /// Ids the client has and the relay lacks, and the other way round.
    have: BTreeSet<[u8; 32]>,
    need: BTreeSet<[u8; 32]>,
    /// NEG-MSG answers received, and the largest (bytes before hex).
    rounds: usize,
    largest: usize,
}

/// Runs NEG-OPEN and NEG-MSGs to the end as an initiator holding `items`
/// (messages of at most `frame` bytes); ends with NEG-CLOSE. Panics on a
/// NEG-ERR.
async fn reconcile(
    client: &mut Client,
    sub: &str,
    filter: &Value,
    items: &Items,
    frame: u64,
) -> Reconciled {
    let mut storage = NegentropyStorageVector::new();
    for (time, id) in items {
        storage.insert(*time, Id::from_byte_array(*id)).unwrap();
    }
    storage.seal().unwrap();
    let mut neg = Negentropy::owned(storage, frame).unwrap();
    let first = neg.initiate().unwrap();
    client
        .send(&json!(["NEG-OPEN", sub, filter, megalith::hex::encode(&first)]).to_string())
        .await;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let (mut rounds, mut largest) = (0, 0);
    loop {
        let reply = client.recv().await;
        assert_eq!(reply[0], "NEG-MSG", "{reply}");
        assert_eq!(reply[1], sub, "{reply}");
        let message = megalith::hex::decode(reply[2].as_str().unwrap()).unwrap();
        rounds += 1;
        largest = largest.max(message.len());
        match neg
            .reconcile_with_ids(&message, &mut have, &mut need)
            .unwrap()
        {
            Some(next) => {
                client
                    .send(&json!(["NEG-MSG", sub, megalith::hex::encode(&next)]).to_string())
                    .await
            }
            None => break,
        }
    }
    client.send(&json!(["NEG-CLOSE", sub]).to_string()).await;
    Reconciled {
        have: have.iter().map(|id| *id.as_bytes()).collect(),
        need: need.iter().map(|id| *id.as_bytes()).collect(),
        rounds,
        largest,
    }
}

/// The NEG-ERR reason of one message sent.
async fn neg_err(client: &mut Client, message: Value) -> String {
    client.send(&message.to_string()).await;
    let reply = client.recv().await;
    assert_eq!(reply[0], "NEG-ERR", "{message} -> {reply}");
    assert_eq!(reply[1], message[1], "{reply}");
    reply[2].as_str().unwrap().to_string()
}

fn ids(items: &Items) -> BTreeSet<[u8; 32]> {
    items.iter().map(|(_, id)| *id).collect()
}

/// A store of generated events (replacements, deletions, ties in time
/// included); a client holding most of them plus events the relay never
/// saw, for several filters and frame limits. Reference: the store's own
/// query for the filter, set differences by brute force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_learns_exactly_what_each_side_lacks() {
    let config = RelayConfig {
        limits: RelayLimits {
            sync_frame_bytes: 4_096,
            ..RelayLimits::default()
        },
        ..RelayConfig::default()
    };
    let relay = TestRelay::start_with(config).await;
    let mut generator = Generator::new(77, 40);
    let events: Vec<Event> = (0..4_000).map(|_| generator.next_event()).collect();
    relay.store.insert(&events).unwrap();
    let mut others = Generator::new(78, 10);
    let extra: Vec<Event> = (0..300).map(|_| others.next_event()).collect();

    let mut client = relay.connect().await;
    let mut rng = Rng::new(5);
    let filters = [
        json!({}),
        json!({"kinds": [1, 7]}),
        json!({"since": common::BASE_TIME + 1_000, "until": common::BASE_TIME + 2_000}),
        json!({"authors": [generator.keys[3].pubkey().to_hex()]}),
    ];
    let mut multi_round = false;
    for (n, filter_json) in filters.iter().enumerate() {
        let filter = Filter::from_value(filter_json).unwrap();
        let on_relay = items_of(&relay.store.query(std::slice::from_ref(&filter)).unwrap());
        assert!(!on_relay.is_empty(), "{filter_json}");
        let mut mine: Items = on_relay
            .iter()
            .filter(|_| !rng.chance(12))
            .copied()
            .collect();
        let extras = items_of(extra.iter().filter(|e| common::matches(&filter, e)));
        mine.extend(&extras);
        // 60,000: what clients use under a 128 KiB message limit.
        for frame in [60_000, 4_096] {
            let got = reconcile(&mut client, &format!("s{n}"), filter_json, &mine, frame).await;
            let need: BTreeSet<_> = ids(&on_relay).difference(&ids(&mine)).copied().collect();
            let have: BTreeSet<_> = ids(&mine).difference(&ids(&on_relay)).copied().collect();
            assert_eq!(got.need, need, "{filter_json}, frame {frame}: need");
            assert_eq!(got.have, have, "{filter_json}, frame {frame}: have");
            assert!(
                got.largest <= 4_096,
                "{filter_json}: a relay message of {} bytes past the 4,096 frame limit",
                got.largest
            );
            multi_round |= got.rounds > 2;
        }
    }
    assert!(
        multi_round,
        "no reconciliation needed more than two rounds: the frame limit was never reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_neg_errs_that_say_why() {
    let config = RelayConfig {
        limits: RelayLimits {
            max_sync_events: 50,
            max_sync_sessions: 2,
            ..RelayLimits::default()
        },
        ..RelayConfig::default()
    };
    let relay = TestRelay::start_with(config).await;
    let keys = Keys::from_seed(9);
    let events: Vec<Event> = (0..60)
        .map(|i| keys.sign(now() - 100 + i, 1, Vec::new(), format!("note {i}")))
        .collect();
    relay.store.insert(&events).unwrap();
    let mut client = relay.connect().await;
    let empty = empty_message();

    let reason = neg_err(&mut client, json!(["NEG-OPEN", "big", {}, empty])).await;
    assert!(reason.starts_with("blocked:"), "{reason}");
    assert!(reason.contains("more than 50"), "{reason}");
    // A limit keeps the newest, as in a REQ: within the bound, accepted.
    client
        .send(&json!(["NEG-OPEN", "newest", {"limit": 50}, empty]).to_string())
        .await;
    assert_eq!(client.recv().await[0], "NEG-MSG");

    for (message, needle) in [
        (json!(["NEG-OPEN", "h", {}, "zz"]), "not hex"),
        (json!(["NEG-OPEN", "h", {}, "abc"]), "odd number"),
        (json!(["NEG-OPEN", "h", {}, 5]), "string of hex"),
        (json!(["NEG-OPEN", "h", {"kinds": "x"}, empty]), "filter 0"),
        (json!(["NEG-OPEN", "h", {}, "7f"]), "protocol version"),
        (json!(["NEG-OPEN", "h", {}, ""]), "empty"),
        (json!(["NEG-OPEN", "", {}, empty]), "subscription id"),
    ] {
        let reason = neg_err(&mut client, message.clone()).await;
        assert!(reason.starts_with("invalid:"), "{message}: {reason}");
        assert!(reason.contains(needle), "{message}: {reason}");
    }
    let reason = neg_err(&mut client, json!(["NEG-MSG", "nobody", "61"])).await;
    assert!(reason.starts_with("closed:"), "{reason}");
    // A message the open session cannot read ends it.
    let reason = neg_err(&mut client, json!(["NEG-MSG", "newest", "ff00"])).await;
    assert!(reason.starts_with("invalid:"), "{reason}");
    let reason = neg_err(&mut client, json!(["NEG-MSG", "newest", "61"])).await;
    assert!(reason.starts_with("closed:"), "{reason}");

    // Two sessions per connection here; a third is refused until one closes.
    for sub in ["a", "b"] {
        client
            .send(&json!(["NEG-OPEN", sub, {"limit": 5}, empty]).to_string())
            .await;
        assert_eq!(client.recv().await[0], "NEG-MSG");
    }
    let reason = neg_err(&mut client, json!(["NEG-OPEN", "c", {"limit": 5}, empty])).await;
    assert!(
        reason.starts_with("blocked:") && reason.contains("at most 2"),
        "{reason}"
    );
    client.send(&json!(["NEG-CLOSE", "a"]).to_string()).await;
    client
        .send(&json!(["NEG-OPEN", "c", {"limit": 5}, empty]).to_string())
        .await;
    assert_eq!(client.recv().await[0], "NEG-MSG");
    // Reopening an open id replaces the session, not adds one.
    client
        .send(&json!(["NEG-OPEN", "c", {"limit": 6}, empty]).to_string())
        .await;
    assert_eq!(client.recv().await[0], "NEG-MSG");

    // Malformed frames: a NOTICE, as for any message that cannot be read.
    client.send(r#"["NEG-OPEN","x",{}]"#).await;
    let reply = client.recv().await;
    assert_eq!(reply[0], "NOTICE", "{reply}");
    assert!(reply[1].as_str().unwrap().contains("NEG-OPEN"), "{reply}");
    // Every session let go of its items once the connection ended.
    client.close().await;
    let metrics = wait_for_items_held(&relay, 0).await;
    assert!(metrics, "sync items still held after the connection closed");
}

/// Polls /metrics until `megalith_sync_items_held` reads `want`.
async fn wait_for_items_held(relay: &TestRelay, want: u64) -> bool {
    for _ in 0..100 {
        let (_, _, body) = relay.http_get("/metrics", None).await;
        let held = body
            .lines()
            .find_map(|l| l.strip_prefix("megalith_sync_items_held "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if held == Some(want) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// The relay's budget of items held by all sessions together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_together_hold_at_most_their_budget() {
    let config = RelayConfig {
        limits: RelayLimits {
            max_sync_items_held: 30,
            ..RelayLimits::default()
        },
        ..RelayConfig::default()
    };
    let relay = TestRelay::start_with(config).await;
    let keys = Keys::from_seed(10);
    let events: Vec<Event> = (0..20)
        .map(|i| keys.sign(now() - 100 + i, 1, Vec::new(), format!("note {i}")))
        .collect();
    relay.store.insert(&events).unwrap();
    let empty = empty_message();
    let mut first = relay.connect().await;
    first
        .send(&json!(["NEG-OPEN", "one", {}, empty]).to_string())
        .await;
    assert_eq!(first.recv().await[0], "NEG-MSG");
    assert!(wait_for_items_held(&relay, 20).await);
    let mut second = relay.connect().await;
    let reason = neg_err(&mut second, json!(["NEG-OPEN", "two", {}, empty])).await;
    assert!(reason.starts_with("blocked:"), "{reason}");
    assert!(reason.contains("30"), "{reason}");
    first.send(&json!(["NEG-CLOSE", "one"]).to_string()).await;
    assert!(wait_for_items_held(&relay, 0).await);
    second
        .send(&json!(["NEG-OPEN", "two", {}, empty]).to_string())
        .await;
    assert_eq!(second.recv().await[0], "NEG-MSG");
}

/// Direct messages are not an anonymous client's items: a filter naming
/// their kind is refused as a REQ would be, and `{}` leaves them out
/// until the recipient authenticates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_kinds_stay_out_of_an_anonymous_clients_items() {
    let relay = TestRelay::start(RelayLimits::default()).await;
    let (alice, bob) = (Keys::from_seed(20), Keys::from_seed(21));
    let dm = alice.sign(
        now() - 10,
        4,
        vec![vec!["p".into(), bob.pubkey().to_hex()]],
        "ciphertext?iv=abc".into(),
    );
    let note = alice.sign(now() - 9, 1, Vec::new(), "hello".into());
    relay.store.insert(&[dm.clone(), note.clone()]).unwrap();
    let mut client = relay.connect().await;
    let empty: Items = Items::new();
    let reason = neg_err(
        &mut client,
        json!(["NEG-OPEN", "dms", {"kinds": [4]}, "61"]),
    )
    .await;
    assert!(reason.starts_with("auth-required:"), "{reason}");
    let got = reconcile(&mut client, "all", &json!({}), &empty, 0).await;
    assert_eq!(got.need, BTreeSet::from([*note.id.as_bytes()]));

    let challenge = client.challenge().await;
    let (ok, message) = client
        .auth(&auth_event(&bob, &relay.url(), &challenge, now()))
        .await;
    assert!(ok, "{message}");
    let got = reconcile(&mut client, "all", &json!({}), &empty, 0).await;
    let want: BTreeSet<[u8; 32]> = [&dm, &note].iter().map(|e| *e.id.as_bytes()).collect();
    assert_eq!(got.need, want);
}
