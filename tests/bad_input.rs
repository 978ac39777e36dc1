//! Hostile and broken input is refused with a clear reason, never panics,
//! and leaves the store unchanged.

mod common;

use megalith::{Event, EventStore, Filter, InsertOutcome, Keys, Limits};

fn good_json() -> String {
    Keys::from_seed(1)
        .sign(
            1_700_000_000,
            1,
            vec![vec!["t".into(), "x".into()]],
            "hello".into(),
        )
        .to_json()
}

/// The event JSON with the hex value of `field` in uppercase.
fn uppercase_field(json: &str, field: &str) -> String {
    let key = format!("\"{field}\":\"");
    let start = json.find(&key).unwrap() + key.len();
    let end = start + json[start..].find('"').unwrap();
    format!(
        "{}{}{}",
        &json[..start],
        json[start..end].to_uppercase(),
        &json[end..]
    )
}

#[test]
fn malformed_event_json_is_refused_with_a_reason() {
    let good = good_json();
    let limits = Limits::default();
    let cases: Vec<(String, &str)> = vec![
        (good[..good.len() / 2].to_string(), "malformed"),
        (uppercase_field(&good, "id"), "uppercase"),
        (uppercase_field(&good, "pubkey"), "uppercase"),
        (good.replacen("\"id\":\"", "\"id\":\"a", 1), "id"),
        (
            good.replace(
                &good[good.find("\"kind\":").unwrap()..good.find(",\"tags\"").unwrap()],
                "\"kind\":70000",
            ),
            "70000",
        ),
        (
            good.replace(
                &good[good.find("\"created_at\":").unwrap()..good.find(",\"kind\"").unwrap()],
                "\"created_at\":-5",
            ),
            "created_at",
        ),
        (
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            "",
        ),
        ("{}".to_string(), "missing"),
        ("42".to_string(), ""),
        (good.replace("[[\"t\",\"x\"]]", "[[\"t\",1]]"), ""),
        (
            good.replace(
                "\"content\":\"hello\"",
                &format!("\"content\":\"{}\"", "a".repeat(1 << 20)),
            ),
            "limit",
        ),
    ];
    for (json, needle) in cases {
        let error = Event::from_json_with(&json, &limits).expect_err("must be refused");
        let message = error.to_string();
        assert!(message.starts_with("invalid:"), "{message}");
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

#[test]
fn invalid_events_leave_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let keys = Keys::from_seed(7);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let huge = keys.sign(now, 1, vec![], "a".repeat(1 << 20));
    let future = keys.sign(now + 3600, 1, vec![], "from the future".into());
    let expired = keys.sign(
        now,
        1,
        vec![vec!["expiration".into(), (now - 10).to_string()]],
        "old".into(),
    );
    let many_tags = keys.sign(
        now,
        1,
        (0..3000).map(|i| vec!["t".into(), i.to_string()]).collect(),
        String::new(),
    );
    let mut wrong_kind = keys.sign(now, 1, vec![], "x".into());
    wrong_kind.kind = 2; // id no longer matches
    let mut tampered = keys.sign(now, 1, vec![], "x".into());
    tampered.content.push('!');
    let outcomes = store
        .insert(&[huge, future, expired, many_tags, wrong_kind, tampered])
        .unwrap();
    let codes: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            InsertOutcome::Invalid(r) => {
                assert!(r.message.starts_with("invalid:"), "{}", r.message);
                r.code
            }
            other => panic!("expected a refusal, got {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            "too-large",
            "future",
            "expired",
            "too-many-tags",
            "bad-id",
            "bad-id"
        ]
    );
    assert_eq!(store.count(&[Filter::new()]).unwrap(), 0);
    assert_eq!(store.stats().unwrap().events, 0);
    store.close().unwrap();
}

#[test]
fn hostile_filters_are_errors_not_panics() {
    for json in [
        r#"{"ids":["xyz"]}"#,
        r#"{"authors":[1]}"#,
        r#"{"kinds":[-1]}"#,
        r#"{"limit":"ten"}"#,
        r##"{"#p":["not hex"]}"##,
        r#"{"since":1e99}"#,
        r#"not json"#,
        r#"[{"kinds":[1]}, 5]"#,
    ] {
        assert!(
            Filter::list_from_json(json).is_err(),
            "{json} should be refused"
        );
    }
}
