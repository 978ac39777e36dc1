//! Tests against 720 real, signed events from the nostrdb test data: parsing, id hashing,
//! signature verification and every serialization path must agree with what their authors made.

use serde_json::value::RawValue;

use crate::event::{Event, EventErrorKind, EventId, EventRef, Signature};

const FILES: [&str; 8] = [
    "test_counts.json",
    "profiles.json",
    "contacts.json",
    "reactions.json",
    "random.json",
    "search.json",
    "old-new.json",
    "profile-updates.json",
];

/// The raw JSON text of every event, one per non-empty line; a line is a bare event object,
/// `["EVENT", event]` or `["EVENT", "<sub>", event]`.
fn corpus() -> Vec<String> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/nostrdb-testdata"
    );
    let mut events = Vec::new();
    for file in FILES {
        let path = format!("{dir}/{file}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let raw = if line.starts_with('[') {
                let items: Vec<&RawValue> = serde_json::from_str(line).unwrap();
                assert!(
                    matches!(items.len(), 2 | 3),
                    "{file}: {} items",
                    items.len()
                );
                assert_eq!(items[0].get(), "\"EVENT\"", "{file}");
                items.last().unwrap().get().to_owned()
            } else {
                line.to_owned()
            };
            events.push(raw);
        }
    }
    events
}

fn parsed() -> Vec<(String, Event)> {
    corpus()
        .into_iter()
        .map(|raw| {
            let event = Event::from_json(&raw).unwrap_or_else(|e| panic!("{e}: {raw:.300}"));
            (raw, event)
        })
        .collect()
}

#[test]
fn corpus_has_720_events() {
    assert_eq!(corpus().len(), 720);
}

#[test]
fn every_event_verifies() {
    for (raw, event) in parsed() {
        assert_eq!(event.compute_id(), event.id, "{raw:.300}");
        event.verify().unwrap_or_else(|e| panic!("{e}: {raw:.300}"));
    }
}

#[test]
fn json_output_matches_the_original_as_a_value() {
    for (raw, event) in parsed() {
        let ours = event.to_json();
        assert_eq!(ours.len(), event.json_len());
        let original: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let produced: serde_json::Value = serde_json::from_str(&ours).unwrap();
        assert_eq!(produced, original, "{raw:.300}");
        assert_eq!(Event::from_json(&ours).unwrap(), event);
    }
}

#[test]
fn payload_round_trip_and_views_agree() {
    let mut payload = Vec::new();
    let mut from_event = Vec::new();
    let mut from_ref = Vec::new();
    for (raw, event) in parsed() {
        payload.clear();
        event.encode_payload(&mut payload).unwrap();
        assert_eq!(payload.len(), event.payload_len(), "{raw:.300}");

        let view = EventRef::parse(&payload).unwrap_or_else(|e| panic!("{e}: {raw:.300}"));
        assert_eq!(view.to_event(), event, "{raw:.300}");
        assert_eq!(view.id(), event.id);
        assert_eq!(view.pubkey(), event.pubkey);
        assert_eq!(view.sig(), event.sig);
        assert_eq!(view.created_at(), event.created_at);
        assert_eq!(view.kind(), event.kind);
        assert_eq!(view.kind_class(), event.kind_class());
        assert_eq!(view.content(), event.content);
        assert_eq!(view.tag_count(), event.tags.len());
        assert_eq!(view.expiration(), event.expiration());
        assert_eq!(
            view.d_tag().map(|f| f.to_string()).unwrap_or_default(),
            event.d_tag()
        );
        assert_eq!(view.as_bytes(), payload.as_slice());
        assert_eq!(view.compute_id(), event.id, "{raw:.300}");

        from_event.clear();
        from_ref.clear();
        event.write_json(&mut from_event);
        view.write_json(&mut from_ref);
        assert_eq!(from_ref, from_event, "{raw:.300}");
        assert_eq!(view.json_len(), from_event.len());
        assert_eq!(view.to_json().as_bytes(), from_event.as_slice());
    }
}

#[test]
fn hex_tag_values_are_compacted() {
    // Every e/p tag value is 64 hex characters and must be stored in 32 bytes.
    let mut compacted = 0;
    let mut payload = Vec::new();
    for (_, event) in parsed() {
        payload.clear();
        event.encode_payload(&mut payload).unwrap();
        let view = EventRef::parse(&payload).unwrap();
        for tag in view.tags() {
            let is_ref = tag
                .name()
                .and_then(|n| n.is_single_letter())
                .is_some_and(|c| c == b'e' || c == b'p');
            if let (true, Some(value)) = (is_ref, tag.value())
                && value.len_str() == 64
                && value
                    .to_string()
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                assert!(matches!(value, crate::event::TagField::Hex(b) if b.len() == 32));
                compacted += 1;
            }
        }
    }
    assert!(compacted > 1_000, "only {compacted} e/p values seen");
}

/// A different lowercase hex digit in place of `c`.
fn other_digit(c: char) -> char {
    if c == '0' { '1' } else { '0' }
}

fn flip(hex: &str, pos: usize) -> String {
    hex.char_indices()
        .map(|(i, c)| if i == pos { other_digit(c) } else { c })
        .collect()
}

#[test]
fn any_flipped_hex_char_breaks_verification() {
    let events = parsed();
    let sample = [0, 1, 300, events.len() - 1];
    for &index in &sample {
        let event = &events[index].1;
        let id_hex = event.id.to_hex();
        for pos in 0..id_hex.len() {
            let mut bad = event.clone();
            bad.id = EventId::from_hex(&flip(&id_hex, pos)).unwrap();
            let e = bad.verify().unwrap_err();
            assert_eq!(
                e.kind(),
                EventErrorKind::BadId,
                "event {index} id pos {pos}"
            );
        }
        let sig_hex = event.sig.to_hex();
        for pos in 0..sig_hex.len() {
            let mut bad = event.clone();
            bad.sig = Signature::from_hex(&flip(&sig_hex, pos)).unwrap();
            let e = bad.verify().unwrap_err();
            assert_eq!(
                e.kind(),
                EventErrorKind::BadSignature,
                "event {index} sig pos {pos}"
            );
        }
    }
}
