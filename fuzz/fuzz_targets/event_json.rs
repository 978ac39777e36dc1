//! Arbitrary bytes through the strict event JSON parser; what it accepts
//! must round-trip through canonical JSON and the binary payload.
//! Properties: `megalith_fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    megalith_fuzz::check_event_json(data);
});
