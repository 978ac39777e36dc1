//! Mirrors: copy what other relays hold for a filter into the store, then
//! keep copying what arrives (strfry's `router`/`stream`).
//!
//! Per (relay, filter): a backfill walks `until` backwards in pages (the
//! next page's `until` is the oldest `created_at` of the page, and the ids
//! of that second already stored are dropped when they come again: a page
//! boundary never skips events sharing a second), until a page brings
//! nothing new; then live, from the time the mirror first started (or the
//! newest live event stored) minus a margin. The resume point is a small
//! JSON file per (relay, filter) in `DIR/mirror/`, written atomically after
//! the page's events are in the store, so a restart re-reads at most one
//! page and misses nothing that arrived while it was down.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use megalith::Filter;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::files::write_atomically;
use crate::pool::{PoolEvent, PoolHandle, Subscription};
use crate::sink::{Sink, Tally};
use crate::stats::now_secs;
use crate::url::RelayUrl;

/// What to mirror and how.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    pub relays: Vec<RelayUrl>,
    /// What to copy. Its `since` and `until` bound the backfill; its
    /// `limit` is ignored (pages are `page_size`).
    pub filter: Filter,
    /// End when every relay has finished its backfill (no live phase).
    pub once: bool,
    /// Events asked for per page (default 500).
    pub page_size: usize,
    /// Silence after which a page is taken as ended by a relay that never
    /// sends EOSE (default 15 s).
    pub page_timeout: Duration,
    /// Failed pages in a row after which a relay is given up (default 5;
    /// without `once`, the live phase keeps retrying through the pool).
    pub max_failures: u32,
    /// Seconds subtracted from the live resume point (default 60).
    pub resume_margin: u64,
    /// Where the resume files live (`DIR/mirror`).
    pub state_dir: PathBuf,
    /// Keep resume files (default true; a feed job's short-lived mirrors
    /// do not).
    pub persist: bool,
    /// The first page's size, when it should differ (a feed asks for one
    /// screen first, then deeper pages).
    pub first_page_size: Option<usize>,
    /// Pages after which the backfill counts as complete (default: none,
    /// until a page brings nothing new).
    pub max_pages: Option<u64>,
    /// Count into this tally instead of one per relay (a feed job sums its
    /// mirrors).
    pub tally: Option<Arc<Tally>>,
}

impl MirrorOptions {
    pub fn new(relays: Vec<RelayUrl>, filter: Filter, state_dir: PathBuf) -> MirrorOptions {
        MirrorOptions {
            relays,
            filter,
            once: false,
            page_size: 500,
            page_timeout: Duration::from_secs(15),
            max_failures: 5,
            resume_margin: 60,
            state_dir,
            persist: true,
            first_page_size: None,
            max_pages: None,
            tally: None,
        }
    }
}

/// Where one relay's mirror is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Backfill,
    Live,
    Done,
    Failed,
    Stopped,
}

/// One relay's progress and fate.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    pub relay: String,
    pub phase: Phase,
    pub pages: u64,
    pub received: u64,
    pub stored: u64,
    pub duplicate: u64,
    pub invalid: u64,
    /// Valid, not stored: superseded, deleted, expired.
    pub refused: u64,
    /// Events the relay sent that the filter does not match (not stored).
    pub off_filter: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// The backfill's next `until` (where a restart goes on).
    pub backfill_until: Option<u64>,
}

/// The resume point of one (relay, filter), as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ResumeState {
    relay: String,
    filter: String,
    /// The next page's `until` (`None`: from the top).
    backfill_until: Option<u64>,
    /// Ids (hex) already stored at second `backfill_until`.
    seen_at_until: Vec<String>,
    backfill_done: bool,
    /// A second holding more than a page of events: read next with
    /// `since = until = second` and no limit, then the walk goes on below it.
    #[serde(default)]
    sweep: Option<u64>,
    /// Live resumes from here minus the margin: when the mirror first
    /// started, then the newest live event stored.
    live_since: u64,
    pages: u64,
}

/// A running mirror's shared view, for progress output.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    relays: Arc<Mutex<Vec<RelayReport>>>,
}

impl Progress {
    pub fn snapshot(&self) -> Vec<RelayReport> {
        self.relays.lock().clone()
    }

