//! Tests of JSON event parsing against hostile and malformed input: each rejection has the right
//! kind and a specific message, and nothing panics.

use crate::event::{Event, EventError, EventErrorKind, Keys, Limits};

const ID: &str = "4433f14d7b79a313ffcdd744eb69e16761780b5811cb92917379ac14447b1eb2";
const PUBKEY: &str = "45835c36f41d979bc8129830f2f5d92562f5343d6feddd6f30aa79480730f26e";

fn sig() -> String {
    "ab".repeat(64)
}

/// An event object whose fields are given as raw JSON text, in this order.
fn object(fields: &[(&str, &str)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// A valid object with `field` replaced by raw JSON `value` (or appended if new).
fn with_field(field: &str, value: &str) -> String {
    let sig = format!("\"{}\"", sig());
    let id = format!("\"{ID}\"");
    let pubkey = format!("\"{PUBKEY}\"");
    let mut fields = vec![
        ("id", id.as_str()),
        ("pubkey", pubkey.as_str()),
        ("created_at", "1700000000"),
        ("kind", "1"),
        ("tags", "[[\"e\",\"x\"]]"),
        ("content", "\"hi\""),
        ("sig", sig.as_str()),
    ];
    match fields.iter_mut().find(|(k, _)| *k == field) {
        Some(slot) => slot.1 = value,
        None => fields.push((field, value)),
    }
    object(&fields)
}

fn without_field(field: &str) -> String {
    let sig = format!("\"{}\"", sig());
    let id = format!("\"{ID}\"");
    let pubkey = format!("\"{PUBKEY}\"");
    let fields: Vec<(&str, &str)> = [
        ("id", id.as_str()),
        ("pubkey", pubkey.as_str()),
        ("created_at", "1"),
        ("kind", "1"),
        ("tags", "[]"),
        ("content", "\"\""),
        ("sig", sig.as_str()),
    ]
    .into_iter()
    .filter(|(k, _)| *k != field)
    .collect();
    object(&fields)
}

fn rejected(json: &str) -> EventError {
    match Event::from_json(json) {
        Ok(event) => panic!("accepted {json:.200} as {event:?}"),
        Err(e) => e,
    }
}

fn assert_rejected(json: &str, kind: EventErrorKind, message_part: &str) {
    let e = rejected(json);
    assert_eq!(e.kind(), kind, "{e} for {json:.200}");
    assert!(
        e.message().contains(message_part),
        "message {:?} lacks {message_part:?}",
        e.message()
    );
}

#[test]
fn valid_template_parses() {
    let event = Event::from_json(&with_field("content", "\"hi\"")).unwrap();
    assert_eq!(event.id.to_hex(), ID);
    assert_eq!(event.pubkey.to_hex(), PUBKEY);
    assert_eq!(event.created_at, 1_700_000_000);
    assert_eq!(event.kind, 1);
    assert_eq!(event.tags, vec![vec!["e".to_owned(), "x".to_owned()]]);
    assert_eq!(event.content, "hi");
    assert_eq!(event.sig.to_hex(), sig());
}

#[test]
fn unknown_fields_whitespace_and_order_are_accepted() {
    let json = format!(
        " {{ \"sig\" : \"{}\", \"extra\": {{\"deep\": [1, 2, {{}}]}}, \"content\":\"\\u00e9\\/\",\n\
         \"tags\":[],\"kind\":65535,\"created_at\":18446744073709551615,\n\
         \"pubkey\":\"{PUBKEY}\",\"id\":\"{ID}\" }}\n",
        sig()
    );
    let event = Event::from_json(&json).unwrap();
    assert_eq!(event.content, "é/");
    assert_eq!(event.kind, u16::MAX);
    assert_eq!(event.created_at, u64::MAX);
}

#[test]
fn truncated_json_is_malformed() {
    let full = with_field("content", "\"hello\"");
    for cut in 0..full.len() {
        let e = rejected(&full[..cut]);
        assert_eq!(e.kind(), EventErrorKind::Malformed, "cut {cut}: {e}");
        assert!(e.message().starts_with("malformed JSON: "), "{e}");
    }
    let e = rejected(&full[..full.len() - 20]);
    assert!(e.message().contains("EOF while parsing"), "{e}");
    assert!(e.message().contains("line 1 column"), "{e}");
}

#[test]
fn trailing_garbage_is_malformed() {
    let json = format!("{}x", with_field("kind", "1"));
    assert_rejected(&json, EventErrorKind::Malformed, "trailing characters");
    let two = format!("{0}{0}", with_field("kind", "1"));
    assert_rejected(&two, EventErrorKind::Malformed, "trailing characters");
}

#[test]
fn hex_fields_are_strict() {
    let upper = format!("\"{}\"", ID.to_uppercase());
    assert_rejected(
        &with_field("id", &upper),
        EventErrorKind::BadField,
        "id contains uppercase hex",
    );
    let short = format!("\"{}\"", &PUBKEY[..63]);
    assert_rejected(
        &with_field("pubkey", &short),
        EventErrorKind::BadField,
        "pubkey must be 64 lowercase hex characters, got 63",
    );
    let long = format!("\"{}00\"", sig());
    assert_rejected(
        &with_field("sig", &long),
        EventErrorKind::BadField,
        "sig must be 128 lowercase hex characters, got 130",
    );
    let nonhex = format!("\"{}z\"", &ID[..63]);
    assert_rejected(
        &with_field("id", &nonhex),
        EventErrorKind::BadField,
        "non-hex character 'z'",
    );
    assert_rejected(
        &with_field("id", "42"),
        EventErrorKind::BadField,
        "id must be a string",
    );
    assert_rejected(
        &with_field("pubkey", "null"),
        EventErrorKind::BadField,
        "pubkey must be a string",
    );
}

#[test]
fn kind_range_and_type() {
    assert_rejected(
        &with_field("kind", "70000"),
        EventErrorKind::BadField,
        "kind 70000 is out of range 0..=65535",
    );
    assert_rejected(
        &with_field("kind", "-1"),
        EventErrorKind::BadField,
        "kind -1 is out of range",
    );
    assert_rejected(
        &with_field("kind", "1.0"),
        EventErrorKind::BadField,
        "kind must be an integer without fraction or exponent, got 1.0",
    );
    assert_rejected(
        &with_field("kind", "\"1\""),
        EventErrorKind::BadField,
        "not a string",
    );
    assert_rejected(
        &with_field("kind", "true"),
        EventErrorKind::BadField,
        "got true",
    );
    assert_rejected(
        &with_field("kind", "[1]"),
        EventErrorKind::BadField,
        "kind must be a JSON integer",
    );
    assert_eq!(Event::from_json(&with_field("kind", "0")).unwrap().kind, 0);
    assert_eq!(
        Event::from_json(&with_field("kind", "65535")).unwrap().kind,
        65_535
    );
}

#[test]
fn created_at_must_be_a_plain_non_negative_integer() {
    assert_rejected(
        &with_field("created_at", "-5"),
        EventErrorKind::BadField,
        "created_at -5 is out of range",
    );
    assert_rejected(
        &with_field("created_at", "1.5"),
        EventErrorKind::BadField,
        "without fraction or exponent, got 1.5",
    );
    assert_rejected(
        &with_field("created_at", "1e3"),
        EventErrorKind::BadField,
        "without fraction or exponent, got 1e3",
    );
    assert_rejected(
        &with_field("created_at", "\"1700000000\""),
        EventErrorKind::BadField,
        "not a string",
    );
    assert_rejected(
        &with_field("created_at", "18446744073709551616"),
        EventErrorKind::BadField,
        "created_at 18446744073709551616 is out of range 0..=18446744073709551615",
    );
    let huge = "9".repeat(5000);
    let e = rejected(&with_field("created_at", &huge));
    assert_eq!(e.kind(), EventErrorKind::BadField);
    assert!(
        e.message().len() < 200,
        "the value is quoted, not copied: {e}"
    );
    assert_rejected(
        &with_field("created_at", "01"),
        EventErrorKind::Malformed,
        "malformed JSON",
    );
}

#[test]
fn structure_errors() {
    for json in ["[]", "\"event\"", "42", "null", "[[[1]]]"] {
        assert_rejected(
            json,
            EventErrorKind::Malformed,
            "event must be a JSON object",
        );
    }
    assert_rejected("", EventErrorKind::Malformed, "malformed JSON: EOF");
    assert_rejected("   ", EventErrorKind::Malformed, "malformed JSON");
    assert_rejected("{", EventErrorKind::Malformed, "malformed JSON");
    assert_rejected("{}", EventErrorKind::Malformed, "missing field `id`");
    for field in [
        "id",
        "pubkey",
        "created_at",
        "kind",
        "tags",
        "content",
        "sig",
    ] {
        assert_rejected(
            &without_field(field),
            EventErrorKind::Malformed,
            &format!("missing field `{field}`"),
        );
    }
    let dup = with_field("kind", "1").replacen("\"kind\":1", "\"kind\":1,\"kind\":2", 1);
    assert_rejected(&dup, EventErrorKind::Malformed, "duplicate field `kind`");
    let dup_content = format!(
        "{},\"content\":\"x\"}}",
        with_field("kind", "1").trim_end_matches('}')
    );
    assert_rejected(
        &dup_content,
        EventErrorKind::Malformed,
        "duplicate field `content`",
    );
    // Repeated unknown fields are not ours to judge.
    let extra = format!(
        "{},\"x\":1,\"x\":2}}",
        with_field("kind", "1").trim_end_matches('}')
    );
    Event::from_json(&extra).unwrap();
}

#[test]
fn tags_and_content_types() {
    for tags in [
        "[[1]]",
        "[\"e\"]",
        "{}",
        "[[\"e\",null]]",
        "[[[\"e\"]]]",
        "\"tags\"",
        "[[\"e\"],5]",
    ] {
        assert_rejected(
            &with_field("tags", tags),
            EventErrorKind::BadField,
            "tags must be an array of arrays of strings",
        );
    }
    assert_rejected(
        &with_field("content", "5"),
        EventErrorKind::BadField,
        "content must be a string",
    );
    assert_rejected(
        &with_field("content", "[\"x\"]"),
        EventErrorKind::BadField,
        "content must be a string",
    );
    let ok = Event::from_json(&with_field("tags", "[[],[\"\"],[\"a\",\"b\",\"c\"]]")).unwrap();
    assert_eq!(ok.tags.len(), 3);
    assert!(ok.tags[0].is_empty());
}

#[test]
fn bad_json_inside_fields_is_malformed() {
    assert_rejected(
        &with_field("content", "\"a\\x\""),
        EventErrorKind::Malformed,
        "malformed JSON",
    );
    assert_rejected(
        &with_field("content", "\"a\u{1}\""),
        EventErrorKind::Malformed,
        "control character",
    );
    assert_rejected(
        &with_field("tags", "[[\"a\",]]"),
        EventErrorKind::Malformed,
        "malformed JSON",
    );
    assert_rejected(
        &with_field("content", "\"\\ud800\""),
        EventErrorKind::Malformed,
        "malformed JSON",
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = "[".repeat(100_000);
    assert_rejected(&deep, EventErrorKind::Malformed, "");
    let deep_object = "{\"a\":".repeat(100_000);
    assert!(Event::from_json(&deep_object).is_err());
    // Unknown fields are skipped without recursion, so balanced nesting there is harmless
    // and valid; unbalanced nesting is a syntax error.
    let nested_unknown = with_field(
        "x",
        &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    );
    assert!(Event::from_json(&nested_unknown).is_ok());
    let unbalanced_unknown = with_field("x", &"[".repeat(100_000));
    assert_eq!(
        rejected(&unbalanced_unknown).kind(),
        EventErrorKind::Malformed
    );
    let nested_tags = with_field(
        "tags",
        &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    );
    assert!(Event::from_json(&nested_tags).is_err());
}

#[test]
fn limits_are_applied_in_order() {
    let limits = Limits::default();
    let huge_content = format!("\"{}\"", "a".repeat(1 << 20));
    let json = with_field("content", &huge_content);
    let e = Event::from_json_with(&json, &limits).unwrap_err();
    assert_eq!(e.kind(), EventErrorKind::TooLarge);
    assert!(
        e.message().contains("more than the limit of 65536 bytes"),
        "{e}"
    );
    // Size is checked before parsing: an oversized non-JSON input is TooLarge, not Malformed.
    let junk = "x".repeat(limits.max_event_bytes + 1);
    assert_eq!(
        Event::from_json_with(&junk, &limits).unwrap_err().kind(),
        EventErrorKind::TooLarge
    );

    let many: Vec<String> = (0..3_000).map(|i| format!("[\"t\",\"{i}\"]")).collect();
    let json = with_field("tags", &format!("[{}]", many.join(",")));
    let generous = Limits {
        max_event_bytes: usize::MAX,
        ..Limits::default()
    };
    let e = Event::from_json_with(&json, &generous).unwrap_err();
    assert_eq!(e.kind(), EventErrorKind::TooManyTags);
    assert!(e.message().contains("3000 tags"), "{e}");

    let long_value = format!("[[\"t\",\"{}\"]]", "v".repeat(1_025));
    let e = Event::from_json_with(&with_field("tags", &long_value), &limits).unwrap_err();
    assert_eq!(e.kind(), EventErrorKind::TagTooLong);

    let content = format!("\"{}\"", "c".repeat(100));
    let small_content = Limits {
        max_content_bytes: 99,
        ..Limits::default()
    };
    let e = Event::from_json_with(&with_field("content", &content), &small_content).unwrap_err();
    assert_eq!(e.kind(), EventErrorKind::TooLarge);
    assert!(e.message().starts_with("content is 100 bytes"), "{e}");

    // Parse errors come before limit errors.
    let bad = with_field("kind", "70000");
    let strict = Limits {
        max_tags: 0,
        ..Limits::default()
    };
    assert_eq!(
        Event::from_json_with(&bad, &strict).unwrap_err().kind(),
        EventErrorKind::BadField
    );
    Event::from_json_with(&with_field("kind", "1"), &limits).unwrap();
}

#[test]
fn accepted_events_survive_a_json_round_trip() {
    let keys = Keys::from_seed(9);
    let event = keys.sign(
        5,
        30_000,
        vec![vec!["d".into(), "\u{0}\u{1f}\"\\".into()], vec![]],
        "\u{2028}\u{7f}\r\n".into(),
    );
    let json = event.to_json();
    let back = Event::from_json(&json).unwrap();
    assert_eq!(back, event);
    back.verify().unwrap();
}
