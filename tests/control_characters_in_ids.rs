//! Events whose strings hold control characters, signed in either id
//! serialization: NIP-01's text (the other control characters raw) or the
//! `JSON.stringify` / serde_json form (`\u00xx`) that nostr-tools and
//! rust-nostr hash. Both are accepted, stored, served as valid JSON and still
//! verify after a query, a JSON round trip and a reopen; an id matching
//! neither is refused.

use megalith::{Event, EventId, EventRef, EventStore, Filter, InsertOutcome, Keys, Signature};
use sha2::{Digest, Sha256};

/// Signed by nostr-tools 2.25.2 (`finalizeEvent`, output of `JSON.stringify`)
/// with every character U+0000..U+001F and U+007F in the content and in a tag
/// value. The raw U+007F the library wrote is spelled `\u007f` here (the same
/// string once parsed).
const NOSTR_TOOLS_EVENT: &str = r#"{"kind":1,"created_at":1700000000,"tags":[["t","bell\u0007"],["x","\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f\u007f"]],"content":"nostr-tools: \u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f\u007f end","pubkey":"a7ce0b50164d48e9aa6b902dfb9b6472d97c3443463ce095809e24ede6ca865d","id":"045a5c40d7a52a04366aebc1f8806e8eae7f0f65c3a484a80251f68f94f5991e","sig":"b47d503a67e93d6eb060eefba7bc339f99e5b11a43f66b835e95512ab0c798269922d37fb4345ef45c24c8c6d6489bf0e1724928d6cf23e5c0e736cf9caafc3c"}"#;

/// The same, signed by rust-nostr through PyPI nostr-sdk 0.45.1
/// (`EventBuilder.finalize`, output of `Event.as_json`).
const NOSTR_SDK_EVENT: &str = r#"{"id":"62cbc883ee673ccd6159f30740f3c89d302e287af765f5e1923b804079dc3fff","pubkey":"fc09f63dc32bdb5a5f296d8fb6da5b7803b7ab540f1cafc143b34e318b2d2277","created_at":1700000000,"kind":1,"tags":[["t","bell\u0007"],["x","\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f\u007f"]],"content":"nostr-sdk: \u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f\u007f end","sig":"f7aa528934b339761312ba3fe2c3e0156feb6f80fa68328c1f7d74dfb0e4bf7aa136f3d7304d1f8d38cf31135f1e72d123105fdc9d639eb6591332e8869fcb48"}"#;

const CREATED_AT: u64 = 1_700_000_000;

/// Every control character below U+0020, and U+007F.
fn control_characters() -> impl Iterator<Item = char> {
    (0u8..0x20).chain([0x7f]).map(char::from)
}

/// Whether NIP-01's text and JSON write `c` differently (it has no short escape).
fn forms_differ(c: char) -> bool {
    c < '\u{20}' && !matches!(c, '\n' | '\r' | '\t' | '\u{8}' | '\u{c}')
}

/// The id as rust-nostr computes it: sha256 of serde_json's compact
/// serialization of the array. Written here independently of the engine.
fn serde_json_id(event: &Event) -> EventId {
    let array = serde_json::json!([
        0,
        event.pubkey.to_hex(),
        event.created_at,
        event.kind,
        event.tags,
        event.content
    ]);
    let text = serde_json::to_string(&array).unwrap();
    EventId(Sha256::digest(text.as_bytes()).into())
}

/// An event signed by `keys` over the serde_json (`\u00xx`) serialization.
fn sign_json_escaped(keys: &Keys, kind: u16, tags: Vec<Vec<String>>, content: String) -> Event {
    let mut event = Event {
        id: EventId([0; 32]),
        pubkey: keys.pubkey(),
        created_at: CREATED_AT,
        kind,
        tags,
        content,
        sig: Signature([0; 64]),
    };
    event.id = serde_json_id(&event);
    event.sig = keys.sign_id(&event.id);
    event
}

