//! The properties Megalith's fuzz targets check. `tests/fuzz_properties_log.rs`
//! includes this file too, so plain `cargo test` checks the same properties
//! on seeded inputs without nightly or cargo-fuzz.
//!
//! Every function panics (fails the fuzz run) when a property breaks; none
//! of them may panic on any input for any other reason.

use megalith::inspect::log::{
    CompactedPayload, QuarantinePayload, RecordRef, RecordType, RemovePayload, SEGMENT_HEADER_LEN,
    SegmentWalk, WalkItem, decode_record, decode_segment_header, encode_record,
    encode_segment_header,
};
use megalith::{Event, EventRef, IdForm, Lsn, SegmentId, ShardId};

/// Arbitrary bytes read as a whole segment file: the header decoder, the
/// record walker (with and without a known segment id) and the frame
/// decoder must not panic, and whatever decodes must re-encode to the very
/// bytes it came from.
pub fn check_segment_bytes(data: &[u8]) {
    if let Ok(header) = decode_segment_header(data) {
        assert_eq!(
            encode_segment_header(header.shard, header.segment)[..],
            data[..SEGMENT_HEADER_LEN],
            "a valid header re-encodes to its bytes"
        );
    }
    check_walk(data, None);
    check_walk(data, Some(SegmentId(1)));
    // The frame decoder alone, at the start of the input and after a header.
    for at in [0, SEGMENT_HEADER_LEN] {
        if let Some(rest) = data.get(at..)
            && let Ok(record) = decode_record(rest, SegmentId(1))
        {
            assert_reencodes(rest, SegmentId(1), &record);
        }
    }
}

/// Arbitrary bytes as the payload of two valid frames (an event record and
/// a remove record) of a well-formed segment: the walker must hand back
/// exactly those records, and payload decoders must not panic.
pub fn check_framed_payload(data: &[u8]) {
    let segment = SegmentId(5);
    let mut bytes = encode_segment_header(ShardId(0), segment).to_vec();
    let first = bytes.len();
    let Ok(frame) = encode_record(segment, RecordType::Event, false, Lsn(7), Lsn(6), data) else {
        return;
    };
    bytes.extend_from_slice(&frame);
    let second = bytes.len();
    let Ok(frame) = encode_record(segment, RecordType::Remove, true, Lsn(8), Lsn(6), data) else {
        return;
    };
    bytes.extend_from_slice(&frame);
    let items: Vec<_> = SegmentWalk::new(&bytes, Some(segment)).collect();
    let [
        WalkItem::Record {
            offset: a,
            record: ra,
        },
        WalkItem::Record {
            offset: b,
            record: rb,
        },
        WalkItem::End {
            offset: end,
            zero_bytes: 0,
        },
    ] = items.as_slice()
    else {
        panic!("a well-formed segment walked as {items:?}");
    };
    assert_eq!((*a, *b, *end), (first, second, bytes.len()));
    assert_eq!(
        (ra.record_type, ra.batch_end, ra.lsn, ra.payload),
        (RecordType::Event, false, Lsn(7), data)
    );
    assert_eq!(
        (rb.record_type, rb.batch_end, rb.lsn, rb.payload),
        (RecordType::Remove, true, Lsn(8), data)
    );
    check_payload(ra);
    check_payload(rb);
}

/// Arbitrary bytes as event JSON: the strict parser must not panic, and an
/// event it accepts must survive canonical JSON and the binary payload
/// unchanged.
pub fn check_event_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(event) = Event::from_json(text) else {
        return;
    };
    let json = event.to_json();
    assert_eq!(json.len(), event.json_len(), "json_len of {json}");
    let again = Event::from_json(&json).expect("canonical JSON parses");
    assert_eq!(again, event, "parse(to_json(e)) == e");
    assert_eq!(event.compute_id(), again.compute_id());
    let mut payload = Vec::new();
    if event.encode_payload(&mut payload).is_err() {
        // Too large for the storage format: refused, which is fine.
        return;
    }
    assert_eq!(payload.len(), event.payload_len());
    let stored = EventRef::parse(&payload).expect("an encoded payload parses");
    assert_eq!(stored.to_event(), event, "payload round trip");
    assert_eq!(stored.to_json(), json, "JSON written from the payload");
    assert_eq!(stored.json_len(), json.len());
    // The payload keeps the form the id matched (NIP-01's when it matches neither).
    assert_eq!(stored.id_form(), event.id_form().unwrap_or(IdForm::Nip01));
    assert_eq!(stored.compute_id(), event.compute_id_as(stored.id_form()));
    assert_eq!(stored.expiration(), event.expiration());
}

