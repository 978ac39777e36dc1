//! One peer's whole run: W1 into a fresh store, W1b into another, its size
//! on disk after closing (W8), then every query workload against the W1b
//! store reopened.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;

use crate::dataset::Dataset;
use crate::disk::{self, DiskUsage};
use crate::peers::{Config, Ingested, Peer, PeerKind};
use crate::workload::{
    AUTHOR_FEED_LIMIT, FOLLOW_FEED_LIMIT, Latencies, PAGES, Query, Samples, hash_ids,
};

/// The timed query workloads, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Id,
    AuthorFeed,
    FollowFeed,
    FollowPage1,
    FollowPage20,
    Reactions,
    CountReactions,
}

impl Workload {
    pub const ALL: [Workload; 7] = [
        Workload::Id,
        Workload::AuthorFeed,
        Workload::FollowFeed,
        Workload::FollowPage1,
        Workload::FollowPage20,
        Workload::Reactions,
        Workload::CountReactions,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Workload::Id => "W2",
            Workload::AuthorFeed => "W3",
            Workload::FollowFeed => "W4",
            Workload::FollowPage1 => "W4 page 1",
            Workload::FollowPage20 => "W4 page 20",
            Workload::Reactions => "W5",
            Workload::CountReactions => "W6",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Workload::Id => "W2 id look-up",
            Workload::AuthorFeed => "W3 author feed (kind 1, limit 50)",
            Workload::FollowFeed => "W4 follow feed (500 authors, kind 1, limit 100)",
            Workload::FollowPage1 => "W4 paginated, page 1",
            Workload::FollowPage20 => "W4 paginated, page 20 (`until` = oldest of page 19)",
            Workload::Reactions => "W5 tag query (`#e` + kind 7)",
            Workload::CountReactions => "W6 count of reactions (`#e` + kind 7)",
        }
    }
}

/// One timed ingest.
#[derive(Debug, Clone, Copy)]
pub struct IngestRun {
    pub seconds: f64,
    pub ingested: Ingested,
}

/// Everything measured on one peer.
#[derive(Debug)]
pub struct PeerRun {
    pub kind: PeerKind,
    pub how: String,
    pub w1: Option<IngestRun>,
    pub w1b: IngestRun,
    /// Closing the W1b store (flushes, checkpoints).
    pub close_seconds: f64,
    pub disk: DiskUsage,
    pub workloads: Vec<(Workload, Latencies)>,
}

/// What the run of every peer shares.
#[derive(Debug)]
pub struct Plan<'a> {
    pub data: &'a Dataset,
    pub samples: &'a Samples,
    pub config: &'a Config,
    pub queries: usize,
    pub page_samples: usize,
    pub budget: Duration,
    pub skip_w1: bool,
    /// Samples per workload whose result ids are hashed for the cross-check.
    pub crosscheck: usize,
}

