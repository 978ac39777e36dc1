//! Arbitrary bytes as an index page (meta, free-list and tree decoders, with
//! re-encoding round trips) and as a small index file for the checker.
//! Must never panic.

#![no_main]

mod page_decoder_properties;

use libfuzzer_sys::fuzz_target;
use page_decoder_properties::{as_page, single_page, small_file};

fuzz_target!(|data: &[u8]| {
    let page = as_page(data);
    let id = data.first().map_or(2, |&b| u64::from(b));
    single_page(&page, id);
    small_file(data);
});
