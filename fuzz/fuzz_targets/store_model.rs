//! The model-based target: the fuzzer's bytes drive inserts, queries,
//! checkpoints, clean reopens and power losses (mid-insert or between steps,
//! each damage kind) against a store on the simulated file system, checked
//! step by step against the brute-force model. The driver is the one
//! `tests/model_with_crashes.rs` runs from `cargo test`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use megalith::Event;

#[path = "../../tests/common/mod.rs"]
mod common;

static POOL: LazyLock<Vec<Event>> = LazyLock::new(common::model_run::pool);

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    common::model_run::run(data, &POOL, dir.path());
});