pub fn run_peer(kind: PeerKind, plan: &Plan<'_>, dir: &Path) -> anyhow::Result<PeerRun> {
    let name = kind.name();
    let w1 = if plan.skip_w1 {
        None
    } else {
        let store = dir.join("w1");
        let run = timed_ingest(kind, plan, &store, true)
            .with_context(|| format!("{name}: W1 (verified ingest)"))?;
        progress(&format!(
            "{name}: W1 verified ingest {:.1} s ({:.0} events/s)",
            run.0.seconds,
            plan.data.len() as f64 / run.0.seconds
        ));
        std::fs::remove_dir_all(&store).ok();
        Some(run.0)
    };

    let store = dir.join("w1b");
    let (w1b, close_seconds) = timed_ingest(kind, plan, &store, false)
        .with_context(|| format!("{name}: W1b (trusted ingest)"))?;
    progress(&format!(
        "{name}: W1b trusted ingest {:.1} s ({:.0} events/s), close {:.2} s",
        w1b.seconds,
        plan.data.len() as f64 / w1b.seconds,
        close_seconds
    ));
    let disk = disk::measure(&store).with_context(|| format!("measuring {}", store.display()))?;

    let mut peer = kind
        .open(&store, plan.config, false)
        .with_context(|| format!("{name}: reopening the W1b store for the queries"))?;
    let mut workloads = Vec::new();
    for workload in [
        Workload::Id,
        Workload::AuthorFeed,
        Workload::FollowFeed,
        Workload::Reactions,
        Workload::CountReactions,
    ] {
        let lat = run_workload(peer.as_mut(), plan, workload)
            .with_context(|| format!("{name}: {}", workload.key()))?;
        progress(&format!(
            "{name}: {} p50 {} p99 {} ({} samples)",
            workload.key(),
            crate::report::nanos(lat.percentile(50.0)),
            crate::report::nanos(lat.percentile(99.0)),
            lat.samples_ns.len()
        ));
        workloads.push((workload, lat));
    }
    let (page1, page20) =
        run_pagination(peer.as_mut(), plan).with_context(|| format!("{name}: W4 paginated"))?;
    progress(&format!(
        "{name}: W4 page 1 p50 {}, page 20 p50 {} ({} samples)",
        crate::report::nanos(page1.percentile(50.0)),
        crate::report::nanos(page20.percentile(50.0)),
        page20.samples_ns.len()
    ));
    workloads.push((Workload::FollowPage1, page1));
    workloads.push((Workload::FollowPage20, page20));
    peer.close().with_context(|| format!("{name}: closing"))?;
    Ok(PeerRun {
        kind,
        how: kind.how_driven(plan.config),
        w1,
        w1b,
        close_seconds,
        disk,
        workloads,
    })
}

pub fn progress(line: &str) {
    eprintln!("[peers] {line}");
}

/// Opens a fresh store, times the ingest, then times closing it.
fn timed_ingest(
    kind: PeerKind,
    plan: &Plan<'_>,
    store: &Path,
    verify: bool,
) -> anyhow::Result<(IngestRun, f64)> {
    if store.exists() {
        std::fs::remove_dir_all(store)
            .with_context(|| format!("cannot clear {}", store.display()))?;
    }
    let mut peer = kind.open(store, plan.config, verify)?;
    let start = Instant::now();
    let ingested = peer.ingest(plan.data, verify)?;
    let seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    peer.close()?;
    Ok((
        IngestRun { seconds, ingested },
        start.elapsed().as_secs_f64(),
    ))
}

fn query_for<'a>(samples: &'a Samples, workload: Workload, i: usize) -> Query<'a> {
    match workload {
        Workload::Id => Query::Id(&samples.ids[i]),
        Workload::AuthorFeed => Query::AuthorFeed {
            author: &samples.authors[i],
            limit: AUTHOR_FEED_LIMIT,
        },
        Workload::FollowFeed | Workload::FollowPage1 | Workload::FollowPage20 => {
            Query::FollowFeed {
                authors: &samples.follow_sets[i],
                limit: FOLLOW_FEED_LIMIT,
                until: None,
            }
        }
        Workload::Reactions => Query::Reactions(&samples.targets[i]),
        Workload::CountReactions => Query::CountReactions(&samples.targets[i]),
    }
}

/// Warm-up, then the timed samples, stopping at the time budget.
fn run_workload(
    peer: &mut dyn Peer,
    plan: &Plan<'_>,
    workload: Workload,
) -> anyhow::Result<Latencies> {
    let samples = plan.samples;
    let mut out = Vec::with_capacity(1 << 20);
    for i in 0..samples.warmup {
        out.clear();
        peer.query(&query_for(samples, workload, i), &mut out)?;
    }
    let mut lat = Latencies::default();
    let started = Instant::now();
    for n in 0..plan.queries {
        if started.elapsed() > plan.budget {
            lat.skipped = plan.queries - n;
            break;
        }
        let query = query_for(samples, workload, samples.warmup + n);
        out.clear();
        let t = Instant::now();
        let results = peer.query(&query, &mut out)?;
        lat.samples_ns.push(t.elapsed().as_nanos() as u64);
        lat.results.push(results);
        if n < plan.crosscheck {
            let hash = if workload == Workload::CountReactions {
                results
            } else {
                let mut ids: Vec<[u8; 32]> = heads(&out)?.into_iter().map(|h| h.id).collect();
                hash_ids(&mut ids)
            };
            lat.id_hashes.push(hash);
        }
    }
    Ok(lat)
}

