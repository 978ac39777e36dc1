//! A read replica's feed from its primary (`megalith serve --follow URL`):
//! the primary's live stream (a mirror of everything from an hour before
//! the start), and a NIP-77 sync once that stream is live and then every
//! `resync` (docs/server.md, "Replicas").
//!
//! Why both: the live stream brings each new event within the primary's
//! delivery time, but a REQ's `since` keeps out events with old
//! timestamps, and a stream that was down (the primary restarting) may
//! have missed some. The sync after the stream is live covers everything
//! the primary held before it; each later sync covers what the stream
//! could not, and one runs a moment after the stream is cut. No event the
//! primary holds is missed for longer than one `resync`.

use std::sync::Arc;
use std::time::Duration;

use megalith::{EventStore, Filter};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::mirror::{self, MirrorOptions, Phase, Progress};
use crate::pool::PoolHandle;
use crate::stats::now_secs;
use crate::sync::{self, SyncOptions};
use crate::{RelayUrl, Sink};

/// How long after the stream reports a disconnect the sync runs (the
/// pool reconnects within about a second).
const AFTER_DISCONNECT: Duration = Duration::from_secs(2);

/// Disconnects and other errors the live stream has reported.
fn stream_errors(progress: &Progress) -> u64 {
    progress.snapshot().iter().map(|r| r.errors).sum()
}

/// How far before the start the live stream's `since` lies.
pub const LIVE_MARGIN_SECS: u64 = 3_600;

/// How a replica follows its primary.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub primary: RelayUrl,
    /// Time between syncs. Default 600 s.
    pub resync: Duration,
    /// Longest wait for the live stream before the first sync runs anyway.
    /// Default 30 s.
    pub live_wait: Duration,
}

impl ReplicaOptions {
    pub fn new(primary: RelayUrl) -> ReplicaOptions {
        ReplicaOptions {
            primary,
            resync: Duration::from_secs(600),
            live_wait: Duration::from_secs(30),
        }
    }
}

/// Follows the primary until `stop`: the live stream as a task, the
/// syncs here. A failed sync is logged and tried again after 5 s,
/// doubling up to `resync`.
pub async fn run(
    store: Arc<EventStore>,
    pool: PoolHandle,
    sink: Sink,
    options: ReplicaOptions,
    mut stop: watch::Receiver<bool>,
) {
    let primary = options.primary.clone();
    // An hour back: events whose created_at is a little behind the clock
    // (a client's skewed clock, a relay that forwards late) still match
    // the live REQ; the first page of the stream brings that hour again,
    // which the store drops as duplicates.
    let mut filter = Filter::new();
    filter.since = Some(now_secs().saturating_sub(LIVE_MARGIN_SECS));
    let mut live = MirrorOptions::new(vec![primary.clone()], filter, Default::default());
    // The syncs make resume files unneeded: each start syncs first.
    live.persist = false;
    // The mirror's live REQ starts at its start less this margin (else a
    // minute): the same hour.
    live.resume_margin = LIVE_MARGIN_SECS;
    let progress = Progress::default();
    let stream = {
        let (stop, progress) = (stop.clone(), progress.clone());
        tokio::spawn(async move { mirror::run(pool, sink, live, stop, progress).await })
    };
    // The first sync waits for the stream to be live, so that what the
    // primary commits after the sync's snapshot comes by the stream.
    let waited = tokio::time::Instant::now();
    while !progress.snapshot().iter().any(|r| r.phase == Phase::Live)
        && waited.elapsed() < options.live_wait
        && !*stop.borrow()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut retry = Duration::from_secs(5);
    while !*stop.borrow() {
        let wait = match sync::sync(
            Arc::clone(&store),
            &primary,
            Filter::new(),
            &SyncOptions::default(),
        )
        .await
        {
            Ok(report) => {
                info!(
                    primary = %primary,
                    stored = report.stored,
                    only_there = report.only_there,
                    only_here = report.only_here,
                    seconds = report.seconds,
                    "replica synced with its primary"
                );
                retry = Duration::from_secs(5);
                options.resync
            }
            Err(e) => {
                warn!(primary = %primary, error = %e, "replica sync with its primary failed; trying again");
                let wait = retry.min(options.resync);
                retry = (retry * 2).min(options.resync);
                wait
            }
        };
        let disconnects = stream_errors(&progress);
        let synced = wait == options.resync;
        let next = tokio::time::Instant::now() + wait;
        // Until the next sync: early, a moment after the stream reports a
        // disconnect (what the primary took meanwhile may be more than its
        // answer to the stream's REQ again holds).
        while tokio::time::Instant::now() < next && !*stop.borrow() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => {}
            }
            // After a failed sync the backoff rules, not the stream.
            if synced && stream_errors(&progress) > disconnects {
                info!(primary = %primary, "the live stream was cut; syncing again");
                tokio::select! {
                    () = tokio::time::sleep(AFTER_DISCONNECT) => {}
                    _ = stop.changed() => {}
                }
                break;
            }
        }
    }
    match stream.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(primary = %primary, error = %e, "the replica's live stream failed"),
        Err(e) => warn!(primary = %primary, error = %e, "the replica's live stream task failed"),
    }
}
