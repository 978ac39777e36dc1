//! Per-user feed jobs (the Megalith V3 ingestion manager): given a person,
//! fetch their contact list, their follows' relay lists and profiles, then their
//! follows' posts (and their own) from those relays (the outbox model, NIP-65), into the
//! store, and keep them coming for a while.
//!
//! Phases: `queued` (at most [`FeedConfig::max_running`] jobs run, the rest
//! wait in FIFO order) → `contacts` (the person's newest kind 3 and kind
//! 10002 across the configured relays, and their own write relays) →
//! `relays` (the follows' kind 10002 and kind 0) → `posts_backfill` (kinds 1 and 6,
//! authors in chunks of 256 per REQ, the newest screen first, then deeper
//! pages, from each author's chosen write relays) → `live` (from the job's
//! start, minus a margin) → `finished` after the wall-time cap, or
//! `failed` with the reason. Every job shares the pool's connections and
//! the store sink. The follow graph is the kind 3 and kind 10002 events
//! in the store; each job's status is kept beside it in `DIR/jobs/`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use megalith::{Event, EventStore, Filter, Pubkey};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::files::write_atomically;
use crate::mirror::{self, MirrorOptions, Phase, Progress};
use crate::pool::{PoolEvent, PoolHandle};
use crate::sink::{Sink, Tally};
use crate::stats::now_ms;
use crate::url::RelayUrl;

/// Where feed jobs look for contact and relay lists when none are
/// configured: well-known public relays that keep many of both.
pub const DEFAULT_RELAYS: [&str; 5] = [
    "wss://relay.damus.io",
    "wss://nos.lol",
    "wss://relay.primal.net",
    "wss://purplepag.es",
    "wss://relay.nostr.band",
];

/// How feed jobs behave; [`FeedConfig::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Where contact lists and relay lists are looked for, and the relays
    /// of follows without a relay list.
    pub relays: Vec<RelayUrl>,
    /// Jobs running at once (default 24); the rest wait in FIFO order.
    pub max_running: usize,
    /// How long a job stays live before it is `finished` (default 3 min);
    /// `None`: a job ends when its backfill does (`once`), or never if
    /// `live_forever`.
    pub wall_time: Option<Duration>,
    /// With no wall time: stay live until shut down.
    pub live_forever: bool,
    /// How long a finished job is reused before a new one runs (default 10 min).
    pub fresh_for: Duration,
    /// Authors per REQ (default 256).
    pub chunk_authors: usize,
    /// Write relays read per author (default 2).
    pub relays_per_author: usize,
    /// Relays one job reads posts from at most (default 64).
    pub max_relays: usize,
    /// Most follows taken from a contact list (default 2,000).
    pub max_follows: usize,
    /// The first page of each REQ: one screen (default 100).
    pub first_page: usize,
    /// Deeper pages (default 500).
    pub page_size: usize,
    /// Pages per (relay, chunk) in the backfill, the first included (default 4).
    pub max_pages: u64,
    /// How long the contacts and relays phases wait for EOSE (default 8 s).
    pub phase_timeout: Duration,
    /// Silence after which a page is taken as ended (default 10 s).
    pub page_timeout: Duration,
    /// Dial relays that relay lists name on loopback or private networks
    /// (default false: a stranger's relay list must not aim the service at
    /// its own network; tests on loopback turn it on).
    pub allow_private_relays: bool,
    /// Where job statuses are kept (`DIR/jobs`).
    pub state_dir: PathBuf,
}

impl FeedConfig {
    pub fn new(relays: Vec<RelayUrl>, state_dir: PathBuf) -> FeedConfig {
        FeedConfig {
            relays,
            max_running: 24,
            wall_time: Some(Duration::from_secs(180)),
            live_forever: false,
            fresh_for: Duration::from_secs(600),
            chunk_authors: 256,
            relays_per_author: 2,
            max_relays: 64,
            max_follows: 2_000,
            first_page: 100,
            page_size: 500,
            max_pages: 4,
            phase_timeout: Duration::from_secs(8),
            page_timeout: Duration::from_secs(10),
            allow_private_relays: false,
            state_dir,
        }
    }
}

/// A job's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Queued,
    Contacts,
    Relays,
    PostsBackfill,
    Live,
    Finished,
    Failed,
}

impl JobPhase {
    pub const ALL: [JobPhase; 7] = [
        JobPhase::Queued,
        JobPhase::Contacts,
        JobPhase::Relays,
        JobPhase::PostsBackfill,
        JobPhase::Live,
        JobPhase::Finished,
        JobPhase::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobPhase::Queued => "queued",
            JobPhase::Contacts => "contacts",
            JobPhase::Relays => "relays",
            JobPhase::PostsBackfill => "posts_backfill",
            JobPhase::Live => "live",
            JobPhase::Finished => "finished",
            JobPhase::Failed => "failed",
        }
    }

    /// Still to run or running.
    pub fn active(self) -> bool {
        !matches!(self, JobPhase::Finished | JobPhase::Failed)
    }
}

