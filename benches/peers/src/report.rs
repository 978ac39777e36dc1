//! The report: machine, dataset and command, a markdown table of every
//! workload per peer with its ratio to Megalith, the verification ceiling,
//! and the cross-checks; or the same as JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::dataset::Dataset;
use crate::peers::Config;
use crate::run::{PeerRun, Workload};
use crate::verify_rate::VerifyRate;
use crate::workload::Samples;

/// Where and how the run happened.
#[derive(Debug)]
pub struct Context<'a> {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub data: &'a Dataset,
    pub samples: &'a Samples,
    pub config: &'a Config,
    pub queries: usize,
    pub page_samples: usize,
    pub budget_seconds: u64,
    pub durability: &'static str,
    pub verify: VerifyRate,
}

#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub filesystem: String,
}

impl Machine {
    /// Reads /proc; what it cannot read says "unknown".
    pub fn probe(work: &Path) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or("unknown".into(), |m| m.trim().to_string());
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel: if kernel.is_empty() {
                "unknown".into()
            } else {
                kernel
            },
            filesystem: filesystem_of(work),
        }
    }
}

/// The mount (device and type) holding `path`, from /proc/mounts.
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (device, point, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{kind} ({device} on {point})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or("unknown".into(), |(_, fs)| fs)
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

/// The command line, quoted where a shell would need it.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "'\"$`\\*?&;|<>()".contains(c))
            {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "850 ns", "12.3 µs", "4.56 ms", "1.23 s", or "n/a".
pub fn nanos(ns: Option<u64>) -> String {
    let Some(ns) = ns else { return "n/a".into() };
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{} µs", short(ns / 1e3))
    } else if ns < 1e9 {
        format!("{} ms", short(ns / 1e6))
    } else {
        format!("{} s", short(ns / 1e9))
    }
}

fn short(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    }
}

fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// One table row: a value per peer (lower is better), shown with `show` and,
/// beside every peer but the first, the ratio to the first.
fn row(label: &str, values: &[Option<f64>], show: impl Fn(f64) -> String) -> String {
    let mut line = format!("| {label} |");
    let reference = values.first().copied().flatten();
    for (i, value) in values.iter().enumerate() {
        let cell = match (value, reference) {
            (None, _) => "n/a".to_string(),
            (Some(v), Some(r)) if i > 0 && r > 0.0 => format!("{} (×{})", show(*v), short(v / r)),
            (Some(v), _) => show(*v),
        };
        let _ = write!(line, " {cell} |");
    }
    line
}

fn latency(run: &PeerRun, workload: Workload, p: f64) -> Option<f64> {
    run.workloads
        .iter()
        .find(|(w, _)| *w == workload)
        .and_then(|(_, l)| l.percentile(p))
        .map(|ns| ns as f64)
}

