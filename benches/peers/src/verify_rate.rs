//! The single-core signature-check rate: the ceiling a verified ingest can
//! reach is this times the cores.

use std::time::{Duration, Instant};

use megalith::Event;
use secp256k1::global::SECP256K1;
use secp256k1::{XOnlyPublicKey, schnorr};

use crate::dataset::Dataset;

#[derive(Debug, Clone)]
pub struct VerifyRate {
    /// Distinct events the loops cycle through.
    pub events: usize,
    /// BIP-340 checks per second on one core (secp256k1 crate: parse the
    /// x-only key, parse the signature, verify over the 32-byte id).
    pub bip340_per_sec: f64,
    /// Full event checks per second on one core (Megalith's `Event::verify`:
    /// sha256 of the NIP-01 serialization compared with the id, then BIP-340).
    pub event_per_sec: f64,
    /// Sampled events whose signature did not verify.
    pub invalid: usize,
}

/// Measures both rates on up to `sample` events spread over the dataset,
/// each loop running at least `min_time` in each of three rounds.
pub fn measure(data: &Dataset, sample: usize, min_time: Duration) -> VerifyRate {
    let step = (data.len() / sample.max(1)).max(1);
    let events: Vec<Event> = data
        .events
        .iter()
        .step_by(step)
        .take(sample)
        .filter_map(|json| Event::from_json(json).ok())
        .collect();
    let invalid = events.iter().filter(|e| e.verify().is_err()).count();

    // Three alternating rounds, keeping each loop's best: the machine may be
    // shared, and interference only ever slows a round down.
    let (mut bip340_per_sec, mut event_per_sec) = (0f64, 0f64);
    for _ in 0..3 {
        bip340_per_sec = bip340_per_sec.max(rate(min_time, events.len(), |i| {
            let e = &events[i];
            let Ok(key) = XOnlyPublicKey::from_byte_array(e.pubkey.0) else {
                return false;
            };
            let signature = schnorr::Signature::from_byte_array(e.sig.0);
            SECP256K1
                .verify_schnorr(&signature, e.id.as_bytes(), &key)
                .is_ok()
        }));
        event_per_sec =
            event_per_sec.max(rate(min_time, events.len(), |i| events[i].verify().is_ok()));
    }
    VerifyRate {
        events: events.len(),
        bip340_per_sec,
        event_per_sec,
        invalid,
    }
}

/// Calls `check` over `0..n` repeatedly for at least `min_time`; checks per second.
fn rate(min_time: Duration, n: usize, mut check: impl FnMut(usize) -> bool) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let start = Instant::now();
    let mut done = 0u64;
    let mut ok = 0u64;
    while start.elapsed() < min_time {
        for i in 0..n {
            ok += check(i) as u64;
        }
        done += n as u64;
    }
    std::hint::black_box(ok);
    done as f64 / start.elapsed().as_secs_f64()
}
