//! What the service benchmarks share: settings from the environment, the
//! data directory of the feed benchmarks, percentiles, peak RSS.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A count from the environment (`1_000_000` allowed), or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The repository root (the benches live one crate below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the feed benchmarks keep their data: FEED_BENCH_DIR, or
/// target/feed-bench.
pub fn dir() -> PathBuf {
    std::env::var("FEED_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/feed-bench"))
}

/// The `p` quantile (0..=1) of `values` (sorted in place); NaN when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

/// The peak RSS of a process (`"self"` or a pid), in MiB; 0 when unknown.
pub fn peak_rss_mib(process: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
