//! The model-based property of the `store_model` fuzz target, run from
//! `cargo test` with seeded random inputs: random inserts, queries,
//! checkpoints, clean reopens and power losses (mid-insert or between
//! steps, each damage kind) agree with a brute-force model at every step.

mod common;

use common::Rng;
use common::model_run::{pool, run};

#[test]
fn random_operations_with_power_losses_match_the_model() {
    let pool = pool();
    let mut steps = 0;
    for seed in 0..150u64 {
        let mut rng = Rng::new(seed);
        let bytes: Vec<u8> = (0..200).map(|_| rng.below(256) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        steps += run(&bytes, &pool, dir.path());
    }
    println!("{steps} model steps");
    assert!(steps > 5000);
}