/// The markdown report.
pub fn markdown(ctx: &Context<'_>, runs: &[PeerRun], warnings: &[String]) -> String {
    let data = ctx.data;
    let events = data.len() as f64;
    let mut md = String::new();
    let _ = writeln!(md, "# Megalith against its peers\n");
    let _ = writeln!(md, "- date: {} (UTC)", ctx.date);
    let _ = writeln!(md, "- command: `{}`", ctx.command);
    let m = &ctx.machine;
    let _ = writeln!(
        md,
        "- machine: {}, {} cores, {:.1} GiB RAM, Linux {}, store directories on {}",
        m.cpu, m.cores, m.memory_gib, m.kernel, m.filesystem
    );
    let _ = writeln!(
        md,
        "- dataset: `{}`: {} events, {} file, {} of event JSON ({:.0} B per event); {} malformed lines and {} duplicate ids skipped",
        data.path.display(),
        data.len(),
        bytes(data.file_bytes as f64),
        bytes(data.json_bytes as f64),
        data.json_bytes as f64 / events,
        data.malformed,
        data.duplicates
    );
    let s = ctx.samples;
    let _ = writeln!(
        md,
        "- queries: {} timed samples per workload after {} warm-up queries, each workload stopped after {} s; W4 paginated: {} follow sets × 20 pages. Parameters drawn from the dataset, the same list for every peer: W2 uniform event ids; W3 the most prolific authors of kind 1 notes (the least prolific sampled has {}); W4 {}; W5/W6 the notes with the most kind 7 reactions (up to {})",
        ctx.queries,
        s.warmup,
        ctx.budget_seconds,
        ctx.page_samples,
        s.min_author_notes,
        s.follow_source,
        s.max_reactions
    );
    let _ = writeln!(
        md,
        "- ingest: from the JSON lines in memory to every event queryable, parsing included; a fresh store for W1 and for W1b; batches of {}, {} writer thread(s) where the peer takes batches",
        ctx.config.batch, ctx.config.writers
    );
    let _ = writeln!(md, "- durability class: {}", ctx.durability);
    let _ = writeln!(
        md,
        "- queries return each event's NIP-01 JSON (appended to a reused buffer), as a relay sends it\n"
    );
    let _ = writeln!(md, "## How each peer is driven\n");
    for run in runs {
        let _ = writeln!(md, "- **{}**: {}", run.kind.name(), run.how);
    }

    let reference = runs.first().map_or("", |r| r.kind.name());
    let _ = writeln!(
        md,
        "\n## Results\n\nLower is better in every row; (×N) is that peer's figure divided by {reference}'s, so above 1 means {reference} is ahead.\n"
    );
    let _ = write!(md, "| workload |");
    for run in runs {
        let _ = write!(md, " {} |", run.kind.name());
    }
    let _ = write!(md, "\n|---|");
    for _ in runs {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    let per_event = |s: f64| format!("{} µs/event ({})", short(s), rate(1e6 / s));
    let w1: Vec<Option<f64>> = runs
        .iter()
        .map(|r| r.w1.map(|w| w.seconds * 1e6 / events))
        .collect();
    let _ = writeln!(
        md,
        "{}",
        row("W1 ingest, signatures checked", &w1, per_event)
    );
    let w1b: Vec<Option<f64>> = runs
        .iter()
        .map(|r| Some(r.w1b.seconds * 1e6 / events))
        .collect();
    let _ = writeln!(md, "{}", row("W1b ingest, trusted", &w1b, per_event));
    let close: Vec<Option<f64>> = runs.iter().map(|r| Some(r.close_seconds)).collect();
    let _ = writeln!(
        md,
        "{}",
        row("close after W1b (flush; not in W1b)", &close, |s| format!(
            "{s:.2} s"
        ))
    );
    for workload in Workload::ALL {
        for (p, name) in [(50.0, "p50"), (99.0, "p99")] {
            let values: Vec<Option<f64>> = runs.iter().map(|r| latency(r, workload, p)).collect();
            let _ = writeln!(
                md,
                "{}",
                row(
                    &format!("{} {name}", workload.label()),
                    &values,
                    |ns| nanos(Some(ns as u64))
                )
            );
        }
    }
    let depth: Vec<String> = runs
        .iter()
        .map(|r| {
            match (
                latency(r, Workload::FollowPage20, 50.0),
                latency(r, Workload::FollowPage1, 50.0),
            ) {
                (Some(a), Some(b)) if b > 0.0 => format!("{}×", short(a / b)),
                _ => "n/a".into(),
            }
        })
        .collect();
    let _ = writeln!(md, "| W4 page 20 ÷ page 1 (p50) | {} |", depth.join(" | "));
    let json = data.json_bytes as f64;
    let allocated: Vec<Option<f64>> = runs.iter().map(|r| Some(r.disk.allocated as f64)).collect();
    let _ = writeln!(
        md,
        "{}",
        row(
            "W8 bytes on disk per event (allocated, like du)",
            &allocated,
            |b| format!("{} B ({}× JSON)", short(b / events), short(b / json))
        )
    );
    let apparent: Vec<Option<f64>> = runs.iter().map(|r| Some(r.disk.apparent as f64)).collect();
    let _ = writeln!(
        md,
        "{}",
        row(
            "W8 bytes per event (apparent size)",
            &apparent,
            |b| format!("{} B ({}× JSON)", short(b / events), short(b / json))
        )
    );
    let total: Vec<String> = runs
        .iter()
        .map(|r| bytes(r.disk.allocated as f64))
        .collect();
    let _ = writeln!(md, "| W8 store size (allocated) | {} |", total.join(" | "));
    let _ = writeln!(
        md,
        "| raw event JSON | {} |",
        vec![bytes(json); runs.len()].join(" | ")
    );

    let v = &ctx.verify;
    let ceiling = v.event_per_sec * m.cores as f64;
    let _ = writeln!(md, "\n## Signature checks\n");
    let _ = writeln!(
        md,
        "One core, {} events of the dataset cycled: BIP-340 verify (secp256k1 crate, key and signature parsed each time) {}; full event check (Megalith `Event::verify`: sha256 id + BIP-340) {}{}. Ceiling for verified ingest on {} cores: {}.\n",
        v.events,
        rate(v.bip340_per_sec),
        rate(v.event_per_sec),
        if v.invalid > 0 {
            format!(" ({} sampled events did not verify)", v.invalid)
        } else {
            String::new()
        },
        m.cores,
        rate(ceiling)
    );
    let nostrdb_w1 = runs
        .iter()
        .find(|r| r.kind.name() == "nostrdb")
        .and_then(|r| r.w1)
        .map(|w| events / w.seconds);
    for run in runs {
        if let Some(w) = run.w1 {
            let per_sec = events / w.seconds;
            let _ = writeln!(
                md,
                "- {}: W1 {} = {:.0}% of the ceiling{}",
                run.kind.name(),
                rate(per_sec),
                100.0 * per_sec / ceiling,
                match nostrdb_w1 {
                    Some(n) if run.kind.name() != "nostrdb" =>
                        format!(", {}× nostrdb's rate", short(per_sec / n)),
                    _ => String::new(),
                }
            );
        }
    }

    let _ = writeln!(md, "\n## Cross-checks\n");
    if warnings.is_empty() {
        let _ = writeln!(
            md,
            "Every peer stored every event, and returned the same number of results and the same ids (first samples of each workload) as {reference}."
        );
    } else {
        for w in warnings {
            let _ = writeln!(md, "- WARNING: {w}");
        }
    }
    md
}

/// Compares what the peers stored and returned with the first peer.
pub fn crosscheck(runs: &[PeerRun], data: &Dataset, config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let expected = data.len() as u64;
    for run in runs {
        for (name, ingest) in [("W1", run.w1), ("W1b", Some(run.w1b))] {
            if let Some(i) = ingest.map(|w| w.ingested)
                && i.stored != expected
            {
                warnings.push(format!(
                    "{} {name}: stored {} of {expected} events ({} refused, {} invalid)",
                    run.kind.name(),
                    i.stored,
                    i.refused,
                    i.invalid
                ));
            }
        }
        for (workload, lat) in &run.workloads {
            if lat.skipped > 0 {
                warnings.push(format!(
                    "{} {}: time budget reached, {} samples left out",
                    run.kind.name(),
                    workload.key(),
                    lat.skipped
                ));
            }
            if matches!(workload, Workload::Reactions | Workload::CountReactions)
                && run.kind.name() == "nostrdb"
                && lat
                    .results
                    .iter()
                    .any(|n| *n as usize >= config.unlimited_capacity)
            {
                warnings.push(format!(
                    "nostrdb {}: a query filled its result capacity {} (results may be cut)",
                    workload.key(),
                    config.unlimited_capacity
                ));
            }
        }
    }
    // Why nostrdb's pages differ, so the warning is not read as a harness bug.
    let why = |peer: &PeerRun, workload: Workload| {
        if peer.kind.name() == "nostrdb"
            && matches!(workload, Workload::FollowPage1 | Workload::FollowPage20)
        {
            " (nostrdb leaves out events at exactly `until`, NIP-01 includes them)"
        } else {
            ""
        }
    };
    let Some((reference, others)) = runs.split_first() else {
        return warnings;
    };
    for other in others {
        for (workload, lat) in &other.workloads {
            let Some((_, base)) = reference.workloads.iter().find(|(w, _)| w == workload) else {
                continue;
            };
            if *workload != Workload::FollowPage20 || base.results.len() == lat.results.len() {
                let differ: Vec<usize> = (0..base.results.len().min(lat.results.len()))
                    .filter(|i| base.results[*i] != lat.results[*i])
                    .collect();
                if let Some(first) = differ.first() {
                    warnings.push(format!(
                        "{}: {} returned a different number of results than {} in {} of {} samples (first: sample {}, {} vs {}){}",
                        workload.key(),
                        other.kind.name(),
                        reference.kind.name(),
                        differ.len(),
                        base.results.len().min(lat.results.len()),
                        first,
                        lat.results[*first],
                        base.results[*first],
                        why(other, *workload)
                    ));
                }
            } else {
                warnings.push(format!(
                    "{}: {} reached page 20 in {} samples, {} in {}",
                    workload.key(),
                    other.kind.name(),
                    lat.results.len(),
                    reference.kind.name(),
                    base.results.len()
                ));
            }
            let differ = (0..base.id_hashes.len().min(lat.id_hashes.len()))
                .filter(|i| base.id_hashes[*i] != lat.id_hashes[*i])
                .count();
            if differ > 0 {
                warnings.push(format!(
                    "{}: {} returned different event ids than {} in {} of the {} samples compared{}",
                    workload.key(),
                    other.kind.name(),
                    reference.kind.name(),
                    differ,
                    base.id_hashes.len().min(lat.id_hashes.len()),
                    why(other, *workload)
                ));
            }
        }
    }
    warnings
}

/// The same results as JSON.
pub fn json(ctx: &Context<'_>, runs: &[PeerRun], warnings: &[String]) -> Value {
    let peers: Vec<Value> = runs
        .iter()
        .map(|r| {
            let ingest = |w: Option<crate::run::IngestRun>| {
                w.map(|w| {
                    json!({
                        "seconds": w.seconds,
                        "events_per_second": ctx.data.len() as f64 / w.seconds,
                        "stored": w.ingested.stored,
                        "refused": w.ingested.refused,
                        "invalid": w.ingested.invalid,
                    })
                })
            };
            let workloads: serde_json::Map<String, Value> = r
                .workloads
                .iter()
                .map(|(w, l)| {
                    (
                        w.key().to_string(),
                        json!({
                            "samples": l.samples_ns.len(),
                            "skipped": l.skipped,
                            "p50_ns": l.percentile(50.0),
                            "p99_ns": l.percentile(99.0),
                            "mean_ns": l.mean(),
                            "results_total": l.results.iter().sum::<u64>(),
                        }),
                    )
                })
                .collect();
            json!({
                "peer": r.kind.name(),
                "driven": r.how,
                "w1": ingest(r.w1),
                "w1b": ingest(Some(r.w1b)),
                "close_seconds": r.close_seconds,
                "w8": {
                    "allocated_bytes": r.disk.allocated,
                    "apparent_bytes": r.disk.apparent,
                    "files": r.disk.files,
                    "allocated_per_event": r.disk.allocated as f64 / ctx.data.len() as f64,
                    "allocated_over_json": r.disk.allocated as f64 / ctx.data.json_bytes as f64,
                },
                "workloads": workloads,
            })
        })
        .collect();
    let m = &ctx.machine;
    json!({
        "date": ctx.date,
        "command": ctx.command,
        "machine": {
            "cpu": m.cpu, "cores": m.cores, "memory_gib": m.memory_gib,
            "kernel": m.kernel, "filesystem": m.filesystem,
        },
        "dataset": {
            "file": ctx.data.path.display().to_string(),
            "events": ctx.data.len(),
            "file_bytes": ctx.data.file_bytes,
            "json_bytes": ctx.data.json_bytes,
            "malformed_lines": ctx.data.malformed,
            "duplicates": ctx.data.duplicates,
        },
        "settings": {
            "queries": ctx.queries,
            "warmup": ctx.samples.warmup,
            "page_samples": ctx.page_samples,
            "budget_seconds": ctx.budget_seconds,
            "batch": ctx.config.batch,
            "writers": ctx.config.writers,
            "durability": ctx.durability,
            "follow_sets": ctx.samples.follow_source,
        },
        "signature_checks": {
            "events": ctx.verify.events,
            "bip340_per_second_one_core": ctx.verify.bip340_per_sec,
            "event_verify_per_second_one_core": ctx.verify.event_per_sec,
            "ceiling_per_second": ctx.verify.event_per_sec * m.cores as f64,
        },
        "peers": peers,
        "warnings": warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations_read_well() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
        assert_eq!(nanos(Some(850)), "850 ns");
        assert_eq!(nanos(Some(12_300)), "12.3 µs");
        assert_eq!(nanos(Some(4_560_000)), "4.56 ms");
        assert_eq!(nanos(None), "n/a");
    }

    #[test]
    fn rows_carry_the_ratio_to_the_first_peer() {
        let r = row("x", &[Some(2.0), Some(5.0), None], |v| format!("{v}"));
        assert_eq!(r, "| x | 2 | 5 (×2.50) | n/a |");
    }
}
