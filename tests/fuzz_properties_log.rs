//! The fuzz targets' properties (`fuzz/src/lib.rs`, included below) on
//! seeded inputs, so plain `cargo test` checks them without nightly: a real
//! segment of real events and its random mutations through the log
//! decoders, and real event JSON and its mutations through the strict
//! parser and both round trips.

mod common;
#[path = "../fuzz/src/lib.rs"]
mod properties;

use common::Rng;
use megalith::inspect::log::{RecordType, RemovePayload, RemoveReason, SegmentWalk, WalkItem};
use megalith::inspect::log::{encode_record, encode_segment_header};
use megalith::{Location, Lsn, SegmentId, ShardId};

/// A segment like the engine writes: real events, a remove record, batch
/// ends every third record.
fn real_segment() -> Vec<u8> {
    let segment = SegmentId(1);
    let mut bytes = encode_segment_header(ShardId(0), segment).to_vec();
    let events = common::real_events();
    let mut lsn = 0;
    for (_, event) in events.iter().filter(|(json, _)| json.len() < 1500).take(24) {
        let mut payload = Vec::new();
        event.encode_payload(&mut payload).unwrap();
        lsn += 1;
        let frame = encode_record(
            segment,
            RecordType::Event,
            lsn % 3 == 0,
            Lsn(lsn),
            Lsn(lsn - 1),
            &payload,
        );
        bytes.extend_from_slice(&frame.unwrap());
    }
    let mut remove = Vec::new();
    RemovePayload {
        target: Location {
            segment,
            offset: 32,
        },
        reason: RemoveReason::Replaced,
        target_id: events[0].1.id.0,
    }
    .encode(&mut remove);
    lsn += 1;
    let frame = encode_record(
        segment,
        RecordType::Remove,
        true,
        Lsn(lsn),
        Lsn(lsn - 1),
        &remove,
    );
    bytes.extend_from_slice(&frame.unwrap());
    bytes
}

/// One random change: flipped bytes, a cut, inserted or removed bytes, a
/// zeroed run, or a copied chunk.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, alphabet: &[u8]) {
    let len = bytes.len().max(1) as u64;
    match rng.below(6) {
        0 => {
            for _ in 0..=rng.below(3) {
                if let Some(b) = bytes.get_mut(rng.below(len) as usize) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
        1 => bytes.truncate(rng.below(len) as usize),
        2 => {
            let at = rng.below(len) as usize;
            let byte = *rng.pick(alphabet);
            bytes.insert(at.min(bytes.len()), byte);
        }
        3 => {
            if !bytes.is_empty() {
                bytes.remove(rng.below(len) as usize);
            }
        }
        4 => {
            let at = rng.below(len) as usize;
            let end = (at + 1 + rng.below(64) as usize).min(bytes.len());
            bytes[at.min(end)..end].fill(0);
        }
        _ => {
            let from = rng.below(len) as usize;
            let end = (from + 1 + rng.below(200) as usize).min(bytes.len());
            let chunk = bytes[from.min(end)..end].to_vec();
            let at = (rng.below(len) as usize).min(bytes.len());
            bytes.splice(at..at, chunk);
        }
    }
}

#[test]
fn the_log_decoders_hold_their_properties_on_a_real_segment_and_its_mutations() {
    let clean = real_segment();
    // The clean segment walks to its end without damage.
    let items: Vec<_> = SegmentWalk::new(&clean, Some(SegmentId(1))).collect();
    assert_eq!(
        items
            .iter()
            .filter(|i| matches!(i, WalkItem::Record { .. }))
            .count(),
        25
    );
    assert!(!items.iter().any(|i| matches!(i, WalkItem::Damage { .. })));
    properties::check_segment_bytes(&clean);
    let mut presized = clean.clone();
    presized.resize(clean.len() + 4096, 0);
    properties::check_segment_bytes(&presized);

    let all_bytes: Vec<u8> = (0..=255).collect();
    let mut rng = Rng::new(0x5eed_1065);
    let mut damaged = 0;
    for round in 0..1500 {
        let mut bytes = clean.clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut rng, &mut bytes, &all_bytes);
        }
        properties::check_segment_bytes(&bytes);
        if SegmentWalk::new(&bytes, Some(SegmentId(1)))
            .any(|i| matches!(i, WalkItem::Damage { .. }))
        {
            damaged += 1;
        }
        // The payload decoders on mutated real payloads, framed validly.
        if round % 5 == 0 {
            let start = 32 + rng.below((clean.len() - 200) as u64) as usize;
            let mut payload = clean[start..start + 1 + rng.below(190) as usize].to_vec();
            mutate(&mut rng, &mut payload, &all_bytes);
            properties::check_framed_payload(&payload);
        }
    }
    // Nearly every mutation of a checksummed file is damage (a cut exactly
    // at a frame boundary, or at the header, is the exception).
    assert!(
        damaged > 1300,
        "only {damaged} mutations were seen as damage"
    );
    for _ in 0..300 {
        let random: Vec<u8> = (0..rng.below(300)).map(|_| rng.below(256) as u8).collect();
        properties::check_segment_bytes(&random);
        properties::check_framed_payload(&random);
    }
    // Every real event payload, framed, decodes back to the same event.
    for item in SegmentWalk::new(&clean, None) {
        if let WalkItem::Record { record, .. } = item {
            properties::check_framed_payload(record.payload);
        }
    }
}

#[test]
fn event_json_holds_its_properties_on_real_events_and_their_mutations() {
    let events = common::real_events();
    for (json, _) in &events {
        properties::check_event_json(json.as_bytes());
    }
    let alphabet = b"{}[]\",:\\0123456789abcdefnu -.eE\x00\xff";
    let mut rng = Rng::new(0xe7e2_7150);
    let mut parsed = 0;
    for _ in 0..4000 {
        let (json, _) = rng.pick(&events);
        let mut bytes = json.clone().into_bytes();
        for _ in 0..=rng.below(2) {
            mutate(&mut rng, &mut bytes, alphabet);
        }
        properties::check_event_json(&bytes);
        if std::str::from_utf8(&bytes).is_ok_and(|t| megalith::Event::from_json(t).is_ok()) {
            parsed += 1;
        }
    }
    // Some mutations keep the JSON valid (a changed content character, ...):
    // the round trips were checked on those.
    assert!(parsed > 100, "only {parsed} mutated events parsed");
}

#[test]
fn event_json_holds_its_properties_on_json_escaped_ids() {
    // Ids over the JSON-escaped serialization (nostr-tools, rust-nostr),
    // where the payload records the form, beside NIP-01's form.
    let keys = megalith::Keys::from_seed(21);
    for c in (0u8..0x20).chain([0x7f]).map(char::from) {
        for form in [megalith::IdForm::Nip01, megalith::IdForm::JsonEscaped] {
            let mut event = keys.sign(
                1_700_000_000,
                1,
                vec![vec!["t".into(), format!("{c}")]],
                format!("a{c}b"),
            );
            event.id = event.compute_id_as(form);
            event.sig = keys.sign_id(&event.id);
            assert!(event.verify().is_ok(), "{c:?} {form:?}");
            properties::check_event_json(event.to_json().as_bytes());
            let mut payload = Vec::new();
            event.encode_payload(&mut payload).unwrap();
            properties::check_framed_payload(&payload);
        }
    }
}
