//! Property tests: arbitrary events survive every encoding exactly, and payload parsing never
//! panics on arbitrary or damaged bytes.

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use crate::event::{Event, EventId, EventRef, IdForm, Pubkey, Signature};

/// Characters that stress escaping, mixed with arbitrary Unicode.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        1 => prop::sample::select(vec![
            '\n', '"', '\\', '\r', '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1}', '\u{1f}', '\u{7f}',
            '\u{2028}', '\u{2029}', '/', 'é', '✓', '\u{1f600}', 'a', '0', 'f',
        ]),
    ]
}

fn any_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any_char(), 0..24).prop_map(String::from_iter)
}

/// Tag fields: arbitrary text, and strings at or near the hex-compaction boundary.
fn any_field() -> impl Strategy<Value = String> {
    prop_oneof![
        any_text(),
        "[0-9a-f]{0,9}",
        "[0-9a-f]{64}",
        "[0-9a-fA-F]{1,8}",
        "[0-9]{1,21}",
        Just(String::new()),
        Just("expiration".to_owned()),
        Just("d".to_owned()),
    ]
}

fn any_tag() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        prop::collection::vec(any_field(), 0..5),
        ("[0-9]{1,21}").prop_map(|v| vec!["expiration".to_owned(), v]),
        any_field().prop_map(|v| vec!["d".to_owned(), v]),
    ]
}

prop_compose! {
    fn any_event()(
        id in any::<[u8; 32]>(),
        pubkey in any::<[u8; 32]>(),
        sig in prop::collection::vec(any::<u8>(), 64),
        created_at in any::<u64>(),
        kind in any::<u16>(),
        tags in prop::collection::vec(any_tag(), 0..8),
        content in any_text(),
    ) -> Event {
        let mut sig_bytes = [0u8; 64];
        sig_bytes.copy_from_slice(&sig);
        Event {
            id: EventId(id),
            pubkey: Pubkey(pubkey),
            created_at,
            kind,
            tags,
            content,
            sig: Signature(sig_bytes),
        }
    }
}

fn encode(event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    event.encode_payload(&mut out).unwrap();
    out
}

/// Reads every accessor of a view, which must not panic and must agree with its owned form.
fn exercise(view: &EventRef<'_>) {
    let owned = view.to_event();
    assert_eq!(view.to_json(), owned.to_json());
    assert_eq!(view.json_len(), owned.json_len());
    assert_eq!(view.expiration(), owned.expiration());
    assert_eq!(view.compute_id(), owned.compute_id_as(view.id_form()));
    assert_eq!(view.tags().count(), view.tag_count());
    for tag in view.tags() {
        assert_eq!(tag.fields().count(), tag.len());
        for field in tag.fields() {
            assert_eq!(field.len_str(), field.to_string().len());
            assert!(field.eq_str(&field.to_string()));
            let _ = field.is_single_letter();
        }
    }
}

/// The NIP-01 serialization written independently, character by character.
fn reference_id(event: &Event) -> EventId {
    fn quoted(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                other => out.push(other),
            }
        }
        out.push('"');
        out
    }
    let tags: Vec<String> = event
        .tags
        .iter()
        .map(|t| {
            format!(
                "[{}]",
                t.iter().map(|f| quoted(f)).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    let text = format!(
        "[0,\"{}\",{},{},[{}],{}]",
        event.pubkey,
        event.created_at,
        event.kind,
        tags.join(","),
        quoted(&event.content)
    );
    EventId(Sha256::digest(text.as_bytes()).into())
}

/// The id as rust-nostr computes it: serde_json's compact serialization of the array.
fn serde_json_id(event: &Event) -> EventId {
    let array = serde_json::json!([
        0,
        event.pubkey.to_hex(),
        event.created_at,
        event.kind,
        event.tags,
        event.content
    ]);
    EventId(Sha256::digest(serde_json::to_string(&array).unwrap().as_bytes()).into())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn payload_round_trip_is_exact(event in any_event()) {
        let payload = encode(&event);
        prop_assert_eq!(payload.len(), event.payload_len());
        let view = EventRef::parse(&payload).unwrap();
        prop_assert_eq!(&view.to_event(), &event);
        prop_assert_eq!(view.expiration(), event.expiration());
        prop_assert_eq!(
            view.d_tag().map(|f| f.to_string()).unwrap_or_default(),
            event.d_tag()
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        event.write_json(&mut a);
        view.write_json(&mut b);
        prop_assert_eq!(a, b);
        prop_assert_eq!(view.id_form(), event.id_form().unwrap_or(IdForm::Nip01));
        prop_assert_eq!(view.compute_id(), event.compute_id_as(view.id_form()));
        // Re-encoding the decoded event reproduces the same bytes.
        prop_assert_eq!(encode(&view.to_event()), payload);
    }

    #[test]
    fn json_round_trip_is_exact(event in any_event()) {
        let json = event.to_json();
        prop_assert_eq!(json.len(), event.json_len());
        let back = Event::from_json(&json).unwrap();
        prop_assert_eq!(&back, &event);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(value["content"].as_str(), Some(event.content.as_str()));
        prop_assert_eq!(value["created_at"].as_u64(), Some(event.created_at));
    }

    #[test]
    fn id_matches_reference_serialization(event in any_event()) {
        prop_assert_eq!(event.compute_id(), reference_id(&event));
    }

    #[test]
    fn json_escaped_form_matches_serde_json(event in any_event()) {
        prop_assert_eq!(event.compute_id_as(IdForm::JsonEscaped), serde_json_id(&event));
    }

    #[test]
    fn events_signed_in_either_form_verify_and_keep_their_form(
        event in any_event(),
        json in any::<bool>(),
    ) {
        let mut event = event;
        let form = if json { IdForm::JsonEscaped } else { IdForm::Nip01 };
        event.id = event.compute_id_as(form);
        let expected = if event.id_forms_differ() { form } else { IdForm::Nip01 };
        prop_assert_eq!(event.id_form(), Some(expected));
        event.verify_id().unwrap();
        let payload = encode(&event);
        let view = EventRef::parse(&payload).unwrap();
        prop_assert_eq!(view.id_form(), expected);
        prop_assert_eq!(view.compute_id(), event.id);
        prop_assert_eq!(view.to_event().id_form(), Some(expected));
        let back = Event::from_json(&view.to_json()).unwrap();
        prop_assert_eq!(back.id_form(), Some(expected));
        prop_assert_eq!(encode(&back), payload);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(view) = EventRef::parse(&bytes) {
            exercise(&view);
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_sections(
        flags in 0u8..8,
        section in prop::collection::vec(any::<u8>(), 0..64),
        content in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut payload = vec![0u8; 138];
        payload.push(flags);
        payload.extend_from_slice(&(section.len() as u32).to_le_bytes());
        payload.extend_from_slice(&section);
        payload.extend_from_slice(&content);
        if let Ok(view) = EventRef::parse(&payload) {
            exercise(&view);
        }
    }

    #[test]
    fn damaged_payloads_never_panic(
        event in any_event(),
        position in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let payload = encode(&event);
        for cut in 0..payload.len() {
            if let Ok(view) = EventRef::parse(&payload[..cut]) {
                exercise(&view);
            }
        }
        let mut damaged = payload.clone();
        let i = position.index(damaged.len());
        damaged[i] ^= xor;
        if let Ok(view) = EventRef::parse(&damaged) {
            exercise(&view);
        }
    }
}