fn check_walk(data: &[u8], file_segment: Option<SegmentId>) {
    let walk = SegmentWalk::new(data, file_segment);
    let segment = walk.segment();
    let mut position = 0;
    let mut ended = false;
    for item in walk {
        assert!(!ended, "nothing follows the end");
        match item {
            WalkItem::Record { offset, record } => {
                assert!(offset >= SEGMENT_HEADER_LEN && offset >= position);
                assert_reencodes(&data[offset..], segment, &record);
                check_payload(&record);
                position = offset + record.frame_len();
            }
            WalkItem::Damage {
                offset, resumes_at, ..
            } => {
                assert!(offset <= data.len() && (offset == 0 || offset >= position));
                if let Some(next) = resumes_at {
                    assert!(next >= offset && next < data.len());
                    assert!(decode_record(&data[next..], segment).is_ok());
                    position = next;
                }
            }
            WalkItem::End { offset, zero_bytes } => {
                assert_eq!(offset + zero_bytes, data.len());
                assert!(data[offset..].iter().all(|&b| b == 0));
                ended = true;
            }
        }
    }
}

fn assert_reencodes(bytes: &[u8], segment: SegmentId, record: &RecordRef<'_>) {
    let again = encode_record(
        segment,
        record.record_type,
        record.batch_end,
        record.lsn,
        record.durable_lsn(),
        record.payload,
    )
    .expect("a decoded payload fits a frame");
    // A compacted record's hole follows its frame, outside the checksum.
    let framed = record.frame_len() - record.skip as usize;
    assert_eq!(&bytes[..framed], &again[..], "frame re-encodes");
    // Any single-byte change of a valid frame is caught by its checksum.
    let mut flipped = again.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    assert!(decode_record(&flipped, segment).is_err(), "flip unnoticed");
}

/// Payload decoders never panic; what they accept round-trips.
fn check_payload(record: &RecordRef<'_>) {
    match record.record_type {
        RecordType::Event => {
            if let Ok(stored) = EventRef::parse(record.payload) {
                // Payloads may spell one event in more than one way (a hex
                // string stored as text), so compare events, not bytes.
                let event = stored.to_event();
                let mut payload = Vec::new();
                event
                    .encode_payload(&mut payload)
                    .expect("a stored event re-encodes");
                let again = EventRef::parse(&payload).expect("re-encoded payload parses");
                assert_eq!(again.to_event(), event);
                assert_eq!(again.to_json(), stored.to_json());
                assert_eq!(stored.json_len(), stored.to_json().len());
                let _ = stored.tags().count();
                let _ = stored.d_tag();
            }
        }
        RecordType::Remove => {
            if let Some(remove) = RemovePayload::decode(record.payload) {
                let mut again = Vec::new();
                remove.encode(&mut again);
                assert_eq!(again, record.payload);
            }
        }
        RecordType::Quarantined => {
            if let Some(quarantined) = QuarantinePayload::decode(record.payload) {
                let again = quarantined.encode(record.payload.len());
                assert_eq!(QuarantinePayload::decode(&again), Some(quarantined));
            }
        }
        RecordType::Compacted => {
            // A decoded frame's payload is a whole compacted payload.
            let compacted = CompactedPayload::decode(record.payload)
                .expect("a decoded compacted frame has its payload");
            assert_eq!(compacted.encode().as_slice(), record.payload);
            assert_eq!(compacted.skip, record.skip);
        }
    }
}