/// For each control character, one event signed in NIP-01's form and one in
/// the JSON form, with the character in the content and in a tag value.
fn events_in_both_forms() -> Vec<Event> {
    let keys = Keys::from_seed(12);
    let mut events = Vec::new();
    for c in control_characters() {
        let tags = |form: &str| {
            vec![
                vec!["t".to_owned(), format!("ctl{c}")],
                vec!["form".to_owned(), form.to_owned(), format!("{c}|{c}")],
            ]
        };
        events.push(keys.sign(
            CREATED_AT,
            1,
            tags("nip01"),
            format!("nip01 U+{:04X} [{c}]", u32::from(c)),
        ));
        events.push(sign_json_escaped(
            &keys,
            1,
            tags("json"),
            format!("json U+{:04X} [{c}]", u32::from(c)),
        ));
    }
    events
}

fn assert_all_stored(outcomes: &[InsertOutcome], events: &[Event]) {
    for (outcome, event) in outcomes.iter().zip(events) {
        assert_eq!(
            *outcome,
            InsertOutcome::Stored,
            "{:?}: {}",
            event.content,
            outcome.message()
        );
    }
}

/// Reads every event back by id, three ways, and checks each still verifies.
fn assert_served_and_verifiable(store: &EventStore, events: &[Event]) {
    for event in events {
        // query -> Event -> JSON -> strict parse -> verify.
        let found = store.get(&event.id).unwrap().expect("stored");
        assert_eq!(&found, event);
        let json = found.to_json();
        let back = Event::from_json(&json).unwrap();
        assert_eq!(&back, event);
        back.verify()
            .unwrap_or_else(|e| panic!("{:?} after a JSON round trip: {e}", event.content));

        // The zero-copy view: its JSON is valid JSON whose strings are the ones
        // signed, and the id recomputed from the stored bytes is the event's.
        let mut seen = 0;
        store
            .query_with(&[Filter::new().ids([event.id])], |view: &EventRef<'_>| {
                seen += 1;
                assert_eq!(view.compute_id(), event.id, "{:?}", event.content);
                let served = view.to_json();
                assert_eq!(served, json);
                let value: serde_json::Value = serde_json::from_str(&served).unwrap();
                assert_eq!(value["content"].as_str(), Some(event.content.as_str()));
                assert_eq!(
                    value["tags"],
                    serde_json::to_value(&event.tags).unwrap(),
                    "{served}"
                );
                // The served strings are written exactly as JSON.stringify and
                // serde_json write them: the bytes the JSON form hashed.
                let content = serde_json::to_string(&event.content).unwrap();
                assert!(
                    served.contains(&format!(",\"content\":{content},")),
                    "{served}"
                );
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 1);
    }
}

#[test]
fn events_signed_by_nostr_tools_and_nostr_sdk_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    for fixture in [NOSTR_TOOLS_EVENT, NOSTR_SDK_EVENT] {
        let event = Event::from_json(fixture).unwrap();
        assert!(event.content.contains('\u{7}'), "{fixture}");
        assert_eq!(serde_json_id(&event), event.id, "the fixture's own form");
        event
            .verify()
            .unwrap_or_else(|e| panic!("{e}: {fixture:.80}"));
        let outcomes = store.insert(std::slice::from_ref(&event)).unwrap();
        assert_all_stored(&outcomes, std::slice::from_ref(&event));
        assert_served_and_verifiable(&store, std::slice::from_ref(&event));
    }
    store.close().unwrap();
}