    fn set(&self, index: usize, report: RelayReport) {
        let mut relays = self.relays.lock();
        if relays.len() <= index {
            relays.resize(index + 1, report.clone());
        }
        relays[index] = report;
    }
}

/// Runs the mirror until every relay is done (with `once`), failed, or
/// `stop` turns true. Returns each relay's report.
pub async fn run(
    pool: PoolHandle,
    sink: Sink,
    options: MirrorOptions,
    stop: watch::Receiver<bool>,
    progress: Progress,
) -> Result<Vec<RelayReport>, String> {
    if options.persist {
        std::fs::create_dir_all(&options.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", options.state_dir.display()))?;
    }
    let options = Arc::new(options);
    let mut tasks = Vec::new();
    let mut relays = options.relays.clone();
    relays.sort();
    relays.dedup();
    for (index, relay) in relays.into_iter().enumerate() {
        let mirror = RelayMirror::new(
            relay,
            index,
            options.clone(),
            pool.clone(),
            sink.clone(),
            progress.clone(),
        )?;
        tasks.push(tokio::spawn(mirror.run(stop.clone())));
    }
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(
            task.await
                .map_err(|e| format!("a mirror task failed: {e}"))?,
        );
    }
    Ok(reports)
}

struct RelayMirror {
    relay: RelayUrl,
    index: usize,
    options: Arc<MirrorOptions>,
    pool: PoolHandle,
    sink: Sink,
    progress: Progress,
    tally: Arc<Tally>,
    state: ResumeState,
    path: PathBuf,
    errors: u64,
    off_filter: u64,
    last_error: Option<String>,
    /// The last error the pool reported for the relay (a failed dial, a
    /// drop), to say why pages go unanswered.
    last_relay_error: Option<String>,
    /// The newest resume point being saved behind the pages (each save
    /// waits for the one before it).
    saving: Option<tokio::task::JoinHandle<Result<(), String>>>,
    /// Pages stored and saved behind the one being read: at most
    /// [`PAGES_AHEAD`].
    behind: Arc<tokio::sync::Semaphore>,
}

/// How many pages may be waiting to be stored while the next is read: the
/// store's batches then hold more than one page, and the verifiers are not
/// left idle while the relay answers.
const PAGES_AHEAD: usize = 2;

enum PageEnd {
    Eose,
    Silent,
    Closed(String),
    Stopped,
}

impl RelayMirror {
    fn new(
        relay: RelayUrl,
        index: usize,
        options: Arc<MirrorOptions>,
        pool: PoolHandle,
        sink: Sink,
        progress: Progress,
    ) -> Result<RelayMirror, String> {
        let mut filter = options.filter.clone();
        filter.limit = None;
        let filter_json = filter.to_json();
        let path = options
            .state_dir
            .join(format!("{:016x}.json", key(&relay, &filter_json)));
        let existing = if options.persist {
            std::fs::read(&path)
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        };
        let state = match existing {
            Ok(bytes) => {
                let state: ResumeState = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "{}: not a mirror resume file ({e}); move it away to start over",
                        path.display()
                    )
                })?;
                if state.relay != relay.as_str() || state.filter != filter_json {
                    return Err(format!(
                        "{}: belongs to another relay or filter; move it away to start over",
                        path.display()
                    ));
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ResumeState {
                relay: relay.as_str().to_string(),
                filter: filter_json,
                backfill_until: None,
                seen_at_until: Vec::new(),
                backfill_done: false,
                sweep: None,
                live_since: now_secs(),
                pages: 0,
            },
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let tally = options.tally.clone().unwrap_or_default();
        Ok(RelayMirror {
            relay,
            index,
            options,
            pool,
            sink,
            progress,
            tally,
            state,
            path,
            errors: 0,
            off_filter: 0,
            last_error: None,
            last_relay_error: None,
            saving: None,
            behind: Arc::new(tokio::sync::Semaphore::new(PAGES_AHEAD)),
        })
    }

