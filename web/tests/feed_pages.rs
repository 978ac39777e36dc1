//! The feed pages over HTTP, against a store seeded with generated data and
//! feed jobs reading a relay on loopback: the timeline pages through
//! exactly the follows' posts (the brute-force model's answer), hostile
//! content renders as inert text under a policy that allows only the
//! page's own script, `/start`, `/status` and `/events` follow a job, and
//! bad requests say what is wrong.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/service/fake_relay.rs"]
mod fake_relay;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use fake_relay::{Behaviour, FakeRelay};
use megalith::datagen::{GenConfig, Generator};
use megalith::event::{Keys, nip19};
use megalith::{Event, EventStore, Filter, Pubkey};
use megalith_ingest::pool::{self, PoolConfig};
use megalith_ingest::{FeedConfig, FeedJobs, RelayUrl, Sink};
use megalith_web::{Web, WebConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Site {
    addr: SocketAddr,
    store: Arc<EventStore>,
    jobs: Arc<FeedJobs>,
    web: Arc<Web>,
    _dir: tempfile::TempDir,
}

/// A store holding `events`, feed jobs that start from `relay` (if any),
/// and the pages served on a loopback port.
async fn site(events: &[Event], relay: Option<&str>, web_config: WebConfig) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EventStore::open(dir.path().join("store")).unwrap());
    for chunk in events.chunks(1_000) {
        store.insert(chunk).unwrap();
    }
    let (pool, _task) = pool::start(PoolConfig {
        reconnect_scale: 0.01,
        connect_timeout: Duration::from_secs(2),
        ..PoolConfig::default()
    });
    let (sink, _sink_task) = Sink::start(store.clone(), pool.stats().clone());
    let relays = relay
        .map(|r| vec![RelayUrl::parse(r).unwrap()])
        .unwrap_or_default();
    let mut feed = FeedConfig::new(relays, dir.path().join("jobs"));
    feed.wall_time = Some(Duration::from_millis(1_500));
    feed.allow_private_relays = true;
    feed.phase_timeout = Duration::from_secs(5);
    feed.page_timeout = Duration::from_secs(2);
    let jobs = Arc::new(FeedJobs::new(feed, store.clone(), pool, sink));
    let web = Web::new(store.clone(), jobs.clone(), web_config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = megalith_web::router(web.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Site {
        addr,
        store,
        jobs,
        web,
        _dir: dir,
    }
}

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// A GET over HTTP/1.0 (the body ends with the connection: no chunks).
async fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut bytes))
        .await
        .expect("no answer within 30 s")
        .unwrap();
    parse_answer(&String::from_utf8(bytes).unwrap())
}

