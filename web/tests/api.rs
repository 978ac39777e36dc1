//! The video API over HTTP (issue 16, docs/api.md) against the brute-force
//! counting rules: a store with analytics fed a random video stream, every
//! endpoint's answer compared with the brute force's (lists page by page
//! through their cursors), every answer checked against the OpenAPI
//! document the server serves; then ETags and 304s, errors, the bearer
//! token, a store without analytics, and an event's effect in the next
//! answer after its `OK`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::video_stream::Stream;
use megalith::analytics::{VideoKey, video_key};
use megalith::event::{Keys, nip19};
use megalith::reference::analytics::Analytics;
use megalith::reference::{RefOutcome, Reference};
use megalith::{Event, EventStore};
use megalith_web::ApiConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(addr, "GET", path, headers).await
}

async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: test\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut bytes))
        .await
        .expect("no answer within 30 s")
        .unwrap();
    let text = String::from_utf8(bytes).unwrap();
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

async fn serve(store: Arc<EventStore>, token: Option<&str>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = megalith_web::api_router(
        store,
        ApiConfig {
            token: token.map(str::to_string),
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Whether `value` conforms to `schema` (the subset of OpenAPI 3.0 the
/// document uses: $ref, type, nullable, enum, required, properties, items,
/// minimum, maximum, pattern prefixes); the error says where it does not.
fn conforms(doc: &Value, value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap();
        return conforms(doc, value, &doc["components"]["schemas"][name], at);
    }
    if value.is_null() {
        return if schema.get("nullable") == Some(&Value::Bool(true)) {
            Ok(())
        } else {
            Err(format!("{at}: null where the schema allows none"))
        };
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let kind = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let ok = match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !ok {
        return Err(format!("{at}: {value} is not a {kind}"));
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n < min
    {
        return Err(format!("{at}: {n} is below {min}"));
    }
    if let (Some(max), Some(n)) = (
        schema.get("maximum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n > max
    {
        return Err(format!("{at}: {n} is above {max}"));
    }
    if let Some(object) = value.as_object() {
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: no {name}"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                if let Some(field) = object.get(name) {
                    conforms(doc, field, property, &format!("{at}.{name}"))?;
                }
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, item) in list.iter().enumerate() {
            conforms(doc, item, items, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a 200 answer of `path` (its template in the document) against
/// the document's schema.
fn check_schema(doc: &Value, template: &str, answer: &Answer) {
    let schema =
        &doc["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "the document describes {template}");
    conforms(doc, &answer.json(), schema, template).unwrap();
}

/// A video object's key.
fn key_of(video: &Value) -> VideoKey {
    match video["d_tag"].as_str() {
        Some(d) => VideoKey::Address {
            kind: video["kind"].as_u64().unwrap() as u16,
            pubkey: megalith::Pubkey::from_hex(video["pubkey"].as_str().unwrap()).unwrap(),
            d: d.to_string(),
        },
        None => VideoKey::Id(megalith::EventId::from_hex(video["id"].as_str().unwrap()).unwrap()),
    }
}

/// Every page of a list endpoint, through X-Next-Cursor.
async fn all_pages(addr: SocketAddr, doc: &Value, template: &str, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_string(),
        };
        let answer = get(addr, &url, &[]).await;
        assert_eq!(answer.status, 200, "{url}: {}", answer.body);
        assert_eq!(answer.headers["cache-control"], "public, max-age=60");
        check_schema(doc, template, &answer);
        out.extend(answer.json().as_array().unwrap().iter().cloned());
        match answer.headers.get("x-next-cursor") {
            Some(next) => {
                assert!(answer.headers["link"].contains("rel=\"next\""));
                cursor = Some(next.clone());
            }
            None => return out,
        }
        assert!(out.len() < 100_000);
    }
}

fn figures_of(video: &Value) -> [u64; 5] {
    [
        "reactions",
        "downvotes",
        "comments",
        "legacy_comments",
        "reposts",
    ]
    .map(|f| video[f].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_agrees_with_the_counting_rules() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EventStore::builder(dir.path())
            .shards(2)
            .analytics(true)
            .search(true)
            .open()
            .unwrap(),
    );
    let now = unix_now();
    let mut stream = Stream::starting(3, now);
    stream.expire_after = 600;
    let mut reference = Reference::new();
    let mut history: Vec<Event> = Vec::new();
    let mut events = Vec::new();
    for _ in 0..1_200 {
        let event = stream.next();
        let outcome = reference.insert(&event, now);
        if matches!(outcome, RefOutcome::Stored | RefOutcome::Replaced)
            && video_key(&event).is_some()
        {
            history.push(event.clone());
        }
        events.push(event);
    }
    for chunk in events.chunks(50) {
        store.insert(chunk).unwrap();
    }
    let brute = Analytics::compute(&reference, &history, now);
    assert!(brute.videos.len() > 20);
    let addr = serve(Arc::clone(&store), None).await;
    let doc_answer = get(addr, "/api/openapi.json", &[]).await;
    assert_eq!(doc_answer.status, 200);
    let doc = doc_answer.json();
    assert_eq!(doc["openapi"], "3.0.3");

    let keys = |list: &[Value]| list.iter().map(key_of).collect::<Vec<_>>();
    let recent = all_pages(addr, &doc, "/api/videos", "/api/videos?sort=recent&limit=7").await;
    assert_eq!(keys(&recent), brute.recent(), "recent");
    let popular = all_pages(
        addr,
        &doc,
        "/api/videos",
        "/api/videos?sort=popular&limit=9",
    )
    .await;
    assert_eq!(keys(&popular), brute.popular(), "popular");
    let trending = all_pages(
        addr,
        &doc,
        "/api/videos",
        "/api/videos?sort=trending&limit=6",
    )
    .await;
    let want: Vec<VideoKey> = brute.trending(now).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys(&trending), want, "trending");
    let shorts = all_pages(addr, &doc, "/api/videos", "/api/videos?kind=34236&limit=5").await;
    let want: Vec<VideoKey> = brute
        .recent()
        .into_iter()
        .filter(|k| brute.videos[k].kind == 34_236)
        .collect();
    assert_eq!(keys(&shorts), want, "kind 34236");
    for video in &recent {
        let key = key_of(video);
        let f = brute.figures_of(&key);
        assert_eq!(
            figures_of(video),
            [
                f.reactions,
                f.downvotes,
                f.comments,
                f.legacy_comments,
                f.reposts
            ],
            "{}",
            key.text()
        );
        assert_eq!(
            video["engagement_score"].as_u64(),
            Some(f.reactions + 2 * f.comments + 3 * f.reposts)
        );
    }

    // Stats by the id of any version, by naddr, by address.
    let mut asked = 0;
    for event in &history {
        let answer = get(addr, &format!("/api/videos/{}/stats", event.id), &[]).await;
        match brute.video_by_id(&event.id) {
            Some((key, live)) => {
                assert_eq!(answer.status, 200, "{}", answer.body);
                assert_eq!(answer.headers["cache-control"], "public, max-age=30");
                check_schema(&doc, "/api/videos/{id}/stats", &answer);
                let video = answer.json();
                assert_eq!(key_of(&video), *key);
                assert_eq!(video["id"], live.id.to_hex(), "the current version");
                let f = brute.figures_of(key);
                assert_eq!(
                    figures_of(&video),
                    [
                        f.reactions,
                        f.downvotes,
                        f.comments,
                        f.legacy_comments,
                        f.reposts
                    ]
                );
                asked += 1;
            }
            None => {
                assert_eq!(answer.status, 404, "{}", answer.body);
                assert_eq!(answer.json()["error"], "Video not found");
                assert_eq!(answer.headers["cache-control"], "no-store");
            }
        }
    }
    assert!(asked > 20);
    for (key, _) in brute.videos.iter().take(40) {
        if let VideoKey::Address { kind, pubkey, d } = key {
            let naddr = nip19::encode_naddr(*kind, pubkey, d, &["wss://relay.example"]);
            for text in [naddr, key.text()] {
                let answer = get(addr, &format!("/api/videos/{text}/stats"), &[]).await;
                assert_eq!(answer.status, 200, "{text}: {}", answer.body);
                assert_eq!(key_of(&answer.json()), *key);
            }
        }
    }

    // A creator's videos, by npub and by hex.
    let authors: BTreeSet<_> = brute.videos.values().map(|v| v.pubkey).collect();
    for (i, author) in authors.iter().enumerate() {
        let name = if i % 2 == 0 {
            nip19::encode_npub(author)
        } else {
            author.to_hex()
        };
        let path = format!("/api/users/{name}/videos?limit=4");
        let got = all_pages(addr, &doc, "/api/users/{pubkey}/videos", &path).await;
        let want: Vec<VideoKey> = brute
            .recent()
            .into_iter()
            .filter(|k| brute.videos[k].pubkey == *author)
            .collect();
        assert_eq!(keys(&got), want, "videos of {author}");
    }

    // Hashtags: by tag (any case), the popular list.
    let tags = brute.hashtags();
    assert!(!tags.is_empty());
    for (tag, _, _, _) in &tags {
        let path = format!("/api/search?tag={}&limit=5", tag.to_uppercase());
        let got = all_pages(addr, &doc, "/api/search", &path).await;
        assert_eq!(keys(&got), brute.with_tag(tag), "tag {tag}");
    }
    let answer = get(addr, "/api/hashtags?limit=100", &[]).await;
    check_schema(&doc, "/api/hashtags", &answer);
    let got: Vec<(String, u64, u64, u64)> = answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["hashtag"].as_str().unwrap().to_string(),
                t["count"].as_u64().unwrap(),
                t["creators"].as_u64().unwrap(),
                t["last_used"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, tags);

    // Words in titles (NIP-50): every video titled "video N" has "video".
    let answer = get(addr, "/api/search?q=video&limit=100", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    check_schema(&doc, "/api/search", &answer);
    let found: BTreeSet<VideoKey> = keys(answer.json().as_array().unwrap())
        .into_iter()
        .collect();
    let live: BTreeSet<VideoKey> = brute.videos.keys().cloned().collect();
    assert!(found.is_subset(&live));
    assert_eq!(found.len(), live.len().min(100));

    // Creators, totals, active authors.
    let answer = get(addr, "/api/creators/top?limit=100", &[]).await;
    check_schema(&doc, "/api/creators/top", &answer);
    let got: Vec<_> = answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                megalith::Pubkey::from_hex(c["pubkey"].as_str().unwrap()).unwrap(),
                c["normal_videos"].as_u64().unwrap(),
                c["short_videos"].as_u64().unwrap(),
                c["first_video"].as_u64().unwrap(),
                c["last_video"].as_u64().unwrap(),
                c["engagement_score"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, brute.creators());
    let answer = get(addr, "/api/stats", &[]).await;
    check_schema(&doc, "/api/stats", &answer);
    let stats = answer.json();
    assert_eq!(
        stats["total_videos"].as_u64(),
        Some(brute.videos.len() as u64)
    );
    assert_eq!(
        stats["total_events"].as_u64(),
        Some(reference.events().count() as u64)
    );
    for (period, window) in [("day", 1), ("week", 7), ("month", 30)] {
        let answer = get(
            addr,
            &format!("/api/users/active?period={period}&days=14"),
            &[],
        )
        .await;
        check_schema(&doc, "/api/users/active", &answer);
        let series = answer.json()["series"].as_array().unwrap().clone();
        assert_eq!(series.len(), 14);
        let today = unix_now() / 86_400;
        for (back, point) in series.iter().rev().enumerate() {
            let day = today - back as u64;
            assert_eq!(point["day"].as_u64(), Some(day * 86_400));
            assert_eq!(
                point["active"].as_u64(),
                Some(brute.active_authors(day, window) as u64),
                "{period} to day {day}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_errors_tokens_and_an_event_seen_in_the_next_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EventStore::builder(dir.path())
            .analytics(true)
            .open()
            .unwrap(),
    );
    let now = unix_now();
    let creator = Keys::from_seed(1);
    let video = creator.sign(
        now - 60,
        34_235,
        vec![
            vec!["d".into(), "clip".into()],
            vec!["title".into(), "A clip".into()],
            vec![
                "imeta".into(),
                "url https://cdn.example/clip.mp4".into(),
                "image https://cdn.example/clip.jpg".into(),
                "duration 12.5".into(),
            ],
        ],
        String::new(),
    );
    store.insert(std::slice::from_ref(&video)).unwrap();
    let addr = serve(Arc::clone(&store), None).await;
    let path = format!("/api/videos/{}/stats", video.id);

    let first = get(addr, &path, &[]).await;
    assert_eq!(first.status, 200);
    let body = first.json();
    assert_eq!(body["video_url"], "https://cdn.example/clip.mp4");
    assert_eq!(body["thumbnail"], "https://cdn.example/clip.jpg");
    assert_eq!(body["duration"], 12.5);
    assert_eq!(body["title"], "A clip");
    let etag = first.headers["etag"].clone();
    let again = get(addr, &path, &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.headers["etag"], etag);

    // A reaction: counted in the very next answer after its OK.
    let fan = Keys::from_seed(2);
    let reaction = fan.sign(
        now,
        7,
        vec![
            vec!["e".into(), video.id.to_hex()],
            vec![
                "a".into(),
                format!("34235:{}:clip", creator.pubkey().to_hex()),
            ],
        ],
        "+".into(),
    );
    store.insert(std::slice::from_ref(&reaction)).unwrap();
    let after = get(addr, &path, &[("If-None-Match", &etag)]).await;
    assert_eq!(after.status, 200, "the ETag changed with the count");
    assert_eq!(after.json()["reactions"], 1);
    assert_ne!(after.headers["etag"], etag);
    // Its deletion takes it out.
    let deletion = fan.sign(
        now,
        5,
        vec![vec!["e".into(), reaction.id.to_hex()]],
        String::new(),
    );
    store.insert(std::slice::from_ref(&deletion)).unwrap();
    assert_eq!(get(addr, &path, &[]).await.json()["reactions"], 0);

    // Errors say what is wrong and are not cached.
    for (path, status, message) in [
        ("/api/search", 400, "Search requires 'tag' or 'q' parameter"),
        (
            "/api/search?q=",
            400,
            "Search requires 'tag' or 'q' parameter",
        ),
        (
            "/api/videos?sort=best",
            400,
            "'sort' must be recent, popular or trending",
        ),
        (
            "/api/videos?kind=1",
            400,
            "'kind' must be a video kind: 21, 22, 34235 or 34236",
        ),
        (
            "/api/videos?limit=0",
            400,
            "'limit' must be a whole number from 1 to 100",
        ),
        (
            "/api/videos?limit=x",
            400,
            "'limit' must be a whole number from 1 to 100",
        ),
        (
            "/api/videos?cursor=%21%21",
            400,
            "'cursor' is not a cursor this API gave",
        ),
        (
            "/api/users/nobody/videos",
            400,
            "the public key must be 64 hex characters or an npub1...",
        ),
        (
            "/api/users/active?period=year",
            400,
            "'period' must be day, week or month",
        ),
        (
            "/api/users/active?days=0",
            400,
            "'days' must be a whole number from 1 to 366",
        ),
        ("/api/videos/nothing/stats", 404, "Video not found"),
        (
            "/api/nothing",
            404,
            "No such endpoint (see /api/openapi.json)",
        ),
    ] {
        let answer = get(addr, path, &[]).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert_eq!(answer.json()["error"], message, "{path}");
        assert_eq!(answer.headers["cache-control"], "no-store", "{path}");
        assert_eq!(answer.headers["content-type"], "application/json", "{path}");
    }
    // A limit above the most gives the most.
    assert_eq!(get(addr, "/api/videos?limit=5000", &[]).await.status, 200);

    // With a token: asked for everywhere but the document.
    let guarded = serve(Arc::clone(&store), Some("s3cret")).await;
    let refused = get(guarded, &path, &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    assert_eq!(refused.headers["cache-control"], "no-store");
    let wrong = get(guarded, &path, &[("Authorization", "Bearer s3creT")]).await;
    assert_eq!(wrong.status, 401);
    let right = get(guarded, &path, &[("Authorization", "Bearer s3cret")]).await;
    assert_eq!(right.status, 200);
    assert_eq!(get(guarded, "/api/openapi.json", &[]).await.status, 200);

    // A store without analytics says so.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Arc::new(EventStore::open(plain_dir.path()).unwrap());
    let bare = serve(plain, None).await;
    let answer = get(bare, "/api/videos", &[]).await;
    assert_eq!(answer.status, 503);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("--analytics on")
    );
}

/// What Schemathesis found (scripts/api-schema-test.sh), one check per
/// server bug: each answer below was different before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_agree_with_the_document_where_schemathesis_found_they_did_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EventStore::builder(dir.path())
            .analytics(true)
            .open()
            .unwrap(),
    );
    let creator = Keys::from_seed(3);
    let video = creator.sign(
        unix_now() - 60,
        34_235,
        vec![
            vec!["d".into(), "talk".into()],
            vec!["title".into(), "Schéma talk".into()],
            vec!["t".into(), "talks".into()],
        ],
        String::new(),
    );
    store.insert(std::slice::from_ref(&video)).unwrap();
    let addr = serve(Arc::clone(&store), None).await;
    let doc = get(addr, "/api/openapi.json", &[]).await.json();
    let refused = |answer: &Answer, status: u16, message: &str, what: &str| {
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        assert_eq!(answer.json()["error"], message, "{what}");
        assert_eq!(answer.headers["cache-control"], "no-store", "{what}");
        assert_eq!(answer.headers["content-type"], "application/json", "{what}");
    };

    // `limit` is an integer with no maximum in the document: any whole
    // number of 1 or more is answered, at most 100 items (a limit past
    // usize was refused as "not a whole number").
    for path in [
        "/api/videos?limit=99999999999999999999999",
        "/api/hashtags?limit=18446744073709551616",
        "/api/creators/top?limit=0100",
    ] {
        let answer = get(addr, path, &[]).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert!(answer.json().as_array().unwrap().len() <= 100, "{path}");
    }
    for path in [
        "/api/videos?limit=000",
        "/api/videos?limit=",
        "/api/videos?limit=-5",
    ] {
        let answer = get(addr, path, &[]).await;
        refused(
            &answer,
            400,
            "'limit' must be a whole number from 1 to 100",
            path,
        );
    }
    let limit = &doc["paths"]["/api/videos"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()["schema"];
    assert!(
        limit.get("maximum").is_none(),
        "larger asks get 100: {limit}"
    );
    assert_eq!(
        doc["paths"]["/api/videos"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["maxItems"],
        100
    );

    // `q` is checked whenever it is given, also beside `tag` (which wins),
    // and its 1024 are characters, as the document's maxLength counts them
    // (it was bytes: 1024 two-byte characters were refused).
    let long = "a".repeat(1_025);
    let answer = get(addr, &format!("/api/search?tag=talks&q={long}"), &[]).await;
    refused(
        &answer,
        400,
        "'q' is longer than 1024 characters",
        "q beside tag",
    );
    let wide = "%C3%A9".repeat(1_024); // "é": 2 bytes each
    let answer = get(addr, &format!("/api/search?q={wide}"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    check_schema(&doc, "/api/search", &answer);

    // A cursor this API did not give is refused beside `q` too.
    let answer = get(addr, "/api/search?q=talk&cursor=AAAA", &[]).await;
    refused(
        &answer,
        400,
        "'cursor' is not a cursor this API gave",
        "cursor beside q",
    );
    let answer = get(addr, "/api/search?q=talk", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json().as_array().unwrap().len(), 1);

    // A key in the path is exactly what the document's pattern says: no
    // spaces around it.
    let padded = format!("/api/users/%20{}/videos", creator.pubkey().to_hex());
    refused(
        &get(addr, &padded, &[]).await,
        400,
        "the public key must be 64 hex characters or an npub1...",
        "padded key",
    );

    // A path segment that is not UTF-8: JSON, not axum's plain text.
    refused(
        &get(addr, "/api/videos/%FF/stats", &[]).await,
        400,
        "Invalid URL: Invalid UTF-8 in `id`",
        "id not UTF-8",
    );
    refused(
        &get(addr, "/api/users/%FF/videos", &[]).await,
        400,
        "Invalid URL: Invalid UTF-8 in `pubkey`",
        "pubkey not UTF-8",
    );

    // Another method: 405 with Allow and a JSON error (the body was empty);
    // an unknown endpoint is 404 whatever the method.
    for path in ["/api/videos", "/api/stats", "/api/openapi.json"] {
        let answer = request(addr, "POST", path, &[]).await;
        refused(&answer, 405, "This endpoint answers GET only", path);
        assert_eq!(answer.headers["allow"], "GET,HEAD", "{path}");
    }
    refused(
        &request(addr, "DELETE", "/api/nothing", &[]).await,
        404,
        "No such endpoint (see /api/openapi.json)",
        "DELETE /api/nothing",
    );

    // With a token, the served document says every endpoint needs it (it
    // said bearer-or-nothing, so a schema tester never checked the token).
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }, {}]));
    let guarded = serve(Arc::clone(&store), Some("s3cret")).await;
    let answer = get(guarded, "/api/openapi.json", &[]).await;
    assert_eq!(answer.status, 200);
    let guarded_doc = answer.json();
    assert_eq!(
        guarded_doc["security"],
        serde_json::json!([{ "bearer": [] }])
    );
    assert_eq!(guarded_doc["paths"], doc["paths"]);
    assert_eq!(
        guarded_doc["paths"]["/api/openapi.json"]["get"]["security"],
        serde_json::json!([])
    );
}