    fn report(&self, phase: Phase) -> RelayReport {
        let t = &self.tally;
        RelayReport {
            relay: self.relay.as_str().to_string(),
            phase,
            pages: self.state.pages,
            received: t.received.load(Ordering::Relaxed),
            stored: t.stored.load(Ordering::Relaxed),
            duplicate: t.duplicate.load(Ordering::Relaxed),
            invalid: t.invalid.load(Ordering::Relaxed),
            refused: t.refused.load(Ordering::Relaxed),
            off_filter: self.off_filter,
            errors: self.errors,
            last_error: self.last_error.clone(),
            backfill_until: self.state.backfill_until,
        }
    }

    fn publish(&self, phase: Phase) {
        self.progress.set(self.index, self.report(phase));
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.last_error = Some(what);
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) -> RelayReport {
        let phase = match self.backfill(&mut stop).await {
            Ok(true) if self.options.once => Phase::Done,
            Ok(true) => match self.live(&mut stop).await {
                Ok(()) => Phase::Stopped,
                Err(e) => {
                    self.error(e);
                    Phase::Failed
                }
            },
            Ok(false) => Phase::Stopped,
            Err(e) => {
                self.error(e);
                Phase::Failed
            }
        };
        let report = self.report(phase);
        self.progress.set(self.index, report.clone());
        report
    }

    /// Ok(true): the backfill is complete; Ok(false): stopped.
    async fn backfill(&mut self, stop: &mut watch::Receiver<bool>) -> Result<bool, String> {
        let mut failures = 0;
        while !self.state.backfill_done {
            self.publish(Phase::Backfill);
            if *stop.borrow() {
                return Ok(false);
            }
            if self
                .options
                .max_pages
                .is_some_and(|max| self.state.pages >= max)
            {
                self.state.backfill_done = true;
                break;
            }
            let sweep = self.state.sweep;
            let page_size = match self.options.first_page_size {
                Some(first) if self.state.pages == 0 && sweep.is_none() => first,
                _ => self.options.page_size,
            }
            .max(1);
            let mut page = self.options.filter.clone();
            if let Some(second) = sweep {
                // The relay's own maximum answer for one second.
                page.limit = None;
                page.since = Some(page.since.map_or(second, |s| s.max(second)));
                page.until = Some(second);
            } else {
                page.limit = Some(page_size);
                if let Some(until) = self.state.backfill_until {
                    page.until = Some(page.until.map_or(until, |u| u.min(until)));
                }
            }
            let top = page.until;
            let mut sub = self
                .pool
                .subscribe(vec![self.relay.clone()], vec![page.clone()], 1024)
                .await
                .map_err(|e| e.to_string())?;
            let seen: HashSet<String> = self.state.seen_at_until.iter().cloned().collect();
            let mut received: Vec<(u64, String)> = Vec::new();
            let mut fresh = 0usize;
            let end = self
                .page(&mut sub, &page, &seen, &mut received, &mut fresh, stop)
                .await;
            drop(sub);
            match end {
                PageEnd::Stopped => {
                    self.settle().await?;
                    return Ok(false);
                }
                PageEnd::Closed(reason) => {
                    failures += 1;
                    self.error(format!("the relay closed the page's REQ: {reason}"));
                    if failures >= self.options.max_failures {
                        return Err(format!("{failures} pages in a row failed; last: {reason}"));
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    continue;
                }
                PageEnd::Silent if received.is_empty() => {
                    failures += 1;
                    let before = self.last_relay_error.clone();
                    self.error(format!(
                        "no answer to a page within {} ms",
                        self.options.page_timeout.as_millis()
                    ));
                    if failures >= self.options.max_failures {
                        return Err(match before {
                            Some(last) => format!(
                                "{failures} pages in a row went unanswered; last error: {last}"
                            ),
                            None => format!("{failures} pages in a row went unanswered"),
                        });
                    }
                    continue;
                }
                PageEnd::Silent => {
                    self.error(format!(
                        "no EOSE within {} ms of the last event; the page is taken as ended",
                        self.options.page_timeout.as_millis()
                    ));
                }
                PageEnd::Eose => {}
            }
            failures = 0;
            self.state.pages += 1;
            match sweep {
                Some(second) => {
                    self.state.sweep = None;
                    self.state.seen_at_until.clear();
                    self.state.backfill_until = second.checked_sub(1);
                    let floor = self.options.filter.since.unwrap_or(0);
                    if second == 0 || second <= floor {
                        self.state.backfill_done = true;
                    }
                }
                None => self.next_page(top, page_size, &received, fresh),
            }
            self.save_behind().await?;
        }
        self.settle().await?;
        self.publish(Phase::Backfill);
        Ok(true)
    }

    /// Saves the resume point once the sink has stored everything sent so
    /// far, in the background: the next page is asked for meanwhile, so the
    /// relay's answer and the store's verification overlap. Saves stay in
    /// order (each waits for the one before), and an error surfaces at the
    /// next page.
    async fn save_behind(&mut self) -> Result<(), String> {
        let permit = Arc::clone(&self.behind)
            .acquire_owned()
            .await
            .map_err(|e| format!("saving the resume point: {e}"))?;
        if self.saving.as_ref().is_some_and(|p| p.is_finished())
            && let Some(previous) = self.saving.take()
        {
            // A save's error surfaces at the next page.
            previous
                .await
                .map_err(|e| format!("saving the resume point: {e}"))??;
        }
        let previous = self.saving.take();
        let sink = self.sink.clone();
        let (persist, path) = (self.options.persist, self.path.clone());
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| e.to_string())?;
        self.saving = Some(tokio::spawn(async move {
            let _permit = permit;
            sink.flush().await?;
            // Saves land in order: this one after the one before it.
            if let Some(previous) = previous {
                previous
                    .await
                    .map_err(|e| format!("saving the resume point: {e}"))??;
            }
            if persist {
                // fsync and rename: off the async workers.
                tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
                    .await
                    .map_err(|e| format!("saving the resume point: {e}"))??;
            }
            Ok(())
        }));
        Ok(())
    }

