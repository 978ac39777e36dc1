//! Arbitrary bytes through the log decoders: as a whole segment file (header,
//! damage-tolerant walk, frame decoder) and as the payload of valid frames
//! (event payload and remove payload decoders). Properties: `megalith_fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    megalith_fuzz::check_segment_bytes(data);
    megalith_fuzz::check_framed_payload(data);
});