/// One relay in a job's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRelay {
    pub url: String,
    /// Every REQ of the job on it has finished its backfill.
    pub eose: bool,
    /// Errors the job met on it.
    pub errors: u64,
    /// Dials of it by the pool.
    pub attempts: u64,
    /// When its connection last went up or down (Unix ms).
    pub last_change_ms: u64,
    /// Follows read from it.
    pub authors: usize,
}

/// A job's status (the Megalith V3 schema, with more detail).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub pubkey: String,
    pub phase: Option<JobPhase>,
    /// Place in the queue (1: next), while queued.
    pub queue_position: Option<usize>,
    /// Follows in the contact list.
    pub follows: usize,
    /// Follows with a relay list.
    pub follows_with_relays: usize,
    /// Posts (kinds 1 and 6) of the follows this job brought into the store
    /// (stored, or found there already: another job's, an earlier run's),
    /// each once.
    pub events_ingested: u64,
    /// The newest of those posts.
    pub latest_created_at: Option<u64>,
    /// Milliseconds from the job's start to its first post in the store.
    pub first_post_ms: Option<u64>,
    pub last_error: Option<String>,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub relays: Vec<JobRelay>,
}

struct Entry {
    status: watch::Sender<JobStatus>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    config: FeedConfig,
    store: Arc<EventStore>,
    pool: PoolHandle,
    sink: Sink,
    jobs: Mutex<HashMap<Pubkey, Entry>>,
    queue: Mutex<VecDeque<Pubkey>>,
    permits: Arc<Semaphore>,
    /// Relay lists (kind 10002) asked for lately, by author: jobs whose
    /// follows overlap ask for each list once and wait for one another
    /// (twenty jobs starting together otherwise fetched and verified the
    /// same lists twenty times).
    lists: Mutex<HashMap<Pubkey, ListFetch>>,
}

/// One author's relay list, as far as the jobs know.
enum ListFetch {
    /// A job is asking for it; the channel turns true (or closes) when done.
    Asking(watch::Receiver<bool>),
    /// Asked for at this time (its answer, if any, is in the store).
    Asked(Instant),
}

/// The feed-job manager; cheap to clone.
#[derive(Clone)]
pub struct FeedJobs {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FeedJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedJobs")
            .field("jobs", &self.shared.jobs.lock().len())
            .finish()
    }
}