    /// Waits for the background save, then stores and saves what is left.
    async fn settle(&mut self) -> Result<(), String> {
        if let Some(previous) = self.saving.take() {
            previous
                .await
                .map_err(|e| format!("saving the resume point: {e}"))??;
        }
        self.sink.flush().await?;
        self.save()
    }

    /// Moves the resume point past one page.
    fn next_page(
        &mut self,
        top: Option<u64>,
        page_size: usize,
        received: &[(u64, String)],
        fresh: usize,
    ) {
        let Some(oldest) = received.iter().map(|(t, _)| *t).min() else {
            self.state.backfill_done = true;
            return;
        };
        let full = received.len() >= page_size;
        let crowded = full && top == Some(oldest) && received.iter().all(|(t, _)| *t == oldest);
        if fresh == 0 && !crowded {
            self.state.backfill_done = true;
            return;
        }
        let mut seen: Vec<String> = received
            .iter()
            .filter(|(t, _)| *t == oldest)
            .map(|(_, id)| id.clone())
            .collect();
        if self.state.backfill_until == Some(oldest) {
            seen.extend(self.state.seen_at_until.iter().cloned());
        }
        seen.sort();
        seen.dedup();
        self.state.backfill_until = Some(oldest);
        self.state.seen_at_until = seen;
        if crowded {
            // A whole page within one second: `until` cannot move inside
            // it, so that second is read on its own next.
            self.state.sweep = Some(oldest);
        }
    }