#[test]
fn both_id_forms_round_trip_through_the_store_and_a_reopen() {
    let events = events_in_both_forms();
    // The JSON-form events of characters without a short escape are the ones
    // a NIP-01-only check refuses: check the fixture has all of them.
    let json_only = events
        .iter()
        .filter(|e| e.content.starts_with("json") && e.content.chars().any(forms_differ))
        .count();
    assert_eq!(
        json_only, 27,
        "U+0000..U+001F without the five short escapes"
    );

    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let outcomes = store.insert(&events).unwrap();
    assert_all_stored(&outcomes, &events);
    assert_served_and_verifiable(&store, &events);
    let by_tag = store
        .query(&[Filter::new().tag('t', ["ctl\u{7}"])])
        .unwrap();
    assert_eq!(by_tag.len(), 2, "the tag value holds the raw character");
    store.close().unwrap();

    let store = EventStore::open(dir.path()).unwrap();
    assert_served_and_verifiable(&store, &events);
    let again = store.insert(&events).unwrap();
    assert!(
        again.iter().all(|o| *o == InsertOutcome::Duplicate),
        "{again:?}"
    );
    store.close().unwrap();
}

#[test]
fn trusted_inserts_keep_the_form_too() {
    let events = events_in_both_forms();
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let outcomes = store.insert_trusted(&events).unwrap();
    assert_all_stored(&outcomes, &events);
    store.close().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    assert_served_and_verifiable(&store, &events);
    store.close().unwrap();
}

#[test]
fn an_id_matching_neither_form_is_refused() {
    let keys = Keys::from_seed(13);
    let signed = sign_json_escaped(&keys, 1, vec![], "bell \u{7} unit \u{1f}".to_owned());
    let mut refused = Vec::new();

    // Uppercase hex escapes (`\u001F`): a third spelling nobody hashes.
    let mut upper = signed.clone();
    let text = format!(
        "[0,\"{}\",{},1,[],\"bell \\u0007 unit \\u001F\"]",
        upper.pubkey, upper.created_at
    );
    upper.id = EventId(Sha256::digest(text.as_bytes()).into());
    upper.sig = keys.sign_id(&upper.id);
    refused.push(upper);

    // Content changed after signing, in either form.
    let mut changed = signed.clone();
    changed.content.push('\u{2}');
    refused.push(changed);
    let mut changed = keys.sign(CREATED_AT, 1, vec![], "a \u{1} b".to_owned());
    changed.content = "a \u{1} c".to_owned();
    refused.push(changed);

    // A tag value changed after signing.
    let mut changed = sign_json_escaped(
        &keys,
        1,
        vec![vec!["t".into(), "\u{3}".into()]],
        String::new(),
    );
    changed.tags[0][1] = "\u{4}".to_owned();
    refused.push(changed);

    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let outcomes = store.insert(&refused).unwrap();
    for (outcome, event) in outcomes.iter().zip(&refused) {
        let InsertOutcome::Invalid(rejection) = outcome else {
            panic!("{:?} was not refused: {outcome:?}", event.content);
        };
        assert_eq!(rejection.code, "bad-id");
        assert!(
            rejection.message.starts_with("invalid: "),
            "{}",
            rejection.message
        );
        assert!(event.verify_id().is_err());
    }
    assert_eq!(store.count(&[Filter::new()]).unwrap(), 0);
    // The genuine one is accepted.
    assert_eq!(
        store.insert(std::slice::from_ref(&signed)).unwrap(),
        vec![InsertOutcome::Stored]
    );
    store.close().unwrap();
}

#[test]
fn a_forged_pubkey_still_fails_the_signature() {
    // The JSON form is about the id only: a JSON-form id with someone else's
    // pubkey hashes right but is not their signature.
    let mut event = sign_json_escaped(&Keys::from_seed(14), 1, vec![], "\u{7}".to_owned());
    event.pubkey = Keys::from_seed(15).pubkey();
    event.id = serde_json_id(&event);
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let outcomes = store.insert(std::slice::from_ref(&event)).unwrap();
    let [InsertOutcome::Invalid(rejection)] = outcomes.as_slice() else {
        panic!("{outcomes:?}");
    };
    assert_eq!(rejection.code, "bad-signature");
    store.close().unwrap();
}