impl FeedJobs {
    /// A manager on `store`; statuses kept in `config.state_dir` are loaded
    /// (a job that was running when the process stopped is `failed`, and
    /// runs again on the next `ensure_job`).
    pub fn new(
        config: FeedConfig,
        store: Arc<EventStore>,
        pool: PoolHandle,
        sink: Sink,
    ) -> FeedJobs {
        let mut jobs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir(&config.state_dir) {
            for file in dir.flatten() {
                let Ok(bytes) = std::fs::read(file.path()) else {
                    continue;
                };
                let Ok(mut status) = serde_json::from_slice::<JobStatus>(&bytes) else {
                    continue;
                };
                let Ok(pubkey) = Pubkey::from_hex(&status.pubkey) else {
                    continue;
                };
                if status.phase.is_none_or(JobPhase::active) {
                    status.phase = Some(JobPhase::Failed);
                    status.last_error = Some("interrupted: the process stopped".to_string());
                }
                let (stop, _) = watch::channel(false);
                jobs.insert(
                    pubkey,
                    Entry {
                        status: watch::channel(status).0,
                        stop,
                        task: None,
                    },
                );
            }
        }
        let permits = Arc::new(Semaphore::new(config.max_running.max(1)));
        FeedJobs {
            shared: Arc::new(Shared {
                config,
                store,
                pool,
                sink,
                jobs: Mutex::new(jobs),
                queue: Mutex::new(VecDeque::new()),
                permits,
                lists: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the person's job, or reuses the one running, queued, or
    /// finished less than `fresh_for` ago; returns its status stream.
    pub fn ensure_job(&self, pubkey: Pubkey) -> watch::Receiver<JobStatus> {
        let shared = &self.shared;
        let mut jobs = shared.jobs.lock();
        if let Some(entry) = jobs.get(&pubkey) {
            let status = entry.status.borrow().clone();
            let fresh = status.finished_at_ms.is_some_and(|at| {
                now_ms().saturating_sub(at) < shared.config.fresh_for.as_millis() as u64
            }) && status.phase == Some(JobPhase::Finished);
            if status.phase.is_some_and(JobPhase::active) || fresh {
                return entry.status.subscribe();
            }
        }
        let position = {
            let mut queue = shared.queue.lock();
            queue.push_back(pubkey);
            queue.len()
        };
        let status = JobStatus {
            pubkey: pubkey.to_hex(),
            phase: Some(JobPhase::Queued),
            queue_position: Some(position),
            ..JobStatus::default()
        };
        let (status_tx, status_rx) = watch::channel(status);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(self.shared.clone(), pubkey, status_tx.clone(), stopped));
        jobs.insert(
            pubkey,
            Entry {
                status: status_tx,
                stop,
                task: Some(task),
            },
        );
        status_rx
    }

    /// The person's job status, if a job ran or runs.
    pub fn status(&self, pubkey: &Pubkey) -> Option<JobStatus> {
        self.shared
            .jobs
            .lock()
            .get(pubkey)
            .map(|e| e.status.borrow().clone())
    }

    /// The person's status stream, if a job ran or runs (none is started).
    pub fn watch(&self, pubkey: &Pubkey) -> Option<watch::Receiver<JobStatus>> {
        self.shared
            .jobs
            .lock()
            .get(pubkey)
            .map(|e| e.status.subscribe())
    }

    /// Jobs by phase (for `/metrics`).
    pub fn phase_counts(&self) -> BTreeMap<JobPhase, usize> {
        let mut counts: BTreeMap<JobPhase, usize> = JobPhase::ALL.iter().map(|p| (*p, 0)).collect();
        for entry in self.shared.jobs.lock().values() {
            if let Some(phase) = entry.status.borrow().phase {
                *counts.entry(phase).or_default() += 1;
            }
        }
        counts
    }

    /// Stops every job (each ends `finished`, its status saved) and waits.
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = {
            let mut jobs = self.shared.jobs.lock();
            jobs.values_mut()
                .filter_map(|entry| {
                    let _ = entry.stop.send(true);
                    entry.task.take()
                })
                .collect()
        };
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// A job from the queue to its end.
async fn run(
    shared: Arc<Shared>,
    pubkey: Pubkey,
    status: watch::Sender<JobStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let permit = tokio::select! {
        permit = shared.permits.clone().acquire_owned() => permit.ok(),
        _ = stop.changed() => None,
    };
    dequeue(&shared, &pubkey);
    let Some(_permit) = permit else {
        status.send_modify(|s| {
            s.phase = Some(JobPhase::Failed);
            s.queue_position = None;
            s.last_error = Some("stopped before it started".to_string());
        });
        return;
    };
    let started = Instant::now();
    status.send_modify(|s| {
        s.phase = Some(JobPhase::Contacts);
        s.queue_position = None;
        s.started_at_ms = Some(now_ms());
    });
    save(&shared, &status);
    let mut job = Job {
        shared: shared.clone(),
        pubkey,
        status: status.clone(),
        started,
        posts: Arc::new(Tally::distinct()),
        stopping: stop.clone(),
    };
    let result = job.run(&mut stop).await;
    status.send_modify(|s| {
        match result {
            Ok(()) => s.phase = Some(JobPhase::Finished),
            Err(e) => {
                s.phase = Some(JobPhase::Failed);
                s.last_error = Some(e);
            }
        }
        s.finished_at_ms = Some(now_ms());
    });
    save(&shared, &status);
}

/// Takes the person off the queue and renumbers the rest.
fn dequeue(shared: &Shared, pubkey: &Pubkey) {
    let queue: Vec<Pubkey> = {
        let mut queue = shared.queue.lock();
        queue.retain(|p| p != pubkey);
        queue.iter().copied().collect()
    };
    let jobs = shared.jobs.lock();
    for (i, p) in queue.iter().enumerate() {
        if let Some(entry) = jobs.get(p) {
            entry.status.send_modify(|s| s.queue_position = Some(i + 1));
        }
    }
}

fn save(shared: &Shared, status: &watch::Sender<JobStatus>) {
    let status = status.borrow().clone();
    let dir = &shared.config.state_dir;
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(bytes) = serde_json::to_vec_pretty(&status) {
        // A status that cannot be saved is shown from memory all the same.
        let _ = write_atomically(&dir.join(format!("{}.json", status.pubkey)), &bytes);
    }
}

/// One mirror of a job: a chunk of authors on one relay.
struct MirrorRun {
    relay: RelayUrl,
    authors: Vec<Pubkey>,
    progress: Progress,
    task: tokio::task::JoinHandle<Result<Vec<mirror::RelayReport>, String>>,
    /// Its failure has been acted on.
    handled: bool,
}

struct Job {
    shared: Arc<Shared>,
    pubkey: Pubkey,
    status: watch::Sender<JobStatus>,
    started: Instant,
    posts: Arc<Tally>,
    /// Set when the job is told to stop: a phase's wait for answers ends.
    stopping: watch::Receiver<bool>,
}

impl Job {
    fn config(&self) -> &FeedConfig {
        &self.shared.config
    }

    fn phase(&self, phase: JobPhase) {
        self.status.send_modify(|s| s.phase = Some(phase));
        save(&self.shared, &self.status);
    }

    fn note_error(&self, error: String) {
        self.status.send_modify(|s| s.last_error = Some(error));
    }

    async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        // contacts
        let config_relays = self.config().relays.clone();
        if config_relays.is_empty() {
            return Err("no relays configured to look for the contact list".to_string());
        }
        let meta = Arc::new(Tally::default());
        let own = vec![
            Filter::new().authors([self.pubkey]).kinds([3]).limit(1),
            Filter::new()
                .authors([self.pubkey])
                .kinds([10_002])
                .limit(1),
            // The person's profile, for the page's header.
            Filter::new().authors([self.pubkey]).kinds([0]).limit(1),
        ];
        self.fetch(config_relays.clone(), own.clone(), &meta)
            .await?;
        if *stop.borrow() {
            return Ok(());
        }
        let own_relays_all: Vec<RelayUrl> = self
            .newest(&[self.pubkey], 10_002)?
            .first()
            .map(|list| self.allowed(write_relays(list)))
            .unwrap_or_default();
        let own_relays: Vec<RelayUrl> = own_relays_all
            .iter()
            .filter(|r| !config_relays.contains(r))
            .cloned()
            .collect();
        if !own_relays.is_empty() {
            self.fetch(own_relays.clone(), own[..1].to_vec(), &meta)
                .await?;
            if *stop.borrow() {
                return Ok(());
            }
        }
        let Some(contacts) = self.newest(&[self.pubkey], 3)?.into_iter().next() else {
            let asked = config_relays.len() + own_relays.len();
            let mut why = format!(
                "no contact list (kind 3) for this person on the {asked} relay{} asked",
                if asked == 1 { "" } else { "s" }
            );
            if let Some(last) = self.status.borrow().last_error.clone() {
                why.push_str(&format!(" (last error: {last})"));
            }
            return Err(why);
        };
        let follows = follows_of(&contacts, self.config().max_follows);
        self.status.send_modify(|s| s.follows = follows.len());
        if follows.is_empty() {
            return Err("the contact list follows nobody".to_string());
        }
        if *stop.borrow() {
            return Ok(());
        }

        // relays
        self.phase(JobPhase::Relays);
        let mut lookup_relays = config_relays.clone();
        lookup_relays.extend(own_relays.iter().cloned());
        // Ask only for the lists no other job asked for lately; wait for
        // those another job is asking for now.
        let (ask, others, done) = self.claim_lists(&follows);
        // Relay lists, and the profiles (kind 0) the feed shows names and
        // pictures from, in the same REQ.
        let fetches = ask.chunks(self.config().chunk_authors.max(1)).map(|chunk| {
            let filter = Filter::new()
                .authors(chunk.iter().copied())
                .kinds([0, 10_002]);
            self.fetch(lookup_relays.clone(), vec![filter], &meta)
        });
        let fetched = futures_util::future::join_all(fetches).await;
        {
            let now = Instant::now();
            let mut lists = self.shared.lists.lock();
            for author in &ask {
                lists.insert(*author, ListFetch::Asked(now));
            }
        }
        let _ = done.send(true);
        for result in fetched {
            result?;
        }
        let wait = self.config().phase_timeout;
        for mut other in others {
            let _ = tokio::time::timeout(wait, other.wait_for(|d| *d)).await;
        }
        let lists = self.newest(&follows, 10_002)?;
        let mut write: HashMap<Pubkey, Vec<RelayUrl>> = HashMap::new();
        for list in &lists {
            let relays = self.allowed(write_relays(list));
            if !relays.is_empty() {
                write.insert(list.pubkey, relays);
            }
        }
        self.status
            .send_modify(|s| s.follows_with_relays = write.len());
        // The person's own posts come too (their page's author mode shows
        // them), from their own write relays.
        let mut authors = follows.clone();
        if !authors.contains(&self.pubkey) {
            authors.push(self.pubkey);
            if !own_relays_all.is_empty() {
                write.insert(self.pubkey, own_relays_all.clone());
            }
        }
        let plan = choose_relays(
            &authors,
            &write,
            self.config().relays_per_author,
            self.config().max_relays,
            &config_relays,
        );
        self.status.send_modify(|s| {
            s.relays = plan
                .iter()
                .map(|(url, authors)| JobRelay {
                    url: url.as_str().to_string(),
                    authors: authors.len(),
                    ..JobRelay::default()
                })
                .collect();
        });
        if *stop.borrow() {
            return Ok(());
        }

        // posts_backfill, then live
        self.phase(JobPhase::PostsBackfill);
        self.posts(plan, &write, stop).await
    }

    /// Starts one mirror of the authors' posts on `relay`.
    fn spawn_mirror(
        &self,
        relay: &RelayUrl,
        authors: &[Pubkey],
        stop: &watch::Receiver<bool>,
    ) -> MirrorRun {
        let config = self.config();
        let filter = Filter::new().authors(authors.iter().copied()).kinds([1, 6]);
        let mut options = MirrorOptions::new(vec![relay.clone()], filter, PathBuf::new());
        options.persist = false;
        options.once = config.wall_time.is_none() && !config.live_forever;
        options.first_page_size = Some(config.first_page);
        options.page_size = config.page_size;
        options.max_pages = Some(config.max_pages);
        options.page_timeout = config.page_timeout;
        options.max_failures = 3;
        options.tally = Some(self.posts.clone());
        let progress = Progress::default();
        let task = tokio::spawn(mirror::run(
            self.shared.pool.clone(),
            self.shared.sink.clone(),
            options,
            stop.clone(),
            progress.clone(),
        ));
        MirrorRun {
            relay: relay.clone(),
            authors: authors.to_vec(),
            progress,
            task,
            handled: false,
        }
    }

    /// Reads the plan's posts: one mirror per (relay, chunk of authors).
    /// When a relay fails, its authors are read from another of their
    /// write relays (one that answered first), or from the configured
    /// relays; no relay is tried twice for an author.
    async fn posts(
        &mut self,
        plan: BTreeMap<RelayUrl, Vec<Pubkey>>,
        write: &HashMap<Pubkey, Vec<RelayUrl>>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let config = self.config().clone();
        let (mirror_stop_tx, mirror_stop) = watch::channel(false);
        let mut mirrors = Vec::new();
        for (relay, authors) in &plan {
            for chunk in authors.chunks(config.chunk_authors.max(1)) {
                mirrors.push(self.spawn_mirror(relay, chunk, &mirror_stop));
            }
        }
        let mut failed: HashSet<RelayUrl> = HashSet::new();
        let mut tried: HashMap<Pubkey, HashSet<RelayUrl>> = HashMap::new();
        for (relay, authors) in &plan {
            for author in authors {
                tried.entry(*author).or_default().insert(relay.clone());
            }
        }
        let deadline = config.wall_time.map(|w| self.started + w);
        let mut live = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            // Failover for relays that failed: each of their authors goes
            // to a relay not yet tried for them, one that answered first.
            let answered: HashSet<RelayUrl> = mirrors
                .iter()
                .filter(|r| {
                    r.progress
                        .snapshot()
                        .first()
                        .is_some_and(|p| matches!(p.phase, Phase::Live | Phase::Done))
                })
                .map(|r| r.relay.clone())
                .collect();
            let mut moved: BTreeMap<RelayUrl, Vec<Pubkey>> = BTreeMap::new();
            for run in mirrors.iter_mut().filter(|r| !r.handled) {
                let gave_up = run
                    .progress
                    .snapshot()
                    .first()
                    .is_some_and(|r| r.phase == Phase::Failed);
                if !gave_up {
                    continue;
                }
                run.handled = true;
                failed.insert(run.relay.clone());
                for author in &run.authors {
                    let tried = tried.entry(*author).or_default();
                    let mut candidates: Vec<&RelayUrl> = write
                        .get(author)
                        .into_iter()
                        .flatten()
                        .chain(&config.relays)
                        .filter(|r| !failed.contains(*r) && !tried.contains(*r))
                        .collect();
                    // Stable: relays that answered first, then list order.
                    candidates.sort_by_key(|r| !answered.contains(*r));
                    if let Some(other) = candidates.first() {
                        tried.insert((*other).clone());
                        moved.entry((*other).clone()).or_default().push(*author);
                    }
                }
            }
            for (relay, authors) in moved {
                self.status.send_modify(|s| {
                    if !s.relays.iter().any(|r| r.url == relay.as_str()) {
                        s.relays.push(JobRelay {
                            url: relay.as_str().to_string(),
                            ..JobRelay::default()
                        });
                    }
                    if let Some(r) = s.relays.iter_mut().find(|r| r.url == relay.as_str()) {
                        r.authors += authors.len();
                    }
                });
                for chunk in authors.chunks(config.chunk_authors.max(1)) {
                    mirrors.push(self.spawn_mirror(&relay, chunk, &mirror_stop));
                }
            }
            let all_ended = mirrors.iter().all(|r| r.task.is_finished());
            let backfilled = self.refresh(&mirrors);
            if backfilled && !live && !all_ended {
                live = true;
                self.phase(JobPhase::Live);
            }
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if all_ended || timed_out || *stop.borrow() {
                break;
            }
        }
        let _ = mirror_stop_tx.send(true);
        for run in &mut mirrors {
            let _ = (&mut run.task).await;
        }
        let _ = self.shared.sink.flush().await;
        self.refresh(&mirrors);
        let answered = self.status.borrow().relays.iter().any(|r| r.eose);
        if !answered {
            return Err(format!(
                "no relay answered for the follows' posts ({} tried)",
                self.status.borrow().relays.len()
            ));
        }
        Ok(())
    }

    /// Updates the status from the mirrors, the tally and the pool;
    /// returns whether every backfill has ended.
    fn refresh(&self, mirrors: &[MirrorRun]) -> bool {
        let mut per_relay: BTreeMap<&RelayUrl, (bool, u64, Option<String>)> = BTreeMap::new();
        let mut all = true;
        for run in mirrors {
            let (relay, reports) = (&run.relay, run.progress.snapshot());
            let done = reports
                .first()
                .is_some_and(|r| !matches!(r.phase, Phase::Backfill));
            all &= done;
            let entry = per_relay.entry(relay).or_insert((true, 0, None));
            entry.0 &= done && reports.first().is_some_and(|r| r.phase != Phase::Failed);
            if let Some(r) = reports.first() {
                entry.1 += r.errors;
                if r.last_error.is_some() {
                    entry.2 = r.last_error.clone();
                }
            }
        }
        let stats = self.shared.pool.stats();
        // Each post once, also one another job stored first: it is in this
        // feed.
        let stored = self.posts.distinct_held.load(Ordering::Relaxed);
        let newest = self.posts.newest_held.load(Ordering::Relaxed);
        let first = self.posts.first_held_ms.load(Ordering::Relaxed);
        let started_ms = self.status.borrow().started_at_ms.unwrap_or(0);
        self.status.send_modify(|s| {
            s.events_ingested = stored;
            s.latest_created_at = (newest > 0).then_some(newest);
            s.first_post_ms = (first > 0).then(|| first.saturating_sub(started_ms));
            for relay in &mut s.relays {
                let Ok(url) = RelayUrl::parse(&relay.url) else {
                    continue;
                };
                if let Some((eose, errors, last)) = per_relay.get(&url) {
                    relay.eose = *eose;
                    relay.errors = *errors;
                    if let Some(last) = last {
                        s.last_error = Some(format!("{}: {last}", relay.url));
                    }
                }
                if let Some(pool) = stats.get(&url) {
                    relay.attempts = pool.attempts;
                    relay.last_change_ms = pool.last_change_ms;
                }
            }
        });
        all
    }

    /// Of `follows`, the authors whose relay lists this job asks for (they
    /// are marked as being asked), and the channels of the other jobs
    /// asking for the rest now; lists asked for less than `fresh_for` ago
    /// are read from the store.
    fn claim_lists(
        &self,
        follows: &[Pubkey],
    ) -> (Vec<Pubkey>, Vec<watch::Receiver<bool>>, watch::Sender<bool>) {
        let (done, asking) = watch::channel(false);
        let fresh_for = self.config().fresh_for;
        let mut ask = Vec::new();
        let mut others: Vec<watch::Receiver<bool>> = Vec::new();
        let mut lists = self.shared.lists.lock();
        if lists.len() > 200_000 {
            lists.retain(|_, fetch| match fetch {
                ListFetch::Asked(at) => at.elapsed() < fresh_for,
                ListFetch::Asking(other) => other.has_changed().is_ok(),
            });
        }
        for author in follows {
            let claim = match lists.get(author) {
                Some(ListFetch::Asked(at)) => at.elapsed() >= fresh_for,
                // A job that stopped before saying: ask again.
                Some(ListFetch::Asking(other)) => {
                    if other.has_changed().is_err() {
                        true
                    } else {
                        if !others.iter().any(|o| o.same_channel(other)) {
                            others.push(other.clone());
                        }
                        false
                    }
                }
                None => true,
            };
            if claim {
                lists.insert(*author, ListFetch::Asking(asking.clone()));
                ask.push(*author);
            }
        }
        (ask, others, done)
    }

    /// Relay URLs a job may dial.
    fn allowed(&self, relays: Vec<RelayUrl>) -> Vec<RelayUrl> {
        relays
            .into_iter()
            .filter(|r| self.config().allow_private_relays || !r.is_private())
            .collect()
    }

    /// The newest event of `kind` of each of `authors`, from the store.
    fn newest(&self, authors: &[Pubkey], kind: u16) -> Result<Vec<Event>, String> {
        let mut out = Vec::new();
        for chunk in authors.chunks(1_000) {
            let filter = Filter::new().authors(chunk.iter().copied()).kinds([kind]);
            let events = self
                .shared
                .store
                .query(&[filter])
                .map_err(|e| format!("store: {e}"))?;
            // Replaceable: one per author already; keep the newest anyway.
            let mut best: HashMap<Pubkey, Event> = HashMap::new();
            for event in events {
                match best.get(&event.pubkey) {
                    Some(b) if b.created_at >= event.created_at => {}
                    _ => {
                        best.insert(event.pubkey, event);
                    }
                }
            }
            out.extend(best.into_values());
        }
        Ok(out)
    }

    /// Asks `relays` for `filters` until each sent EOSE, failed, or the
    /// phase timeout passed; what arrives goes to the store.
    async fn fetch(
        &self,
        relays: Vec<RelayUrl>,
        filters: Vec<Filter>,
        tally: &Arc<Tally>,
    ) -> Result<(), String> {
        let mut pending: HashSet<RelayUrl> = relays.iter().cloned().collect();
        let mut sub = self
            .shared
            .pool
            .subscribe(relays, filters.clone(), 1024)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + self.config().phase_timeout;
        let mut arrived = Vec::new();
        while !pending.is_empty() {
            let mut stopping = self.stopping.clone();
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, sub.recv()) => next,
                // Told to stop: what arrived so far is stored.
                _ = stopping.wait_for(|s| *s) => break,
            };
            let Ok(next) = next else {
                break;
            };
            match next {
                None => break,
                Some(PoolEvent::Event { relay, event, .. }) => {
                    if filters.iter().any(|f| f.matches_event(&event)) {
                        arrived.push((relay, event));
                    }
                }
                Some(PoolEvent::Eose { relay, .. }) => {
                    pending.remove(&relay);
                }
                Some(PoolEvent::Closed { relay, reason, .. }) => {
                    pending.remove(&relay);
                    self.note_error(format!("{relay}: {reason}"));
                }
                Some(PoolEvent::Error { relay, what }) => {
                    if pending.remove(&relay) {
                        self.note_error(format!("{relay}: {what}"));
                    }
                }
                Some(PoolEvent::Disconnected { relay, why }) => {
                    self.note_error(format!("{relay}: {why}"));
                }
                Some(_) => {}
            }
        }
        drop(sub);
        // Lists go in at once, not behind other jobs' posts in the sink.
        self.shared.sink.store_now(arrived, tally).await
    }
}

