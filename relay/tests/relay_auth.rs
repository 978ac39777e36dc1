//! NIP-42 on the relay: the challenge, each way an authentication event is
//! refused, several keys per connection, and private kinds (DMs, gift
//! wraps) served only to their author or recipient, stored and live.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/relay.rs"]
mod relay;

use std::time::Duration;

use common::now;
use megalith::{Event, Keys};
use megalith_relay::{RelayConfig, RelayLimits};
use relay::{Client, TestRelay, WAIT, auth_event};
use serde_json::json;

fn dm(from: &Keys, to: &Keys, created_at: u64) -> Event {
    from.sign(
        created_at,
        4,
        vec![vec!["p".into(), to.pubkey().to_hex()]],
        "ciphertext?iv=abc".into(),
    )
}

async fn relay() -> TestRelay {
    TestRelay::start(RelayLimits::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_authentication_is_accepted() {
    let relay = relay().await;
    let mut client = relay.connect().await;
    let challenge = client.challenge().await;
    assert_eq!(challenge.len(), 32, "{challenge}");
    // Another connection gets another challenge.
    let mut other = relay.connect().await;
    assert_ne!(other.challenge().await, challenge);
    let keys = Keys::from_seed(1);
    let (ok, message) = client
        .auth(&auth_event(&keys, &relay.url(), &challenge, now()))
        .await;
    assert!(ok, "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_authentications_are_refused_saying_why() {
    let relay = relay().await;
    let mut client = relay.connect().await;
    let challenge = client.challenge().await;
    let keys = Keys::from_seed(2);
    let url = relay.url();
    let cases = [
        (
            auth_event(&keys, "wss://another.relay.example", &challenge, now()),
            "relay tag",
        ),
        (
            auth_event(&keys, &url, "not-the-challenge", now()),
            "challenge",
        ),
        (
            auth_event(&keys, &url, &challenge, now() - 3_600),
            "created_at",
        ),
        (
            auth_event(&keys, &url, &challenge, now() + 3_600),
            "created_at",
        ),
        (
            keys.sign(
                now(),
                1,
                vec![
                    vec!["relay".into(), url.clone()],
                    vec!["challenge".into(), challenge.clone()],
                ],
                String::new(),
            ),
            "kind 22242",
        ),
    ];
    for (event, needle) in cases {
        let (ok, message) = client.auth(&event).await;
        assert!(!ok, "{needle}: accepted");
        assert!(message.starts_with("invalid:"), "{message}");
        assert!(message.contains(needle), "{needle}: {message}");
    }
    // A bad signature: the event of another key with this one's pubkey.
    let good = auth_event(&keys, &url, &challenge, now());
    let forged = auth_event(&Keys::from_seed(3), &url, &challenge, now());
    let mut json: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
    json["sig"] =
        serde_json::from_str::<serde_json::Value>(&forged.to_json()).unwrap()["sig"].clone();
    client.send(&json!(["AUTH", json]).to_string()).await;
    let reply = client.recv().await;
    assert_eq!(reply[0], "OK");
    assert_eq!(reply[2], false, "{reply}");
    assert!(reply[3].as_str().unwrap().contains("signature"), "{reply}");
    // None of these authenticated the connection.
    let reason = client
        .req_refused(&json!(["REQ", "dms", {"kinds": [4]}]).to_string())
        .await;
    assert!(reason.starts_with("auth-required:"), "{reason}");
}

/// A DM read before and after AUTH: refused with `auth-required:` before;
/// after, the recipient and the author get it, anyone else does not, and a
/// filter without kinds never leaks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_only_for_their_author_and_recipient() {
    let relay = relay().await;
    let (alice, bob, eve) = (
        Keys::from_seed(10),
        Keys::from_seed(11),
        Keys::from_seed(12),
    );
    let message = dm(&alice, &bob, 1_700_000_000);
    let public = alice.sign(1_700_000_001, 1, Vec::new(), "hello all".into());
    let mut writer = relay.connect().await;
    assert!(writer.publish(&message).await.0);
    assert!(writer.publish(&public).await.0);

    let url = relay.url();
    let connect_as = |keys: Option<Keys>| {
        let url = url.clone();
        async move {
            let mut client = Client::connect(&url).await;
            let challenge = client.challenge().await;
            if let Some(keys) = keys {
                let (ok, m) = client
                    .auth(&auth_event(&keys, &url, &challenge, now()))
                    .await;
                assert!(ok, "{m}");
            }
            client
        }
    };
    let mut anonymous = connect_as(None).await;
    let reason = anonymous
        .req_refused(
            &json!(["REQ", "dms", {"kinds": [4], "#p": [bob.pubkey().to_hex()]}]).to_string(),
        )
        .await;
    assert!(reason.starts_with("auth-required:"), "{reason}");
    let reason = anonymous
        .req_refused(&json!(["COUNT", "n", {"kinds": [1059]}]).to_string())
        .await;
    assert!(reason.starts_with("auth-required:"), "{reason}");
    // Without naming kinds, the DM is left out.
    let all = anonymous
        .req("all", &[json!({"authors": [alice.pubkey().to_hex()]})])
        .await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["id"], public.id.to_hex());

    for (who, keys, sees) in [
        ("bob", bob.clone(), true),
        ("alice", alice.clone(), true),
        ("eve", eve.clone(), false),
    ] {
        let mut client = connect_as(Some(keys)).await;
        let got = client.req("dms", &[json!({"kinds": [4]})]).await;
        let ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let expected: Vec<String> = if sees {
            vec![message.id.to_hex()]
        } else {
            vec![]
        };
        assert_eq!(ids, expected, "{who}");
    }

    // Live: bob (authenticated) and eve (authenticated as herself) both
    // subscribe; only bob gets the next DM, and eve after proving bob's
    // key as well (several keys per connection).
    let mut bob_live = connect_as(Some(bob.clone())).await;
    assert!(
        bob_live
            .req("live", &[json!({"kinds": [4], "since": now() - 60})])
            .await
            .is_empty()
    );
    let mut eve_live = connect_as(Some(eve.clone())).await;
    assert!(
        eve_live
            .req("live", &[json!({"kinds": [4], "since": now() - 60})])
            .await
            .is_empty()
    );
    let second = dm(&alice, &bob, now());
    assert!(writer.publish(&second).await.0);
    let got = bob_live
        .live("live", WAIT)
        .await
        .expect("bob gets his DM live");
    assert_eq!(got["id"], second.id.to_hex());
    assert!(
        eve_live
            .live("live", Duration::from_millis(500))
            .await
            .is_none()
    );
    let challenge = eve_live.challenge().await;
    let (ok, m) = eve_live
        .auth(&auth_event(&bob, &url, &challenge, now()))
        .await;
    assert!(ok, "{m}");
    let third = dm(&alice, &bob, now() + 1);
    assert!(writer.publish(&third).await.0);
    let got = eve_live
        .live("live", WAIT)
        .await
        .expect("a second key opens bob's DMs");
    assert_eq!(got["id"], third.id.to_hex());
}

/// With `relay_url` set, the relay tag must name it, whatever Host the
/// client used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_relay_url_is_the_one_to_name() {
    let relay = TestRelay::start_with(RelayConfig {
        relay_url: Some("wss://relay.example.com".into()),
        ..RelayConfig::default()
    })
    .await;
    let mut client = relay.connect().await;
    let challenge = client.challenge().await;
    let keys = Keys::from_seed(30);
    let (ok, message) = client
        .auth(&auth_event(&keys, &relay.url(), &challenge, now()))
        .await;
    assert!(!ok);
    assert!(message.contains("relay tag"), "{message}");
    let (ok, message) = client
        .auth(&auth_event(
            &keys,
            "wss://relay.example.com/",
            &challenge,
            now(),
        ))
        .await;
    assert!(ok, "{message}");
}