    /// Reads one page into the sink.
    async fn page(
        &mut self,
        sub: &mut Subscription,
        filter: &Filter,
        seen: &HashSet<String>,
        received: &mut Vec<(u64, String)>,
        fresh: &mut usize,
        stop: &mut watch::Receiver<bool>,
    ) -> PageEnd {
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(self.options.page_timeout, sub.recv()) => next,
                _ = stop.changed() => return PageEnd::Stopped,
            };
            let Ok(next) = next else {
                return PageEnd::Silent;
            };
            match next {
                None => return PageEnd::Closed("the pool stopped".to_string()),
                Some(PoolEvent::Event { relay, event, .. }) => {
                    if !filter.matches_event(&event) {
                        self.off_filter += 1;
                        continue;
                    }
                    let id = event.id.to_hex();
                    received.push((event.created_at, id.clone()));
                    if event.created_at == filter.until.unwrap_or(u64::MAX) && seen.contains(&id) {
                        continue; // stored by the previous page
                    }
                    *fresh += 1;
                    self.sink.send(relay, event, &self.tally).await;
                }
                Some(PoolEvent::Eose { .. }) => return PageEnd::Eose,
                Some(PoolEvent::Closed { reason, .. }) => return PageEnd::Closed(reason),
                Some(PoolEvent::Error { what, .. }) => {
                    self.last_relay_error = Some(what.clone());
                    self.error(what);
                }
                Some(PoolEvent::Disconnected { why, .. }) => {
                    self.last_relay_error = Some(why.clone());
                    self.error(why);
                }
                Some(_) => {}
            }
            if received.len().is_multiple_of(256) {
                self.publish(Phase::Backfill);
            }
        }
    }

    /// Live until stopped: the filter from the resume point.
    async fn live(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        // A relay that CLOSEs the live REQ for a passing reason (`error:`:
        // shutting down, a failure; `rate-limited:`) is asked again after a
        // pause, doubling to a minute; any other reason ends the mirror.
        let mut pause = Duration::from_secs(1);
        loop {
            let reason = match self.live_once(stop).await? {
                None => return Ok(()),
                Some(reason) => reason,
            };
            if !(reason.is_empty()
                || reason.starts_with("error:")
                || reason.starts_with("rate-limited:"))
            {
                return Err(format!("the relay closed the live REQ: {reason}"));
            }
            self.error(format!(
                "the relay closed the live REQ: {reason}; asking again in {} s",
                pause.as_secs()
            ));
            self.publish(Phase::Live);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return Ok(());
            }
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    }

    /// One live REQ until stopped (`None`) or CLOSED (its reason).
    async fn live_once(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<String>, String> {
        let mut filter = self.options.filter.clone();
        filter.limit = None;
        if filter.until.is_some_and(|u| u < now_secs()) {
            return Ok(None); // nothing new can match
        }
        let from = self
            .state
            .live_since
            .saturating_sub(self.options.resume_margin);
        filter.since = Some(filter.since.map_or(from, |s| s.max(from)));
        let mut sub = self
            .pool
            .subscribe(vec![self.relay.clone()], vec![filter.clone()], 1024)
            .await
            .map_err(|e| e.to_string())?;
        let mut last_save = Instant::now();
        let mut pending = false;
        loop {
            self.publish(Phase::Live);
            let next = tokio::select! {
                next = tokio::time::timeout(Duration::from_secs(1), sub.recv()) => next,
                _ = stop.changed() => break,
            };
            match next {
                Ok(None) => break,
                Err(_) => {}
                Ok(Some(PoolEvent::Event { relay, event, .. })) => {
                    if filter.matches_event(&event) {
                        self.sink.send(relay, event, &self.tally).await;
                        pending = true;
                    } else {
                        self.off_filter += 1;
                    }
                }
                Ok(Some(PoolEvent::Closed { reason, .. })) => {
                    self.checkpoint_live().await?;
                    return Ok(Some(reason));
                }
                Ok(Some(PoolEvent::Error { what, .. })) => self.error(what),
                Ok(Some(PoolEvent::Disconnected { why, .. })) => self.error(why),
                Ok(Some(_)) => {}
            }
            if *stop.borrow() {
                break;
            }
            if pending && last_save.elapsed() >= Duration::from_secs(1) {
                self.checkpoint_live().await?;
                pending = false;
                last_save = Instant::now();
            }
        }
        self.checkpoint_live().await.map(|()| None)
    }

    async fn checkpoint_live(&mut self) -> Result<(), String> {
        self.sink.flush().await?;
        let newest = self.tally.newest_stored.load(Ordering::Relaxed);
        self.state.live_since = self.state.live_since.max(newest);
        self.save()
    }

    /// Writes the resume file atomically (temporary file, fsync, rename,
    /// fsync of the directory).
    fn save(&self) -> Result<(), String> {
        if !self.options.persist {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| e.to_string())?;
        write_atomically(&self.path, &bytes)
    }
}

/// FNV-1a over the relay and the filter: the resume file's name.
fn key(relay: &RelayUrl, filter_json: &str) -> u64 {
    crate::url::fnv1a(
        relay
            .as_str()
            .bytes()
            .chain(std::iter::once(b'\n'))
            .chain(filter_json.bytes()),
    )
}