/// W4 paginated: for each sampled follow set, 20 pages of 100, each with
/// `until` = created_at of the oldest event on the previous page, dropping
/// ids already seen (events of that second come again). Times page 1 and
/// page 20; page 20's cross-check hash covers every id of the 20 pages.
fn run_pagination(peer: &mut dyn Peer, plan: &Plan<'_>) -> anyhow::Result<(Latencies, Latencies)> {
    let samples = plan.samples;
    let mut out = Vec::with_capacity(1 << 20);
    let mut first = Latencies::default();
    let mut last = Latencies::default();
    let started = Instant::now();
    for n in 0..plan.page_samples {
        if started.elapsed() > plan.budget {
            first.skipped = plan.page_samples - n;
            last.skipped = plan.page_samples - n;
            break;
        }
        let authors = &samples.follow_sets[samples.warmup + n];
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        let mut until = None;
        for page in 1..=PAGES {
            out.clear();
            let query = Query::FollowFeed {
                authors,
                limit: FOLLOW_FEED_LIMIT,
                until,
            };
            let t = Instant::now();
            let results = peer.query(&query, &mut out)?;
            let ns = t.elapsed().as_nanos() as u64;
            let heads = heads(&out)?;
            let fresh = heads.iter().filter(|h| seen.insert(h.id)).count() as u64;
            if page == 1 {
                first.samples_ns.push(ns);
                first.results.push(results);
                if n < plan.crosscheck {
                    let mut ids: Vec<[u8; 32]> = heads.iter().map(|h| h.id).collect();
                    first.id_hashes.push(hash_ids(&mut ids));
                }
            }
            if page == PAGES {
                last.samples_ns.push(ns);
                last.results.push(fresh);
            }
            // A page of nothing new: the feed ran out (or more than a page
            // of events share one second); later pages would repeat it, so
            // this sample has no page 20.
            if fresh == 0 {
                break;
            }
            until = heads.iter().map(|h| h.created_at).min();
        }
        if n < plan.crosscheck {
            let mut ids: Vec<[u8; 32]> = seen.into_iter().collect();
            last.id_hashes.push(hash_ids(&mut ids));
        }
    }
    Ok((first, last))
}

/// The id and created_at of each JSON line a query wrote.
#[derive(Debug, Clone, Copy)]
struct Head {
    id: [u8; 32],
    created_at: u64,
}

fn heads(out: &[u8]) -> anyhow::Result<Vec<Head>> {
    #[derive(Deserialize)]
    struct Line<'a> {
        id: &'a str,
        created_at: u64,
    }
    out.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let parsed: Line<'_> = serde_json::from_slice(line).with_context(|| {
                format!(
                    "a result is not event JSON: {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )
            })?;
            let id = crate::dataset::hex32(parsed.id)
                .with_context(|| format!("a result has a bad id {:?}", parsed.id))?;
            Ok(Head {
                id,
                created_at: parsed.created_at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_reads_ids_and_times_of_json_lines() {
        let id = "ab".repeat(32);
        let out = format!(
            "{{\"id\":\"{id}\",\"pubkey\":\"x\",\"created_at\":5,\"kind\":1}}\n{{\"created_at\":7,\"id\":\"{id}\"}}\n"
        );
        let heads = heads(out.as_bytes()).unwrap();
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0].id, [0xab; 32]);
        assert_eq!(heads[1].created_at, 7);
        assert!(super::heads(b"not json\n").is_err());
    }
}