fn parse_answer(text: &str) -> Answer {
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The post ids a page shows, in order.
fn shown_ids(html: &str) -> Vec<String> {
    html.split("<li class=\"post\" id=\"e-")
        .skip(1)
        .map(|rest| rest[..64].to_string())
        .collect()
}

/// The "Older posts" link, unescaped.
fn older_link(html: &str) -> Option<String> {
    let at = html.find("rel=\"next\"")?;
    let start = html[..at].rfind("href=\"")? + 6;
    let end = start + html[start..].find('"')?;
    Some(html[start..end].replace("&amp;", "&"))
}

fn generated(seed: u64, count: usize) -> (Generator, Vec<Event>) {
    let mut generator = Generator::new(GenConfig {
        seed,
        authors: 80,
        relays: Some(vec!["ws://127.0.0.1:9".into()]),
        ..GenConfig::default()
    });
    let events = generator.batch(count, 2);
    (generator, events)
}

/// The brute-force feed: the live posts (kinds 1, 6) of the follows in the
/// person's newest contact list, newest first, ties by lowest id.
fn expected_feed(events: &[Event], person: &Pubkey) -> Vec<String> {
    let mut model = common::Model::default();
    let now = common::now();
    for e in events {
        model.insert(e, now);
    }
    let list = model
        .query(&[Filter::new().authors([*person]).kinds([3]).limit(1)])
        .remove(0);
    let follows = megalith_ingest::feed::follows_of(&list, 2_000);
    model
        .query(&[Filter::new().authors(follows).kinds([1, 6])])
        .iter()
        .map(|e| e.id.to_hex())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_pages_through_exactly_the_follows_posts() {
    let (generator, mut events) = generated(15, 6_000);
    let authors = generator.pubkeys();
    // A reader following 25 of the generated authors and three keys of
    // ours that post 23 notes in one second, across page boundaries: the
    // cursor must neither lose nor repeat them.
    let reader = Keys::from_seed(7_000);
    let extra: Vec<Keys> = (1..4).map(|i| Keys::from_seed(7_000 + i)).collect();
    let newest = events.iter().map(|e| e.created_at).max().unwrap();
    let p = |key: &Pubkey| vec!["p".to_string(), key.to_hex()];
    let mut tags: Vec<Vec<String>> = authors.iter().take(25).map(p).collect();
    tags.extend(extra.iter().map(|k| p(&k.pubkey())));
    // An older list, replaced by the newer one: never read.
    events.push(reader.sign(newest - 10, 3, vec![p(&authors[40])], String::new()));
    events.push(reader.sign(newest, 3, tags, String::new()));
    let crowded = newest - 5_000;
    for i in 0..23 {
        let k = &extra[i % extra.len()];
        events.push(k.sign(crowded, 1, vec![], format!("same second {i}")));
    }
    let person = reader.pubkey();
    let site = site(&events, None, WebConfig::default()).await;
    let npub = nip19::encode_npub(&person);
    let want = expected_feed(&events, &person);
    assert!(want.len() > 60, "{} posts", want.len());

    let mut seen = Vec::new();
    let mut path = format!("/timeline?npub={npub}&limit=7");
    let mut pages = 0;
    loop {
        let page = get(site.addr, &path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        seen.extend(shown_ids(&page.body));
        pages += 1;
        match older_link(&page.body) {
            Some(next) => path = next,
            None => break,
        }
        assert!(pages < 1_000);
    }
    assert_eq!(seen.len(), want.len(), "every post once");
    assert_eq!(seen, want, "newest first, ties by lowest id, across pages");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());

    // Author mode: a person's own posts.
    let author = authors[0];
    let own = get(
        site.addr,
        &format!(
            "/timeline?npub={}&mode=author&limit=200",
            nip19::encode_npub(&author)
        ),
    )
    .await;
    let own_ids = shown_ids(&own.body);
    let mut model = common::Model::default();
    for e in &events {
        model.insert(e, common::now());
    }
    let own_want: Vec<String> = model
        .query(&[Filter::new().authors([author]).kinds([1, 6]).limit(200)])
        .iter()
        .map(|e| e.id.to_hex())
        .collect();
    assert!(!own_want.is_empty());
    assert_eq!(own_ids, own_want);

    // Names come from the profiles: each shown author with a kind 0 that
    // has a name appears under it.
    let first = get(site.addr, &format!("/timeline?npub={npub}")).await;
    let profiles = site.store.query(&[Filter::new().kinds([0])]).unwrap();
    let named = profiles
        .iter()
        .filter_map(|p| {
            megalith_web::Profile::from_metadata(&p.content)
                .name
                .map(|n| (p.pubkey, n))
        })
        .find(|(pk, _)| {
            first
                .body
                .contains(&format!("npub={}&amp;mode=author", nip19::encode_npub(pk)))
        });
    let (_, name) = named.expect("no author on the first page has a named profile");
    assert!(first.body.contains(&escape(&name)), "{name}");
    drop(site.jobs);
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_content_renders_as_inert_text() {
    let person = Keys::from_seed(1);
    let mallory = Keys::from_seed(2);
    let t = common::now() - 100;
    let mut events = vec![
        person.sign(
            t,
            3,
            vec![vec!["p".into(), mallory.pubkey().to_hex()]],
            String::new(),
        ),
        mallory.sign(
            t,
            0,
            vec![],
            serde_json::json!({
                "name": "<img src=x onerror=alert(1)>\u{202e}evil",
                "picture": "javascript:alert(1)",
            })
            .to_string(),
        ),
    ];
    let posts = [
        "<script>alert(1)</script>".to_string(),
        "<img src=x onerror=alert(2)>".to_string(),
        "[click](javascript:alert(3)) javascript:alert(4) data:text/html,<b>x</b>".to_string(),
        "\u{202e}gnp.exe https://ok.example/?q=<x>&a=\"b\"".to_string(),
        format!("{} END", "long ".repeat(12_000)),
        "nostr:npub1<script>x</script> nostr:note1\"onmouseover=alert(5)".to_string(),
    ];
    for (i, text) in posts.iter().enumerate() {
        events.push(mallory.sign(t + 1 + i as u64, 1, vec![], text.clone()));
    }
    let site = site(&events, None, WebConfig::default()).await;
    let npub = nip19::encode_npub(&person.pubkey());
    let page = get(site.addr, &format!("/timeline?npub={npub}")).await;
    assert_eq!(page.status, 200);
    let html = &page.body;
    assert_eq!(shown_ids(html).len(), posts.len());
    // One script element: the page's own.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    // No element carries an event handler; no URL is javascript: or data:.
    for tag in html.split('<').skip(1) {
        let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
        let lower = tag.to_ascii_lowercase();
        assert!(!lower.contains(" on"), "handler attribute in <{tag}>");
        for attr in ["href=\"", "src=\""] {
            for value in lower.split(attr).skip(1) {
                assert!(
                    value.starts_with("https://")
                        || value.starts_with("http://")
                        || value.starts_with("/timeline?")
                        || value.starts_with("/start?")
                        || value.starts_with('/')
                        || value.starts_with("nostr:"),
                    "{attr}{value}"
                );
                assert!(!value.starts_with("javascript:") && !value.starts_with("data:"));
            }
        }
    }
    // The link made of the URL stops at the `<`, and its text is escaped.
    assert!(html.contains("href=\"https://ok.example/?q=\""), "{html}");
    // The picture is refused: initials instead of an image.
    assert!(!html.contains("<img"));
    // The 60 KB note: its start shown, the rest behind "show all".
    assert!(html.contains("show all (60,004 characters)"));
    assert!(html.contains(" END</details>") || html.contains("END</details>"));
    // Right-to-left overrides stay inside their element.
    assert!(html.contains("<bdi>&lt;img src=x onerror=alert(1)&gt;\u{202e}evil</bdi>"));
    assert!(html.contains("class=\"text\" dir=\"auto\""));

    // The policy allows only this page's script and style, by hash.
    let csp = &page.headers["content-security-policy"];
    let script = between(html, "<script>", "</script>");
    let style = between(html, "<style>", "</style>");
    assert!(
        csp.contains(&format!("script-src 'sha256-{}'", sha(script))),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("style-src 'sha256-{}'", sha(style))),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'") && csp.contains("img-src https:"));
    assert!(!csp.contains("unsafe"));
    assert!(script.len() < 2_048);
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    drop(site.jobs);
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    let start = text.find(open).unwrap() + open.len();
    let end = start + text[start..].find(close).unwrap();
    &text[start..end]
}

fn sha(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

/// The events of a Server-Sent Events body: (name, data).
fn sse_events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            name.map(|n| (n, data.join("\n")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_status_and_events_follow_a_job() {
    let (generator, events) = generated(21, 4_000);
    let (person, _) = generator.sampler(9).follow_list(10).unwrap();
    // The relay answers slowly, so the job runs while the stream is read.
    let fake = FakeRelay::start(
        events.clone(),
        Behaviour {
            event_delay: Duration::from_micros(300),
            ..Behaviour::default()
        },
    )
    .await;
    let site = site(&[], Some(&fake.url()), WebConfig::default()).await;
    let npub = nip19::encode_npub(&person);

    let before = get(site.addr, &format!("/status?npub={npub}")).await;
    assert_eq!(before.status, 404);
    assert!(before.body.contains("\"error\""));
    assert_eq!(before.headers["cache-control"], "no-store");

    let start = get(site.addr, &format!("/start?npub={}", person.to_hex())).await;
    assert_eq!(start.status, 302);
    assert_eq!(start.headers["location"], format!("/timeline?npub={npub}"));

    // The stream, read to its end: it ends when the job is done.
    let stream = get(site.addr, &format!("/events?npub={npub}&limit=30")).await;
    assert_eq!(stream.status, 200);
    assert!(stream.headers["content-type"].starts_with("text/event-stream"));
    let got = sse_events(&stream.body);
    let statuses: Vec<serde_json::Value> = got
        .iter()
        .filter(|(n, _)| n == "status")
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(statuses.len() >= 2, "{got:?}");
    let phases: Vec<String> = statuses
        .iter()
        .map(|s| s["status"]["phase"].as_str().unwrap().to_string())
        .collect();
    let order = [
        "queued",
        "contacts",
        "relays",
        "posts_backfill",
        "live",
        "finished",
    ];
    let ranks: Vec<usize> = phases
        .iter()
        .map(|p| {
            order
                .iter()
                .position(|o| o == p)
                .unwrap_or_else(|| panic!("phase {p}"))
        })
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{phases:?}");
    let last = statuses.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["status"]["phase"], "finished");
    assert!(statuses.iter().any(|s| {
        s["banner"]
            .as_str()
            .unwrap()
            .starts_with("Fetching posts from")
    }));

    // Every post sent once, and together they are the first page now.
    let mut sent = Vec::new();
    for (_, data) in got.iter().filter(|(n, _)| n == "posts") {
        let html: String = serde_json::from_str(data).unwrap();
        sent.extend(shown_ids(&html));
    }
    let unique: HashSet<&String> = sent.iter().collect();
    assert_eq!(unique.len(), sent.len(), "no post sent twice");
    let page = get(site.addr, &format!("/timeline?npub={npub}&limit=30")).await;
    let first_page = shown_ids(&page.body);
    assert_eq!(first_page.len(), 30);
    for id in &first_page {
        assert!(unique.contains(id), "{id} on the page but never sent");
    }
    // The job is done: the page no longer updates itself.
    assert!(!page.body.contains("data-live"));
    assert!(!page.body.contains("http-equiv=\"refresh\""));

    let status = get(site.addr, &format!("/status?npub={npub}")).await;
    assert_eq!(status.status, 200);
    let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(status["phase"], "finished");
    assert_eq!(status["pubkey"], person.to_hex());
    assert!(status["events_ingested"].as_u64().unwrap() > 30);
    site.jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_makes_a_page_that_updates_itself_and_shutdown_ends_streams() {
    let person = Keys::from_seed(5);
    let t = common::now() - 50;
    let list = person.sign(
        t,
        3,
        vec![vec!["p".into(), Keys::from_seed(6).pubkey().to_hex()]],
        String::new(),
    );
    // A relay that never answers: the job stays in its first phases.
    let fake = FakeRelay::start(
        Vec::new(),
        Behaviour {
            deaf: true,
            ..Behaviour::default()
        },
    )
    .await;
    let site = site(&[list], Some(&fake.url()), WebConfig::default()).await;
    let npub = nip19::encode_npub(&person.pubkey());
    let start = get(site.addr, &format!("/start?npub={npub}")).await;
    assert_eq!(start.status, 302);
    let page = get(site.addr, &format!("/timeline?npub={npub}")).await;
    assert!(page.body.contains("data-live=\"1\""));
    assert!(
        page.body
            .contains("<noscript><meta http-equiv=\"refresh\" content=\"3\"></noscript>")
    );
    assert!(
        page.body.contains("Fetching your contact list")
            || page.body.contains("Waiting for a free slot")
    );
    // An older page never updates itself.
    let older = get(
        site.addr,
        &format!("/timeline?npub={npub}&until={}:{}", t, "00".repeat(32)),
    )
    .await;
    assert!(!older.body.contains("data-live"));
    // A stream stays open while the job runs, and ends on shutdown.
    let addr = site.addr;
    let reading = tokio::spawn(async move { get(addr, &format!("/events?npub={npub}")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!reading.is_finished());
    site.web.shutdown();
    let stream = tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .expect("the stream did not end on shutdown")
        .unwrap();
    assert_eq!(sse_events(&stream.body)[0].0, "status");
    site.jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_say_what_is_wrong_and_starts_are_rate_limited() {
    let site = site(
        &[],
        Some("ws://127.0.0.1:9"),
        WebConfig {
            start_burst: 2,
            start_every: Duration::from_secs(60),
            ..WebConfig::default()
        },
    )
    .await;
    let good = nip19::encode_npub(&Keys::from_seed(3).pubkey());
    for (path, status, says) in [
        ("/start?npub=npub1qqqq".to_string(), 400, "not a public key"),
        ("/start".to_string(), 400, "Enter a public key"),
        ("/timeline?npub=hello".to_string(), 400, "not a public key"),
        (
            format!("/timeline?npub={good}&limit=0"),
            400,
            "from 1 to 200",
        ),
        (
            format!("/timeline?npub={good}&limit=x"),
            400,
            "from 1 to 200",
        ),
        (
            format!("/timeline?npub={good}&mode=everyone"),
            400,
            "`mode`",
        ),
        (
            format!("/timeline?npub={good}&until=yesterday"),
            400,
            "`until`",
        ),
        ("/status?npub=zz".to_string(), 400, "\"error\""),
        (format!("/status?npub={good}"), 404, "no feed job"),
        ("/events?npub=zz".to_string(), 400, "\"error\""),
    ] {
        let answer = get(site.addr, &path).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert!(
            answer.body.to_lowercase().contains(&says.to_lowercase()),
            "{path}: {}",
            answer.body
        );
    }
    // A bad key's page shows the form again, with what was typed, escaped.
    let page = get(site.addr, "/start?npub=%3Cb%3Ehi").await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("value=\"&lt;b&gt;hi\""), "{}", page.body);

    let start = |i: u64| {
        let npub = nip19::encode_npub(&Keys::from_seed(100 + i).pubkey());
        async move { get(site.addr, &format!("/start?npub={npub}")).await }
    };
    assert_eq!(start(0).await.status, 302);
    assert_eq!(start(1).await.status, 302);
    let refused = start(2).await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(refused.body.contains("Try again in"));
    site.jobs.shutdown().await;
}