/// The write relays of a NIP-65 list: `r` tags unmarked or marked `write`.
pub fn write_relays(list: &Event) -> Vec<RelayUrl> {
    let mut out = Vec::new();
    for tag in &list.tags {
        if tag.first().map(String::as_str) != Some("r") {
            continue;
        }
        let marker = tag.get(2).map(String::as_str);
        if !matches!(marker, None | Some("write") | Some("")) {
            continue;
        }
        if let Some(url) = tag.get(1).and_then(|u| RelayUrl::parse(u).ok())
            && !out.contains(&url)
        {
            out.push(url);
        }
    }
    out
}

/// The follows of a contact list: its `p` tags with valid keys, in order,
/// each once, at most `max`.
pub fn follows_of(contacts: &Event, max: usize) -> Vec<Pubkey> {
    let mut seen = HashSet::new();
    contacts
        .tags
        .iter()
        .filter(|t| t.first().map(String::as_str) == Some("p"))
        .filter_map(|t| t.get(1).and_then(|v| Pubkey::from_hex(v).ok()))
        .filter(|p| seen.insert(*p))
        .take(max)
        .collect()
}

/// The outbox model: which relays to read each follow's posts from. Each
/// author gets up to `per_author` of their write relays, chosen greedily
/// so that few relays cover many authors (the relay that serves the most
/// authors still short of relays first); at most `max_relays` relays in
/// all. Authors with no list, or none of whose relays was chosen, are read
/// from `fallback`.
pub fn choose_relays(
    follows: &[Pubkey],
    write: &HashMap<Pubkey, Vec<RelayUrl>>,
    per_author: usize,
    max_relays: usize,
    fallback: &[RelayUrl],
) -> BTreeMap<RelayUrl, Vec<Pubkey>> {
    let mut plan: BTreeMap<RelayUrl, Vec<Pubkey>> = BTreeMap::new();
    let mut assigned: HashMap<Pubkey, usize> = HashMap::new();
    let need = |a: &Pubkey| write.get(a).map_or(0, |r| r.len().min(per_author.max(1)));
    loop {
        if plan.len() >= max_relays.max(1) {
            break;
        }
        // The relay that serves the most authors still short of relays.
        let mut score: BTreeMap<&RelayUrl, usize> = BTreeMap::new();
        for author in follows {
            let Some(relays) = write.get(author) else {
                continue;
            };
            if assigned.get(author).copied().unwrap_or(0) >= need(author) {
                continue;
            }
            for relay in relays {
                if !plan.contains_key(relay) {
                    *score.entry(relay).or_default() += 1;
                }
            }
        }
        let Some((best, _)) = score
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        else {
            break;
        };
        let best = best.clone();
        let mut authors = Vec::new();
        for author in follows {
            let Some(relays) = write.get(author) else {
                continue;
            };
            let count = assigned.entry(*author).or_default();
            if *count < need(author) && relays.contains(&best) {
                *count += 1;
                authors.push(*author);
            }
        }
        plan.insert(best, authors);
    }
    let orphans: Vec<Pubkey> = follows
        .iter()
        .filter(|a| assigned.get(*a).copied().unwrap_or(0) == 0)
        .copied()
        .collect();
    if !orphans.is_empty() {
        for relay in fallback {
            let entry = plan.entry(relay.clone()).or_default();
            for author in &orphans {
                if !entry.contains(author) {
                    entry.push(*author);
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use megalith::Keys;

    fn url(n: u16) -> RelayUrl {
        RelayUrl::parse(&format!("ws://127.0.0.1:{n}")).unwrap()
    }

    #[test]
    fn few_relays_cover_many_authors_and_each_author_gets_its_share() {
        let authors: Vec<Pubkey> = (0..40).map(|i| Keys::from_seed(i).pubkey()).collect();
        let mut write = HashMap::new();
        for (i, a) in authors.iter().enumerate() {
            // Everyone lists relay 1; half list 2; each lists a private one.
            let mut relays = vec![url(1)];
            if i % 2 == 0 {
                relays.push(url(2));
            }
            relays.push(url(100 + i as u16));
            relays.push(url(200 + i as u16));
            if i < 30 {
                write.insert(*a, relays);
            }
        }
        let fallback = vec![url(9)];
        let plan = choose_relays(&authors, &write, 2, 64, &fallback);
        // Relay 1 serves all 30 listed authors, relay 2 the 15 even ones; the
        // odd ones get a second relay of their own.
        assert_eq!(plan[&url(1)].len(), 30);
        assert_eq!(plan[&url(2)].len(), 15);
        for (i, a) in authors.iter().enumerate().take(30) {
            let count = plan.values().filter(|v| v.contains(a)).count();
            assert_eq!(count, 2, "author {i}");
        }
        // The 10 without a list come from the fallback.
        assert_eq!(plan[&url(9)].len(), 10);
        assert!(plan.len() <= 2 + 15 + 1);

        // A cap on relays: authors whose relays were not chosen fall back.
        let capped = choose_relays(&authors, &write, 2, 1, &fallback);
        assert_eq!(capped[&url(1)].len(), 30);
        assert_eq!(capped[&url(9)].len(), 10);
        assert_eq!(capped.len(), 2);
    }

    #[test]
    fn relay_lists_and_contact_lists_are_read_strictly() {
        let keys = Keys::from_seed(1);
        let list = keys.sign(
            1,
            10_002,
            vec![
                vec!["r".into(), "wss://a.example".into()],
                vec!["r".into(), "wss://b.example".into(), "read".into()],
                vec!["r".into(), "wss://c.example/".into(), "write".into()],
                vec!["r".into(), "not a url".into()],
                vec!["r".into(), "WSS://A.example:443".into()],
            ],
            String::new(),
        );
        let relays: Vec<String> = write_relays(&list).iter().map(|r| r.to_string()).collect();
        assert_eq!(relays, ["wss://a.example", "wss://c.example"]);
        let a = Keys::from_seed(2).pubkey().to_hex();
        let contacts = keys.sign(
            1,
            3,
            vec![
                vec!["p".into(), a.clone()],
                vec!["p".into(), "zz".into()],
                vec!["p".into(), a.clone()],
                vec!["e".into(), a.clone()],
                vec!["p".into(), Keys::from_seed(3).pubkey().to_hex()],
            ],
            String::new(),
        );
        assert_eq!(follows_of(&contacts, 10).len(), 2);
        assert_eq!(follows_of(&contacts, 1).len(), 1);
    }
}
