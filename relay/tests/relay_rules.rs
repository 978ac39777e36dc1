//! Access rules on the relay (issue 13): who may publish and read what,
//! AUTH required for reads or writes, and a reload (the file changes) that
//! CLOSEs the subscriptions that lost their right, without a reconnect.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/relay.rs"]
mod relay;

use std::path::Path;
use std::time::Duration;

use common::now;
use megalith::{Event, Keys};
use megalith_relay::RelayConfig;
use relay::{TestRelay, WAIT, auth_event};
use serde_json::{Value, json};

async fn start(rules: &Path) -> TestRelay {
    TestRelay::start_with(RelayConfig {
        rules: Some(rules.to_path_buf()),
        ..RelayConfig::default()
    })
    .await
}

/// Writes the rules file so that its modification time surely changes.
fn rewrite(path: &Path, text: &str) {
    let before = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    loop {
        std::fs::write(path, text).unwrap();
        let after = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if after != before {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn metric(relay: &TestRelay, line_start: &str) -> u64 {
    let (_, _, body) = relay.http_get("/metrics", None).await;
    body.lines()
        .find_map(|line| line.strip_prefix(line_start))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let banned = Keys::from_seed(1);
    let member = Keys::from_seed(2);
    let stranger = Keys::from_seed(3);
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [write]
            deny_pubkeys = ["{}"]
            kinds = [0, 1, 3, 7]
            max_event_bytes = 2000

            [[write.grant]]
            pubkeys = ["{}"]
            kinds = "any"
            "#,
            banned.pubkey().to_hex(),
            megalith::event::nip19::encode_npub(&member.pubkey()),
        ),
    )
    .unwrap();
    let relay = start(&path).await;
    let mut client = relay.connect().await;
    let t = now();
    let cases: Vec<(Event, Option<&str>)> = vec![
        (stranger.sign(t, 1, vec![], "hello".into()), None),
        (
            stranger.sign(t, 30023, vec![], "article".into()),
            Some("restricted: events of kind 30023"),
        ),
        (
            stranger.sign(t, 1, vec![], "x".repeat(3000)),
            Some("restricted: events over 2000 bytes"),
        ),
        (
            banned.sign(t, 1, vec![], "spam".into()),
            Some("restricted: this author may not publish here"),
        ),
        (member.sign(t, 30023, vec![], "x".repeat(3000)), None),
    ];
    for (event, refused) in &cases {
        let (accepted, message) = client.publish(event).await;
        match refused {
            None => assert!(accepted, "kind {}: {message}", event.kind),
            Some(prefix) => {
                assert!(!accepted, "kind {} was accepted", event.kind);
                assert!(message.starts_with(prefix), "{message}");
            }
        }
    }
    // What was refused was not stored.
    let stored = client.req("all", &[json!({})]).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_required_for_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, "[auth_required]\nread = true\nwrite = true\n").unwrap();
    let relay = start(&path).await;
    let info = relay.http_get("/", Some("application/nostr+json")).await.2;
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["limitation"]["auth_required"], true, "{info}");
    assert_eq!(info["limitation"]["restricted_writes"], true, "{info}");
    let keys = Keys::from_seed(7);
    let other = Keys::from_seed(8);
    let mut client = relay.connect().await;
    let event = keys.sign(now(), 1, vec![], "hi".into());
    let (accepted, message) = client.publish(&event).await;
    assert!(!accepted);
    assert!(message.starts_with("auth-required:"), "{message}");
    client
        .send(&json!(["REQ", "r", {"kinds": [1]}]).to_string())
        .await;
    let reply = client.recv().await;
    assert_eq!(reply[0], "CLOSED", "{reply}");
    assert!(
        reply[2].as_str().unwrap().starts_with("auth-required:"),
        "{reply}"
    );
    let challenge = client.challenge().await;
    let (ok, message) = client
        .auth(&auth_event(&other, &relay.url(), &challenge, now()))
        .await;
    assert!(ok, "{message}");
    // Authenticated, but as someone else than the author.
    let (accepted, message) = client.publish(&event).await;
    assert!(!accepted);
    assert!(message.starts_with("restricted:"), "{message}");
    let (ok, message) = client
        .auth(&auth_event(&keys, &relay.url(), &challenge, now()))
        .await;
    assert!(ok, "{message}");
    let (accepted, message) = client.publish(&event).await;
    assert!(accepted, "{message}");
    let found = client.req("r", &[json!({"kinds": [1]})]).await;
    assert_eq!(found.len(), 1);
}

/// A reload takes a right away: the open subscription that used it is
/// CLOSED with `restricted:` on the same connection, which stays usable;
/// live events of a kind no longer readable stop. A file that does not
/// parse leaves the rules in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_subscriptions_that_lost_their_right() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, "").unwrap();
    let relay = start(&path).await;
    let mut reader = relay.connect().await;
    let mut writer = relay.connect().await;
    let keys = Keys::from_seed(9);
    reader
        .send(&json!(["REQ", "articles", {"kinds": [30023]}]).to_string())
        .await;
    assert_eq!(reader.recv().await[0], "EOSE");
    reader
        .send(&json!(["REQ", "everything", {"since": now() - 5}]).to_string())
        .await;
    assert_eq!(reader.recv().await[0], "EOSE");
    rewrite(&path, "[read]\ndeny_kinds = [\"30000-39999\"]\n");
    let reply = tokio::time::timeout(WAIT, reader.recv())
        .await
        .expect("no CLOSED after the reload");
    assert_eq!(reply[0], "CLOSED", "{reply}");
    assert_eq!(reply[1], "articles", "{reply}");
    assert!(
        reply[2]
            .as_str()
            .unwrap()
            .starts_with("restricted: events of kind 30023"),
        "{reply}"
    );
    assert_eq!(
        metric(&relay, "megalith_rules_reloads_total{result=\"ok\"} ").await,
        1
    );
    // The other subscription stays, and gets only what may still be read.
    let article = keys.sign(
        now(),
        30023,
        vec![vec!["d".into(), "a".into()]],
        "long".into(),
    );
    let note = keys.sign(now(), 1, vec![], "short".into());
    assert!(writer.publish(&article).await.0);
    assert!(writer.publish(&note).await.0);
    let live = reader.recv().await;
    assert_eq!(live[0], "EVENT", "{live}");
    assert_eq!(live[2]["id"], note.id.to_hex(), "{live}");
    // A new REQ for the kind is refused; one for another kind is served.
    reader
        .send(&json!(["REQ", "again", {"kinds": [30023]}]).to_string())
        .await;
    let reply = reader.recv().await;
    assert_eq!(reply[0], "CLOSED", "{reply}");
    let found = reader.req("notes", &[json!({"kinds": [1]})]).await;
    assert_eq!(found.len(), 1);
    // A broken file: an error counted, the rules in force stay.
    rewrite(&path, "[read]\ndeny_kinds = \"oops\"\n");
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&relay, "megalith_rules_reloads_total{result=\"error\"} ").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed reload counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader
        .send(&json!(["REQ", "still", {"kinds": [30023]}]).to_string())
        .await;
    assert_eq!(reader.recv().await[0], "CLOSED");
}
